"""Sample patients for ``caredeck serve --demo`` (invented people, not real data)."""

from __future__ import annotations

import datetime

from core.patients.models import Patient, ensure_patient, update_patient

SAMPLE = (
    {
        "mrn": "DEMO-0001",
        "first_name": "Ada",
        "last_name": "Lindqvist",
        "date_of_birth": datetime.date(1954, 3, 2),
        "sex": "female",
        "primary_physician": "Dr. Amara Osei",
    },
    {
        "mrn": "DEMO-0002",
        "first_name": "Tomás",
        "last_name": "Ferreira",
        "date_of_birth": datetime.date(1988, 11, 17),
        "sex": "male",
        "insurance_provider": "Northwind Health",
    },
    {
        "mrn": "DEMO-0003",
        "first_name": "Noor",
        "last_name": "Haddad",
        "date_of_birth": datetime.date(2001, 6, 30),
        "sex": "female",
    },
    {
        "mrn": "DEMO-0004",
        "first_name": "Kai",
        "last_name": "Okafor",
        "date_of_birth": datetime.date(1971, 1, 9),
        "sex": "other",
    },
)


def load_demo_patients() -> list[Patient]:
    """Ensure the sample patients exist (idempotent; edits made in the demo are kept)."""
    patients = []
    for record in SAMPLE:
        patient = ensure_patient(record["mrn"])
        if patient.last_name is None:  # only fill a record the demo created itself
            details = {key: value for key, value in record.items() if key != "mrn"}
            patient = update_patient(patient, details)
        patients.append(patient)
    return patients
