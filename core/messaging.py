"""The one Kombu consumer loop that serves every plugin's queues, and the bus connection.

Plugins contribute :class:`QueueConsumer` entries through the ``caredeck_consumers`` hook.
The loop parses each message on its own, stores the parsed messages in batches (one
database transaction per batch), and acknowledges a message only after its batch
committed. It never acknowledges what it could not process: a message that fails to decode,
or that the plugin rejects, is dead-lettered with the reason in a header.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu
import kombu.exceptions
import kombu.transport.virtual
import peewee
from kombu.mixins import ConsumerMixin

from core.db import database
from core.heartbeat import Heartbeat
from core.metrics import CONSUMER_MESSAGES

log = logging.getLogger("caredeck.messaging")

REASON_HEADER = "x-caredeck-reason"
# How long to wait before redelivering messages whose batch hit a database outage.
OUTAGE_BACKOFF_SECONDS = 2.0
# How often the loop wakes while the queues are quiet, to store a partly filled batch.
IDLE_WAKE_SECONDS = 0.05


class Reject(Exception):
    """Raised for a message that can never be processed (dead-letter it)."""


def _identity(body: Any, message: kombu.Message) -> Any:
    return body


@dataclass(frozen=True)
class QueueConsumer:
    """A queue, how to read one of its messages, and how to store a batch of them.

    ``parse(body, message)`` turns one decoded body into the item to store (default: the body
    itself); it runs without a database connection and raises :class:`Reject` for a message
    that can never be processed. ``store(items)`` saves a list of parsed items; the loop runs
    it inside one database transaction and acknowledges the batch's messages only after the
    commit, so ``store`` must be idempotent (a message can be delivered again after a crash).
    A batch is stored when it holds ``batch_size`` messages or has waited ``max_wait_seconds``.

    Messages that cannot be processed go to ``dead_letter_queue`` (declared by the loop, with
    its exchange, before consuming), with the reason in the ``x-caredeck-reason`` header.
    Without one they are rejected, and the broker drops them unless the queue's own
    ``x-dead-letter-exchange`` argument keeps them.
    """

    queue: kombu.Queue
    store: Callable[[list[Any]], None]
    parse: Callable[[Any, kombu.Message], Any] = _identity
    dead_letter_queue: kombu.Queue | None = None
    batch_size: int = 100
    max_wait_seconds: float = 0.1
    # Unacknowledged messages the broker may send ahead; by default two batches, so that
    # the next batch arrives while this one commits.
    prefetch_count: int | None = None

    @property
    def prefetch(self) -> int:
        return self.prefetch_count or 2 * self.batch_size


def connection(app) -> kombu.Connection:
    """A (lazy) connection to the app's message bus."""
    url = app.config["AMQP_URL"]
    options: dict[str, Any] = {}
    if url.startswith("filesystem:"):
        # The embedded bus: one folder that publishers and consumers on this machine share.
        folder = Path(app.config["INSTANCE_PATH"]) / "bus"
        for sub in ("queues", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(folder / "queues"),
            "data_folder_out": str(folder / "queues"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    return kombu.Connection(url, transport_options=options, connect_timeout=5, heartbeat=30)


# A lost connection while publishing is retried this many times, waiting 0.5 s, then 1 s,
# 2 s ... (at most 5 s) between attempts: about half a minute in all.
PUBLISH_RETRIES = 8
# Messages published before waiting for the broker's confirmations. Waiting for each one
# alone costs a round trip per message (about 1,000 messages/s on the development machine).
CONFIRM_WINDOW = 500
CONFIRM_TIMEOUT_SECONDS = 30.0


class PublishError(Exception):
    """Publishing failed: the bus stayed unreachable, refused the topology, or did not confirm.

    Messages confirmed before the failure stay published (``published`` counts them).
    """

    def __init__(self, message: str, published: int) -> None:
        super().__init__(message)
        self.published = published


class _Unconfirmed(Exception):
    """The broker refused (nacked) a message or did not confirm it in time."""


class _ConfirmingChannel:
    """A channel in RabbitMQ's confirm mode that knows which messages await confirmation."""

    def __init__(self, conn: kombu.Connection) -> None:
        self.conn = conn
        self.channel = conn.channel()
        self.confirming = hasattr(self.channel, "confirm_select")  # AMQP, not embedded buses
        self.next_tag = 1  # delivery tags count the channel's publishes from 1
        self.waiting: set[int] = set()
        self.refused = False
        if self.confirming:
            self.channel.events["basic_ack"].add(self._ack)
            self.channel.events["basic_nack"].add(self._nack)
            self.channel.confirm_select()

    def _settle(self, delivery_tag: int, multiple: bool) -> None:
        # Confirmations may come out of order, and one may settle every tag up to its own.
        if multiple:
            self.waiting = {tag for tag in self.waiting if tag > delivery_tag}
        else:
            self.waiting.discard(delivery_tag)

    def _ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple)

    def _nack(self, delivery_tag: int, multiple: bool) -> None:
        self.refused = True
        self._settle(delivery_tag, multiple)

    def send(self, window, exchange: kombu.Exchange, declare: Sequence[kombu.Queue]) -> None:
        """Publish ``window`` as JSON and return once the broker confirmed all of it."""
        for routing_key, body in window:
            self.publish(
                body,
                serializer="json",
                exchange=exchange,
                routing_key=routing_key,
                declare=[exchange, *declare],
            )
        self.wait()

    def publish(self, body: Any, **options: Any) -> None:
        kombu.Producer(self.channel).publish(body, delivery_mode=2, **options)
        if self.confirming:
            self.waiting.add(self.next_tag)
            self.next_tag += 1

    def wait(self) -> None:
        """Return once every message published so far is confirmed."""
        deadline = time.monotonic() + CONFIRM_TIMEOUT_SECONDS
        while self.waiting and not self.refused:
            if time.monotonic() > deadline:
                raise _Unconfirmed(f"the broker did not confirm within {CONFIRM_TIMEOUT_SECONDS} s")
            try:
                self.conn.drain_events(timeout=1)
            except TimeoutError:  # a slow confirm (a busy disk) is not a lost connection
                self.conn.heartbeat_check()
        if self.refused:
            raise _Unconfirmed("the broker refused a message (nack)")


def publish(
    app,
    messages: Iterable[tuple[str, Any]],
    *,
    exchange: kombu.Exchange,
    declare: Sequence[kombu.Queue] = (),
    max_retries: int | None = None,
) -> int:
    """Publish ``(routing_key, body)`` pairs as persistent JSON messages, in order.

    Returns how many were published. On RabbitMQ the broker confirms every message before
    it is counted (publisher confirms, awaited for a window of messages at a time).
    ``declare`` (queues with their exchanges and bindings) is declared first, so nothing is
    dropped as unroutable before a consumer has ever run. A lost connection is re-established
    with backoff and the unconfirmed window published again, so consumers must tolerate a
    duplicate. Raises :class:`PublishError` when it gives up.
    """
    if max_retries is None:
        max_retries = PUBLISH_RETRIES
    confirmed = 0
    messages = iter(messages)
    with connection(app) as conn:
        lost = (OSError, kombu.exceptions.OperationalError, *conn.recoverable_connection_errors)
        channel = None
        while window := list(itertools.islice(messages, CONFIRM_WINDOW)):
            for attempt in itertools.count():
                try:
                    channel = channel or _ConfirmingChannel(conn)
                    channel.send(window, exchange, declare)
                    break
                except lost as error:
                    if attempt >= max_retries:
                        raise PublishError(
                            f"the message bus is unreachable ({error})", confirmed
                        ) from error
                    wait = min(0.5 * 2**attempt, 5.0)
                    log.warning("bus unavailable (%s); publishing again in %.1f s", error, wait)
                    time.sleep(wait)
                    conn.collect()  # drop the dead connection; the next channel reconnects
                    channel = None
                except (_Unconfirmed, *conn.channel_errors) as error:
                    # Not a lost connection, so publishing again would not help: a refused
                    # message, or a topology that differs from the broker's (for instance a
                    # queue declared earlier with other arguments).
                    raise PublishError(f"the message bus refused: {error}", confirmed) from error
            confirmed += len(window)
    return confirmed


@dataclass
class _Batch:
    """Parsed messages waiting to be stored: ``(message, item)`` pairs."""

    entries: list[tuple[kombu.Message, Any]] = field(default_factory=list)
    started: float = 0.0

    def add(self, message: kombu.Message, item: Any) -> None:
        if not self.entries:
            self.started = time.monotonic()
        self.entries.append((message, item))

    def take(self) -> list[tuple[kombu.Message, Any]]:
        entries, self.entries = self.entries, []
        return entries


class Consumer(ConsumerMixin):
    """Consumes every registered queue on one connection."""

    def __init__(
        self,
        app,
        conn: kombu.Connection,
        consumers: Iterable[QueueConsumer],
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.app = app
        self.heartbeat = heartbeat or Heartbeat(None)
        self.connection = conn
        self.consumers = list(consumers)
        self.batches = {id(entry): _Batch() for entry in self.consumers}
        # Messages acknowledged after their batch committed, and messages dead-lettered.
        self.stored = 0
        self.dead_lettered = 0
        # Dead letters go out on a connection of their own, in confirm mode: the original is
        # acknowledged only once the broker has the copy.
        self.dead_letters: _ConfirmingChannel | None = None
        # Delivery tags of the messages received on the current channel and not yet
        # acknowledged or handed back.
        self.unsettled: set[int] = set()
        self.acks_many = False  # whether the channel honours basic.ack's ``multiple``

    def run(self, **kwargs) -> None:
        super().run(safety_interval=IDLE_WAKE_SECONDS, **kwargs)

    def get_consumers(self, Consumer, channel):  # noqa: N803 (ConsumerMixin's signature)
        # Kombu's virtual transports (memory, Redis) ignore ``multiple``.
        self.acks_many = not isinstance(channel, kombu.transport.virtual.Channel)
        for entry in self.consumers:
            if entry.dead_letter_queue is not None:
                entry.dead_letter_queue.bind(channel).declare()
        return [
            Consumer(
                queues=[entry.queue],
                callbacks=[
                    lambda body, message, entry=entry: self.on_message(entry, body, message)
                ],
                prefetch_count=entry.prefetch,
                accept=["json"],
                # Kombu's default acknowledges (loses) a message it cannot decode.
                on_decode_error=lambda message, error, entry=entry: self.dead_letter(
                    entry, message, f"could not decode the message: {error}"
                ),
            )
            for entry in self.consumers
        ]

    def on_connection_revived(self) -> None:
        # Messages of an earlier connection can no longer be acknowledged; the broker
        # delivers them again. (Not in on_consume_ready: messages may already have arrived
        # on the new channel while the consumers were being set up.)
        for batch in self.batches.values():
            batch.take()
        self.unsettled.clear()

    def on_consume_ready(self, connection, channel, consumers, **kwargs) -> None:
        self.heartbeat.beat(force=True)

    def on_connection_error(self, exc, interval) -> None:
        self.heartbeat.stop()  # not ready while disconnected
        if self.should_stop:  # stop instead of waiting for the broker to come back
            raise ConnectionAbortedError("stopping while disconnected") from exc
        super().on_connection_error(exc, interval)

    def on_iteration(self) -> None:
        self.flush()
        self.heartbeat.beat()

    def on_consume_end(self, connection, channel) -> None:
        self.flush(force=True)  # stopping cleanly: store what was received, then ack it
        self.heartbeat.stop()
        self._close_dead_letters()

    def on_message(self, entry: QueueConsumer, body: Any, message: kombu.Message) -> None:
        self.unsettled.add(message.delivery_tag)
        try:
            item = entry.parse(body, message)
        except Reject as reason:
            self.dead_letter(entry, message, str(reason))
            return
        except Exception as error:
            log.exception("parsing a message from queue %s failed", entry.queue.name)
            self.dead_letter(entry, message, f"parse error: {type(error).__name__}: {error}")
            return
        batch = self.batches[id(entry)]
        batch.add(message, item)
        if len(batch.entries) >= entry.batch_size:
            self.store(entry, batch.take())

    def flush(self, force: bool = False) -> None:
        """Store every batch that is due (every non-empty one with ``force``)."""
        now = time.monotonic()
        for entry in self.consumers:
            batch = self.batches[id(entry)]
            if batch.entries and (force or now - batch.started >= entry.max_wait_seconds):
                self.store(entry, batch.take())

    def store(self, entry: QueueConsumer, entries: Sequence[tuple[kombu.Message, Any]]) -> None:
        """Store a batch in one transaction, then acknowledge it.

        A batch that fails for a reason other than the database is stored again one message
        at a time, so that only the message at fault is dead-lettered.
        """
        try:
            with self.app.app_context(), database.connection_context():
                with database.atomic():
                    entry.store([item for _, item in entries])
        except Exception as error:
            if _database_at_fault(error):
                # The messages are fine: keep them (unacknowledged) and try again later.
                log.error("database unavailable, requeueing %d message(s): %s", len(entries), error)
                time.sleep(OUTAGE_BACKOFF_SECONDS)
                for message, _ in entries:
                    self.settled(message).requeue()
                return
            if len(entries) > 1:
                for one in entries:
                    self.store(entry, [one])
                return
            reason = f"handler error: {type(error).__name__}: {error}"
            if not isinstance(error, Reject):
                log.exception("storing a message from queue %s failed", entry.queue.name)
            else:
                reason = str(error)
            self.dead_letter(entry, entries[0][0], reason)
        else:
            self.acknowledge([message for message, _ in entries])
            self.stored += len(entries)
            CONSUMER_MESSAGES.labels(entry.queue.name, "stored").inc(len(entries))

    def acknowledge(self, messages: Sequence[kombu.Message]) -> None:
        """Acknowledge ``messages``: with one ``basic.ack`` (``multiple``: every message up to
        the last one's tag) when no other unsettled message came before the last, which
        halves the broker's work per message (bench/RESULTS.md, issue 5); else one each."""
        last = max(messages, key=lambda message: message.delivery_tag)
        tags = {message.delivery_tag for message in messages}
        if self.acks_many and all(
            tag in tags for tag in self.unsettled if tag <= last.delivery_tag
        ):
            last.ack(multiple=True)
            self.unsettled -= tags
        else:
            for message in messages:
                self.settled(message).ack()

    def settled(self, message: kombu.Message) -> kombu.Message:
        """``message``, no longer counted as unsettled: about to be acknowledged, requeued
        or rejected."""
        self.unsettled.discard(message.delivery_tag)
        return message

    def dead_letter(self, entry: QueueConsumer, message: kombu.Message, reason: str) -> None:
        """Move ``message`` to its queue's dead-letter exchange with ``reason`` in a header."""
        log.warning("dead-lettering a message from queue %s: %s", entry.queue.name, reason)
        target = entry.dead_letter_queue
        if target is None:
            self.settled(message).reject(requeue=False)
            self.dead_lettered += 1
            CONSUMER_MESSAGES.labels(entry.queue.name, "dead_lettered").inc()
            return
        # Republishing (rather than reject) is how the reason travels with the message:
        # RabbitMQ's own dead-lettering adds no header of ours.
        try:
            self.dead_letters = self.dead_letters or _ConfirmingChannel(self.connection.clone())
            self.dead_letters.publish(
                message.body,
                exchange=target.exchange,
                routing_key=target.routing_key or message.delivery_info.get("routing_key", ""),
                headers={**(message.headers or {}), REASON_HEADER: reason[:1000]},
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                declare=[target],
            )
            self.dead_letters.wait()
        except Exception as error:
            log.error("could not dead-letter the message (%s); it stays on its queue", error)
            self._close_dead_letters()
            time.sleep(OUTAGE_BACKOFF_SECONDS)
            self.settled(message).requeue()
            return
        self.settled(message).ack()
        self.dead_lettered += 1
        CONSUMER_MESSAGES.labels(entry.queue.name, "dead_lettered").inc()

    def _close_dead_letters(self) -> None:
        if self.dead_letters is not None:
            self.dead_letters.conn.release()
            self.dead_letters = None


def _database_at_fault(error: Exception) -> bool:
    """Whether storing failed because of the database rather than the message: unreachable,
    read-only, a table not migrated yet, no permission. A constraint or a value the column
    cannot hold is the message's fault."""
    if isinstance(error, (peewee.IntegrityError, peewee.DataError)):
        return False
    return isinstance(error, (peewee.DatabaseError, peewee.InterfaceError))


def queue_depths(app, consumers: Iterable[QueueConsumer], timeout: float) -> dict[str, int]:
    """Messages waiting in each consumer's queue and dead-letter queue, by queue name.

    A passive declare asks the broker for a queue's message count without creating it: on
    RabbitMQ the ready messages (not those delivered and awaiting acknowledgement); on the
    embedded buses what this process can see (``memory://``: this process's own queues;
    ``filesystem://``: the files in the folder). A queue not declared yet is left out.
    """
    queues = {}
    for entry in consumers:
        for queue in (entry.queue, entry.dead_letter_queue):
            if queue is not None:
                queues.setdefault(queue.name, queue)
    found: dict[str, int] = {}
    with connection(app).clone(connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        for name, queue in sorted(queues.items()):
            channel = conn.channel()
            try:
                found[name] = queue.bind(channel).queue_declare(passive=True).message_count
            except conn.channel_errors:
                pass  # not declared yet (the broker closed this channel)
            finally:
                channel.close()
    return found


def start_embedded_consumer(app, consumers: list[QueueConsumer]) -> Consumer | None:
    """Run the consumer loop in a daemon thread (embedded bus)."""
    if not consumers:
        return None
    consumer = Consumer(app, connection(app), consumers)
    thread = threading.Thread(target=consumer.run, name="caredeck-consumer", daemon=True)
    thread.start()
    return consumer
