"""The PMS and LIS file formats: which table a header belongs to, and one row's values.

Tables and columns
==================

A file's table is recognised by its header, never by its name. Header names are matched
case-insensitively after trimming, in any order; ``CAREDECK_MONITORING_COLUMN_ALIASES`` maps
renamed columns to the known names (``admissions.ward=department``). The table is the one
whose known columns the header has most of; a tie, or no known column at all, quarantines
the file. Columns marked * are required: a file without one is quarantined with a message
naming every missing column. A date column and its time column are required together.

==============  ==============================================================================
patients        patient_id*, first_name, last_name, date_of_birth, primary_physician,
                insurance_provider, blood_type, allergies
admissions      patient_id*, hospitalization_case_number*, admission_date*, admission_time*,
                release_date, release_time, department, room_number
lab_tests       test_id*, patient_id*, test_name, order_date*, order_time*,
                ordering_physician
lab_results     result_id*, test_id*, result_value, result_unit, reference_range,
                result_status, performed_date*, performed_time*, reviewing_physician
==============  ==============================================================================

Required are the natural keys, the patient, and the times the worklist is computed from: an
LIS file without its order or performed times would otherwise load as "no lab activity" and
put tested patients on the worklist. A missing optional column is null on every row. Columns
that are not known are kept per row as a JSON object (``extra``) and reported.

Values
======

- Missing: an empty cell, ``NULL``, ``NA`` or ``N/A`` (exactly these; ``None`` is a value,
  as in "allergies: None"). Every value is trimmed.
- Dates: ``M/D/YYYY`` (leading zeros allowed) or ``YYYY-MM-DD``, in any date column.
- Times: ``h:MM:SS AM/PM``, ``h:MM AM/PM`` (either case), ``HH:MM`` or ``HH:MM:SS``.
- A date and time are the hospital's local time (``CAREDECK_TIMEZONE``) and are stored as
  UTC. A local time that does not exist (the spring-forward gap) or exists twice (the
  autumn fold) is read with ``fold=0``: before the change, the same on every run.
- A row is rejected (the rest of the file is ingested) when: a key or patient_id is
  missing or too long; a patient_id is not a valid MRN for the core registry; a date or
  time does not parse; one of a date and its time is missing but not the other; a required
  moment (admission) is missing; a value is longer than its column; or the row has fewer
  fields than the header (more are accepted only when the surplus fields are empty).
  Every reason names the column and the value.
"""

from __future__ import annotations

import datetime
import json
import re
import zoneinfo
from dataclasses import dataclass, field

from core.patients.models import MRN_RULE, is_valid_mrn
from plugins.monitoring import models

MISSING = frozenset({"", "NULL", "NA", "N/A"})
UTC = datetime.UTC
CACHE_LIMIT = 200_000  # entries per cache, so hostile input cannot grow memory unbounded
MIN_YEAR, MAX_YEAR = 1800, 2200
# Real files have about ten columns, and a few more after a schema change. A header with
# more (50,000 in a hostile file) quarantines the file instead of adding a finding per
# column and keeping every value of every row in its extra.
MAX_COLUMNS = 1000
SHOWN_EXTRA_VALUES = 5  # extra values named in a rejection (a row can have millions)


class RowError(ValueError):
    """A row cannot be ingested; the message names the column and the value."""


@dataclass(frozen=True)
class Field:
    """One database column of a source table and the source column(s) it is read from."""

    name: str  # the database column
    sources: tuple[str, ...]  # one source column, or (date column, time column)
    kind: str  # key, mrn, text, date, moment
    required: bool = False  # the header must have the column(s)
    max_length: int | None = None


