"""Ingestion: every new or changed file of a source, each in its own transaction.

The ledger
==========

``monitoring_ingest_files`` records every file taken, by key and ETag (a local file's ETag
is the MD5 of its bytes): ``applied`` (with rows read, inserted, updated and rejected) or
``quarantined`` (with the reason). A (key, ETag) already in the ledger is never read again,
so re-running an ingest, or restarting ``--watch``, picks up where it stopped; two processes
taking the same file at once serialise on the ledger's unique index. A quarantined file is
final for that content; ``--retry-quarantined`` forgets the source's quarantined entries
(after fixing ``CAREDECK_MONITORING_COLUMN_ALIASES``, say). Files are taken oldest first
(modification time, then key). A file whose bytes cannot be read (a network failure, or a
local file that changed while it was read) is not recorded and is tried again next time.

Rows
====

The header decides the table (:mod:`plugins.monitoring.formats`). Rows are read as a stream
in batches (``FIRST_BATCH_ROWS`` first, then each half as big again, up to ``BATCH_ROWS``)
and upserted by natural key: patients.patient_id,
admissions.case_number, lab_tests (test_id, patient_id), lab_results.result_id. A stored row
is replaced only by a row from a file at least as new (``source_modified_at``, the file's
modification time), so an older file ingested late never overwrites newer data; within one
file the later line wins. Counts: *inserted* (a new key), *updated* (a stored row whose
values changed), and *unchanged*, the rest of the accepted rows: identical to the stored
row, or older than it. An identical row from a newer file is not rewritten but its
``source_modified_at`` is moved forward, so that the ordering rule still holds. A rejected
row is recorded with its line (the header is line 1) and reason; the first
``MAX_REJECTED_KEPT`` of a file are kept with their text.

PostgreSQL loads each batch with ``COPY`` into a temporary staging table and one
``INSERT ... SELECT ... ON CONFLICT DO UPDATE ... WHERE`` (counting inserts with
``xmax = 0``); SQLite inserts the batch into the staging table with ``executemany`` and runs
the same upsert. Parsing is the same for both, and overlaps with the database's work: a
reader thread parses the next batch while the database loads the current one. Either way
the keys of the rows that changed are kept in a temporary table, and everything after the
rows works from those alone, so a small file on a large database stays cheap.

After the rows, in the same transaction
=======================================

- The core registry (``core_patients``, MRN = patient_id) gets every patient an inserted or
  updated row mentions; a PMS patient row fills and refreshes the names, date of birth,
  primary physician and insurance there (a missing value does not erase a known one). Their
  last activity becomes now. All in bulk SQL.
- ``monitoring_last_tests`` (each patient's latest test ordered or performed) is kept in SQL
  from the rows the file changed: inserted tests and results can only move it forward, so
  their moments are merged in; a patient with an updated test or result is recomputed from
  all of their tests and results. A result counts for every test of its test_id.
- Findings (unique by kind, table and record, so a re-ingest adds none; they never block
  ingestion): ``duplicate_id`` (a test_id of two patients: both rows are kept),
  ``performed_before_order``, ``release_before_admission`` and ``unknown_column``.
"""

# ruff: noqa: S608
# (The SQL here is built from constant table and column names; values are parameters.)

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import operator
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import click
import peewee

from core.db import database, is_sqlite, utcnow
from plugins.monitoring import formats, sources
from plugins.monitoring.models import Finding, IngestFile, LabTest, RejectedRow

BATCH_ROWS = 50_000
# A file's first batch is small and each next one half as big again, up to BATCH_ROWS: the
# database starts on a file after a few milliseconds of parsing instead of waiting for
# 50,000 rows (half a second), and while it loads a batch (about 15 us a row) the reader
# parses the next, bigger one (about 10 us a row).
FIRST_BATCH_ROWS = 2_000
SWITCH_INTERVAL_S = 0.0005  # see _batches
MAX_REJECTED_KEPT = 1000
# A rejected row's text is kept up to this many characters (a hostile line can be 10 MB).
MAX_RAW_CHARS = 1000
# A line longer than this (a real row is under a kilobyte) is rejected without being split
# into fields: 10 MB of "x," are 5 million fields, 300 MB of Python strings.
MAX_LINE_CHARS = 1 << 20
# What the CSV reader gets instead of an overlong line (NUL: no real row holds one).
OVERLONG = "\x00caredeck: overlong line\x00"
QUARANTINED, APPLIED = "quarantined", "applied"
FINDINGS_KEPT = 1000  # per kind and file; a bulk load's findings beyond that are counted
STAGE = "monitoring_stage"
CHANGED = "monitoring_changed"
EVENTS = "monitoring_events"  # the (result, test) pairs of a lab file's changed rows
MOMENTS = "monitoring_moments"  # lab moments (patient_id, at, name) to merge into last tests
RECOMPUTE = "monitoring_recompute"  # patients whose last test is recomputed in full


class IncompleteIngest(sources.SourceError):
    """Some objects could not be read; ``files`` holds what was ingested."""

    def __init__(self, message: str, files: list[IngestFile]):
        super().__init__(message)
        self.files = files


class _Quarantine(Exception):
    def __init__(self, message: str, table: str | None = None):
        super().__init__(message)
        self.message, self.table = message, table


class _AlreadyTaken(Exception):
    pass


@contextlib.contextmanager
def _connection() -> Iterator[None]:
    """The caller's connection, or one of our own."""
    if database.is_closed():
        with database.connection_context():
            yield
    else:
        yield


