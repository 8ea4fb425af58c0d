"""The EHR plugin's tables (``ehr_*``).

- ``Organization``: a hospital or clinic, its EHR connector and connection settings. The
  credentials are a write-only secret: no schema, log line or audit row ever shows them.
- ``PatientLink``: which organization a patient belongs to and who they are in its EHR.
- ``MappingVersion``: a connector's mapping of our fields to its fields and endpoints; an
  edit is a new version, old ones stay readable, and every delivery names the one it used.
- ``Question``: the questionnaire, one question per field of ours, in English and Spanish.
- ``Submission``: a patient's answers, as submitted.
- ``Delivery``: one payload for one endpoint of the patient's EHR (the outbox), written in
  the submission's transaction and sent by the ``ehr.deliver`` job.
- ``SandboxReceipt``: what the sandbox EHR (inside the app) received.
"""

from __future__ import annotations

import json

import peewee

from core.db import Model, UTCDateTimeField, utcnow

NAME_MAX_LENGTH = 200
URL_MAX_LENGTH = 500
EHR_ID_MAX_LENGTH = 64
USER_MAX_LENGTH = 254
NOTE_MAX_LENGTH = 500
QUESTION_MAX_LENGTH = 500
STATES = ("pending", "sent", "failed")


class JSONField(peewee.TextField):
    """JSON as text: the same column on SQLite and PostgreSQL."""

    def db_value(self, value):
        return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class Organization(Model):
    name = peewee.CharField(max_length=NAME_MAX_LENGTH, unique=True)
    connector = peewee.CharField(max_length=32)
    base_url = peewee.CharField(max_length=URL_MAX_LENGTH)
    # Sealed (plugins/ehr/credentials.py); write-only: never serialized or logged.
    credentials = peewee.TextField(null=True)
    rate_limit_per_second = peewee.IntegerField(default=5)
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "ehr_organizations"

    def credential(self) -> str | None:
        """The credentials in clear, for a connector's request only."""
        from plugins.ehr.credentials import unseal

        return unseal(self.credentials)

    def __repr__(self) -> str:  # never the credentials, even in a traceback
        return f"<Organization {self.id} {self.name!r} ({self.connector})>"


class PatientLink(Model):
    mrn = peewee.CharField(max_length=64, unique=True)
    organization = peewee.ForeignKeyField(Organization, backref="links", on_delete="RESTRICT")
    ehr_patient_id = peewee.CharField(max_length=EHR_ID_MAX_LENGTH)
    provider = peewee.CharField(max_length=NAME_MAX_LENGTH, null=True)  # primary care physician
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "ehr_patient_links"
        indexes = (
            # One EHR record is one patient: two MRNs on it would mix two people's data.
            (("organization", "ehr_patient_id"), True),
            (("organization", "provider"), False),
        )


class MappingVersion(Model):
    connector = peewee.CharField(max_length=32)
    version = peewee.IntegerField()
    fields = JSONField()
    note = peewee.CharField(max_length=NOTE_MAX_LENGTH, default="")
    created_by = peewee.CharField(max_length=USER_MAX_LENGTH)
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "ehr_mapping_versions"
        indexes = ((("connector", "version"), True),)


class Question(Model):
    field = peewee.CharField(max_length=32)
    text_en = peewee.CharField(max_length=QUESTION_MAX_LENGTH)
    text_es = peewee.CharField(max_length=QUESTION_MAX_LENGTH)
    position = peewee.IntegerField(default=0)
    required = peewee.BooleanField(default=False)
    active = peewee.BooleanField(default=True)

    class Meta:
        table_name = "ehr_questions"


class Submission(Model):
    mrn = peewee.CharField(max_length=64)
    organization = peewee.ForeignKeyField(Organization, on_delete="RESTRICT")
    answers = JSONField()
    language = peewee.CharField(max_length=2, default="en")
    submitted_by = peewee.CharField(max_length=USER_MAX_LENGTH)
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "ehr_submissions"
        indexes = ((("mrn", "id"), False),)


class Delivery(Model):
    submission = peewee.ForeignKeyField(Submission, backref="deliveries", on_delete="RESTRICT")
    mrn = peewee.CharField(max_length=64)
    organization = peewee.ForeignKeyField(Organization, on_delete="RESTRICT")
    connector = peewee.CharField(max_length=32)
    endpoint = peewee.CharField(max_length=64)
    payload = JSONField()
    mapping_version = peewee.ForeignKeyField(MappingVersion, on_delete="RESTRICT")
    idempotency_key = peewee.CharField(max_length=64, unique=True)
    sequence = peewee.IntegerField()  # per patient and organization: the sending order
    state = peewee.CharField(max_length=16, default="pending")
    attempts = peewee.IntegerField(default=0)
    last_error = peewee.TextField(null=True)
    next_attempt_at = UTCDateTimeField(default=utcnow)
    # A job holds the delivery until then (the claim); past it, the sender is presumed dead.
    claimed_until = UTCDateTimeField(null=True)
    ehr_patient_id = peewee.CharField(max_length=EHR_ID_MAX_LENGTH, null=True)  # as sent
    sent_at = UTCDateTimeField(null=True)
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "ehr_deliveries"
        indexes = (
            (("mrn", "organization", "sequence"), True),
            (("state", "next_attempt_at"), False),  # the sweep
            (("submission",), False),
        )


class SandboxReceipt(Model):
    endpoint = peewee.CharField(max_length=64)
    ehr_patient_id = peewee.CharField(max_length=EHR_ID_MAX_LENGTH)
    payload = JSONField()
    idempotency_key = peewee.CharField(max_length=200, unique=True)
    received_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "ehr_sandbox_receipts"


MODELS = [
    Organization,
    PatientLink,
    MappingVersion,
    Question,
    Submission,
    Delivery,
    SandboxReceipt,
]
