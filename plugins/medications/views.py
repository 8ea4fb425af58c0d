"""The chart's "Medications" section: a timeline with one row per medication."""

from __future__ import annotations

import dataclasses
import datetime

from flask import Blueprint, render_template

from core.db import utcnow
from plugins.medications.history import medication_history
from plugins.medications.periods import Period

# No routes of its own: it holds the section's template.
pages = Blueprint("medications_pages", __name__, template_folder="templates")
# The shortest bar drawn (percent of the width), so that a zero-length period stays visible.
MIN_BAR_PERCENT = 0.6


@dataclasses.dataclass(frozen=True)
class Bar:
    period: Period
    left: float  # percent of the timeline's width
    width: float


def timeline(periods: list[Period], now: datetime.datetime) -> tuple[dict, tuple]:
    """Bars per medication, placed between the first start and now (or the last end)."""
    if not periods:
        return {}, (now, now)
    first = min(period.start for period in periods)
    last = max([now, *(period.end or now for period in periods)])
    span = max((last - first).total_seconds(), 1.0)
    rows: dict[str, list[Bar]] = {}
    for period in periods:
        left = (period.start - first).total_seconds() / span * 100
        width = ((period.end or now) - period.start).total_seconds() / span * 100
        width = max(width, MIN_BAR_PERCENT)
        left = min(left, 100 - width)
        rows.setdefault(period.medication, []).append(Bar(period, round(left, 3), round(width, 3)))
    return dict(sorted(rows.items())), (first, last)


def chart_section(mrn: str) -> str:
    periods, anomalies = medication_history(mrn)
    rows, (first, last) = timeline(periods, utcnow())
    return render_template(
        "medications/chart_section.html",
        rows=rows,
        first=first,
        last=last,
        periods=periods,
        anomalies=anomalies,
    )
