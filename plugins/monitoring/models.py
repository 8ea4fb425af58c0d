"""What the PMS and LIS files hold, as ingested, plus the ingest ledger and findings.

Source times are the hospital's local times, stored as UTC. Every row keeps the file and
line it came from, and the columns the source sent that we do not know (``extra``, JSON), so
nothing accepted is lost.
"""

from __future__ import annotations

import peewee

from core.db import Model, UTCDateTimeField, utcnow

TABLES = ("patients", "admissions", "lab_tests", "lab_results")


class IngestFile(Model):
    """The ledger: every file taken, so that none is applied twice."""

    source = peewee.CharField(max_length=500)  # the folder, file or bucket URL given
    key = peewee.CharField(max_length=1000)  # the object key or file name
    etag = peewee.CharField(max_length=100)  # S3 ETag, or the MD5 of a local file
    table = peewee.CharField(max_length=32, null=True)  # None: not recognised
    status = peewee.CharField(max_length=16)  # applied, quarantined
    message = peewee.TextField(null=True)
    rows_read = peewee.IntegerField(default=0)
    inserted = peewee.IntegerField(default=0)
    updated = peewee.IntegerField(default=0)
    rejected = peewee.IntegerField(default=0)
    unknown_columns = peewee.TextField(null=True)  # JSON list
    modified_at = UTCDateTimeField(null=True)  # the object's LastModified / file mtime
    ingested_at = UTCDateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "monitoring_ingest_files"
        indexes = ((("key", "etag"), True),)


class RejectedRow(Model):
    file = peewee.ForeignKeyField(IngestFile, backref="rejected_rows", on_delete="CASCADE")
    line = peewee.IntegerField()
    reason = peewee.TextField()
    raw = peewee.TextField()

    class Meta:
        table_name = "monitoring_rejected_rows"


class Finding(Model):
    """A data-quality observation: shown to admins, never blocks ingestion."""

    kind = peewee.CharField(max_length=48)
    table = peewee.CharField(max_length=32)
    record_key = peewee.CharField(max_length=200)
    detail = peewee.TextField()
    file = peewee.ForeignKeyField(IngestFile, null=True, on_delete="SET NULL")
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "monitoring_findings"
        indexes = ((("kind", "table", "record_key"), True),)


class SourceRow(Model):
    """Provenance shared by the four source tables."""

    extra = peewee.TextField(null=True)  # unknown columns, JSON object
    file_id = peewee.IntegerField(null=True)  # IngestFile.id (no constraint: bulk loads)
    line = peewee.IntegerField(null=True)
    source_modified_at = UTCDateTimeField(null=True)  # newer files replace older rows


class PmsPatient(SourceRow):
    patient_id = peewee.CharField(max_length=64, unique=True)
    first_name = peewee.CharField(max_length=100, null=True)
    last_name = peewee.CharField(max_length=100, null=True)
    date_of_birth = peewee.DateField(null=True)
    primary_physician = peewee.CharField(max_length=200, null=True)
    insurance_provider = peewee.CharField(max_length=200, null=True)
    blood_type = peewee.CharField(max_length=8, null=True)
    allergies = peewee.CharField(max_length=500, null=True)

    class Meta:
        table_name = "monitoring_patients"


class Admission(SourceRow):
    case_number = peewee.CharField(max_length=64, unique=True)
    patient_id = peewee.CharField(max_length=64, index=True)
    admitted_at = UTCDateTimeField()
    released_at = UTCDateTimeField(null=True, index=True)  # finds the open admissions
    department = peewee.CharField(max_length=100, null=True, index=True)
    room = peewee.CharField(max_length=32, null=True)

    class Meta:
        table_name = "monitoring_admissions"


class LabTest(SourceRow):
    # Unique per patient, not alone: the real LIS reuses a test_id for two patients.
    test_id = peewee.CharField(max_length=64)
    patient_id = peewee.CharField(max_length=64)
    test_name = peewee.CharField(max_length=200, null=True)
    ordered_at = UTCDateTimeField(null=True)
    ordering_physician = peewee.CharField(max_length=200, null=True)

    class Meta:
        table_name = "monitoring_lab_tests"
        indexes = ((("test_id", "patient_id"), True), (("patient_id", "ordered_at"), False))


class LabResult(SourceRow):
    result_id = peewee.CharField(max_length=64, unique=True)
    test_id = peewee.CharField(max_length=64, index=True)
    value = peewee.CharField(max_length=100, null=True)
    unit = peewee.CharField(max_length=100, null=True)
    reference_range = peewee.CharField(max_length=100, null=True)
    status = peewee.CharField(max_length=50, null=True)
    performed_at = UTCDateTimeField(null=True)
    reviewing_physician = peewee.CharField(max_length=200, null=True)

    class Meta:
        table_name = "monitoring_lab_results"


class LastTest(Model):
    """Each patient's latest lab activity (ordered or performed), kept by ingestion, so the
    worklist never scans the lab tables for the present moment."""

    patient_id = peewee.CharField(max_length=64, primary_key=True)
    last_test_at = UTCDateTimeField(index=True)
    last_test_name = peewee.CharField(max_length=200, null=True)

    class Meta:
        table_name = "monitoring_last_tests"


MODELS = (IngestFile, RejectedRow, Finding, PmsPatient, Admission, LabTest, LabResult, LastTest)