def _db_time(moment: datetime.datetime):
    """An aware moment as the database stores it (naive UTC), for raw SQL parameters."""
    naive = moment.astimezone(datetime.UTC).replace(tzinfo=None)
    return str(naive) if is_sqlite() else naive


# Entry points -------------------------------------------------------------------------------


def ingest_source(
    source: str, *, app, retry_quarantined: bool = False, echo: Callable[[str], None] = click.echo
) -> list[IngestFile]:
    """Ingest every new or changed file of ``source`` (file, folder or bucket URL).

    Returns the ledger entries written (applied or quarantined). Raises
    :class:`sources.SourceError` when the source cannot be listed, and
    :class:`IncompleteIngest` (after ingesting everything else) when objects could not be
    read.
    """
    run = _Run(sources.open_source(source), app, echo)
    with _connection():
        objects = run.source.list()
        if retry_quarantined:
            run.forget_quarantined(objects)
        files, failures = run.ingest(objects, quiet=False)
    if failures:
        raise IncompleteIngest(
            f"{len(failures)} file(s) could not be read and will be tried again: "
            + ", ".join(failures[:5])
            + (" ..." if len(failures) > 5 else ""),
            files,
        )
    return files


def watch(
    source: str,
    *,
    app,
    interval: float,
    stop: threading.Event | None = None,
    echo: Callable[[str], None] = click.echo,
) -> None:
    """Poll ``source`` every ``interval`` seconds until ``stop`` is set, ingesting new or
    changed objects (by key and ETag). An unreachable source or database is reported once
    (and again when the reason changes) and retried at the next poll."""
    stop = stop or threading.Event()
    run = _Run(sources.open_source(source), app, echo)
    problem = None
    while not stop.is_set():
        try:
            with _connection():
                objects = run.source.list()
                fresh = [o for o in objects if run.seen.get(o.key) != o.etag]
                if fresh:
                    run.ingest(fresh, quiet=True)
            if problem is not None:
                echo(f"{source}: reachable again.")
                problem = None
        except (sources.SourceError, peewee.DatabaseError, peewee.InterfaceError) as error:
            text = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            if isinstance(error, peewee.PeeweeException):
                text = f"database error ({text}); retrying every {interval:g} s."
            else:
                text = f"{text} Retrying every {interval:g} s."
            if text != problem:
                echo(f"{source}: {text}")
                problem = text
        stop.wait(interval)


# One run ------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    inserted: int = 0
    updated: int = 0
    findings: int = 0
    rejected: int = 0
    kept_rejections: int = 0
    first_rejection: str | None = None
    release_findings: list[tuple[str, str, str]] = field(default_factory=list)
    releases: int = 0
    notes: list[str] = field(default_factory=list)


