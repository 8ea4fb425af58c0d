"""Every medication event, stored once, as it was received."""

from __future__ import annotations

import peewee

from core.db import Model, UTCDateTimeField, utcnow


class MedicationEvent(Model):
    """One administration event. Rows are never updated or deleted: periods are derived."""

    id = peewee.BigAutoField()
    patient_mrn = peewee.CharField(max_length=64)
    medication = peewee.CharField(max_length=200)
    action = peewee.CharField(max_length=16)
    event_time = UTCDateTimeField()
    event_id = peewee.CharField(max_length=200, null=True)
    # sha256 of the producer's event id, or else of patient, medication, action and time:
    # a redelivered message finds its row already there and is stored once.
    dedupe_key = peewee.CharField(max_length=64, unique=True)
    received = peewee.TextField()  # the JSON object exactly as it arrived
    received_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "medications_events"
        indexes = ((("patient_mrn", "medication", "event_time"), False),)


MODELS = [MedicationEvent]
