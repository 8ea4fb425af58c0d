"""A patient's medication history: the periods and anomalies from their stored events."""

from __future__ import annotations

import datetime

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
    periods, anomalies = derive(query.tuples())
    if start is not None:
        periods = [p for p in periods if p.end is None or p.end >= start]
        anomalies = [a for a in anomalies if a.event_time >= start]
    if end is not None:
        periods = [p for p in periods if p.start <= end]
        anomalies = [a for a in anomalies if a.event_time <= end]
    return periods, anomalies