class _Run:
    def __init__(self, source: sources.Source, app, echo: Callable[[str], None]):
        self.source = source
        self.echo = echo
        self.clock = formats.LocalClock(app.config.get("TIMEZONE") or "UTC")
        self.aliases = formats.aliases_from(app.config.get("MONITORING_COLUMN_ALIASES", ""))
        self.seen: dict[str, str] = {}  # key -> ETag handled (for watch)
        # "Now" for the registry: one moment per pass over the source, so a patient that
        # several files mention is touched once.
        self.started = utcnow()

    def forget_quarantined(self, objects: list[sources.SourceObject]) -> None:
        keys = [o.key for o in objects]
        for start in range(0, len(keys), 500):
            IngestFile.delete().where(
                IngestFile.status == QUARANTINED, IngestFile.key.in_(keys[start : start + 500])
            ).execute()

    def _taken(self, objects: list[sources.SourceObject]) -> set[tuple[str, str]]:
        keys = sorted({o.key for o in objects})
        taken = set()
        for start in range(0, len(keys), 500):
            query = IngestFile.select(IngestFile.key, IngestFile.etag).where(
                IngestFile.key.in_(keys[start : start + 500])
            )
            taken.update(query.tuples())
        return taken

    def ingest(
        self, objects: list[sources.SourceObject], quiet: bool
    ) -> tuple[list[IngestFile], list[str]]:
        taken = self._taken(objects)
        self.started = utcnow()
        files, failures, unchanged = [], [], []
        for obj in objects:
            if (obj.key, obj.etag) in taken:
                unchanged.append(obj.key)
                self.seen[obj.key] = obj.etag
                continue
            try:
                ledger = self.ingest_object(obj)
            except sources.SourceError as error:
                self.echo(f"{obj.key}: not ingested, will be tried again: {error}")
                failures.append(obj.key)
                continue
            self.seen[obj.key] = obj.etag
            if ledger is None:
                unchanged.append(obj.key)
            else:
                files.append(ledger)
        if unchanged and not quiet:
            shown = ", ".join(unchanged[:5]) + (
                f" and {len(unchanged) - 5} more" if len(unchanged) > 5 else ""
            )
            self.echo(f"{len(unchanged)} file(s) already ingested (unchanged): {shown}")
        if not objects and not quiet:
            self.echo(f"{self.source.source}: no data files (*.csv) found.")
        return files, failures

    def ingest_object(self, obj: sources.SourceObject) -> IngestFile | None:
        """Ingest one object in its own transaction; ``None`` if it was already taken."""
        outcome = _Outcome()
        try:
            with self.source.open(obj) as reader, database.atomic():
                ledger = self._claim(obj)
                if self._load(ledger, reader, outcome):
                    self.source.verify(obj, reader)
                ledger.save()
        except _AlreadyTaken:
            return None
        except _Quarantine as error:
            try:
                with database.atomic():
                    ledger = self._claim(obj)
                    ledger.status, ledger.table = QUARANTINED, error.table
                    ledger.message, ledger.ingested_at = error.message, utcnow()
                    ledger.save()
            except _AlreadyTaken:
                return None
        self.echo(_summary(ledger, outcome))
        return ledger

    def _claim(self, obj: sources.SourceObject) -> IngestFile:
        try:
            with database.atomic():
                return IngestFile.create(
                    source=self.source.source[:500],
                    key=obj.key[:1000],
                    etag=obj.etag[:100],
                    status=APPLIED,
                    modified_at=obj.modified_at,
                )
        except peewee.IntegrityError:
            raise _AlreadyTaken() from None

    # Reading ------------------------------------------------------------------------------

    def _load(self, ledger: IngestFile, reader: sources.HashingReader, outcome: _Outcome) -> bool:
        """Read the file into its table; ``False`` if its header quarantined it."""
        text = io.TextIOWrapper(
            io.BufferedReader(reader, sources.CHUNK), encoding="utf-8-sig", newline=""
        )
        lines = _BoundedLines(text)
        rows = csv.reader(lines)
        try:
            header = next(rows)
            if lines.overlong:
                raise _Quarantine(f"the header line is longer than {MAX_LINE_CHARS:,} characters")
        except StopIteration:
            raise _Quarantine("the file is empty: it has no header") from None
        except UnicodeDecodeError:
            raise _Quarantine("the file is not UTF-8 text") from None
        except csv.Error as error:
            raise _Quarantine(f"the header cannot be read as CSV: {error}") from None
        header = [name.replace("\x00", "") for name in header]
        layout = formats.recognise(header, self.aliases)
        if isinstance(layout, formats.Quarantine):
            ledger.status, ledger.table, ledger.message = (
                QUARANTINED,
                layout.table,
                layout.message,
            )
            ledger.ingested_at = utcnow()
            return False
        table = layout.table
        ledger.table = table.name
        if layout.unknown:
            ledger.unknown_columns = json.dumps(layout.unknown_names)
        smt = ledger.modified_at or utcnow()
        writer = (_SqliteWriter if is_sqlite() else _PostgresWriter)(
            table, ledger.id, smt, self.started
        )
        writer.begin()
        read_count = 0
        try:
            for batch in _batches(rows, layout, self.clock, writer.prepare, reader, lines):
                read_count += batch.read
                if batch.rows:
                    inserted, updated = writer.write(batch)
                    outcome.inserted += inserted
                    outcome.updated += updated
                self._reject(ledger, batch.rejected, outcome)
                outcome.releases += len(batch.release_findings)
                room = FINDINGS_KEPT - len(outcome.release_findings)
                outcome.release_findings += batch.release_findings[: max(room, 0)]
            outcome.findings += writer.finish()
        except UnicodeDecodeError:
            raise _Quarantine(
                f"the file is not UTF-8 text (after line {rows.line_num})", table.name
            ) from None
        except peewee.DataError as error:
            raise _Quarantine(
                f"the database refused the file: {str(error).strip().splitlines()[0]}", table.name
            ) from None
        outcome.notes += writer.notes
        if outcome.releases > len(outcome.release_findings):
            outcome.notes.append(
                f"{outcome.releases} admissions released before they began; the first "
                f"{len(outcome.release_findings)} are recorded as findings"
            )
        outcome.findings += self._findings(ledger, layout, outcome)
        ledger.rows_read = read_count
        ledger.inserted, ledger.updated = outcome.inserted, outcome.updated
        ledger.rejected = outcome.rejected
        ledger.message = _notes(layout, outcome) or None
        ledger.ingested_at = utcnow()
        return True

    def _reject(self, ledger: IngestFile, rejected: list, outcome: _Outcome) -> None:
        if not rejected:
            return
        if outcome.first_rejection is None:
            line, reason, _ = rejected[0]
            outcome.first_rejection = f"line {line}: {reason}"
        outcome.rejected += len(rejected)
        room = MAX_REJECTED_KEPT - outcome.kept_rejections
        if room <= 0:
            return
        keep = rejected[:room]
        RejectedRow.insert_many(
            [
                {"file": ledger.id, "line": line, "reason": reason, "raw": raw}
                for line, reason, raw in keep
            ]
        ).execute()
        outcome.kept_rejections += len(keep)

    def _findings(self, ledger: IngestFile, layout: formats.Layout, outcome: _Outcome) -> int:
        now = utcnow()
        table = layout.table.name
        found = [
            {
                "kind": "unknown_column",
                "table": table,
                "record_key": name[:200],
                "detail": f"Column {name!r} (first seen in {ledger.key}) is not a known "
                f"{table} column; its values are kept in each row's extra.",
            }
            for name in layout.unknown_names
        ]
        found += [
            {
                "kind": "release_before_admission",
                "table": table,
                "record_key": case[:200],
                "detail": f"Admission {case} was released at {released} UTC, before it began "
                f"at {admitted} UTC.",
            }
            for case, admitted, released in outcome.release_findings
        ]
        return insert_findings(found, ledger.id, now)


def insert_findings(found: list[dict], file_id: int, now: datetime.datetime) -> int:
    """Insert findings that are not recorded yet; the number inserted."""
    added = 0
    for start in range(0, len(found), 500):
        chunk = [{**f, "file": file_id, "created_at": now} for f in found[start : start + 500]]
        query = Finding.insert_many(chunk).on_conflict_ignore()
        cursor = database.execute(query)
        added += max(cursor.rowcount, 0)
    return added


