"""Medication administration events: what one looks like, and reading them from files.

One schema validates every event, whichever way it arrives (``caredeck publish``, the API,
or a message on the queue from another producer), so the three give the same answer.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

import marshmallow as ma

from core.patients.models import MRN_RULE, is_valid_mrn

ACTIONS = ("start", "stop", "cancel_start", "cancel_stop")
# The older publisher format's names, and the names they stand for.
ALIASES = {"p_id": "patient_id", "medication_name": "medication"}
MEDICATION_MAX_LENGTH = 200
EVENT_ID_MAX_LENGTH = 200
# Around a record: blanks, line ends and a byte-order mark some exports start with.
BLANK = "\ufeff \t\r\n"


@dataclasses.dataclass(frozen=True)
class Event:
    """A valid event, with the object it came from (kept as received)."""

    patient_id: str
    medication: str
    action: str
    event_time: datetime.datetime  # aware
    event_id: str | None
    received: dict[str, Any]

    @property
    def dedupe_key(self) -> str:
        """The same key for every delivery of one event: what it says (patient, medication,
        action, the moment in UTC) and its producer's id if it has one.

        The id alone would not do: two producers may both number their events from 1, and
        an event is never dropped for sharing an id with a different one.
        """
        moment = self.event_time.astimezone(datetime.UTC).isoformat()
        identity = f"{self.patient_id}\n{self.medication}\n{self.action}\n{moment}"
        if self.event_id is not None:
            identity = f"id\n{self.event_id}\n{identity}"
        return hashlib.sha256(identity.encode()).hexdigest()

    @property
    def routing_key(self) -> str:
        return f"medication.{self.action}"


class Text(ma.fields.String):
    """A string with surrounding blanks removed that must not be empty."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        if not text:
            raise ma.ValidationError("Must not be empty.")
        if not text.isprintable():  # control characters, NUL, lone surrogates
            raise ma.ValidationError("Must not contain control or invalid characters.")
        return text


# Times outside these years are typing errors, and beyond them the arithmetic overflows.
EARLIEST = datetime.datetime(1900, 1, 1, tzinfo=datetime.UTC)
LATEST = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)


def _plausible(moment: datetime.datetime) -> None:
    try:
        inside = EARLIEST <= moment.astimezone(datetime.UTC) < LATEST
    except OverflowError:
        inside = False
    if not inside:
        raise ma.ValidationError("The time must be between the years 1900 and 2099.")


def _non_finite_numbers(data: Any) -> bool:
    """Whether NaN or Infinity hide anywhere in ``data`` (Python's JSON reads them; JSON
    does not have them, so other consumers of the stored copy would fail)."""
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return True
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def _valid_mrn(value: str) -> None:
    if not is_valid_mrn(value):
        raise ma.ValidationError(f"{value!r} is not a valid MRN. {MRN_RULE}")


class MedicationsEventSchema(ma.Schema):
    """One medication administration event."""

    class Meta:
        unknown = ma.EXCLUDE  # other producers' extra fields are kept in `received`

    patient_id = Text(
        required=True,
        validate=_valid_mrn,
        error_messages={"required": "Missing: the patient's MRN (patient_id, or p_id)."},
        metadata={"description": "The patient's MRN. The older format's `p_id` is accepted."},
    )
    medication = Text(
        required=True,
        validate=ma.validate.Length(max=MEDICATION_MAX_LENGTH),
        error_messages={"required": "Missing: the medication (medication, or medication_name)."},
        metadata={"description": "The medication. The older `medication_name` is accepted."},
    )
    action = ma.fields.String(
        required=True,
        validate=ma.validate.OneOf(
            ACTIONS, error="Unknown action {input!r}: use one of {choices}."
        ),
        error_messages={
            "required": "Missing: the action (start, stop, cancel_start, cancel_stop)."
        },
    )
    event_time = ma.fields.AwareDateTime(
        required=True,
        format="iso",
        validate=_plausible,
        error_messages={
            "required": "Missing: the event time (ISO 8601 with an offset).",
            "invalid": "Not an ISO 8601 time: use e.g. 2024-11-20T08:00:00+00:00.",
            "invalid_awareness": "The time has no offset: add one, e.g. +00:00.",
        },
        metadata={"description": "ISO 8601 with an offset (`+00:00` or `+0000`)."},
    )
    event_id = Text(
        load_default=None,
        allow_none=True,
        validate=ma.validate.Length(max=EVENT_ID_MAX_LENGTH),
        metadata={"description": "The producer's id for the event; redeliveries share it."},
    )

    @ma.pre_load
    def _older_names(self, data, **kwargs):
        if not isinstance(data, dict):
            kind = "null" if data is None else type(data).__name__
            raise ma.ValidationError(f"An event is a JSON object, not {kind}.")
        if not data:
            raise ma.ValidationError(
                "The event is empty: it needs patient_id, medication, action and event_time."
            )
        if _non_finite_numbers(data):
            raise ma.ValidationError("NaN and Infinity are not JSON numbers.")
        data = dict(data)
        for old, new in ALIASES.items():
            if old in data:
                value = data.pop(old)
                if new in data and data[new] != value:
                    raise ma.ValidationError(
                        f"{old} and {new} disagree ({value!r}, {data[new]!r}): send one.", old
                    )
                data.setdefault(new, value)
        return data