@dataclass(frozen=True)
class Table:
    name: str
    model: type
    key: tuple[str, ...]  # database columns of the natural key
    fields: tuple[Field, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """Known source columns, in the real files' order."""
        return tuple(source for f in self.fields for source in f.sources)

    @property
    def required_columns(self) -> frozenset[str]:
        return frozenset(source for f in self.fields if f.required for source in f.sources)


def _table(name: str, model: type, key: tuple[str, ...], *specs: tuple) -> Table:
    fields = []
    for db_name, sources, kind, *rest in specs:
        required = bool(rest and rest[0])
        max_length = getattr(model._meta.fields[db_name], "max_length", None)
        if kind == "moment":
            sources = tuple(sources)
        else:
            sources = (sources,)
        fields.append(Field(db_name, sources, kind, required, max_length))
    return Table(name, model, key, tuple(fields))


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        _table(
            "patients",
            models.PmsPatient,
            ("patient_id",),
            ("patient_id", "patient_id", "mrn", True),
            ("first_name", "first_name", "text"),
            ("last_name", "last_name", "text"),
            ("date_of_birth", "date_of_birth", "date"),
            ("primary_physician", "primary_physician", "text"),
            ("insurance_provider", "insurance_provider", "text"),
            ("blood_type", "blood_type", "text"),
            ("allergies", "allergies", "text"),
        ),
        _table(
            "admissions",
            models.Admission,
            ("case_number",),
            ("case_number", "hospitalization_case_number", "key", True),
            ("patient_id", "patient_id", "mrn", True),
            ("admitted_at", ("admission_date", "admission_time"), "moment", True),
            ("released_at", ("release_date", "release_time"), "moment"),
            ("department", "department", "text"),
            ("room", "room_number", "text"),
        ),
        _table(
            "lab_tests",
            models.LabTest,
            ("test_id", "patient_id"),
            ("test_id", "test_id", "key", True),
            ("patient_id", "patient_id", "mrn", True),
            ("test_name", "test_name", "text"),
            ("ordered_at", ("order_date", "order_time"), "moment", True),
            ("ordering_physician", "ordering_physician", "text"),
        ),
        _table(
            "lab_results",
            models.LabResult,
            ("result_id",),
            ("result_id", "result_id", "key", True),
            ("test_id", "test_id", "key", True),
            ("value", "result_value", "text"),
            ("unit", "result_unit", "text"),
            ("reference_range", "reference_range", "text"),
            ("status", "result_status", "text"),
            ("performed_at", ("performed_date", "performed_time"), "moment", True),
            ("reviewing_physician", "reviewing_physician", "text"),
        ),
    )
}
assert tuple(TABLES) == models.TABLES
# A moment a row cannot do without (the others may be missing in a row: a result not yet
# performed, an order without a time).
MOMENTS_REQUIRED_IN_ROW = frozenset({("admissions", "admitted_at")})


# Settings -----------------------------------------------------------------------------------


def parse_aliases(text: str) -> dict[str, dict[str, str]]:
    """``"admissions.ward=department, lab_tests.ordered_by=ordering_physician"`` to
    ``{"admissions": {"ward": "department"}, ...}``; ``ValueError`` with a short reason."""
    aliases: dict[str, dict[str, str]] = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        if "=" not in entry:
            raise ValueError(f"must list table.new_name=known_name entries; {entry!r} has no '='")
        left, known = (part.strip().lower() for part in entry.split("=", 1))
        table, dot, new = left.partition(".")
        table, new = table.strip(), new.strip()
        if not dot or not table or not new or not known:
            raise ValueError(f"must list table.new_name=known_name entries; got {entry!r}")
        if table not in TABLES:
            raise ValueError(f"names table {table!r}; the tables are {', '.join(TABLES)}")
        columns = TABLES[table].columns
        if known not in columns:
            raise ValueError(
                f"maps {table}.{new} to {known!r}, which is not a {table} column "
                f"({', '.join(columns)})"
            )
        if new in columns:
            raise ValueError(f"renames {table}.{new}, which is itself a known {table} column")
        if aliases.get(table, {}).get(new, known) != known:
            raise ValueError(f"maps {table}.{new} twice")
        aliases.setdefault(table, {})[new] = known
    return aliases


def aliases_from(value) -> dict[str, dict[str, str]]:
    """The setting as read (a dict) or as text (from a test or a caller)."""
    if isinstance(value, str):
        return parse_aliases(value)
    return {table: dict(names) for table, names in (value or {}).items()}


