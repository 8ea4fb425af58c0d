"""The one Kombu consumer loop that serves every plugin's queues, and the bus connection.

Plugins contribute :class:`QueueConsumer` entries through the ``caredeck_consumers`` hook.
The loop gives each handler an app context and a database connection, acknowledges a
message only after the handler returned (so nothing is acknowledged before its commit),
and never acknowledges what it could not process: a message that fails to decode, or whose
handler raises :class:`Reject`, is dead-lettered with the reason in a header.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kombu
import peewee
from kombu.mixins import ConsumerMixin

from core.db import database

log = logging.getLogger("caredeck.messaging")

REASON_HEADER = "x-caredeck-reason"
# How long to wait before redelivering a message whose handler hit a database outage.
OUTAGE_BACKOFF_SECONDS = 2.0


class Reject(Exception):
    """Raised by a handler for a message that can never be processed (dead-letter it)."""


@dataclass(frozen=True)
class QueueConsumer:
    """A queue and the function that handles each of its messages.

    ``handle(body, message)`` receives the decoded body and the Kombu message; it must not
    ack or reject (the loop does). Messages that cannot be processed go to
    ``dead_letter_queue`` (declared by the loop, with its exchange, before consuming), with
    the reason in the ``x-caredeck-reason`` header. Without one they are rejected, and the
    broker drops them unless the queue's own ``x-dead-letter-exchange`` argument keeps them.
    """

    queue: kombu.Queue
    handle: Callable[[Any, kombu.Message], None]
    dead_letter_queue: kombu.Queue | None = None
    prefetch_count: int = 100


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


class Consumer(ConsumerMixin):
    """Consumes every registered queue on one connection."""

    def __init__(self, app, conn: kombu.Connection, consumers: Iterable[QueueConsumer]) -> None:
        self.app = app
        self.connection = conn
        self.consumers = list(consumers)

    def get_consumers(self, Consumer, channel):  # noqa: N803 (ConsumerMixin's signature)
        for entry in self.consumers:
            if entry.dead_letter_queue is not None:
                entry.dead_letter_queue.bind(channel).declare()
        return [
            Consumer(
                queues=[entry.queue],
                callbacks=[
                    lambda body, message, entry=entry: self.on_message(entry, body, message)
                ],
                prefetch_count=entry.prefetch_count,
                accept=["json"],
                # Kombu's default acknowledges (loses) a message it cannot decode.
                on_decode_error=lambda message, error, entry=entry: self.dead_letter(
                    entry, message, f"could not decode the message: {error}"
                ),
            )
            for entry in self.consumers
        ]

    def on_message(self, entry: QueueConsumer, body: Any, message: kombu.Message) -> None:
        try:
            with self.app.app_context(), database.connection_context():
                entry.handle(body, message)
        except Reject as reason:
            self.dead_letter(entry, message, str(reason))
        except (peewee.OperationalError, peewee.InterfaceError) as error:
            # The database is unreachable: the message is fine, so keep it and retry.
            log.error("database unavailable, requeueing message: %s", error)
            time.sleep(OUTAGE_BACKOFF_SECONDS)
            message.requeue()
        except Exception as error:
            log.exception("handler for queue %s failed", entry.queue.name)
            self.dead_letter(entry, message, f"handler error: {type(error).__name__}: {error}")
        else:
            message.ack()

    def dead_letter(self, entry: QueueConsumer, message: kombu.Message, reason: str) -> None:
        """Move ``message`` to its queue's dead-letter exchange with ``reason`` in a header."""
        log.warning("dead-lettering a message from queue %s: %s", entry.queue.name, reason)
        target = entry.dead_letter_queue
        if target is None:
            message.reject(requeue=False)
            return
        # Republishing (rather than reject) is how the reason travels with the message:
        # RabbitMQ's own dead-lettering adds no header of ours.
        kombu.Producer(message.channel).publish(
            message.body,
            exchange=target.exchange,
            routing_key=target.routing_key or message.delivery_info.get("routing_key", ""),
            headers={**(message.headers or {}), REASON_HEADER: reason[:1000]},
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=2,
        )
        message.ack()


def start_embedded_consumer(app, consumers: list[QueueConsumer]) -> Consumer | None:
    """Run the consumer loop in a daemon thread (embedded bus)."""
    if not consumers:
        return None
    consumer = Consumer(app, connection(app), consumers)
    thread = threading.Thread(target=consumer.run, name="caredeck-consumer", daemon=True)
    thread.start()
    return consumer
