"""Report subscriptions, runs and the per-recipient delivery ledger."""

import peewee


def up(migrator, db):
    class User(peewee.Model):  # the core's table, as far as the foreign key needs it
        class Meta:
            database = db
            table_name = "core_users"

    class Subscription(peewee.Model):
        id = peewee.BigAutoField()
        user = peewee.ForeignKeyField(User, column_name="user_id", on_delete="CASCADE")
        weekday = peewee.SmallIntegerField()
        time = peewee.CharField(max_length=5)
        timezone = peewee.CharField(max_length=64)
        study = peewee.CharField(max_length=200, null=True)
        scope = peewee.CharField(max_length=206)
        created_at = peewee.DateTimeField()
        next_due_at = peewee.DateTimeField()
        cancelled_at = peewee.DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "reporting_subscriptions"
            indexes = ((("next_due_at",), False), (("user_id",), False))

    class ReportRun(peewee.Model):
        id = peewee.BigAutoField()
        scope = peewee.CharField(max_length=206)
        study = peewee.CharField(max_length=200, null=True)
        week = peewee.CharField(max_length=8)
        dry_run = peewee.BooleanField(default=False)
        state = peewee.CharField(max_length=16)
        created_at = peewee.DateTimeField()
        started_at = peewee.DateTimeField(null=True)
        rendered_at = peewee.DateTimeField(null=True)
        finished_at = peewee.DateTimeField(null=True)
        enqueued_at = peewee.DateTimeField(null=True)
        lease_until = peewee.DateTimeField(null=True)
        render_attempts = peewee.IntegerField(default=0)
        pdf_location = peewee.CharField(max_length=1000, null=True)
        pdf_size = peewee.BigIntegerField(null=True)
        totals = peewee.TextField(null=True)
        recipients = peewee.IntegerField(null=True)
        error = peewee.TextField(null=True)

        class Meta:
            database = db
            table_name = "reporting_runs"
            indexes = ((("state",), False),)

    class Delivery(peewee.Model):
        id = peewee.BigAutoField()
        subscription = peewee.ForeignKeyField(
            Subscription, column_name="subscription_id", on_delete="CASCADE"
        )
        week = peewee.CharField(max_length=8)
        run = peewee.ForeignKeyField(ReportRun, column_name="run_id", on_delete="CASCADE")
        state = peewee.CharField(max_length=16)
        attempts = peewee.IntegerField(default=0)
        claim = peewee.CharField(max_length=32, null=True)
        claimed_at = peewee.DateTimeField(null=True)
        recipient = peewee.CharField(max_length=254, null=True)
        sent_at = peewee.DateTimeField(null=True)
        error = peewee.TextField(null=True)

        class Meta:
            database = db
            table_name = "reporting_deliveries"
            indexes = ((("subscription_id", "week"), True), (("run_id", "state"), False))

    db.create_tables([Subscription, ReportRun, Delivery])
    # One real run per scope and week (dry runs apart): two schedulers, or a scheduler and an
    # admin, asking for the same run get the same row.
    db.execute_sql(
        "CREATE UNIQUE INDEX reporting_runs_one_per_scope_and_week "
        "ON reporting_runs (scope, week) WHERE dry_run = false"
    )


def down(migrator, db):
    for table in ("reporting_deliveries", "reporting_runs", "reporting_subscriptions"):
        db.execute_sql(f"DROP TABLE {table}")