# Dates and times ----------------------------------------------------------------------------

_DATE_MDY = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
_DATE_ISO = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
_TIME = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?(?:\s*([AaPp])\.?[Mm]\.?)?")


def parse_date(text: str) -> datetime.date | None:
    """``M/D/YYYY`` or ``YYYY-MM-DD``; ``None`` if it is neither (or not a real date)."""
    match = _DATE_MDY.fullmatch(text)
    if match:
        month, day, year = (int(g) for g in match.groups())
    else:
        match = _DATE_ISO.fullmatch(text)
        if not match:
            return None
        year, month, day = (int(g) for g in match.groups())
    if not MIN_YEAR <= year <= MAX_YEAR:
        return None
    try:
        return datetime.date(year, month, day)
    except ValueError:
        return None


def parse_time(text: str) -> datetime.timedelta | None:
    """Time of day as a duration since midnight; ``None`` if it does not parse."""
    match = _TIME.fullmatch(text)
    if not match:
        return None
    hour, minute = int(match[1]), int(match[2])
    second = int(match[3]) if match[3] else 0
    if minute > 59 or second > 59:
        return None
    if match[4]:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if match[4] in "Pp" else 0)
    elif hour > 23:
        return None
    return datetime.timedelta(hours=hour, minutes=minute, seconds=second)


class LocalClock:
    """Reads the hospital's local dates and times into naive-UTC text for the database,
    with caches: a file repeats the same few thousand dates and times millions of times."""

    def __init__(self, zone: str):
        self.zone = zoneinfo.ZoneInfo(zone)
        self._days: dict[str, tuple[datetime.date, datetime.datetime | None]] = {}
        self._times: dict[str, datetime.timedelta] = {}
        self._dates: dict[str, str] = {}

    def day(self, text: str) -> tuple[datetime.date, datetime.datetime | None] | None:
        """The date, and local midnight as naive UTC when the whole day has one UTC offset
        (``None`` on a day the clocks change: those rows take the exact path)."""
        cached = self._days.get(text)
        if cached is not None:
            return cached
        date = parse_date(text)
        if date is None:
            return None
        start = datetime.datetime.combine(date, datetime.time(0), tzinfo=self.zone)
        end = datetime.datetime.combine(date, datetime.time(23, 59, 59), tzinfo=self.zone)
        offset = start.utcoffset()
        base = None
        if offset == end.utcoffset():
            base = start.replace(tzinfo=None) - offset
        if len(self._days) >= CACHE_LIMIT:
            self._days.clear()
        self._days[text] = (date, base)
        return date, base

    def time(self, text: str) -> datetime.timedelta | None:
        cached = self._times.get(text)
        if cached is not None:
            return cached
        value = parse_time(text)
        if value is not None:
            if len(self._times) >= CACHE_LIMIT:
                self._times.clear()
            self._times[text] = value
        return value

    def date_text(self, text: str) -> str | None:
        """A calendar date (no zone) as ``YYYY-MM-DD``."""
        cached = self._dates.get(text)
        if cached is None:
            date = parse_date(text)
            if date is None:
                return None
            cached = date.isoformat()
            if len(self._dates) >= CACHE_LIMIT:
                self._dates.clear()
            self._dates[text] = cached
        return cached

    def exact(self, date: datetime.date, time: datetime.timedelta) -> str:
        """The slow path, for days the clocks change: fold=0 for gaps and repeats."""
        local = datetime.datetime.combine(date, datetime.time(0)) + time
        aware = local.replace(tzinfo=self.zone, fold=0)
        return str(aware.astimezone(UTC).replace(tzinfo=None))

    def to_utc(self, local: datetime.datetime) -> datetime.datetime:
        """An aware UTC moment for a naive local one (for callers outside the fast path)."""
        return local.replace(tzinfo=self.zone, fold=0).astimezone(UTC)


# Headers ------------------------------------------------------------------------------------


@dataclass
class Quarantine:
    """Why a header cannot be ingested."""

    message: str
    table: str | None = None


