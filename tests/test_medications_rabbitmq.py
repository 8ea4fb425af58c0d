"""Medication events through a real RabbitMQ into a real PostgreSQL, with real consumers.

Each test gets exchanges and queues of its own (deleted afterwards). The consumers are
``caredeck consume`` processes, killed and stopped as an operator or the kernel would.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import kombu
import pytest
from helpers import consume_everything

from core.db import database
from core.messaging import REASON_HEADER
from core.testing import fresh_postgresql_url, service_url
from plugins.medications import bus
from plugins.medications import plugin as medications
from plugins.medications.events import parse
from plugins.medications.models import MedicationEvent

pytestmark = pytest.mark.integration


@pytest.fixture
def caredeck_plugins():
    return {"medications": medications}


@pytest.fixture
def caredeck_database_url():
    """Only PostgreSQL: several processes write at once."""
    return fresh_postgresql_url()


@pytest.fixture
def settings(caredeck_config):
    suffix = uuid.uuid4().hex[:8]
    return {
        **caredeck_config,
        "AMQP_URL": service_url("amqp"),
        "MEDICATIONS_EXCHANGE": f"test-{suffix}.medications",
        "MEDICATIONS_QUEUE": f"test-{suffix}.medications.events",
    }


@pytest.fixture
def app(make_app, settings):
    app = make_app(**{k: v for k, v in settings.items() if k not in ("DATABASE_URL",)})
    yield app
    topology = bus.topology(app)
    with kombu.Connection(settings["AMQP_URL"]) as conn:
        channel = conn.default_channel
        for queue in (topology.queue, topology.dead_letter_queue):
            queue.bind(channel).delete()
        for exchange in (topology.exchange, topology.dead_letter_queue.exchange):
            exchange.bind(channel).delete()


def events(count, start=0):
    """``count`` distinct valid events for 50 patients."""
    return [
        parse(
            {
                "patient_id": f"MRN-{n % 50:05d}",
                "medication": ("Heparin", "Insulin", "Morphine")[n % 3],
                "action": ("start", "stop")[(n // 3) % 2],
                "event_time": f"2024-11-{1 + n // 86400 % 28:02d}T{n // 3600 % 24:02d}:"
                f"{n // 60 % 60:02d}:{n % 60:02d}+00:00",
                "event_id": f"pharmacy-{n}",
            }
        )
        for n in range(start, start + count)
    ]


def stored_count():
    with database.connection_context():
        return MedicationEvent.select().count()


def waiting(app):
    topology = bus.topology(app)
    with kombu.Connection(app.config["AMQP_URL"]) as conn:
        try:
            declared = topology.queue.bind(conn.default_channel).queue_declare(passive=True)
        except conn.channel_errors:  # not declared yet
            return 0, 0
        return declared.message_count, declared.consumer_count


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {seconds} s")


class ConsumerProcess:
    """``caredeck consume`` in a process of its own, configured from the environment."""

    def __init__(self, settings, log_path, heartbeat):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDECK_")}
        env.update({f"CAREDECK_{name}": str(value) for name, value in settings.items()})
        env["CAREDECK_PLUGINS"] = "medications"
        self.log_path = log_path
        self.heartbeat = heartbeat
        self.log = open(log_path, "w")  # noqa: SIM115 (closed in stop/kill)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "core", "consume", "--heartbeat-file", str(heartbeat)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def probe(self, max_age=30):
        """The container probe: exit status of ``python -m core.heartbeat FILE MAX_AGE``."""
        command = [sys.executable, "-m", "core.heartbeat", str(self.heartbeat), str(max_age)]
        return subprocess.run(command, capture_output=True).returncode

    def output(self):
        return self.log_path.read_text()

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.log.close()

    def stop(self):
        """SIGTERM, as an orchestrator stops it; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        finally:
            self.log.close()


@pytest.fixture
def consumers(settings, tmp_path):
    started = []

    def start():
        name = f"consumer-{len(started)}"
        started.append(
            ConsumerProcess(settings, tmp_path / f"{name}.log", tmp_path / f"{name}.alive")
        )
        return started[-1]

    yield start
    for consumer in started:  # none outlives its test, whatever happened
        if consumer.process.poll() is None:
            consumer.process.kill()
            consumer.process.wait(timeout=10)


def test_events_published_before_any_consumer_ran_are_kept(app):
    with app.app_context():
        assert bus.publish(events(3)) == 3  # the publisher declared the queue
    assert waiting(app) == (3, 0)
    consume_everything(app)
    assert stored_count() == 3


