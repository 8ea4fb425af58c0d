"""Medication periods derived from a patient's events (the rules in docs/medications.md).

Pure functions of the events: arrival order never matters, so the answer is the same
whichever order the messages came in, and the same when computed again.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections import defaultdict
from collections.abc import Iterable

# At equal times a cancel comes after the start or stop it may void ("at or before").
_CANCELS_LAST = {"start": 0, "stop": 0, "cancel_start": 1, "cancel_stop": 1}


@dataclasses.dataclass(frozen=True)
class Period:
    medication: str
    start: datetime.datetime
    end: datetime.datetime | None  # None: still running


@dataclasses.dataclass(frozen=True)
class Anomaly:
    type: str  # unmatched_cancel, duplicate_start or stop_without_start
    medication: str
    event_time: datetime.datetime
    action: str
    detail: str


def derive(
    events: Iterable[tuple[str, str, datetime.datetime]],
) -> tuple[list[Period], list[Anomaly]]:
    """Periods (sorted by start) and anomalies (by time) from ``(medication, action, time)``."""
    by_medication: dict[str, list[tuple[datetime.datetime, int, str]]] = defaultdict(list)
    for medication, action, moment in events:
        by_medication[medication].append((moment, _CANCELS_LAST[action], action))
    periods: list[Period] = []
    anomalies: list[Anomaly] = []
    for medication, timeline in by_medication.items():
        timeline.sort()  # by time, cancels after the starts and stops at the same time
        kept = _apply_cancels(medication, timeline, anomalies)
        periods.extend(_pair(medication, kept, anomalies))
    periods.sort(key=lambda period: (period.start, period.medication))
    anomalies.sort(key=lambda anomaly: (anomaly.event_time, anomaly.medication))
    return periods, anomalies


def _apply_cancels(
    medication: str,
    timeline: list[tuple[datetime.datetime, int, str]],
    anomalies: list[Anomaly],
) -> list[tuple[datetime.datetime, str]]:
    """Rule 1: each cancel voids the latest not-yet-voided start (or stop) at or before it.

    ``timeline`` is in time order, so the starts and stops seen so far are exactly those at
    or before the cancel, and the latest live one is on top of its stack.
    """
    live: dict[str, list[int]] = {"start": [], "stop": []}
    voided: set[int] = set()
    for index, (moment, _, action) in enumerate(timeline):
        if action in live:
            live[action].append(index)
            continue
        target = action.removeprefix("cancel_")
        if live[target]:
            voided.add(live[target].pop())
        else:
            anomalies.append(
                Anomaly(
                    "unmatched_cancel",
                    medication,
                    moment,
                    action,
                    f"A {action} with no {target} at or before it to cancel.",
                )
            )
    return [
        (moment, action)
        for index, (moment, _, action) in enumerate(timeline)
        if action in live and index not in voided
    ]


def _pair(
    medication: str,
    kept: list[tuple[datetime.datetime, str]],
    anomalies: list[Anomaly],
) -> list[Period]:
    """Rules 2 to 4: pair the remaining starts and stops in time order.

    Events at one instant are taken so that they pair up: while a period is open a stop
    closes it before a start opens the next; while none is open a start opens one, and a
    stop at the same instant closes it (a zero-length period).
    """
    periods = []
    opened: datetime.datetime | None = None
    index, count = 0, len(kept)
    while index < count:
        moment = kept[index][0]
        after = index + 1
        while after < count and kept[after][0] == moment:
            after += 1
        if after == index + 1:  # one event at this instant, the usual case
            starts = int(kept[index][1] == "start")
        else:
            starts = sum(1 for _, action in kept[index:after] if action == "start")
        stops = after - index - starts
        index = after
        while starts or stops:
            if opened is not None and stops:
                periods.append(Period(medication, opened, moment))
                opened, stops = None, stops - 1
            elif opened is None and starts:
                opened, starts = moment, starts - 1
            elif opened is not None:  # a start while a period is open
                anomalies.append(
                    Anomaly(
                        "duplicate_start",
                        medication,
                        moment,
                        "start",
                        "A start while a period was already open; the period keeps its "
                        "first start.",
                    )
                )
                starts -= 1
            else:  # a stop with nothing open
                anomalies.append(
                    Anomaly(
                        "stop_without_start",
                        medication,
                        moment,
                        "stop",
                        "A stop with no period open.",
                    )
                )
                stops -= 1
    if opened is not None:
        periods.append(Period(medication, opened, None))
    return periods
