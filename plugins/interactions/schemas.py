"""What an interaction holds and what each request takes: one set of rules, used by the API
and by the chart's forms, so that a rule and its wording exist once."""

from __future__ import annotations

import datetime
import unicodedata
from collections.abc import Mapping

import marshmallow as ma
from marshmallow import fields, validate

from core.db import utcnow
from plugins.interactions.models import (
    KINDS,
    NOTES_MAX_LENGTH,
    OUTCOMES,
    REASON_MAX_LENGTH,
    STATUS_NOTE_MAX_LENGTH,
    SUMMARY_MAX_LENGTH,
)

# A device clock a little ahead of the server's is not "the future": up to two minutes of
# skew are accepted (a form filled in "now" on a phone reaches the server a moment later).
CLOCK_SKEW = datetime.timedelta(minutes=2)
# Earlier than this is a typing error, and far beyond it the arithmetic overflows.
EARLIEST = datetime.datetime(1900, 1, 1, tzinfo=datetime.UTC)
EXAMPLE_TIME = "2024-11-20T08:30:00+00:00"
# Optional fields a form may leave empty: an empty string there means "no value".
OPTIONAL_TEXT = ("notes", "status_note")
ALLOWED_WHITESPACE = {"\n", "\r", "\t"}


def check_plausible(moment: datetime.datetime) -> None:
    """Not before 1900, and not so near year 1 or 9999 that its offset overflows (the query
    parameters ``from`` / ``to`` too: the database driver converts them to UTC)."""
    try:
        utc = moment.astimezone(datetime.UTC)
    except OverflowError:
        if moment.year > 1900:
            raise ma.ValidationError("The time is too late: its offset overflows.") from None
        utc = None
    if utc is None or utc < EARLIEST:
        raise ma.ValidationError("The time cannot be before 1900-01-01.")


def check_occurred_at(moment: datetime.datetime) -> None:
    check_plausible(moment)
    moment = moment.astimezone(datetime.UTC)
    if moment > utcnow() + CLOCK_SKEW:
        raise ma.ValidationError(
            "The time is in the future: an interaction is recorded once it has happened."
        )


# In one line of text these reorder or break what a reader sees: the bidirectional
# embeddings, overrides and isolates, and the Unicode line and paragraph separators.
SINGLE_LINE_FORBIDDEN = frozenset(
    [chr(code) for code in range(0x202A, 0x202F)]
    + [chr(code) for code in range(0x2066, 0x206A)]
    + ["\u2028", "\u2029"]
)


def _no_control_characters(multiline: bool, max_length: int):
    allowed = ALLOWED_WHITESPACE if multiline else set()

    def check(text: str) -> None:
        if len(text) > max_length:
            return  # the length check says what is wrong; no need to read a megabyte
        for character in text:
            if character in allowed:
                continue
            if unicodedata.category(character) in ("Cc", "Cs"):  # controls, lone surrogates
                raise ma.ValidationError("Must not contain control or invalid characters.")
            if not multiline and character in SINGLE_LINE_FORBIDDEN:
                raise ma.ValidationError(
                    "Must not contain line separators or text-direction controls "
                    f"(U+{ord(character):04X})."
                )

    return check


def text(max_length: int, description: str, label: str, *, multiline=False, **options):
    return fields.String(
        validate=[
            validate.Length(
                max=max_length, error=f"The {label} can be at most {max_length} characters."
            ),
            _no_control_characters(multiline, max_length),
        ],
        metadata={"description": description},
        **options,
    )


def occurred_at_field(**options) -> fields.AwareDateTime:
    return fields.AwareDateTime(
        format="iso",
        validate=check_occurred_at,
        error_messages={
            "invalid": f"Not an ISO 8601 time: use e.g. {EXAMPLE_TIME}.",
            "invalid_awareness": "The time has no offset: add one, e.g. +00:00.",
            "null": "Leave the time out for now, or give one.",
        },
        metadata={
            "description": "When the interaction happened: ISO 8601 with an offset. Defaults "
            "to now; never in the future (up to two minutes of clock skew are accepted).",
            "example": EXAMPLE_TIME,
        },
        **options,
    )


