"""The one consumer loop: ack after the handler, dead-letter what cannot be processed."""

import time
import uuid

import kombu
import peewee
import pytest
from helpers import consume_everything, make_plugin

from core.auth.models import User
from core.messaging import REASON_HEADER, Consumer, QueueConsumer, Reject, connection
from core.testing import service_url

handled = []


def parse(body, message):
    if body.get("poison"):
        raise Reject(f"event {body['id']} has no patient")
    return body


def store(bodies):
    if any(body.get("crash") for body in bodies):
        raise KeyError("surprise")
    handled.extend((body["id"], User.select().count()) for body in bodies)  # a DB connection


def topology(suffix: str = ""):
    exchange = kombu.Exchange(f"labs{suffix}", type="topic", durable=True)
    dead = kombu.Exchange(f"labs{suffix}.dead", type="fanout", durable=True)
    queue = kombu.Queue(f"labs.results{suffix}", exchange, routing_key="result.#", durable=True)
    dead_queue = kombu.Queue(f"labs.results.dead{suffix}", dead, durable=True)
    return exchange, queue, dead_queue


def plugin(queue):
    return make_plugin("labs", caredeck_consumers=lambda: [consumer_for(queue)])


def consumer_for(queue):
    dead_queue = topology(queue.name.removeprefix("labs.results"))[2]
    return QueueConsumer(queue, store, parse=parse, dead_letter_queue=dead_queue)


@pytest.fixture(autouse=True)
def _clear():
    handled.clear()


def publish(conn, exchange, queues, *bodies, raw=None):
    with conn.Producer() as producer:
        for body in bodies:
            producer.publish(
                body,
                exchange=exchange,
                routing_key="result.new",
                serializer="json",
                declare=[exchange, *queues],
            )
        if raw is not None:
            producer.publish(
                raw,
                exchange=exchange,
                routing_key="result.new",
                content_type="application/json",
                content_encoding="utf-8",
                declare=[exchange, *queues],
            )


def waiting(conn, queue) -> int:
    return queue.bind(conn.default_channel).queue_declare(passive=True).message_count


def dead_letters(conn, dead_queue):
    """Everything on the dead-letter queue, undecoded: ``[(body bytes, reason)]``."""
    found = []
    channel = conn.channel()
    try:
        for _ in range(50):
            message = channel.basic_get(dead_queue.name, no_ack=True)
            if message is None:
                if len(found) >= 3:
                    break
                time.sleep(0.1)  # RabbitMQ may need a moment to route the last one
                continue
            found.append((message.body, message.headers.get(REASON_HEADER)))
    finally:
        channel.close()
    return found


def exercise(app, conn, suffix=""):
    exchange, queue, dead_queue = topology(suffix)
    publish(  # the dead-letter queue is not declared here: the consumer loop declares it
        conn,
        exchange,
        [queue],
        {"id": 1},
        {"id": 2, "poison": True},
        {"id": 3, "crash": True},
        raw=b"{not json",
    )
    consume_everything(app)
    assert handled == [(1, 0)]
    assert waiting(conn, queue) == 0  # every message settled: none back from the closed channel
    dead = dead_letters(conn, dead_queue)
    assert len(dead) == 3
    reasons = dict((reason.split(":")[0], body) for body, reason in dead)
    assert set(reasons) == {
        "event 2 has no patient",
        "handler error",
        "could not decode the message",
    }
    kept = reasons["could not decode the message"]
    assert (kept if isinstance(kept, bytes) else kept.encode()) == b"{not json"  # as it came
    assert {reason for _, reason in dead} >= {"handler error: KeyError: 'surprise'"}


def test_the_core_consumer_serves_plugin_queues_on_the_memory_bus(make_app):
    _, queue, _ = topology()
    app = make_app(plugins={"labs": plugin(queue)})
    assert [c.queue.name for c in app.extensions["caredeck"].consumers] == ["labs.results"]
    with connection(app) as conn:
        exercise(app, conn)


def test_the_embedded_filesystem_bus_works_across_connections(make_app):
    # Kombu keeps declared exchanges in process-wide state, so each test's folder gets
    # names of its own.
    exchange, queue, dead_queue = topology(f".{uuid.uuid4().hex[:8]}")
    app = make_app(plugins={"labs": plugin(queue)}, AMQP_URL="filesystem://")
    with connection(app) as publisher_side:
        publish(publisher_side, exchange, [queue, dead_queue], {"id": 7})
        consume_everything(app)  # on a connection of its own, as a consumer process has
    assert handled == [(7, 0)]


