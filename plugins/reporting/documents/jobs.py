"""The documents store's Dramatiq actors: file removals that could not be done at once."""

from __future__ import annotations

import datetime

import jobs
from plugins.reporting.documents import records


@jobs.actor(
    "reporting.remove_document_file",
    time_limit=datetime.timedelta(minutes=2),
    # About 1 s, 2 s, 4 s, ... capped at 30 min: roughly 6 hours of retries in all; after
    # that the removal stays pending and the sweep keeps trying.
    max_retries=16,
    min_backoff=1_000,
    max_backoff=30 * 60 * 1_000,
)
def remove_document_file(removal_id: int) -> bool:
    """Remove one pending file (``DocumentFileRemoval`` id); a failure raises, so Dramatiq
    retries it. Safe to run twice: a removal already done is a no-op."""
    return records.remove_file(removal_id)


@jobs.actor(
    "reporting.sweep_document_files",
    time_limit=datetime.timedelta(minutes=30),
    max_retries=0,  # the next scheduled sweep is the retry
)
def sweep_document_files() -> dict[str, int]:
    """Carry out every file removal still pending past its time (enqueued by the schedule
    ``reporting.sweep_document_files``, :func:`enqueue_sweep`)."""
    return records.sweep()


def enqueue_sweep() -> bool:
    """The scheduler's task: enqueue the sweep when a removal is due; ``True`` if it did.

    The scheduler runs its tasks one after another in one thread, so it only does cheap
    work itself (one indexed query); the sweep, which calls the store for each file, runs
    on a worker. Two schedulers may enqueue two sweeps: running it twice is harmless."""
    if not records.pending_removals(limit=1).exists():
        return False
    sweep_document_files.send()
    return True


ACTORS = [remove_document_file, sweep_document_files]
