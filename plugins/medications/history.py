"""A patient's medication history: the periods and anomalies from their stored events."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator

from core.db import database
from plugins.medications.models import MedicationEvent
from plugins.medications.periods import Anomaly, Period, derive


def medication_history(
    mrn: str,
    medication: str | None = None,
    start: datetime.datetime | None = None,
    end: datetime.datetime | None = None,
) -> tuple[list[Period], list[Anomaly]]:
    """Periods overlapping [``start``, ``end``] and the anomalies inside it.

    The periods are derived from all of the patient's events (a period that began before
    ``start`` is still running at ``start``), then cut down to the window.
    """
    query = MedicationEvent.select(
        MedicationEvent.medication, MedicationEvent.action, MedicationEvent.event_time
    ).where(MedicationEvent.patient_mrn == mrn)
    if medication is not None:
        query = query.where(MedicationEvent.medication == medication)
    # Derived on naive UTC times as stored (fast); only the answer is made aware.
    periods, anomalies = derive(_events(query))
    if start is not None:
        start = _naive_utc(start)
        periods = [p for p in periods if p.end is None or p.end >= start]
        anomalies = [a for a in anomalies if a.event_time >= start]
    if end is not None:
        end = _naive_utc(end)
        periods = [p for p in periods if p.start <= end]
        anomalies = [a for a in anomalies if a.event_time <= end]
    return (
        [
            dataclasses.replace(p, start=_aware(p.start), end=p.end and _aware(p.end))
            for p in periods
        ],
        [dataclasses.replace(a, event_time=_aware(a.event_time)) for a in anomalies],
    )


def _events(query) -> Iterator[tuple[str, str, datetime.datetime]]:
    """The rows straight from the cursor, times naive UTC as stored: peewee's per-row
    conversion would cost three times the query for a patient with 10,000 events."""
    for medication, action, moment in database.execute(query):
        if isinstance(moment, str):  # SQLite keeps times as text
            moment = datetime.datetime.fromisoformat(moment)
        yield medication, action, moment


def _naive_utc(moment: datetime.datetime) -> datetime.datetime:
    return moment.astimezone(datetime.UTC).replace(tzinfo=None)


def _aware(moment: datetime.datetime) -> datetime.datetime:
    return moment.replace(tzinfo=datetime.UTC)