def test_what_cannot_be_processed_is_dead_lettered_with_the_reason(app):
    topology = bus.topology(app)
    good = events(1)[0].received
    with kombu.Connection(app.config["AMQP_URL"]) as conn:
        producer = conn.Producer()
        declare = [topology.exchange, topology.queue, topology.dead_letter_queue]
        for body in (
            good,
            {**good, "action": "pause"},
            {},
            {**good, "event_time": "2024/11/20 11:15:00"},
        ):
            producer.publish(
                body, exchange=topology.exchange, routing_key="medication.x", declare=declare
            )
        producer.publish(
            b"{not json",
            exchange=topology.exchange,
            routing_key="medication.x",
            content_type="application/json",
            content_encoding="utf-8",
        )
        consume_everything(app)
        dead = []
        channel = conn.channel()
        while (
            message := channel.basic_get(topology.dead_letter_queue.name, no_ack=True)
        ) is not None:
            dead.append((message.body, message.headers[REASON_HEADER]))
        channel.close()
    assert stored_count() == 1
    reasons = sorted(reason for _, reason in dead)
    assert reasons[0].startswith("could not decode the message")
    assert reasons[1:] == [
        "invalid medication event: The event is empty: it needs patient_id, medication, "
        "action and event_time.",
        "invalid medication event: action: Unknown action 'pause': use one of start, stop, "
        "cancel_start, cancel_stop.",
        "invalid medication event: event_time: Not an ISO 8601 time: use e.g. "
        "2024-11-20T08:00:00+00:00.",
    ]
    undecodable = next(body for body, reason in dead if reason.startswith("could not"))
    kept = undecodable if isinstance(undecodable, bytes) else undecodable.encode()
    assert kept == b"{not json"  # kept exactly as it came


def test_a_redelivered_message_is_stored_once(app):
    with app.app_context():
        bus.publish(events(1))
    topology = bus.topology(app)
    with kombu.Connection(app.config["AMQP_URL"]) as conn:
        # A consumer takes the message and dies before acknowledging it: RabbitMQ delivers
        # it again, flagged as redelivered.
        channel = conn.channel()
        taken = channel.basic_get(topology.queue.name, no_ack=False)
        assert taken is not None
        channel.close()
    with app.app_context():
        bus.publish(events(1))  # and a producer that retried sends it once more
    consume_everything(app)
    assert stored_count() == 1


def test_a_consumer_killed_mid_batch_loses_nothing_and_duplicates_nothing(app, consumers):
    total = 30_000
    with app.app_context():
        assert bus.publish(events(total)) == total
    first = consumers()
    wait_for(lambda: stored_count() >= 2_000, 60, "the first consumer storing events")
    first.kill()  # SIGKILL: no chance to finish its batch or acknowledge anything
    part = stored_count()
    assert part < total, "the consumer finished before it was killed; publish more events"

    second = consumers()
    wait_for(lambda: stored_count() >= total, 120, f"all {total} events stored")
    wait_for(lambda: waiting(app)[0] == 0, 30, "the queue emptying")
    assert second.stop() == 0
    assert "Stopped: stored" in second.output()
    with database.connection_context():
        assert MedicationEvent.select().count() == total
        ids = {row.event_id for row in MedicationEvent.select(MedicationEvent.event_id)}
        assert ids == {f"pharmacy-{n}" for n in range(total)}


def test_two_consumers_share_one_queue(app, consumers):
    pair = [consumers(), consumers()]
    wait_for(lambda: waiting(app)[1] == 2, 60, "two consumers on the queue")
    wait_for(lambda: [c.probe() for c in pair] == [0, 0], 10, "both heartbeats")
    total = 20_000
    with app.app_context():
        assert bus.publish(events(total)) == total
    wait_for(lambda: stored_count() >= total, 120, f"all {total} events stored")
    wait_for(lambda: waiting(app)[0] == 0, 30, "the queue emptying")
    assert [consumer.stop() for consumer in pair] == [0, 0]  # SIGTERM stops them cleanly
    assert [consumer.probe() for consumer in pair] == [1, 1]  # stopped: no heartbeat
    shares = [
        int(consumer.output().split("Stopped: stored ")[1].split(" ")[0]) for consumer in pair
    ]
    assert sum(shares) == total and all(shares), shares
    assert stored_count() == total


def test_periods_from_a_real_round_trip(app, client_for):
    doctor = client_for("doctor")
    sample = (medications.SAMPLE_EVENTS).read_text().splitlines()
    valid = [json.loads(line) for line in sample[:11]]
    assert doctor.post("/api/medication-events", json=valid).json == {"accepted": 11}
    consume_everything(app)
    body = doctor.get("/api/patients/2506625/medication-periods").json
    assert body["periods"] == [
        {"medication": "Morphine", "start": "2024-11-20T11:00:00+00:00", "end": None}
    ]