def _notes(layout: formats.Layout, outcome: _Outcome) -> str:
    notes = []
    if layout.unknown:
        notes.append(f"unknown columns kept in extra: {', '.join(layout.unknown_names)}")
    if layout.missing_optional:
        notes.append(f"missing optional columns (null): {', '.join(layout.missing_optional)}")
    if layout.renamed:
        notes.append(
            "renamed columns: "
            + ", ".join(f"{new} as {known}" for new, known in layout.renamed.items())
        )
    if outcome.rejected:
        kept = (
            f"; the first {MAX_REJECTED_KEPT} are kept"
            if outcome.rejected > MAX_REJECTED_KEPT
            else ""
        )
        notes.append(f"{outcome.rejected} rows rejected{kept}, first at {outcome.first_rejection}")
    notes += outcome.notes
    return "; ".join(notes)


def _summary(ledger: IngestFile, outcome: _Outcome) -> str:
    if ledger.status == QUARANTINED:
        return f"{ledger.key}: quarantined: {ledger.message}"
    line = (
        f"{ledger.key}: {ledger.table}, {ledger.rows_read} read, {ledger.inserted} inserted, "
        f"{ledger.updated} updated, {ledger.rejected} rejected"
    )
    unchanged = ledger.rows_read - ledger.inserted - ledger.updated - ledger.rejected
    if unchanged:
        line += f", {unchanged} unchanged"
    if outcome.findings:
        line += f", {outcome.findings} new finding{'s' if outcome.findings != 1 else ''}"
    if ledger.message:
        line += f" ({ledger.message})"
    return line


# Parsing (one path for both databases) --------------------------------------------------------


@dataclass
class _Batch:
    rows: list[tuple]
    payload: object  # the rows as the writer loads them (prepared in the reader thread)
    rejected: list[tuple[int, str, str]]
    read: int
    release_findings: list[tuple[str, str, str]]


class _BoundedLines:
    """The lines of ``text``, each read with at most ``MAX_LINE_CHARS`` characters in
    memory: a longer line is skipped a chunk at a time and given to the CSV reader as the
    single field ``OVERLONG`` (``overlong`` counts them)."""

    def __init__(self, text: io.TextIOBase) -> None:
        self.text = text
        self.overlong = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self.text.readline(MAX_LINE_CHARS + 1)
        if not line:
            raise StopIteration
        if len(line) <= MAX_LINE_CHARS:
            return line
        while not line.endswith(("\n", "\r")):  # the rest of the line, unread
            line = self.text.readline(sources.CHUNK)
            if not line:
                break
        self.overlong += 1
        return OVERLONG + "\r\n"