@dataclass
class Layout:
    """A recognised header: the table, and how to read each row of the file."""

    table: Table
    width: int  # the number of header columns
    positions: dict[str, int]  # known source column -> position in the row
    unknown: list[tuple[int, str]]  # (position, name as written) of unknown columns
    missing_optional: list[str]
    renamed: dict[str, str] = field(default_factory=dict)  # header name -> known name

    @property
    def unknown_names(self) -> list[str]:
        return [name for _, name in self.unknown]


def normalise(name: str) -> str:
    return name.replace("\ufeff", "").strip().lower()


def _join(names) -> str:
    return ", ".join(names)


def recognise(header: list[str], aliases: dict[str, dict[str, str]]) -> Layout | Quarantine:
    """The table a header belongs to, or why the file must be quarantined."""
    if len(header) > MAX_COLUMNS:
        return Quarantine(
            f"the header has {len(header):,} columns; a PMS or LIS file has at most {MAX_COLUMNS:,}"
        )
    names = [normalise(name) for name in header]
    if not any(names):
        return Quarantine("the file has no header")
    scores = []
    for table in TABLES.values():
        renames = aliases.get(table.name, {})
        mapped = [renames.get(name, name) for name in names]
        known = [name for name in mapped if name in table.columns]
        scores.append((len(set(known)), table, mapped))
    best = max(score for score, _, _ in scores)
    if best == 0:
        return Quarantine(
            "the header has none of the known columns of "
            f"{_join(TABLES)} (it has {_join(h.strip() for h in header)})"
        )
    tied = [(table, mapped) for score, table, mapped in scores if score == best]
    if len(tied) > 1:
        details = "; ".join(
            f"{table.name} misses {_join(sorted(table.required_columns - set(mapped)))}"
            for table, mapped in tied
        )
        return Quarantine(
            f"the header resembles {_join(t.name for t, _ in tied)} equally "
            f"({best} known column{'s' if best > 1 else ''} each), so its table is unclear: "
            f"{details}"
        )
    table, mapped = tied[0]
    present = set(mapped)
    missing = set(table.required_columns - present)
    for f in table.fields:  # a date and its time come together
        if f.kind == "moment" and len(present.intersection(f.sources)) == 1:
            missing.update(set(f.sources) - present)
    missing = sorted(missing)
    if missing:
        return Quarantine(
            f"missing required columns {_join(missing)} (the header looks like {table.name}: "
            f"{best} of its {len(table.columns)} columns)",
            table=table.name,
        )
    positions: dict[str, int] = {}
    unknown: list[tuple[int, str]] = []
    renamed: dict[str, str] = {}
    seen_unknown: set[str] = set()
    for position, (name, known) in enumerate(zip(names, mapped, strict=True)):
        if known in table.columns:
            if known in positions:
                first = header[positions[known]].strip()
                return Quarantine(
                    f"columns {first!r} and {header[position].strip()!r} both give "
                    f"{table.name}.{known}",
                    table=table.name,
                )
            positions[known] = position
            if known != name:
                renamed[header[position].strip()] = known
        else:
            shown = header[position].replace("\ufeff", "").strip() or f"column_{position + 1}"
            if shown.lower() in seen_unknown:
                shown = f"{shown}_{position + 1}"
            seen_unknown.add(shown.lower())
            unknown.append((position, shown))
    missing_optional = [name for name in table.columns if name not in positions]
    return Layout(table, len(header), positions, unknown, missing_optional, renamed)


# Rows ---------------------------------------------------------------------------------------


def _text_reader(position: int | None, column: str, kind: str, max_length: int | None):
    if position is None:
        return lambda fields: None
    required = kind in ("key", "mrn")
    valid_mrns: set[str] = set()

    def read(fields: list[str]) -> str | None:
        value = fields[position].strip()
        if value in MISSING:
            if required:
                raise RowError(f"{column} is missing")
            return None
        if max_length is not None and len(value) > max_length:
            raise RowError(
                f"{column} is {len(value)} characters long; at most {max_length} fit "
                f"({value[:40]!r}...)"
            )
        if kind == "mrn" and value not in valid_mrns:
            if not is_valid_mrn(value):
                raise RowError(f"{column} {value!r} is not a valid MRN: {MRN_RULE}")
            if len(valid_mrns) < CACHE_LIMIT:
                valid_mrns.add(value)
        return value

    return read


