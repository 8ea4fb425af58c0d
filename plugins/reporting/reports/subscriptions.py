"""Subscribing and unsubscribing (the API and the page share these)."""

from __future__ import annotations

import unicodedata

import marshmallow as ma

from core.db import utcnow
from plugins.reporting.reports import timing
from plugins.reporting.reports.models import (
    STUDY_MAX_LENGTH,
    WEEKDAYS,
    Subscription,
    scope_of,
)

MAX_PER_USER = 20


def _check_time(text: str) -> None:
    try:
        timing.parse_time(text)
    except ValueError as error:
        raise ma.ValidationError(str(error)) from None


def check_study(text: str | None) -> None:
    """A study name goes into email headers and file names: no control characters (a
    newline, NUL, U+2028, a bidi override...)."""
    if text is not None and any(
        unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") for c in text
    ):
        raise ma.ValidationError(
            "A study name cannot contain control characters (a newline, a tab, NUL...)."
        )


def _check_zone(text: str) -> None:
    try:
        timing.zone(text)
    except ValueError as error:
        raise ma.ValidationError(str(error)) from None


class ReportingSubscriptionNewSchema(ma.Schema):
    weekday = ma.fields.String(
        required=True,
        validate=ma.validate.OneOf(
            WEEKDAYS, error="Choose a weekday: " + ", ".join(WEEKDAYS) + "."
        ),
        metadata={"description": "The day the report arrives, in your time zone."},
    )
    time = ma.fields.String(
        required=True,
        validate=_check_time,
        metadata={"description": "Local time, HH:MM (24-hour clock).", "example": "08:00"},
    )
    timezone = ma.fields.String(
        required=True,
        validate=_check_zone,
        metadata={"description": "IANA time zone.", "example": "Europe/Berlin"},
    )
    study = ma.fields.String(
        load_default=None,
        allow_none=True,
        validate=[ma.validate.Length(min=1, max=STUDY_MAX_LENGTH), check_study],
        metadata={"description": "One study's report; null (default) for all studies."},
    )

    @ma.pre_load
    def _normalise(self, data, **kwargs):
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("weekday"), str):
                data["weekday"] = data["weekday"].strip().lower()
            if isinstance(data.get("study"), str):
                data["study"] = data["study"].strip() or None
        return data


class ReportingSubscriptionSchema(ma.Schema):
    id = ma.fields.Integer()
    weekday = ma.fields.String(metadata={"enum": list(WEEKDAYS)})
    time = ma.fields.String()
    timezone = ma.fields.String()
    study = ma.fields.String(allow_none=True)
    next_due_at = ma.fields.AwareDateTime(
        metadata={"description": "When the next report goes out (UTC)."}
    )
    created_at = ma.fields.AwareDateTime()


class SubscriptionError(Exception):
    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def as_dict(subscription: Subscription) -> dict:
    return {
        "id": subscription.id,
        "weekday": WEEKDAYS[subscription.weekday],
        "time": subscription.time,
        "timezone": subscription.timezone,
        "study": subscription.study,
        "next_due_at": subscription.next_due_at,
        "created_at": subscription.created_at,
    }


def of_user(user) -> list[Subscription]:
    return list(
        Subscription.select()
        .where((Subscription.user == user.id) & Subscription.cancelled_at.is_null())
        .order_by(Subscription.id)
    )


def create(user, data: dict) -> Subscription:
    """A new subscription (validated ``data``); the same report at the same time twice is
    refused (409), as is more than ``MAX_PER_USER``."""
    weekday = WEEKDAYS.index(data["weekday"])
    mine = of_user(user)
    for other in mine:
        if (other.weekday, other.time, other.timezone, other.study) == (
            weekday,
            data["time"],
            data["timezone"],
            data["study"],
        ):
            raise SubscriptionError("You already have this subscription.")
    if len(mine) >= MAX_PER_USER:
        raise SubscriptionError(f"You can have at most {MAX_PER_USER} subscriptions.")
    now = utcnow()
    return Subscription.create(
        user=user.id,
        weekday=weekday,
        time=data["time"],
        timezone=data["timezone"],
        study=data["study"],
        scope=scope_of(data["study"]),
        created_at=now,
        next_due_at=timing.next_due(weekday, data["time"], data["timezone"], now),
    )


def find_own(user, subscription_id: int) -> Subscription | None:
    return Subscription.get_or_none(
        (Subscription.id == subscription_id)
        & (Subscription.user == user.id)
        & Subscription.cancelled_at.is_null()
    )


def cancel(subscription: Subscription) -> bool:
    """Cancel (idempotent); the row stays for the ledger. True if it was active."""
    return bool(
        Subscription.update(cancelled_at=utcnow())
        .where((Subscription.id == subscription.id) & Subscription.cancelled_at.is_null())
        .execute()
    )