def _raw(fields: list[str]) -> str:
    """The row as CSV text, for the record of its rejection (cut at ``MAX_RAW_CHARS``)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    text = out.getvalue()
    if len(text) > MAX_RAW_CHARS:
        text = text[:MAX_RAW_CHARS] + f"... ({len(text):,} characters)"
    return text.replace("\x00", "\\x00")


def _parse(
    rows,
    layout: formats.Layout,
    clock: formats.LocalClock,
    prepare: Callable[[list], object],
    reader: sources.HashingReader | None = None,
    lines: _BoundedLines | None = None,
) -> Iterator[_Batch]:
    """Batches of database-ready row tuples, read from the CSV stream."""
    table = layout.table
    read = formats.row_reader(layout, clock)
    key = operator.itemgetter(*range(len(table.key)))
    is_admissions = table.name == "admissions"
    size = min(FIRST_BATCH_ROWS, BATCH_ROWS)
    batch: dict = {}
    rejected: list = []
    releases: list = []
    count = 0
    previous = rows.line_num
    while True:
        try:
            fields = next(rows)
        except StopIteration:
            break
        except csv.Error as error:
            line, previous = previous + 1, rows.line_num
            count += 1
            rejected.append((line, f"the row cannot be read as CSV: {error}", ""))
            continue
        line, previous = previous + 1, rows.line_num
        if not fields:
            continue  # a blank line
        count += 1
        if lines is not None and lines.overlong and any(OVERLONG in f for f in fields):
            reason = f"the line is longer than {MAX_LINE_CHARS:,} characters; it was not read"
            rejected.append((line, reason, ""))
            continue
        try:
            if reader is not None and reader.nul_seen and any("\x00" in f for f in fields):
                raise formats.RowError("the row contains a NUL character")
            values = read(fields)
        except formats.RowError as error:
            rejected.append((line, str(error), _raw(fields)))
            continue
        values += (line,)
        batch[key(values)] = values
        if is_admissions and values[3] is not None and values[3] < values[2]:
            releases.append((values[0], values[2], values[3]))
        if len(batch) >= size:
            values = list(batch.values())
            yield _Batch(values, prepare(values), rejected, count, releases)
            batch, rejected, releases, count = {}, [], [], 0
            size = min(size * 3 // 2, BATCH_ROWS)
    if batch or rejected or count:
        values = list(batch.values())
        yield _Batch(values, prepare(values) if values else None, rejected, count, releases)


def _batches(
    rows,
    layout: formats.Layout,
    clock: formats.LocalClock,
    prepare: Callable[[list], object],
    reader: sources.HashingReader | None = None,
    lines: _BoundedLines | None = None,
) -> Iterator[_Batch]:
    """:func:`_parse` in a reader thread, one batch ahead of the database, so that parsing
    (Python) and loading (the database server) use both cores. Errors are re-raised here.

    Each time a statement returns, this thread needs the interpreter lock back from the
    parser, which keeps it for up to ``sys.getswitchinterval()`` (5 ms by default): about ten
    times a batch, while the database waits. The interval is shortened while parsing."""
    handoff: queue.Queue = queue.Queue(maxsize=1)
    cancelled = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for batch in _parse(rows, layout, clock, prepare, reader, lines):
                while not cancelled.is_set():
                    try:
                        handoff.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if cancelled.is_set():
                    return
            item = done
        except BaseException as error:  # noqa: BLE001 (re-raised in the consumer)
            item = error
        while not cancelled.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=produce, name="monitoring-ingest-reader", daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, SWITCH_INTERVAL_S))
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancelled.set()
        thread.join()
        sys.setswitchinterval(interval)


# Writing ------------------------------------------------------------------------------------

# What each table's changed rows leave in the CHANGED temporary table: (k1, k2, at, name).
_CHANGED = {
    "patients": ("patient_id", None, None, None),
    "admissions": ("case_number", "patient_id", None, None),
    "lab_tests": ("test_id", "patient_id", "ordered_at", "test_name"),
    "lab_results": ("result_id", "test_id", "performed_at", None),
}
# The patients a file's changed rows concern, as SQL over CHANGED.
_PATIENTS_OF_CHANGED = {
    "patients": f"SELECT k1 FROM {CHANGED}",
    "admissions": f"SELECT k2 FROM {CHANGED}",
    "lab_tests": f"SELECT k2 FROM {CHANGED}",
    "lab_results": f"SELECT patient_id FROM {EVENTS}",
}


class _Writer:
    """Loads the batches of one file into its table, then does the end-of-file work in SQL.

    Every inserted or updated row leaves its keys (and, for lab rows, its moment) in the
    temporary table ``CHANGED``, with ``fresh`` true for an insert: the end-of-file work
    reads only those, so a small file on a large database stays cheap.
    """

    distinct = "IS DISTINCT FROM"
    true, false = "true", "false"

    def __init__(
        self,
        table: formats.Table,
        file_id: int,
        modified_at: datetime.datetime,
        now: datetime.datetime,
    ):
        self.table = table
        self.name = table.name
        self.target = table.model._meta.table_name
        self.columns = formats.db_columns(table)
        self.file_id = file_id
        self.smt = _db_time(modified_at)
        self.now = _db_time(now)
        self.p = database.param
        self.notes: list[str] = []
        self.changed_rows = self.updated_rows = 0

    def sql(self, statement: str, params=()) -> peewee.Cursor:
        return database.execute_sql(statement, params)

    # Batches --------------------------------------------------------------------------------

    def begin(self) -> None:
        types = self.stage_types()
        columns = ", ".join(f"{name} {types.get(name, 'TEXT')}" for name in self.columns)
        self.create_temp(STAGE, columns)
        self.create_temp(
            CHANGED, f"k1 TEXT, k2 TEXT, at {self.timestamp}, name TEXT, fresh {self.boolean}"
        )

    def upsert_sql(self) -> str:
        """The batch upsert from the staging table (parameters: file_id, modified time)."""
        t, p = self.target, self.p
        columns = ", ".join(self.columns)
        keys = self.table.key
        compared = [name for name in self.columns if name not in keys and name != "line"]
        assignments = ", ".join(
            f"{name} = excluded.{name}"
            for name in (*compared, "line", "file_id", "source_modified_at")
        )
        changed = " OR ".join(f"{t}.{name} {self.distinct} excluded.{name}" for name in compared)
        return (
            f"INSERT INTO {t} ({columns}, file_id, source_modified_at) "
            f"SELECT {columns}, {p}, {p} FROM {STAGE} WHERE true "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {assignments} "
            f"WHERE ({t}.source_modified_at IS NULL "
            f"OR excluded.source_modified_at >= {t}.source_modified_at) AND ({changed})"
        )

    def write(self, batch: _Batch) -> tuple[int, int]:
        self.load_stage(batch.payload)
        inserted, updated = self.upsert()
        self.changed_rows += inserted + updated
        self.updated_rows += updated
        if inserted + updated < len(batch.rows):
            # Identical rows from a newer file: no rewrite, but remember the newer file, so
            # that an older file ingested later cannot overwrite them.
            keys = ", ".join(self.table.key)
            self.sql(
                f"UPDATE {self.target} SET source_modified_at = {self.p} "
                f"WHERE source_modified_at < {self.p} "
                f"AND ({keys}) IN (SELECT {keys} FROM {STAGE})",
                (self.smt, self.smt),
            )
        return inserted, updated

    # The end of the file --------------------------------------------------------------------

    def finish(self) -> int:
        """Registry, last tests and the SQL findings for what this file changed; the number of
        new findings (notes on capped findings go to ``self.notes``)."""
        p = self.p
        if self.name in ("lab_tests", "lab_results"):
            self.pair_events()
        patients = _PATIENTS_OF_CHANGED[self.name]
        now3 = (self.now, self.now, self.now)
        if self.name == "patients":
            self.sql(
                f"""
                INSERT INTO core_patients (mrn, first_name, last_name, date_of_birth,
                    primary_physician, insurance_provider, sex, created_at, updated_at,
                    last_activity_at)
                SELECT m.patient_id, m.first_name, m.last_name, m.date_of_birth,
                    m.primary_physician, m.insurance_provider, 'unknown', {p}, {p}, {p}
                FROM monitoring_patients m WHERE m.patient_id IN ({patients})
                ON CONFLICT (mrn) DO UPDATE SET
                    first_name = COALESCE(excluded.first_name, core_patients.first_name),
                    last_name = COALESCE(excluded.last_name, core_patients.last_name),
                    date_of_birth = COALESCE(excluded.date_of_birth, core_patients.date_of_birth),
                    primary_physician = COALESCE(excluded.primary_physician,
                                                 core_patients.primary_physician),
                    insurance_provider = COALESCE(excluded.insurance_provider,
                                                  core_patients.insurance_provider),
                    updated_at = excluded.updated_at
                WHERE {self._core_changed()}
                """,
                now3,
            )
        elif self.name in ("admissions", "lab_tests"):
            self.sql(
                f"INSERT INTO core_patients (mrn, sex, created_at, updated_at, last_activity_at) "
                f"SELECT DISTINCT k2, 'unknown', {p}, {p}, {p} FROM {CHANGED} WHERE true "
                f"ON CONFLICT (mrn) DO NOTHING",
                now3,
            )
        self.sql(
            f"UPDATE core_patients SET last_activity_at = {p} "
            f"WHERE mrn IN ({patients}) AND last_activity_at < {p}",
            (self.now, self.now),
        )
        findings = 0
        if self.name in ("lab_tests", "lab_results"):
            self.last_tests()
            findings += self.performed_before_order()
        if self.name == "lab_tests":
            findings += self.duplicate_ids()
        self.drop_temps()
        return findings

    def _core_changed(self) -> str:
        d = self.distinct
        return " OR ".join(
            f"COALESCE(excluded.{c}, core_patients.{c}) {d} core_patients.{c}"
            for c in (
                "first_name",
                "last_name",
                "date_of_birth",
                "primary_physician",
                "insurance_provider",
            )
        )

    def lookups(self, keys: int, table: str):
        """A context in which joins look ``keys`` rows up through ``table``'s indexes (see
        :class:`_PostgresWriter`)."""
        return contextlib.nullcontext()

    def pair_events(self) -> None:
        """EVENTS: each (result, test) pair a changed lab row takes part in, with the patient,
        the test's name and both moments; a reused test_id gives one pair per test. Looked up
        once, for the last tests, the registry and the findings."""
        if self.name == "lab_results":
            select = (
                "SELECT t.patient_id AS patient_id, c.at AS at, t.test_name AS name, "
                "c.k1 AS result_id, c.k2 AS test_id, t.ordered_at AS ordered_at, "
                f"c.fresh AS fresh FROM {CHANGED} c "
                "JOIN monitoring_lab_tests t ON t.test_id = c.k2"
            )
            table = "monitoring_lab_tests"
        else:
            select = (
                "SELECT c.k2 AS patient_id, r.performed_at AS at, c.name AS name, "
                "r.result_id AS result_id, c.k1 AS test_id, c.at AS ordered_at, "
                f"c.fresh AS fresh FROM {CHANGED} c "
                "JOIN monitoring_lab_results r ON r.test_id = c.k1"
            )
            table = "monitoring_lab_results"
        with self.lookups(self.changed_rows, table):
            self.create_temp_as(EVENTS, select)

    def last_tests(self) -> None:
        """Inserted lab rows can only move a patient's latest activity forward: merge their
        moments in. Updated rows may move it back: recompute those patients in full."""
        fresh = f"SELECT patient_id, at, name FROM {EVENTS} WHERE fresh AND at IS NOT NULL"
        if self.name == "lab_tests":
            fresh += (
                f" UNION ALL SELECT k2 AS patient_id, at, name FROM {CHANGED} "
                "WHERE fresh AND at IS NOT NULL"
            )
            recompute = f"SELECT DISTINCT k2 AS id FROM {CHANGED} WHERE NOT fresh"
        else:
            recompute = f"SELECT DISTINCT patient_id AS id FROM {EVENTS} WHERE NOT fresh"
        self.create_temp_as(MOMENTS, fresh)
        self._merge_latest(replace=False)
        if self.updated_rows:
            self.recompute_last_tests(recompute)

    def recompute_last_tests(self, patients: str) -> None:
        """The latest test ordered or performed of each patient ``patients`` (SQL selecting
        ``id``) names, from all their tests and results; a patient left with none loses the
        row."""
        self.create_temp_as(RECOMPUTE, patients)
        (count,) = self.sql(f"SELECT COUNT(*) FROM {RECOMPUTE}").fetchone()
        with self.lookups(count * 50, "monitoring_lab_tests"):
            self.create_temp_as(
                MOMENTS,
                f"""
                SELECT t.patient_id AS patient_id, t.ordered_at AS at, t.test_name AS name
                FROM {RECOMPUTE} x JOIN monitoring_lab_tests t ON t.patient_id = x.id
                WHERE t.ordered_at IS NOT NULL
                UNION ALL
                SELECT t.patient_id AS patient_id, r.performed_at AS at, t.test_name AS name
                FROM {RECOMPUTE} x JOIN monitoring_lab_tests t ON t.patient_id = x.id
                JOIN monitoring_lab_results r ON r.test_id = t.test_id
                WHERE r.performed_at IS NOT NULL
                """,
            )
        self._merge_latest(replace=True)
        self.sql(
            f"""
            DELETE FROM monitoring_last_tests
            WHERE patient_id IN (SELECT id FROM {RECOMPUTE})
              AND patient_id NOT IN (SELECT patient_id FROM {MOMENTS})
            """
        )

    def _merge_latest(self, replace: bool) -> None:
        """Upsert each patient's latest of MOMENTS (patient_id, at, name); the name at the
        latest moment is the alphabetically first. ``replace``: the moments are all of the
        patient's; otherwise only a later moment (or a first name at the same moment) wins."""
        d, last = self.distinct, "monitoring_last_tests"
        if replace:
            condition = (
                f"{last}.last_test_at {d} excluded.last_test_at "
                f"OR {last}.last_test_name {d} excluded.last_test_name"
            )
        else:
            condition = (
                f"excluded.last_test_at > {last}.last_test_at "
                f"OR (excluded.last_test_at = {last}.last_test_at "
                f"AND excluded.last_test_name IS NOT NULL AND ({last}.last_test_name IS NULL "
                f"OR excluded.last_test_name < {last}.last_test_name))"
            )
        self.sql(
            f"""
            WITH latest AS (SELECT patient_id, MAX(at) AS at FROM {MOMENTS} GROUP BY patient_id)
            INSERT INTO {last} (patient_id, last_test_at, last_test_name)
            SELECT m.patient_id, m.at, MIN(m.name)
            FROM {MOMENTS} m JOIN latest l ON l.patient_id = m.patient_id AND l.at = m.at
            WHERE true
            GROUP BY m.patient_id, m.at
            ON CONFLICT (patient_id) DO UPDATE SET
                last_test_at = excluded.last_test_at, last_test_name = excluded.last_test_name
            WHERE {condition}
            """
        )

    def performed_before_order(self) -> int:
        """Results performed before their test was ordered, among this file's pairs; at most
        ``FINDINGS_KEPT`` per file are recorded, the rest counted in a note."""
        p = self.p
        source = f"FROM {EVENTS} e WHERE e.at < e.ordered_at"
        detail = (
            "'Result ' || e.result_id || ' was performed at ' || CAST(e.at AS TEXT) "
            "|| ' UTC, before its test ' || e.test_id || ' (patient ' || e.patient_id "
            "|| ') was ordered at ' || CAST(e.ordered_at AS TEXT) || ' UTC.'"
        )
        cursor = self.sql(
            f"""
            INSERT INTO monitoring_findings (kind, "table", record_key, detail, file_id,
                                             created_at)
            SELECT 'performed_before_order', 'lab_results', e.result_id, {detail}, {p}, {p}
            {source}
            LIMIT {FINDINGS_KEPT}
            ON CONFLICT (kind, "table", record_key) DO NOTHING
            """,
            (self.file_id, self.now),
        )
        added = max(cursor.rowcount, 0)
        if added >= FINDINGS_KEPT:
            (total,) = self.sql(f"SELECT COUNT(*) {source}").fetchone()
            self.notes.append(
                f"{total} results performed before their test was ordered; the first "
                f"{FINDINGS_KEPT} are recorded as findings"
            )
        return added

    def duplicate_ids(self) -> int:
        """A test_id inserted by this file that another patient's test already has (or that
        the file gives two patients): both rows stay; the finding names every patient."""
        with self.lookups(self.changed_rows, "monitoring_lab_tests"):
            reused = [
                test_id
                for (test_id,) in self.sql(
                    f"""
                    SELECT c.k1 FROM {CHANGED} c
                    WHERE c.fresh AND EXISTS (
                        SELECT 1 FROM monitoring_lab_tests o
                        WHERE o.test_id = c.k1 AND o.patient_id <> c.k2)
                    LIMIT {FINDINGS_KEPT}
                    """
                ).fetchall()
            ]
        owners: dict[str, list[str]] = {}
        for start in range(0, len(reused), 500):
            chunk = sorted(set(reused[start : start + 500]))
            query = (
                LabTest.select(LabTest.test_id, LabTest.patient_id)
                .where(LabTest.test_id.in_(chunk))
                .order_by(LabTest.test_id, LabTest.patient_id)
                .tuples()
            )
            for test_id, patient_id in query:
                owners.setdefault(test_id, []).append(patient_id)
        found = [
            {
                "kind": "duplicate_id",
                "table": "lab_tests",
                "record_key": test_id[:200],
                "detail": f"test_id {test_id} belongs to {len(patients)} patients "
                f"({', '.join(patients)}); every row is kept, and a result of this test_id "
                "counts for each of them.",
            }
            for test_id, patients in owners.items()
        ]
        return insert_findings(found, self.file_id, utcnow())


