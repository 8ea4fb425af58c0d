"""The app's Dramatiq broker, its bound actors, and the worker that runs them."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from core.db import database
from jobs import Job

log = logging.getLogger("caredeck.jobs")


def make_broker(url: str) -> dramatiq.Broker:
    """``stub://`` is the embedded in-process broker; ``redis://`` is production."""
    if url.startswith("stub:"):
        return StubBroker()
    return RedisBroker(url=url, socket_connect_timeout=5)


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

    def check(self) -> str:
        """Readiness: ``ok`` or the reason the broker cannot be reached."""
        if isinstance(self.broker, RedisBroker):
            self.broker.client.ping()
        return "ok"
