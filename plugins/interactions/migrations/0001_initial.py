"""The interactions tables, append-only: the database itself refuses UPDATE and DELETE."""

import peewee

TABLES = ("interactions_entries", "interactions_versions", "interactions_error_marks")
REFUSAL = "interactions are append-only: amend the entry or mark it entered in error"


def up(migrator, db):
    class User(peewee.Model):  # the core's table, as far as these foreign keys need it
        class Meta:
            database = db
            table_name = "core_users"

    class Interaction(peewee.Model):
        id = peewee.BigAutoField()
        patient_mrn = peewee.CharField(max_length=64)
        author = peewee.ForeignKeyField(User, column_name="author_id", on_delete="RESTRICT")
        created_at = peewee.DateTimeField()

        class Meta:
            database = db
            table_name = "interactions_entries"
            indexes = ((("patient_mrn", "id"), False),)

    class InteractionVersion(peewee.Model):
        id = peewee.BigAutoField()
        interaction = peewee.ForeignKeyField(
            Interaction, column_name="interaction_id", on_delete="RESTRICT"
        )
        number = peewee.IntegerField()
        author = peewee.ForeignKeyField(User, column_name="author_id", on_delete="RESTRICT")
        recorded_at = peewee.DateTimeField()
        reason = peewee.CharField(max_length=500, null=True)
        occurred_at = peewee.DateTimeField()
        kind = peewee.CharField(max_length=16)
        summary = peewee.CharField(max_length=200)
        notes = peewee.TextField(null=True)
        outcome = peewee.CharField(max_length=16)
        status_note = peewee.CharField(max_length=500, null=True)

        class Meta:
            database = db
            table_name = "interactions_versions"
            indexes = ((("interaction_id", "number"), True),)

    class InteractionErrorMark(peewee.Model):
        id = peewee.BigAutoField()
        interaction = peewee.ForeignKeyField(
            Interaction, column_name="interaction_id", unique=True, on_delete="RESTRICT"
        )
        author = peewee.ForeignKeyField(User, column_name="author_id", on_delete="RESTRICT")
        recorded_at = peewee.DateTimeField()
        reason = peewee.CharField(max_length=500)

        class Meta:
            database = db
            table_name = "interactions_error_marks"

    db.create_tables([Interaction, InteractionVersion, InteractionErrorMark])

    # Medical records are append-only: refuse changes below the application too, so that a
    # bug or a hand-written UPDATE cannot rewrite what a doctor wrote.
    if isinstance(db, peewee.PostgresqlDatabase):
        db.execute_sql(  # '%%': psycopg2 formats the text; PL/pgSQL gets '%' (the table's name)
            "CREATE FUNCTION interactions_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '%%: {REFUSAL}', TG_TABLE_NAME; END $$"
        )
        for table in TABLES:
            db.execute_sql(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION interactions_append_only()"
            )
            db.execute_sql(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION interactions_append_only()"
            )
    else:
        for table in TABLES:
            for operation in ("UPDATE", "DELETE"):
                db.execute_sql(
                    f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table}: {REFUSAL}'); END"
                )


def down(migrator, db):
    for table in reversed(TABLES):
        db.execute_sql(f"DROP TABLE {table}")
    if isinstance(db, peewee.PostgresqlDatabase):
        db.execute_sql("DROP FUNCTION interactions_append_only()")
