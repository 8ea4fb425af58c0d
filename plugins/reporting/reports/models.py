"""Report subscriptions, report runs and the per-recipient delivery ledger.

- ``Subscription``: a user's weekly report, for one study or all (``study`` null), due each
  week on a weekday at a local time in the subscriber's zone. ``next_due_at`` is that moment
  in UTC, recomputed in the zone after every occurrence (so 08:00 stays 08:00 local across
  daylight-saving changes). A cancelled subscription keeps its row (``cancelled_at``) so that
  the ledger keeps pointing at it.
- ``ReportRun``: one per scope (a study, or all studies) and ISO week (a unique index, dry runs
  apart): the PDF is rendered once for it and kept in the file store.
- ``Delivery``: the ledger, one row per subscription and week (a unique index). A send claims
  its row before talking to the mail server, so each email goes out at most once, and the
  row says what happened to it.
"""

from __future__ import annotations

import peewee

from core.auth.models import User
from core.db import Model, UTCDateTimeField, utcnow

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
ALL_STUDIES = "*"  # the scope of a subscription or run that covers every study
RUN_STATES = ("queued", "rendering", "sending", "succeeded", "failed")
DELIVERY_STATES = ("pending", "claimed", "sending", "sent", "failed", "suppressed")
STUDY_MAX_LENGTH = 200


def scope_of(study: str | None) -> str:
    return ALL_STUDIES if study is None else f"study:{study}"


class Subscription(Model):
    id = peewee.BigAutoField()
    user = peewee.ForeignKeyField(User, column_name="user_id", on_delete="CASCADE")
    weekday = peewee.SmallIntegerField()  # 0 Monday ... 6 Sunday (ISO weekday - 1)
    time = peewee.CharField(max_length=5)  # HH:MM, local to ``timezone``
    timezone = peewee.CharField(max_length=64)
    study = peewee.CharField(max_length=STUDY_MAX_LENGTH, null=True)
    scope = peewee.CharField(max_length=STUDY_MAX_LENGTH + 6)
    created_at = UTCDateTimeField(default=utcnow)
    next_due_at = UTCDateTimeField()
    cancelled_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "reporting_subscriptions"
        indexes = ((("next_due_at",), False), (("user_id",), False))


class ReportRun(Model):
    id = peewee.BigAutoField()
    scope = peewee.CharField(max_length=STUDY_MAX_LENGTH + 6)
    study = peewee.CharField(max_length=STUDY_MAX_LENGTH, null=True)
    week = peewee.CharField(max_length=8)  # ISO week, 2026-W47
    dry_run = peewee.BooleanField(default=False)
    state = peewee.CharField(max_length=16, default="queued")
    created_at = UTCDateTimeField(default=utcnow)
    started_at = UTCDateTimeField(null=True)  # rendering began (the latest attempt)
    rendered_at = UTCDateTimeField(null=True)
    finished_at = UTCDateTimeField(null=True)
    # Who enqueued the latest job for it, when: two schedulers enqueue a run once.
    enqueued_at = UTCDateTimeField(null=True)
    # The working lease of the job rendering or sending it; past it, the run is stalled.
    lease_until = UTCDateTimeField(null=True)
    render_attempts = peewee.IntegerField(default=0)
    pdf_location = peewee.CharField(max_length=1000, null=True)
    pdf_size = peewee.BigIntegerField(null=True)
    totals = peewee.TextField(null=True)  # JSON: the report's counts
    recipients = peewee.IntegerField(null=True)
    error = peewee.TextField(null=True)

    class Meta:
        table_name = "reporting_runs"
        indexes = ((("state",), False),)


class Delivery(Model):
    id = peewee.BigAutoField()
    subscription = peewee.ForeignKeyField(
        Subscription, column_name="subscription_id", on_delete="CASCADE"
    )
    week = peewee.CharField(max_length=8)
    run = peewee.ForeignKeyField(ReportRun, column_name="run_id", on_delete="CASCADE")
    state = peewee.CharField(max_length=16, default="pending")
    attempts = peewee.IntegerField(default=0)
    claim = peewee.CharField(max_length=32, null=True)  # the batch that holds the row
    claimed_at = UTCDateTimeField(null=True)
    recipient = peewee.CharField(max_length=254, null=True)
    sent_at = UTCDateTimeField(null=True)
    error = peewee.TextField(null=True)

    class Meta:
        table_name = "reporting_deliveries"
        indexes = (
            (("subscription_id", "week"), True),
            (("run_id", "state"), False),
        )


MODELS = [Subscription, ReportRun, Delivery]