def kind_field(**options) -> fields.String:
    return fields.String(
        validate=validate.OneOf(KINDS, error="Choose one of: " + ", ".join(KINDS) + "."),
        metadata={"description": "One of " + ", ".join(KINDS) + ".", "example": "visit"},
        **options,
    )


def outcome_field(**options) -> fields.String:
    return fields.String(
        validate=validate.OneOf(OUTCOMES, error="Choose one of: " + ", ".join(OUTCOMES) + "."),
        metadata={
            "description": "Whether the patient was healthy: " + " or ".join(OUTCOMES) + ".",
            "example": "healthy",
        },
        **options,
    )


def summary_field(**options) -> fields.String:
    return fields.String(
        validate=[
            validate.Length(
                min=1,
                max=SUMMARY_MAX_LENGTH,
                error=f"Enter a summary of 1 to {SUMMARY_MAX_LENGTH} characters.",
            ),
            _no_control_characters(multiline=False, max_length=SUMMARY_MAX_LENGTH),
        ],
        metadata={
            "description": f"One line, at most {SUMMARY_MAX_LENGTH} characters.",
            "example": "Follow-up after pneumonia; chest clear",
        },
        **options,
    )


def notes_field(**options) -> fields.String:
    return text(
        NOTES_MAX_LENGTH,
        f"Free text, at most {NOTES_MAX_LENGTH} characters; null or left out for none.",
        "notes",
        multiline=True,
        allow_none=True,
        **options,
    )


def status_note_field(**options) -> fields.String:
    return text(
        STATUS_NOTE_MAX_LENGTH,
        "An optional clinical status note, e.g. 'afebrile, SpO2 97% on room air'.",
        "status note",
        multiline=True,
        allow_none=True,
        **options,
    )


def reason_field() -> fields.String:
    return fields.String(
        required=True,
        validate=[
            validate.Length(
                min=1,
                max=REASON_MAX_LENGTH,
                error=f"Give a reason of 1 to {REASON_MAX_LENGTH} characters.",
            ),
            _no_control_characters(multiline=True, max_length=REASON_MAX_LENGTH),
        ],
        error_messages={"required": "Give a reason.", "null": "Give a reason."},
        metadata={"description": "Why: it stays in the record with your name and the time."},
    )


class _Tidy(ma.Schema):
    """Trim text and write line breaks as ``\n`` (browsers send a textarea's as ``\r\n``,
    which would make an unchanged field look changed); an empty optional field means "no
    value" and an empty time means "now" (what an untouched form field sends)."""

    @ma.pre_load
    def _tidy(self, data, **kwargs):
        if not isinstance(data, Mapping):
            return data  # marshmallow reports the wrong type itself
        tidy = {}
        for key, value in data.items():
            if isinstance(value, str):
                value = value.replace("\r\n", "\n").replace("\r", "\n").strip()
                if value == "" and key in OPTIONAL_TEXT:
                    value = None
                elif value == "" and key == "occurred_at":
                    continue
            tidy[key] = value
        return tidy


class InteractionsNewSchema(_Tidy):
    """What recording an interaction takes."""

    occurred_at = occurred_at_field()
    kind = kind_field(required=True, error_messages={"required": "Choose the kind."})
    summary = summary_field(required=True, error_messages={"required": "Enter a summary."})
    notes = notes_field()
    outcome = outcome_field(
        required=True, error_messages={"required": "Choose healthy or not healthy."}
    )
    status_note = status_note_field()


class InteractionsAmendmentSchema(_Tidy):
    """An amendment: the reason, and the fields that change (the others stay as they are)."""

    reason = reason_field()
    base_version = fields.Integer(
        strict=True,
        validate=validate.Range(min=1, max=2**31 - 1, error="Not a version number."),
        metadata={
            "description": "The version you amended (the entry's `version` as you read it). "
            "Optional, but send it: if the entry was amended meanwhile the answer is `409` "
            "instead of your amendment silently undoing the newer one.",
            "example": 1,
        },
    )
    occurred_at = occurred_at_field()
    kind = kind_field()
    summary = summary_field()
    notes = notes_field()
    outcome = outcome_field()
    status_note = status_note_field()


class InteractionsErrorMarkSchema(_Tidy):
    reason = reason_field()
