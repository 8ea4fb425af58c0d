"""Medication events on the message bus: the topology, publishing, and storing what arrives.

Topology (names from the settings): a durable topic exchange; the events queue bound to it
with ``medication.#`` and RabbitMQ's ``x-dead-letter-exchange`` pointing at a fanout
exchange whose queue keeps what cannot be processed. Publishers declare all of it, so events
published before any consumer ever ran are kept rather than dropped as unroutable.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterable, Sequence
from typing import Any

import kombu
from flask import current_app

from core import messaging
from core.db import utcnow
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


def store(events: Sequence[Event]) -> None:
    """Store a batch of events once each (redeliveries find their row already there)."""
    now = utcnow()
    rows = [
        {
            "patient_mrn": event.patient_id,
            "medication": event.medication,
            "action": event.action,
            "event_time": event.event_time,
            "event_id": event.event_id,
            "dedupe_key": event.dedupe_key,
            "received": json.dumps(event.received, separators=(",", ":")),
            "received_at": now,
        }
        for event in events
    ]
    # In key order: two consumers inserting overlapping batches (redeliveries) in different
    # orders deadlocked on the unique index (bench/medications.py); one order cannot.
    rows.sort(key=lambda row: row["dedupe_key"])
    MedicationEvent.insert_many(rows).on_conflict_ignore().execute()
    # Events may name patients the registry has not seen yet: register them, so that
    # their chart and periods can be reached.
    mrns = sorted({event.patient_id for event in events})
    Patient.insert_many([{"mrn": mrn} for mrn in mrns]).on_conflict_ignore().execute()
    # Rows touched in the last minute are left alone: the update locks each row it changes
    # until the commit, and consumers side by side would otherwise queue on busy patients.
    Patient.update(last_activity_at=now).where(
        Patient.mrn.in_(mrns), Patient.last_activity_at < now - ACTIVITY_RESOLUTION
    ).execute()


def consumer(app) -> messaging.QueueConsumer:
    bus = topology(app)
    return messaging.QueueConsumer(
        bus.queue,
        store,
        parse=parse_message,
        dead_letter_queue=bus.dead_letter_queue,
        batch_size=BATCH_SIZE,
    )
