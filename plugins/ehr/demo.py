"""Demo data for ``caredeck serve --demo``: an organization on the sandbox EHR (inside the
app), links for three of the sample patients, and a starter questionnaire in English and
Spanish. Idempotent: what the demo created is kept, edits included; the organization follows
``EHR_SANDBOX_URL`` and ``EHR_SANDBOX_TOKEN`` on each start."""

from __future__ import annotations

from core.db import utcnow
from core.patients.models import Patient
from plugins.ehr.credentials import CredentialsUnreadable, seal
from plugins.ehr.models import Organization, PatientLink, Question

ORGANIZATION = "Caredeck Demo Clinic (sandbox EHR)"
LINKS = (
    ("DEMO-0001", "SBX-1001", "Dr. Amara Osei"),
    ("DEMO-0002", "SBX-1002", "Dr. Amara Osei"),
    ("DEMO-0003", "SBX-1003", "Dr. Lena Park"),
)
QUESTIONS = (
    (
        "symptoms",
        "What symptoms bring you in today, and since when?",
        "¿Qué síntomas le traen hoy y desde cuándo?",
        True,
    ),
    (
        "allergies",
        "Do you have any allergies (medicines, food, latex)?",
        "¿Tiene alguna alergia (medicamentos, alimentos, látex)?",
        False,
    ),
    (
        "current_medications",
        "Which medicines do you take now, and how much?",
        "¿Qué medicamentos toma actualmente y en qué dosis?",
        False,
    ),
    (
        "medical_history",
        "Which illnesses or operations have you had?",
        "¿Qué enfermedades u operaciones ha tenido?",
        False,
    ),
    (
        "family_history",
        "Do illnesses run in your family (parents, siblings)?",
        "¿Hay enfermedades en su familia (padres, hermanos)?",
        False,
    ),
    (
        "social_history",
        "Do you smoke or drink alcohol? What is your work?",
        "¿Fuma o bebe alcohol? ¿A qué se dedica?",
        False,
    ),
)


def _readable(organization: Organization) -> str | None:
    try:
        return organization.credential()
    except CredentialsUnreadable:
        return None


def load(app) -> None:
    organization, created = Organization.get_or_create(
        name=ORGANIZATION,
        defaults={
            "connector": "sandbox",
            "base_url": app.config["EHR_SANDBOX_URL"],
            "credentials": seal(app.config["EHR_SANDBOX_TOKEN"]),
            "rate_limit_per_second": 20,
        },
    )
    if not created and (
        organization.base_url != app.config["EHR_SANDBOX_URL"]
        or _readable(organization) != app.config["EHR_SANDBOX_TOKEN"]
    ):
        organization.base_url = app.config["EHR_SANDBOX_URL"]
        organization.credentials = seal(app.config["EHR_SANDBOX_TOKEN"])
        organization.updated_at = utcnow()
        organization.save()
    for mrn, ehr_patient_id, provider in LINKS:
        if Patient.select().where(Patient.mrn == mrn).exists():
            PatientLink.get_or_create(
                mrn=mrn,
                defaults={
                    "organization": organization,
                    "ehr_patient_id": ehr_patient_id,
                    "provider": provider,
                },
            )
    if not Question.select().exists():
        for position, (field, text_en, text_es, required) in enumerate(QUESTIONS, 1):
            Question.create(
                field=field, text_en=text_en, text_es=text_es, position=position, required=required
            )
