"""The EHR plugin's tables: organizations, patient links, versioned mappings, questions,
submissions, their deliveries (the outbox) and the sandbox EHR's receipts."""

import peewee


def up(migrator, db):
    class Base(peewee.Model):
        class Meta:
            database = db

    class Organization(Base):
        name = peewee.CharField(max_length=200, unique=True)
        connector = peewee.CharField(max_length=32)
        base_url = peewee.CharField(max_length=500)
        credentials = peewee.TextField(null=True)
        rate_limit_per_second = peewee.IntegerField(default=5)
        created_at = peewee.DateTimeField()
        updated_at = peewee.DateTimeField()

        class Meta:
            table_name = "ehr_organizations"

    class PatientLink(Base):
        mrn = peewee.CharField(max_length=64, unique=True)
        organization = peewee.ForeignKeyField(Organization, on_delete="RESTRICT")
        ehr_patient_id = peewee.CharField(max_length=64)
        provider = peewee.CharField(max_length=200, null=True)
        updated_at = peewee.DateTimeField()

        class Meta:
            table_name = "ehr_patient_links"
            indexes = (
                (("organization", "ehr_patient_id"), True),
                (("organization", "provider"), False),
            )

    class MappingVersion(Base):
        connector = peewee.CharField(max_length=32)
        version = peewee.IntegerField()
        fields = peewee.TextField()
        note = peewee.CharField(max_length=500, default="")
        created_by = peewee.CharField(max_length=254)
        created_at = peewee.DateTimeField()

        class Meta:
            table_name = "ehr_mapping_versions"
            indexes = ((("connector", "version"), True),)

    class Question(Base):
        field = peewee.CharField(max_length=32)
        text_en = peewee.CharField(max_length=500)
        text_es = peewee.CharField(max_length=500)
        position = peewee.IntegerField(default=0)
        required = peewee.BooleanField(default=False)
        active = peewee.BooleanField(default=True)

        class Meta:
            table_name = "ehr_questions"

    class Submission(Base):
        mrn = peewee.CharField(max_length=64)
        organization = peewee.ForeignKeyField(Organization, on_delete="RESTRICT")
        answers = peewee.TextField()
        language = peewee.CharField(max_length=2, default="en")
        submitted_by = peewee.CharField(max_length=254)
        created_at = peewee.DateTimeField()

        class Meta:
            table_name = "ehr_submissions"
            indexes = ((("mrn", "id"), False),)

    class Delivery(Base):
        submission = peewee.ForeignKeyField(Submission, on_delete="RESTRICT")
        mrn = peewee.CharField(max_length=64)
        organization = peewee.ForeignKeyField(Organization, on_delete="RESTRICT")
        connector = peewee.CharField(max_length=32)
        endpoint = peewee.CharField(max_length=64)
        payload = peewee.TextField()
        mapping_version = peewee.ForeignKeyField(MappingVersion, on_delete="RESTRICT")
        idempotency_key = peewee.CharField(max_length=64, unique=True)
        sequence = peewee.IntegerField()
        state = peewee.CharField(max_length=16, default="pending")
        attempts = peewee.IntegerField(default=0)
        last_error = peewee.TextField(null=True)
        next_attempt_at = peewee.DateTimeField()
        claimed_until = peewee.DateTimeField(null=True)
        ehr_patient_id = peewee.CharField(max_length=64, null=True)
        sent_at = peewee.DateTimeField(null=True)
        created_at = peewee.DateTimeField()
        updated_at = peewee.DateTimeField()

        class Meta:
            table_name = "ehr_deliveries"
            indexes = (
                (("mrn", "organization", "sequence"), True),
                (("state", "next_attempt_at"), False),
                (("submission",), False),
            )

    class SandboxReceipt(Base):
        endpoint = peewee.CharField(max_length=64)
        ehr_patient_id = peewee.CharField(max_length=64)
        payload = peewee.TextField()
        idempotency_key = peewee.CharField(max_length=200, unique=True)
        received_at = peewee.DateTimeField()

        class Meta:
            table_name = "ehr_sandbox_receipts"

    db.create_tables(
        [
            Organization,
            PatientLink,
            MappingVersion,
            Question,
            Submission,
            Delivery,
            SandboxReceipt,
        ]
    )


def down(migrator, db):
    for table in (
        "ehr_sandbox_receipts",
        "ehr_deliveries",
        "ehr_submissions",
        "ehr_questions",
        "ehr_mapping_versions",
        "ehr_patient_links",
        "ehr_organizations",
    ):
        db.execute_sql(f"DROP TABLE {table}")
