"""Dramatiq jobs: how plugins declare actors, and how the core binds and runs them.

A plugin declares an actor with :func:`actor` and returns it from the ``caredeck_actors``
hook. Declaring binds nothing: the app factory creates the app's broker first and then binds
every declared actor to it, which closes Dramatiq's classic trap of an actor imported before
``set_broker()`` silently talking to a default RabbitMQ on 127.0.0.1.

Actors take small JSON arguments (ids, not objects) and must be safe to run twice: brokers
deliver at least once and a worker restart re-runs what was in flight.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import current_app


@dataclass(frozen=True)
class Job:
    """An actor declaration: the function and the options the core binds it with."""

    fn: Callable[..., Any]
    name: str
    time_limit: datetime.timedelta
    max_retries: int
    queue_name: str = "default"
    options: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function directly, in this process (tests, command-line tools)."""
        return self.fn(*args, **kwargs)

    def send(self, *args: Any, **kwargs: Any):
        """Enqueue a run on the current app's broker; returns the Dramatiq message."""
        return self.bound().send(*args, **kwargs)

    def send_with_options(self, *, args=(), kwargs=None, delay=None, **options: Any):
        return self.bound().send_with_options(args=args, kwargs=kwargs, delay=delay, **options)

    def bound(self):
        """The Dramatiq actor this job is bound to in the current app."""
        return current_app.extensions["caredeck"].jobs.actors[self.name]


def actor(
    name: str,
    *,
    time_limit: datetime.timedelta,
    max_retries: int,
    queue_name: str = "default",
    **options: Any,
) -> Callable[[Callable[..., Any]], Job]:
    """Declare an actor; ``name`` is the full name, ``<plugin>.<name>`` (the loader checks it).

    ``time_limit`` and ``max_retries`` are required: Dramatiq's defaults (10 minutes,
    20 retries with back-off) are wrong for most jobs, so each job states its own. Other
    keyword arguments are Dramatiq actor options (``min_backoff``, ``retry_when``, ...).
    """
    if time_limit <= datetime.timedelta(0):
        raise ValueError(f"actor {name!r}: time_limit must be positive")
    if max_retries < 0:
        raise ValueError(f"actor {name!r}: max_retries cannot be negative")

    def declare(fn: Callable[..., Any]) -> Job:
        return Job(fn, name, time_limit, max_retries, queue_name, dict(options))

    return declare
