"""Documents: the metadata in the database, the bytes in the store.

- ``Document`` is a stored file as it is now.
- ``DocumentChange`` is an append-only log of every create, update and delete, written in
  the same transaction as the change, holding a snapshot of the document after the change
  (for a delete: what the record held when it was deleted). The weekly report reads the
  week's new, updated and deleted documents from it with one range query on ``at``.
- ``DocumentFileRemoval`` is a file the store still has to remove: written in the
  transaction that deletes a document (and before an upload starts, so that an upload that
  dies half way leaves a removal to do, not an orphaned file).
"""

from __future__ import annotations

import peewee

from core.db import Model, UTCDateTimeField, utcnow

FILENAME_MAX_LENGTH = 255
STUDY_MAX_LENGTH = 100
CONTENT_TYPE_MAX_LENGTH = 255
USER_MAX_LENGTH = 254
LOCATION_MAX_LENGTH = 512
ACTIONS = ("created", "updated", "deleted")
REMOVAL_REASONS = ("upload", "delete")
# What a change snapshots, in this order.
SNAPSHOT_FIELDS = ("filename", "study", "content_type", "size", "md5", "file_location")


class Document(Model):
    id = peewee.BigAutoField()
    filename = peewee.CharField(max_length=FILENAME_MAX_LENGTH)
    file_location = peewee.CharField(max_length=LOCATION_MAX_LENGTH, unique=True)
    size = peewee.BigIntegerField()
    md5 = peewee.CharField(max_length=32)
    content_type = peewee.CharField(max_length=CONTENT_TYPE_MAX_LENGTH)
    study = peewee.CharField(max_length=STUDY_MAX_LENGTH, null=True)
    uploaded_by = peewee.CharField(max_length=USER_MAX_LENGTH)  # the uploader's email
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "reporting_documents"
        # The list, newest first, optionally for one study.
        indexes = ((("study", "id"), False),)


class DocumentChange(Model):
    id = peewee.BigAutoField()
    # Not a foreign key: the change outlives the document it describes.
    document_id = peewee.BigIntegerField()
    action = peewee.CharField(max_length=16)  # created, updated, deleted
    at = UTCDateTimeField(default=utcnow)
    by = peewee.CharField(max_length=USER_MAX_LENGTH)  # email of who made the change
    filename = peewee.CharField(max_length=FILENAME_MAX_LENGTH)
    study = peewee.CharField(max_length=STUDY_MAX_LENGTH, null=True)
    content_type = peewee.CharField(max_length=CONTENT_TYPE_MAX_LENGTH)
    size = peewee.BigIntegerField()
    md5 = peewee.CharField(max_length=32)
    file_location = peewee.CharField(max_length=LOCATION_MAX_LENGTH)

    class Meta:
        table_name = "reporting_document_changes"
        # "Changes between two times" (the week), for all studies or one.
        indexes = (
            (("at", "id"), False),
            (("study", "at"), False),
            (("document_id", "id"), False),
        )


class DocumentFileRemoval(Model):
    id = peewee.BigAutoField()
    file_location = peewee.CharField(max_length=LOCATION_MAX_LENGTH)
    reason = peewee.CharField(max_length=16)  # upload (in progress or failed), delete
    document_id = peewee.BigIntegerField(null=True)
    created_at = UTCDateTimeField(default=utcnow)
    # The sweep takes a removal only from this time on: for an upload, once it can no
    # longer be in progress; for a delete, once the request and its job had their chance.
    not_before = UTCDateTimeField()
    attempts = peewee.IntegerField(default=0)
    last_error = peewee.TextField(null=True)

    class Meta:
        table_name = "reporting_document_file_removals"
        indexes = ((("not_before",), False),)


MODELS = [Document, DocumentChange, DocumentFileRemoval]
