"""Medication events on the message bus: the topology, publishing, and storing what arrives.

Topology (names from the settings): a durable topic exchange; the events queue bound to it
with ``medication.#`` and RabbitMQ's ``x-dead-letter-exchange`` pointing at a fanout
exchange whose queue keeps what cannot be processed. Publishers declare all of it, so events
published before any consumer ever ran are kept rather than dropped as unroutable.
"""

# ruff: noqa: S608
# (The SQL here is built from the models' table and column names; values are parameters.)

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterable, Sequence
from typing import Any

import kombu
from flask import current_app

from core import messaging
from core.db import database, utcnow
from core.patients.models import Patient
from plugins.medications.events import Event, InvalidEvent, parse
from plugins.medications.models import MedicationEvent

# Events stored per transaction (a consumer holds two batches unacknowledged).
BATCH_SIZE = 500
# How fresh a patient's "last activity" needs to be.
ACTIVITY_RESOLUTION = datetime.timedelta(minutes=1)


@dataclasses.dataclass(frozen=True)
class Topology:
    exchange: kombu.Exchange
    queue: kombu.Queue
    dead_letter_queue: kombu.Queue


def topology(app) -> Topology:
    exchange = kombu.Exchange(app.config["MEDICATIONS_EXCHANGE"], type="topic", durable=True)
    dead_letters = kombu.Exchange(f"{exchange.name}.dead-letter", type="fanout", durable=True)
    name = app.config["MEDICATIONS_QUEUE"]
    queue = kombu.Queue(
        name,
        exchange,
        routing_key="medication.#",
        durable=True,
        # Part of the queue's identity in RabbitMQ: what the broker itself rejects (for
        # instance, a message refused by a consumer without a reason) is kept too.
        queue_arguments={"x-dead-letter-exchange": dead_letters.name},
    )
    dead_letter_queue = kombu.Queue(f"{name}.dead", dead_letters, durable=True)
    return Topology(exchange, queue, dead_letter_queue)


def publish(events: Iterable[Event], *, app=None, max_retries: int | None = None) -> int:
    """Publish valid events (as they were received); the count the broker confirmed."""
    app = app or current_app._get_current_object()
    bus = topology(app)
    return messaging.publish(
        app,
        ((event.routing_key, event.received) for event in events),
        exchange=bus.exchange,
        declare=[bus.queue, bus.dead_letter_queue],
        max_retries=max_retries,
    )


def parse_message(body: Any, message: kombu.Message) -> Event:
    """A message from any producer: its event, or a rejection that names what is wrong."""
    try:
        return parse(body)
    except InvalidEvent as error:
        raise messaging.Reject(f"invalid medication event: {error}") from None


# The stored columns, in the order ``_insert_new`` sends them.
_COLUMNS = (
    MedicationEvent.patient_mrn,
    MedicationEvent.medication,
    MedicationEvent.action,
    MedicationEvent.event_time,
    MedicationEvent.event_id,
    MedicationEvent.dedupe_key,
    MedicationEvent.received,
    MedicationEvent.received_at,
)


def store(events: Sequence[Event]) -> None:
    """Store a batch of events once each (redeliveries find their row already there).

    The statements are written out rather than built by peewee, which took 60 µs an event
    to build them from 500 rows, three times what the database takes to run them
    (bench/RESULTS.md, issue 5).
    """
    now = utcnow()
    rows = [
        (
            event.patient_id,
            event.medication,
            event.action,
            event.event_time,
            event.event_id,
            event.dedupe_key,
            json.dumps(event.received, separators=(",", ":")),
            now,
        )
        for event in events
    ]
    # In key order: two consumers inserting overlapping batches (redeliveries) in different
    # orders deadlocked on the unique index (bench/medications.py); one order cannot.
    rows.sort(key=lambda row: row[5])
    _insert_new(rows)
    # Events may name patients the registry has not seen yet: register them, so that
    # their chart and periods can be reached. Nearly all are known already, so only the
    # new ones go through the model's insert (with its defaults).
    mrns = sorted({event.patient_id for event in events})
    patients = Patient._meta.table_name
    known = {
        mrn
        for (mrn,) in database.execute_sql(
            f"SELECT mrn FROM {patients} WHERE mrn IN ({_params(len(mrns))})", mrns
        )
    }
    new = [{"mrn": mrn} for mrn in mrns if mrn not in known]
    if new:
        Patient.insert_many(new).on_conflict_ignore().execute()
    # Rows touched in the last minute are left alone: the update locks each row it changes
    # until the commit, and consumers side by side would otherwise queue on busy patients.
    moment = Patient.last_activity_at.db_value
    database.execute_sql(
        f"UPDATE {patients} SET last_activity_at = {database.param} "
        f"WHERE mrn IN ({_params(len(mrns))}) AND last_activity_at < {database.param}",
        [moment(now), *mrns, moment(now - ACTIVITY_RESOLUTION)],
    )


def _insert_new(rows: list[tuple]) -> None:
    """``INSERT ... VALUES (...), ... ON CONFLICT (dedupe_key) DO NOTHING``."""
    converters = [column.db_value for column in _COLUMNS]
    params = [
        convert(value) for row in rows for convert, value in zip(converters, row, strict=True)
    ]
    values = ", ".join([f"({_params(len(_COLUMNS))})"] * len(rows))
    database.execute_sql(
        f"INSERT INTO {MedicationEvent._meta.table_name} "
        f"({', '.join(column.column_name for column in _COLUMNS)}) VALUES {values} "
        f"ON CONFLICT ({MedicationEvent.dedupe_key.column_name}) DO NOTHING",
        params,
    )


def _params(count: int) -> str:
    return ", ".join([database.param] * count)


def consumer(app) -> messaging.QueueConsumer:
    bus = topology(app)
    return messaging.QueueConsumer(
        bus.queue,
        store,
        parse=parse_message,
        dead_letter_queue=bus.dead_letter_queue,
        batch_size=BATCH_SIZE,
    )