class _PostgresWriter(_Writer):
    boolean, timestamp = "boolean", "timestamp"

    def begin(self) -> None:
        # Planning and compiling these statements costs more than it saves; sorts and hashes
        # over a large file's rows need more than the default 4 MB.
        self.sql("SET LOCAL jit = off")
        self.sql("SET LOCAL work_mem = '64MB'")
        super().begin()

    def stage_types(self) -> dict[str, str]:
        types = {"line": "integer", "extra": "text"}
        for f in self.table.fields:
            types[f.name] = {"moment": "timestamp", "date": "date"}.get(f.kind, "text")
        return types

    def create_temp(self, name: str, definition: str) -> None:
        self.sql(f"DROP TABLE IF EXISTS pg_temp.{name}")
        self.sql(f"CREATE TEMP TABLE {name} ({definition}) ON COMMIT DROP")

    def create_temp_as(self, name: str, select: str) -> None:
        self.sql(f"DROP TABLE IF EXISTS pg_temp.{name}")
        self.sql(f"CREATE TEMP TABLE {name} ON COMMIT DROP AS {select}")

    @contextlib.contextmanager
    def lookups(self, keys: int, table: str) -> Iterator[None]:
        """Look a few keys up in a big table through its index, not by hashing the whole
        table. The planner costs index probes as disk reads and prefers a hash join that
        scans all of ``table``: three times slower for 500,000 results against 5,000,000
        tests held in memory, and worse the smaller the file."""
        # The table's size as the planner would estimate it (it may not be analyzed yet).
        (rows,) = self.sql(
            "SELECT CASE WHEN reltuples > 0 AND relpages > 0 "
            "THEN reltuples / relpages * pg_relation_size(oid) / 8192 "
            "ELSE pg_relation_size(oid) / 8192 * 50 END "
            "FROM pg_class WHERE oid = %s::regclass",
            (table,),
        ).fetchone()
        if keys * 4 >= rows:
            yield
            return
        self.sql("SET LOCAL enable_hashjoin = off")
        self.sql("SET LOCAL enable_mergejoin = off")
        yield  # (after an error the transaction ends, and its settings with it)
        self.sql("SET LOCAL enable_hashjoin = on")
        self.sql("SET LOCAL enable_mergejoin = on")

    def drop_temps(self) -> None:
        pass  # ON COMMIT DROP

    @staticmethod
    def prepare(rows: list[tuple]) -> bytes:
        """COPY's CSV format. None is an empty unquoted field, which COPY reads as NULL;
        values are never empty strings (empty means missing), so nothing else is."""
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue().encode()

    def load_stage(self, payload: bytes) -> None:
        self.sql(f"TRUNCATE {STAGE}")
        cursor = database.connection().cursor()
        with peewee.__exception_wrapper__:  # driver errors as peewee's (DataError, ...)
            cursor.copy_expert(  # in one piece: one hand-back of the interpreter lock
                f"COPY {STAGE} ({', '.join(self.columns)}) FROM STDIN WITH (FORMAT csv)",
                io.BytesIO(payload),
                size=max(len(payload), 8192),
            )

    def upsert(self) -> tuple[int, int]:
        k1, k2, at, name = _CHANGED[self.name]
        returned = f"{k1}, {k2 or 'NULL::text'}, {at or 'NULL::timestamp'}, {name or 'NULL::text'}"
        cursor = self.sql(
            f"WITH up AS ({self.upsert_sql()} RETURNING {returned}, (xmax = 0) AS fresh), "
            f"changed AS (INSERT INTO {CHANGED} (k1, k2, at, name, fresh) SELECT * FROM up) "
            f"SELECT COUNT(*) FILTER (WHERE fresh), COUNT(*) FILTER (WHERE NOT fresh) FROM up",
            (self.file_id, self.smt),
        )
        inserted, updated = cursor.fetchone()
        return inserted, updated


