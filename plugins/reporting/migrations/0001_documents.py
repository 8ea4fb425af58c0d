"""The documents store's tables; the change log is append-only (the database refuses UPDATE
and DELETE on it)."""

import peewee
from playhouse.sqlite_ext import AutoIncrementField

CHANGES = "reporting_document_changes"
REFUSAL = "the document change log is append-only"


def up(migrator, db):
    def never_reused():
        # SQLite reuses the highest rowid once its row is deleted unless the key is
        # AUTOINCREMENT; PostgreSQL's sequence never gives a number twice.
        if isinstance(db, peewee.SqliteDatabase):
            return AutoIncrementField()
        return peewee.BigAutoField()

    class Document(peewee.Model):
        # A deleted document's id never comes back (the change log names it).
        id = never_reused()
        filename = peewee.CharField(max_length=255)
        file_location = peewee.CharField(max_length=512, unique=True)
        size = peewee.BigIntegerField()
        md5 = peewee.CharField(max_length=32)
        content_type = peewee.CharField(max_length=255)
        study = peewee.CharField(max_length=100, null=True)
        uploaded_by = peewee.CharField(max_length=254)
        created_at = peewee.DateTimeField()
        updated_at = peewee.DateTimeField()

        class Meta:
            database = db
            table_name = "reporting_documents"
            indexes = ((("study", "id"), False),)

    class DocumentChange(peewee.Model):
        id = peewee.BigAutoField()
        document_id = peewee.BigIntegerField()
        action = peewee.CharField(max_length=16)
        at = peewee.DateTimeField()
        by = peewee.CharField(max_length=254)
        filename = peewee.CharField(max_length=255)
        study = peewee.CharField(max_length=100, null=True)
        content_type = peewee.CharField(max_length=255)
        size = peewee.BigIntegerField()
        md5 = peewee.CharField(max_length=32)
        file_location = peewee.CharField(max_length=512)

        class Meta:
            database = db
            table_name = CHANGES
            indexes = (
                (("at", "id"), False),
                (("study", "at"), False),
                (("document_id", "id"), False),
            )

    class DocumentFileRemoval(peewee.Model):
        # Nor a done removal's: a job still retrying "removal 7" must not carry out a newer
        # removal 7 (an upload in progress would lose its file).
        id = never_reused()
        file_location = peewee.CharField(max_length=512)
        reason = peewee.CharField(max_length=16)
        document_id = peewee.BigIntegerField(null=True)
        created_at = peewee.DateTimeField()
        not_before = peewee.DateTimeField()
        attempts = peewee.IntegerField(default=0)
        last_error = peewee.TextField(null=True)

        class Meta:
            database = db
            table_name = "reporting_document_file_removals"
            indexes = ((("not_before",), False),)

    db.create_tables([Document, DocumentChange, DocumentFileRemoval])

    if isinstance(db, peewee.PostgresqlDatabase):
        db.execute_sql(  # '%%': psycopg2 formats the text; PL/pgSQL gets '%' (the table's name)
            "CREATE FUNCTION reporting_document_changes_append_only() RETURNS trigger "
            "LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '%%: {REFUSAL}', TG_TABLE_NAME; END $$"
        )
        db.execute_sql(
            f"CREATE TRIGGER {CHANGES}_append_only BEFORE UPDATE OR DELETE ON {CHANGES} "
            "FOR EACH ROW EXECUTE FUNCTION reporting_document_changes_append_only()"
        )
        db.execute_sql(
            f"CREATE TRIGGER {CHANGES}_no_truncate BEFORE TRUNCATE ON {CHANGES} "
            "FOR EACH STATEMENT EXECUTE FUNCTION reporting_document_changes_append_only()"
        )
    else:
        for operation in ("UPDATE", "DELETE"):
            db.execute_sql(
                f"CREATE TRIGGER {CHANGES}_no_{operation.lower()} BEFORE {operation} ON {CHANGES} "
                f"BEGIN SELECT RAISE(ABORT, '{CHANGES}: {REFUSAL}'); END"
            )


def down(migrator, db):
    for table in (
        "reporting_document_file_removals",
        CHANGES,
        "reporting_documents",
    ):
        db.execute_sql(f"DROP TABLE {table}")
    if isinstance(db, peewee.PostgresqlDatabase):
        db.execute_sql("DROP FUNCTION reporting_document_changes_append_only()")
