"""The app's Dramatiq broker, its bound actors, and the worker that runs them."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name, xq_name
from dramatiq.middleware import Retries

from core.db import database
from core.metrics import JOB_DURATION
from jobs import Job

log = logging.getLogger("caredeck.jobs")


def make_broker(url: str) -> dramatiq.Broker:
    """``stub://`` is the embedded in-process broker; ``redis://`` is production."""
    if url.startswith("stub:"):
        broker = StubBroker()
    else:
        broker = RedisBroker(url=url, socket_connect_timeout=5)
    # Before Retries in the list, so that its after-hooks run after Retries' (Dramatiq runs
    # them in reverse order) and see whether the failed message is retried or given up.
    broker.add_middleware(JobDurations(), before=Retries)
    return broker


class JobDurations(dramatiq.Middleware):
    """Records how long each actor ran and how it ended: ``success``, ``retry`` (it raised
    and Retries enqueued it again) or ``failure`` (it raised and will not run again)."""

    def __init__(self) -> None:
        self.started = threading.local()  # a worker thread runs one message at a time

    def before_process_message(self, broker, message) -> None:
        self.started.at = time.perf_counter()

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        started = getattr(self.started, "at", None)
        self.started.at = None
        if started is None:
            return
        if exception is None:
            outcome = "success"
        else:
            outcome = "failure" if message.failed else "retry"
        JOB_DURATION.labels(message.actor_name, message.queue_name, outcome).observe(
            time.perf_counter() - started
        )

    def after_skip_message(self, broker, message) -> None:
        self.started.at = None  # skipped before it ran: nothing to record


class JobQueue:
    """The app's broker and the actors bound to it."""

    def __init__(self, app, url: str) -> None:
        self.app = app
        self.url = url
        self.broker = make_broker(url)
        self.actors: dict[str, dramatiq.Actor] = {}
        self._worker: dramatiq.Worker | None = None
        # Code that uses dramatiq.actor directly must find this broker, not a default one.
        dramatiq.set_broker(self.broker)

    @property
    def embedded(self) -> bool:
        return isinstance(self.broker, StubBroker)

    def bind(self, job: Job) -> dramatiq.Actor:
        """Create the Dramatiq actor for ``job`` on this app's broker."""
        app = self.app

        @functools.wraps(job.fn)
        def run(*args, **kwargs):
            # A job gets what a request gets: the app context and its own connection.
            with app.app_context(), database.connection_context():
                return job.fn(*args, **kwargs)

        options = {
            "time_limit": int(job.time_limit.total_seconds() * 1000),
            "max_retries": job.max_retries,
            **job.options,
        }
        bound = dramatiq.Actor(
            run,
            broker=self.broker,
            actor_name=job.name,
            queue_name=job.queue_name,
            priority=0,
            options=options,
        )
        self.actors[job.name] = bound
        return bound

    def worker(self, threads: int = 2, queues: Iterable[str] | None = None) -> dramatiq.Worker:
        return dramatiq.Worker(
            self.broker, queues=set(queues) if queues else None, worker_threads=threads
        )

    def start_embedded_worker(self, threads: int = 2) -> None:
        """Run jobs in this process (embedded ``stub://`` broker)."""
        if self._worker is None:
            self._worker = self.worker(threads)
            self._worker.start()
            log.info("in-process job worker started with %d threads", threads)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        self.broker.close()

    def depths(self, timeout: float) -> dict[str, int]:
        """Messages not yet done with (waiting or running) in each declared queue, its
        delay queue (``.DQ``) and its dead-letter queue (``.XQ``), by Dramatiq's names.
        Asks Redis with its own connection, giving up after ``timeout`` seconds."""
        queues = sorted(q for q in self.broker.get_declared_queues() if q != dq_name(q))
        if isinstance(self.broker, StubBroker):
            found = {name: self.broker.queues[name].qsize() for name in self.broker.queues}
            for name in queues:
                dead = self.broker.dead_letters_by_queue
                found[xq_name(name)] = len(dead.get(name, ())) + len(dead.get(dq_name(name), ()))
            return found
        client = redis.Redis.from_url(
            self.url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        prefix = self.broker.namespace + ":"
        try:
            pipe = client.pipeline(transaction=False)
            pipe.ping()  # so that Redis is asked even when no actor declares a queue
            for name in queues:
                # Layout: dramatiq/brokers/redis/dispatch.lua. A message stays in its
                # queue's ".msgs" hash from enqueue until acknowledged.
                pipe.hlen(f"{prefix}{name}.msgs")
                pipe.hlen(f"{prefix}{dq_name(name)}.msgs")
                pipe.zcard(f"{prefix}{xq_name(name)}")
            counts = iter(pipe.execute()[1:])
        finally:
            client.close()
        return {
            key: next(counts) for name in queues for key in (name, dq_name(name), xq_name(name))
        }

    def check(self) -> str:
        """Readiness: ``ok`` or the reason the broker cannot be reached."""
        if isinstance(self.broker, RedisBroker):
            self.broker.client.ping()
        return "ok"