class _SqliteWriter(_Writer):
    distinct = "IS NOT"
    boolean, timestamp = "INTEGER", "TEXT"

    def stage_types(self) -> dict[str, str]:
        return {"line": "INTEGER"}

    def create_temp(self, name: str, definition: str) -> None:
        self.sql(f"DROP TABLE IF EXISTS temp.{name}")
        self.sql(f"CREATE TEMP TABLE {name} ({definition})")

    def create_temp_as(self, name: str, select: str) -> None:
        self.sql(f"DROP TABLE IF EXISTS temp.{name}")
        self.sql(f"CREATE TEMP TABLE {name} AS {select}")
        if name == MOMENTS:
            # SQLite joins by nested loops: without an index, joining each patient's latest
            # moment back to the moments is quadratic.
            self.sql(f"CREATE INDEX temp.{name}_patient ON {name} (patient_id, at)")

    def drop_temps(self) -> None:
        for name in (STAGE, CHANGED, EVENTS, MOMENTS, RECOMPUTE):
            self.sql(f"DROP TABLE IF EXISTS temp.{name}")

    @staticmethod
    def prepare(rows: list[tuple]) -> list[tuple]:
        return rows

    def load_stage(self, payload: list[tuple]) -> None:
        self.sql(f"DELETE FROM {STAGE}")
        marks = ", ".join([self.p] * len(self.columns))
        database.cursor().executemany(
            f"INSERT INTO {STAGE} ({', '.join(self.columns)}) VALUES ({marks})", payload
        )

    def upsert(self) -> tuple[int, int]:
        # SQLite has no xmax to tell an insert from an update: note the rows that will
        # change first, by the upsert's own rule, then upsert.
        p = self.p
        keys = self.table.key
        compared = [n for n in self.columns if n not in keys and n != "line"]
        join = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        changed = " OR ".join(f"t.{n} IS NOT s.{n}" for n in compared)
        k1, k2, at, name = (f"s.{c}" if c else "NULL" for c in _CHANGED[self.name])
        (before,) = self.sql(f"SELECT COALESCE(MAX(rowid), 0) FROM {CHANGED}").fetchone()
        self.sql(
            f"INSERT INTO {CHANGED} (k1, k2, at, name, fresh) "
            f"SELECT {k1}, {k2}, {at}, {name}, t.id IS NULL "
            f"FROM {STAGE} s LEFT JOIN {self.target} t ON {join} "
            f"WHERE t.id IS NULL OR ((t.source_modified_at IS NULL "
            f"OR {p} >= t.source_modified_at) AND ({changed}))",
            (self.smt,),
        )
        self.sql(self.upsert_sql(), (self.file_id, self.smt))
        fresh, total = self.sql(
            f"SELECT COALESCE(SUM(fresh), 0), COUNT(*) FROM {CHANGED} WHERE rowid > {p}",
            (before,),
        ).fetchone()
        return fresh, total - fresh