def _date_reader(position: int | None, column: str, clock: LocalClock):
    if position is None:
        return lambda fields: None

    def read(fields: list[str]) -> str | None:
        value = fields[position].strip()
        if value in MISSING:
            return None
        text = clock.date_text(value)
        if text is None:
            raise RowError(f"{column} {value!r} is not a date (M/D/YYYY or YYYY-MM-DD)")
        return text

    return read


def _moment_reader(
    date_position: int | None,
    time_position: int | None,
    columns: tuple[str, str],
    required: bool,
    clock: LocalClock,
):
    date_column, time_column = columns
    if date_position is None or time_position is None:
        return lambda fields: None
    days, times = clock._days, clock._times

    def read(fields: list[str]) -> str | None:
        date_text = fields[date_position].strip()
        time_text = fields[time_position].strip()
        day = days.get(date_text)
        time = times.get(time_text)
        if day is None or time is None:
            date_missing, time_missing = date_text in MISSING, time_text in MISSING
            if date_missing and time_missing:
                if required:
                    raise RowError(f"{date_column} and {time_column} are missing")
                return None
            if date_missing:
                raise RowError(f"{date_column} is missing while {time_column} is {time_text!r}")
            if time_missing:
                raise RowError(f"{time_column} is missing while {date_column} is {date_text!r}")
            day = clock.day(date_text)
            if day is None:
                raise RowError(
                    f"{date_column} {date_text!r} is not a date (M/D/YYYY or YYYY-MM-DD)"
                )
            time = clock.time(time_text)
            if time is None:
                raise RowError(
                    f"{time_column} {time_text!r} is not a time (h:MM:SS AM/PM or HH:MM)"
                )
        base = day[1]
        if base is not None:
            return str(base + time)
        return clock.exact(day[0], time)

    return read


def row_reader(layout: Layout, clock: LocalClock):
    """``read(fields) -> tuple`` of database values in :func:`db_columns` order (without
    ``line``), raising :class:`RowError` for a row that cannot be ingested."""
    table = layout.table
    readers = []
    for f in table.fields:
        if f.kind == "moment":
            readers.append(
                _moment_reader(
                    layout.positions.get(f.sources[0]),
                    layout.positions.get(f.sources[1]),
                    f.sources,
                    (table.name, f.name) in MOMENTS_REQUIRED_IN_ROW,
                    clock,
                )
            )
        elif f.kind == "date":
            readers.append(_date_reader(layout.positions.get(f.sources[0]), f.sources[0], clock))
        else:
            readers.append(
                _text_reader(layout.positions.get(f.sources[0]), f.sources[0], f.kind, f.max_length)
            )
    width = layout.width
    unknown = layout.unknown
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def read(fields: list[str]) -> tuple:
        if len(fields) != width:
            if len(fields) < width:
                raise RowError(f"the row has {len(fields)} fields; the header has {width}")
            if any(value.strip() for value in fields[width:]):
                extra = len(fields) - width
                shown = fields[width : width + SHOWN_EXTRA_VALUES]
                more = f" and {extra - len(shown):,} more" if extra > len(shown) else ""
                raise RowError(
                    f"the row has {len(fields)} fields; the header has {width} "
                    f"(extra values {shown!r}{more})"
                )
        values = [reader(fields) for reader in readers]
        if unknown:
            extra = {}
            for position, name in unknown:
                value = fields[position].strip()
                extra[name] = None if value in MISSING else value
            values.append(dumps(extra))
        else:
            values.append(None)
        return tuple(values)

    return read


def db_columns(table: Table) -> tuple[str, ...]:
    """The columns a row tuple holds, in order: the fields, ``extra``, then ``line``."""
    return (*(f.name for f in table.fields), "extra", "line")