@pytest.mark.integration
def test_dead_lettering_against_a_real_rabbitmq(make_app):
    url = service_url("amqp")
    suffix = f".test-{uuid.uuid4().hex[:8]}"
    _, queue, _ = topology(suffix)
    app = make_app(plugins={"labs": plugin(queue)}, AMQP_URL=url)
    with connection(app) as conn:
        try:
            exercise(app, conn, suffix)
        finally:
            exchange, queue, dead_queue = topology(suffix)
            channel = conn.default_channel
            for q in (queue, dead_queue):
                q.bind(channel).delete()
            for e in (exchange, dead_queue.exchange):
                e.bind(channel).delete()


@pytest.mark.parametrize(
    "outage",
    [
        peewee.OperationalError("server closed the connection unexpectedly"),
        peewee.ProgrammingError('relation "labs_results" does not exist'),  # not migrated yet
        peewee.InternalError("cannot execute INSERT in a read-only transaction"),  # failover
    ],
    ids=["unreachable", "not-migrated", "read-only"],
)
def test_a_database_outage_requeues_the_batch_instead_of_losing_it(make_app, monkeypatch, outage):
    monkeypatch.setattr("core.messaging.OUTAGE_BACKOFF_SECONDS", 0)
    outages = [outage]

    def store_after_the_outage(bodies):
        if outages:
            raise outages.pop()
        store(bodies)

    exchange, queue, dead_queue = topology(f".{uuid.uuid4().hex[:8]}")
    entry = QueueConsumer(queue, store_after_the_outage, parse=parse, dead_letter_queue=dead_queue)
    app = make_app(plugins={"labs": make_plugin("labs", caredeck_consumers=lambda: [entry])})
    with connection(app) as conn:
        publish(conn, exchange, [queue], {"id": 1}, {"id": 2})
        consumer = Consumer(app, conn, [entry])
        deadline = time.monotonic() + 10
        with consumer.consumer_context() as (bus, _, _):
            while sorted(handled) != [(1, 0), (2, 0)] and time.monotonic() < deadline:
                try:
                    bus.drain_events(timeout=0.2)
                except TimeoutError:
                    consumer.flush(force=True)
    assert sorted(handled) == [(1, 0), (2, 0)]  # delivered again after the outage, once each
    assert outages == [] and consumer.stored == 2 and consumer.dead_lettered == 0


@pytest.mark.integration
def test_one_queues_acknowledgement_never_settles_another_queues_held_batch(make_app, monkeypatch):
    """A batch is acknowledged with one ``multiple`` ack only when nothing unsettled came
    before it on the channel: here a held batch of one queue came first, and must still be
    redelivered after the database fails it."""
    monkeypatch.setattr("core.messaging.OUTAGE_BACKOFF_SECONDS", 0)
    outages = [peewee.OperationalError("server closed the connection unexpectedly")]

    def store_after_the_outage(bodies):
        if outages:
            raise outages.pop()
        store(bodies)

    held_exchange, held, _ = topology(f".held-{uuid.uuid4().hex[:8]}")
    quick_exchange, quick, _ = topology(f".quick-{uuid.uuid4().hex[:8]}")
    # One queue's batch waits (a minute, or a forced flush); the other stores each message.
    waits = QueueConsumer(held, store_after_the_outage, batch_size=100, max_wait_seconds=60)
    stores_at_once = QueueConsumer(quick, store, batch_size=1)
    app = make_app(
        plugins={"labs": make_plugin("labs", caredeck_consumers=lambda: [waits, stores_at_once])},
        AMQP_URL=service_url("amqp"),
    )

    def drain_until(done, consumer, bus):
        deadline = time.monotonic() + 10
        while not done() and time.monotonic() < deadline:
            try:
                bus.drain_events(timeout=0.2)
            except TimeoutError:
                pass
        assert done()

    with connection(app) as conn:
        try:
            publish(conn, held_exchange, [held], {"id": 1}, {"id": 2})
            consumer = Consumer(app, conn, [waits, stores_at_once])
            with consumer.consumer_context() as (bus, _, _):
                assert consumer.acks_many  # RabbitMQ honours "multiple"
                drain_until(lambda: len(consumer.batches[id(waits)].entries) == 2, consumer, bus)
                publish(conn, quick_exchange, [quick], {"id": 3}, {"id": 4})
                drain_until(lambda: len(handled) == 2, consumer, bus)  # 3 and 4, acknowledged
                consumer.flush(force=True)  # the held batch meets the outage: requeued
                drain_until(lambda: len(handled) == 4 or consumer.flush(force=True), consumer, bus)
            assert sorted(id_ for id_, _ in handled) == [1, 2, 3, 4]
            assert waiting(conn, held) == 0 and waiting(conn, quick) == 0
        finally:
            channel = conn.default_channel
            for queue, exchange in ((held, held_exchange), (quick, quick_exchange)):
                queue.bind(channel).delete()
                exchange.bind(channel).delete()
