"""Patient users, sign-in lockout, token use times, and the audit log."""

import datetime

import peewee


def up(migrator, db):
    migrator.migrate(
        migrator.add_column(
            "core_users", "patient_mrn", peewee.CharField(max_length=64, null=True)
        ),
        migrator.add_column("core_users", "failed_logins", peewee.IntegerField(default=0)),
        migrator.add_column("core_users", "locked_until", peewee.DateTimeField(null=True)),
        migrator.add_column("core_api_tokens", "last_used_at", peewee.DateTimeField(null=True)),
    )

    class AuditEvent(peewee.Model):
        at = peewee.DateTimeField(default=datetime.datetime.now, index=True)
        user = peewee.CharField(max_length=254, null=True, index=True)
        role = peewee.CharField(max_length=16, null=True)
        action = peewee.CharField(max_length=32)
        patient = peewee.CharField(max_length=64, null=True, index=True)
        path = peewee.CharField(max_length=2000)
        outcome = peewee.CharField(max_length=16)
        address = peewee.CharField(max_length=64, null=True)
        request_id = peewee.CharField(max_length=64, null=True)

        class Meta:
            database = db
            table_name = "core_audit_events"

    db.create_tables([AuditEvent])


def down(migrator, db):
    db.execute_sql("DROP TABLE core_audit_events")
    migrator.migrate(
        migrator.drop_column("core_api_tokens", "last_used_at"),
        migrator.drop_column("core_users", "locked_until"),
        migrator.drop_column("core_users", "failed_logins"),
        migrator.drop_column("core_users", "patient_mrn"),
    )
