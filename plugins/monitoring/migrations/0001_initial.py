"""The monitoring tables (generated from the models by playhouse.migrations)."""

from peewee import *


def up(migrator, db):
    class Admission(Model):
        extra = TextField(null=True)
        file_id = IntegerField(null=True)
        line = IntegerField(null=True)
        source_modified_at = DateTimeField(null=True)
        case_number = CharField(unique=True, max_length=64)
        patient_id = CharField(index=True, max_length=64)
        admitted_at = DateTimeField()
        released_at = DateTimeField(null=True)
        department = CharField(index=True, null=True, max_length=100)
        room = CharField(null=True, max_length=32)

        class Meta:
            database = db
            table_name = "monitoring_admissions"

    db.create_tables([Admission])

    class IngestFile(Model):
        source = CharField(max_length=500)
        key = CharField(max_length=1000)
        etag = CharField(max_length=100)
        table = CharField(null=True, max_length=32)
        status = CharField(max_length=16)
        message = TextField(null=True)
        rows_read = IntegerField(default=0)
        inserted = IntegerField(default=0)
        updated = IntegerField(default=0)
        rejected = IntegerField(default=0)
        unknown_columns = TextField(null=True)
        modified_at = DateTimeField(null=True)
        ingested_at = DateTimeField(index=True)

        class Meta:
            database = db
            table_name = "monitoring_ingest_files"
            indexes = ((("key", "etag"), True),)

    db.create_tables([IngestFile])

    class Finding(Model):
        kind = CharField(max_length=48)
        table = CharField(max_length=32)
        record_key = CharField(max_length=200)
        detail = TextField()
        file = ForeignKeyField(IngestFile, null=True, on_delete="SET NULL")
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = "monitoring_findings"
            indexes = ((("kind", "table", "record_key"), True),)

    db.create_tables([Finding])

    class LabResult(Model):
        extra = TextField(null=True)
        file_id = IntegerField(null=True)
        line = IntegerField(null=True)
        source_modified_at = DateTimeField(null=True)
        result_id = CharField(unique=True, max_length=64)
        test_id = CharField(index=True, max_length=64)
        value = CharField(null=True, max_length=100)
        unit = CharField(null=True, max_length=100)
        reference_range = CharField(null=True, max_length=100)
        status = CharField(null=True, max_length=50)
        performed_at = DateTimeField(null=True)
        reviewing_physician = CharField(null=True, max_length=200)

        class Meta:
            database = db
            table_name = "monitoring_lab_results"

    db.create_tables([LabResult])

    class LabTest(Model):
        extra = TextField(null=True)
        file_id = IntegerField(null=True)
        line = IntegerField(null=True)
        source_modified_at = DateTimeField(null=True)
        test_id = CharField(max_length=64)
        patient_id = CharField(max_length=64)
        test_name = CharField(null=True, max_length=200)
        ordered_at = DateTimeField(null=True)
        ordering_physician = CharField(null=True, max_length=200)

        class Meta:
            database = db
            table_name = "monitoring_lab_tests"
            indexes = ((("test_id", "patient_id"), True), (("patient_id", "ordered_at"), False))

    db.create_tables([LabTest])

    class LastTest(Model):
        patient_id = CharField(primary_key=True, max_length=64)
        last_test_at = DateTimeField(index=True)
        last_test_name = CharField(null=True, max_length=200)

        class Meta:
            database = db
            table_name = "monitoring_last_tests"

    db.create_tables([LastTest])

    class PmsPatient(Model):
        extra = TextField(null=True)
        file_id = IntegerField(null=True)
        line = IntegerField(null=True)
        source_modified_at = DateTimeField(null=True)
        patient_id = CharField(unique=True, max_length=64)
        first_name = CharField(null=True, max_length=100)
        last_name = CharField(null=True, max_length=100)
        date_of_birth = DateField(null=True)
        primary_physician = CharField(null=True, max_length=200)
        insurance_provider = CharField(null=True, max_length=200)
        blood_type = CharField(null=True, max_length=8)
        allergies = CharField(null=True, max_length=500)

        class Meta:
            database = db
            table_name = "monitoring_patients"

    db.create_tables([PmsPatient])

    class RejectedRow(Model):
        file = ForeignKeyField(IngestFile, on_delete="CASCADE")
        line = IntegerField()
        reason = TextField()
        raw = TextField()

        class Meta:
            database = db
            table_name = "monitoring_rejected_rows"

    db.create_tables([RejectedRow])


def down(migrator, db):
    migrator.migrate(migrator.drop_table("monitoring_rejected_rows"))
    migrator.migrate(migrator.drop_table("monitoring_patients"))
    migrator.migrate(migrator.drop_table("monitoring_last_tests"))
    migrator.migrate(migrator.drop_table("monitoring_lab_tests"))
    migrator.migrate(migrator.drop_table("monitoring_lab_results"))
    migrator.migrate(migrator.drop_table("monitoring_findings"))
    migrator.migrate(migrator.drop_table("monitoring_ingest_files"))
    migrator.migrate(migrator.drop_table("monitoring_admissions"))
