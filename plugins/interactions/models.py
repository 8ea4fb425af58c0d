"""Interactions as an append-only record: entries, their versions and in-error marks.

Nothing here is ever updated or deleted (the migration installs triggers that refuse it):

- ``Interaction`` is the entry itself: whose record it is, who wrote it and when.
- ``InteractionVersion`` holds what the entry says. Version 1 is the original as written;
  each amendment is a new row holding the **full** new version with its author, time and
  reason. The current view is the highest version.
- ``InteractionErrorMark`` says an entry was entered in error (at most one per entry), who
  said so, when and why. The entry stays in the record, flagged.
"""

from __future__ import annotations

import peewee

from core.auth.models import User
from core.db import Model, UTCDateTimeField, utcnow

KINDS = ("visit", "ward_round", "phone_call", "video_call", "other")
KIND_LABELS = {
    "visit": "Visit",
    "ward_round": "Ward round",
    "phone_call": "Phone call",
    "video_call": "Video call",
    "other": "Other",
}
OUTCOMES = ("healthy", "not_healthy")
OUTCOME_LABELS = {"healthy": "Healthy", "not_healthy": "Not healthy"}
# What a version holds, in the order forms and the history show it.
CONTENT_FIELDS = ("occurred_at", "kind", "summary", "notes", "outcome", "status_note")
SUMMARY_MAX_LENGTH = 200
NOTES_MAX_LENGTH = 10_000
STATUS_NOTE_MAX_LENGTH = 500
REASON_MAX_LENGTH = 500


class Interaction(Model):
    id = peewee.BigAutoField()
    patient_mrn = peewee.CharField(max_length=64)
    author = peewee.ForeignKeyField(User, column_name="author_id", on_delete="RESTRICT")
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "interactions_entries"
        indexes = ((("patient_mrn", "id"), False),)


class InteractionVersion(Model):
    id = peewee.BigAutoField()
    interaction = peewee.ForeignKeyField(
        Interaction, column_name="interaction_id", backref="versions", on_delete="RESTRICT"
    )
    number = peewee.IntegerField()  # 1: the original; 2, 3, ...: amendments
    author = peewee.ForeignKeyField(User, column_name="author_id", on_delete="RESTRICT")
    recorded_at = UTCDateTimeField(default=utcnow)
    reason = peewee.CharField(max_length=REASON_MAX_LENGTH, null=True)  # None for the original
    occurred_at = UTCDateTimeField()
    kind = peewee.CharField(max_length=16)
    summary = peewee.CharField(max_length=SUMMARY_MAX_LENGTH)
    notes = peewee.TextField(null=True)
    outcome = peewee.CharField(max_length=16)
    status_note = peewee.CharField(max_length=STATUS_NOTE_MAX_LENGTH, null=True)

    class Meta:
        table_name = "interactions_versions"
        # Two amendments racing for the same number: one wins, the other gets a 409.
        indexes = ((("interaction_id", "number"), True),)

    def content(self) -> dict:
        return {name: getattr(self, name) for name in CONTENT_FIELDS}


class InteractionErrorMark(Model):
    id = peewee.BigAutoField()
    interaction = peewee.ForeignKeyField(
        Interaction, column_name="interaction_id", unique=True, on_delete="RESTRICT"
    )
    author = peewee.ForeignKeyField(User, column_name="author_id", on_delete="RESTRICT")
    recorded_at = UTCDateTimeField(default=utcnow)
    reason = peewee.CharField(max_length=REASON_MAX_LENGTH)

    class Meta:
        table_name = "interactions_error_marks"


MODELS = [Interaction, InteractionVersion, InteractionErrorMark]
