"""The medication events table."""

import peewee


def up(migrator, db):
    class MedicationEvent(peewee.Model):
        id = peewee.BigAutoField()
        patient_mrn = peewee.CharField(max_length=64)
        medication = peewee.CharField(max_length=200)
        action = peewee.CharField(max_length=16)
        event_time = peewee.DateTimeField()
        event_id = peewee.CharField(max_length=200, null=True)
        dedupe_key = peewee.CharField(max_length=64, unique=True)
        received = peewee.TextField()
        received_at = peewee.DateTimeField()

        class Meta:
            database = db
            table_name = "medications_events"
            indexes = ((("patient_mrn", "medication", "event_time"), False),)

    db.create_tables([MedicationEvent])


def down(migrator, db):
    db.execute_sql("DROP TABLE medications_events")
