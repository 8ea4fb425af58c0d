"""The patient registry."""

import peewee


def up(migrator, db):
    class Patient(peewee.Model):
        mrn = peewee.CharField(max_length=64, unique=True)
        first_name = peewee.CharField(max_length=100, null=True)
        last_name = peewee.CharField(max_length=100, null=True, index=True)
        date_of_birth = peewee.DateField(null=True)
        sex = peewee.CharField(max_length=16, default="unknown")
        phone = peewee.CharField(max_length=50, null=True)
        email = peewee.CharField(max_length=254, null=True)
        address = peewee.CharField(max_length=500, null=True)
        insurance_provider = peewee.CharField(max_length=200, null=True)
        insurance_policy_number = peewee.CharField(max_length=100, null=True)
        primary_physician = peewee.CharField(max_length=200, null=True)
        created_at = peewee.DateTimeField()
        updated_at = peewee.DateTimeField()
        last_activity_at = peewee.DateTimeField()

        class Meta:
            database = db
            table_name = "core_patients"

    db.create_tables([Patient])


def down(migrator, db):
    db.execute_sql("DROP TABLE core_patients")
