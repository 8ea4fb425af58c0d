"""Demo interactions for the sample patients (``caredeck serve --demo``), written by the demo
doctor. Times are relative to the first demo start; later starts add nothing."""

from __future__ import annotations

import datetime

from core.auth.models import User
from core.db import database, utcnow
from core.patients.models import Patient
from plugins.interactions import records
from plugins.interactions.models import Interaction

DEMO_DOCTOR = "doctor@caredeck.local"
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)

# (days ago, kind, summary, notes, outcome, status note, [amendment], [in-error reason])
SAMPLE = {
    "DEMO-0001": [
        (
            62,
            "visit",
            "Admitted with community-acquired pneumonia",
            "Three days of fever and productive cough. Crackles right base. Started IV "
            "co-amoxiclav.",
            "not_healthy",
            "T 38.9 °C, SpO2 91% on room air",
            None,
            None,
        ),
        (
            59,
            "ward_round",
            "Day 3: improving on antibiotics",
            "Afebrile since yesterday. Eating. Switch to oral antibiotics tomorrow if stable.",
            "not_healthy",
            "SpO2 95% on room air",
            None,
            None,
        ),
        (
            55,
            "ward_round",
            "Post-operative check, wound clean",
            None,
            "healthy",
            None,
            None,
            "Written in the wrong patient's record",
        ),
        (
            54,
            "visit",
            "Discharge review: recovered",
            "Chest clear. Completes oral antibiotics at home.",
            "healthy",
            None,
            (
                "Added the follow-up plan, left out by mistake",
                {
                    "notes": "Chest clear. Completes oral antibiotics at home. Phone follow-up "
                    "in four weeks."
                },
            ),
            None,
        ),
        (
            26,
            "phone_call",
            "Follow-up call: no cough, back to daily walks",
            None,
            "healthy",
            None,
            None,
            None,
        ),
        (
            3,
            "video_call",
            "Ankle swelling for a week",
            "Bilateral pitting oedema to mid-shin. No breathlessness. Bloods and ECG booked.",
            "not_healthy",
            "Weight +2 kg in a week",
            None,
            None,
        ),
    ],
    "DEMO-0002": [
        (40, "visit", "Sports check-up", None, "healthy", None, None, None),
        (
            6,
            "phone_call",
            "Sprained left ankle playing football",
            "RICE, ibuprofen for three days; review if not weight-bearing in a week.",
            "not_healthy",
            None,
            None,
            None,
        ),
    ],
    "DEMO-0003": [
        (
            12,
            "visit",
            "Asthma review: well controlled",
            "No night symptoms; reliever twice in the last month.",
            "healthy",
            "Peak flow 430 L/min (predicted 450)",
            None,
            None,
        ),
    ],
    "DEMO-0004": [
        (
            1,
            "ward_round",
            "Post-operative day 1 after appendicectomy",
            "Pain controlled on oral analgesia. Mobilising. Tolerating fluids.",
            "not_healthy",
            "T 37.4 °C",
            None,
            None,
        ),
    ],
}


def load() -> None:
    """Idempotent: a sample patient who already has interactions gets no more."""
    doctor = User.find(DEMO_DOCTOR)
    if doctor is None or doctor.role != "doctor":
        return
    now = utcnow().replace(second=0, microsecond=0)
    with database.atomic():
        for mrn, rows in SAMPLE.items():
            if not Patient.select().where(Patient.mrn == mrn).exists():
                continue
            if Interaction.select().where(Interaction.patient_mrn == mrn).exists():
                continue
            for days, kind, summary, notes, outcome, status, amendment, error in rows:
                occurred = now - days * DAY - 2 * HOUR
                data = {
                    "occurred_at": occurred,
                    "kind": kind,
                    "summary": summary,
                    "notes": notes,
                    "outcome": outcome,
                    "status_note": status,
                }
                entry = records.create(mrn, doctor, data, recorded_at=occurred + HOUR)
                if amendment is not None:
                    reason, changes = amendment
                    records.amend(entry, doctor, changes, reason, recorded_at=occurred + 5 * HOUR)
                if error is not None:
                    records.mark_in_error(entry, doctor, error, recorded_at=occurred + 3 * HOUR)
