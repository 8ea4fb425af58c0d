"""The scheduler: runs the periodic tasks that plugins register, every so often.

A plugin returns :class:`Schedule` entries from the ``caredeck_schedules`` hook. ``caredeck
scheduler`` runs them in a loop until SIGINT or SIGTERM; with the embedded task queue,
``caredeck serve`` runs the same loop in a thread of the web process.

The scheduler itself keeps no state worth protecting: a task must be safe to run twice and
concurrently, because two schedulers may run at once (two pods during a rolling update, a
second one started by mistake). Tasks make their effects idempotent in the database
(unique rows, conditional updates), never by assuming they are alone.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import plugins
from core.db import database
from core.metrics import SCHEDULED_RUNS

log = logging.getLogger("caredeck.scheduler")


@dataclass(frozen=True)
class Schedule:
    """A periodic task: ``run()`` is called about every ``every``, inside an app context
    with a database connection. ``name`` is ``<plugin>.<name>``."""

    name: str
    every: datetime.timedelta
    run: Callable[[], Any]


def collect(app) -> list[Schedule]:
    """Every enabled plugin's schedules, checked (type, name owned by the plugin, unique)."""
    state = app.extensions["caredeck"]
    found: list[Schedule] = []
    for plugin, items in plugins.call(state.manager, "caredeck_schedules", app=app).items():
        for item in items:
            if not isinstance(item, Schedule):
                raise plugins.PluginError(
                    f"Plugin {plugin!r}: caredeck_schedules must return core.scheduler.Schedule "
                    f"objects, got {item!r}."
                )
            if not item.name.startswith(plugin + ".") or item.every <= datetime.timedelta(0):
                raise plugins.PluginError(
                    f"Plugin {plugin!r}: schedule {item.name!r} must be named "
                    f"'{plugin}.<name>' and run at a positive interval."
                )
            if any(other.name == item.name for other in found):
                raise plugins.PluginError(f"Plugin {plugin!r}: schedule {item.name!r} repeats.")
            found.append(item)
    return found


class Scheduler:
    """Runs ``schedules`` (default: every plugin's) at their intervals until stopped."""

    def __init__(self, app, schedules: list[Schedule] | None = None, *, tick: float = 1.0):
        self.app = app
        self.schedules = collect(app) if schedules is None else list(schedules)
        self.tick = tick
        self._due: dict[str, float] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def run_due(self) -> list[str]:
        """Run each task whose time has come (all of them the first time); their names."""
        ran = []
        for schedule in self.schedules:
            if self._stopping.is_set():
                break
            if self._due.get(schedule.name, 0.0) > time.monotonic():
                continue
            self.run_one(schedule)
            self._due[schedule.name] = time.monotonic() + schedule.every.total_seconds()
            ran.append(schedule.name)
        return ran

    def run_one(self, schedule: Schedule) -> bool:
        """Run one task now; a failure is logged (the next tick tries again), never raised."""
        try:
            with self.app.app_context(), database.connection_context():
                schedule.run()
        except Exception:
            log.exception("scheduled task %s failed; it runs again in %s", *_shown(schedule))
            SCHEDULED_RUNS.labels(schedule.name, "failure").inc()
            return False
        SCHEDULED_RUNS.labels(schedule.name, "success").inc()
        return True

    def run_forever(self) -> None:
        log.info("scheduler running %s", ", ".join(s.name for s in self.schedules) or "nothing")
        while not self._stopping.is_set():
            self.run_due()
            self._stopping.wait(self.tick)
        log.info("scheduler stopped")

    def start(self) -> None:
        """Run in a background thread (embedded: ``caredeck serve``)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.run_forever, name="caredeck-scheduler", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float | None = 30) -> None:
        """Stop after the task running now (if any) returns."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def _shown(schedule: Schedule) -> tuple[str, str]:
    return schedule.name, str(schedule.every)