SCHEMA = MedicationsEventSchema()


class InvalidEvent(ValueError):
    """An event that cannot be taken; the message names each field at fault."""

    def __init__(self, errors: dict | list | str) -> None:
        self.errors = errors
        super().__init__(describe(errors))


def describe(errors: dict | list | str) -> str:
    """Marshmallow's error dict as one sentence: ``field: message; field: message``."""
    if isinstance(errors, str):
        return errors
    if isinstance(errors, list):
        return " ".join(describe(item) for item in errors)
    parts = []
    for name, messages in errors.items():
        text = describe(messages)
        parts.append(text if name == "_schema" else f"{name}: {text}")
    return "; ".join(parts)


def parse(data: Any) -> Event:
    """Validate one received object; :class:`InvalidEvent` says what is wrong."""
    try:
        loaded = SCHEMA.load(data)
    except ma.ValidationError as error:
        raise InvalidEvent(error.normalized_messages()) from None
    return Event(received=data, **loaded)


@dataclasses.dataclass(frozen=True)
class Line:
    """One input record: where it was, and either its event or why it was refused."""

    number: int  # the line in the file (the item's position, for a JSON array)
    text: str
    event: Event | None = None
    error: str | None = None


def read(stream: Iterable[str], *, format: str = "auto") -> Iterator[Line]:
    """Read events from JSON Lines, a JSON array or CSV (with a header row).

    ``format="auto"`` looks at the first character that is not blank: ``[`` is an array,
    ``{`` JSON Lines, anything else CSV. JSON Lines and CSV are read a line at a time.
    """
    stream = iter(stream)
    head = []
    for text in stream:
        head.append(text)
        if text.strip(BLANK):
            break
    lines = itertools.chain(head, stream)
    if format == "auto":
        first = head[-1].strip(BLANK)[:1] if head else ""
        format = {"[": "json", "{": "jsonl"}.get(first, "csv")
    readers = {"json": _read_array, "jsonl": _read_lines, "csv": _read_csv}
    if format not in readers:
        raise ValueError(f"Unknown format {format!r}: use auto, jsonl, json or csv.")
    yield from readers[format](lines)


def _validated(number: int, text: str, data: Any) -> Line:
    try:
        return Line(number, text, event=parse(data))
    except InvalidEvent as error:
        return Line(number, text, error=str(error))


def _read_lines(lines: Iterable[str]) -> Iterator[Line]:
    for number, text in enumerate(lines, start=1):
        text = text.strip(BLANK)
        if not text:
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            yield Line(number, text, error=f"Not JSON: {error.msg} (column {error.colno}).")
            continue
        yield _validated(number, text, data)


def _read_array(lines: Iterable[str]) -> Iterator[Line]:
    text = "".join(lines).strip(BLANK)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        yield Line(error.lineno, "", error=f"Not JSON: {error.msg} (line {error.lineno}).")
        return
    if not isinstance(items, list):
        yield Line(1, "", error="A JSON file of events holds an array of event objects.")
        return
    for number, item in enumerate(items, start=1):
        yield _validated(number, json.dumps(item), item)


def _read_csv(lines: Iterable[str]) -> Iterator[Line]:
    reader = csv.DictReader(line.lstrip("\ufeff") for line in lines)
    for row in reader:
        cells = {key: value for key, value in row.items() if key is not None}
        if all(value in (None, "") for value in cells.values()):
            continue
        # Empty optional cells are absent, not empty strings.
        data = {key: value for key, value in cells.items() if value not in (None, "")}
        if data.get("event_id") is None:
            data.pop("event_id", None)
        text = json.dumps(cells)
        if None in row:
            yield Line(reader.line_num, text, error="The row has more cells than the header.")
            continue
        yield _validated(reader.line_num, text, data)
