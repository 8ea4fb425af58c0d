"""A patient's medication history: the periods and anomalies from their stored events."""

from __future__ import annotations

import datetime

from peewee import SQL, NodeList

from core.db import database, is_sqlite
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
    moment = MedicationEvent.event_time
    if not is_sqlite():
        # Aware times straight from the driver: making 10,000 aware in Python took 10 ms.
        moment = NodeList((moment, SQL("AT TIME ZONE 'UTC'")))
    # Unordered: derive sorts in Python, where PostgreSQL's collation-aware sort of the
    # medication names took three times the rest of the query.
    query = MedicationEvent.select(
        MedicationEvent.medication, MedicationEvent.action, moment
    ).where(MedicationEvent.patient_mrn == mrn)
    if medication is not None:
        query = query.where(MedicationEvent.medication == medication)
    periods, anomalies = derive(_events(query))
    if start is not None:
        periods = [p for p in periods if p.end is None or p.end >= start]
        anomalies = [a for a in anomalies if a.event_time >= start]
    if end is not None:
        periods = [p for p in periods if p.start <= end]
        anomalies = [a for a in anomalies if a.event_time <= end]
    return periods, anomalies


def _events(query) -> list[tuple[str, str, datetime.datetime]]:
    """The rows straight from the cursor: peewee's per-row conversion would cost three
    times the query for a patient with 10,000 events."""
    rows = database.execute(query).fetchall()
    if rows and isinstance(rows[0][2], str):  # SQLite keeps naive UTC times as text
        utc = datetime.UTC
        rows = [(m, a, datetime.datetime.fromisoformat(t).replace(tzinfo=utc)) for m, a, t in rows]
    return rows
