"""Shared set-up for the EHR plugin's tests (tests/test_ehr_*.py)."""

from __future__ import annotations

import datetime
import json

import responses

from core.db import database
from core.patients.models import Patient
from plugins.ehr import organizations
from plugins.ehr.models import Delivery

ATHENA = "https://athena.test/v1"
ALLSCRIPTS = "https://allscripts.test/unity"
ATHENA_TOKEN = "athena-secret-token-7f3a9c"
ALLSCRIPTS_TOKEN = "allscripts-secret-token-42be"

ALL_ANSWERS = {
    "name": "Ada Lindqvist",
    "gender": "female",
    "dob": "1954-03-02",
    "address": "12 Harbour Road, Portsmouth",
    "phone": "+44 20 7946 0018",
    "email": "ada@example.org",
    "emergency_contact": "Erik Lindqvist +44 20 7946 0019",
    "insurance_provider": "Northwind Health",
    "insurance_policy_number": "NW-99812",
    "primary_care_physician": "Dr. Amara Osei",
    "allergies": "Penicillin",
    "current_medications": "Ramipril 5 mg daily",
    "medical_history": "Hypertension",
    "social_history": "Non-smoker",
    "family_history": "Asthma (mother)",
    "symptoms": "Cough for a week",
}


# Retries at once (no back-off wait) and give up after three attempts.
TEST_SETTINGS = {"EHR_RETRY_BASE_SECONDS": "0", "EHR_MAX_ATTEMPTS": "3"}


def add_patient(mrn="MRN-000123", first="Ada", last="Lindqvist", dob=datetime.date(1954, 3, 2)):
    with database.connection_context():
        return Patient.create(mrn=mrn, first_name=first, last_name=last, date_of_birth=dob)


def add_organization(app, connector="athena", base_url=ATHENA, credentials=ATHENA_TOKEN, **more):
    with app.app_context(), database.connection_context():
        return organizations.create(
            {
                "name": more.pop("name", f"{connector.title()} Clinic"),
                "connector": connector,
                "base_url": base_url,
                "credentials": credentials,
                # High enough that no test waits for a rate-limit slot unless it means to.
                "rate_limit_per_second": more.pop("rate_limit_per_second", 1000),
                **more,
            },
            "admin@example.org",
        )


def link(app, mrn, organization, ehr_patient_id, provider=None):
    with app.app_context(), database.connection_context():
        return organizations.link_patient(
            mrn, organization.id, ehr_patient_id, provider, user="admin@example.org"
        )


def athena_identity(rsps, ehr_patient_id="A-1", name="Ada Lindqvist", dob="03/02/1954"):
    rsps.add(
        responses.GET,
        f"{ATHENA}/patients/{ehr_patient_id}",
        json={
            "PATIENT_ID": ehr_patient_id,
            "PATIENT_IDENT_NAME": name,
            "DATE_OF_BIRTH_PATIENT": dob,
        },
    )


def deliveries(mrn="MRN-000123") -> list[Delivery]:
    with database.connection_context():
        return list(Delivery.select().where(Delivery.mrn == mrn).order_by(Delivery.sequence))


def posted(rsps) -> list[tuple[str, dict, dict]]:
    """(url, body, headers) of every POST the EHR received, in order."""
    return [
        (call.request.url, json.loads(call.request.body), dict(call.request.headers))
        for call in rsps.calls
        if call.request.method == "POST"
    ]
