"""The weekly documents report: aggregate one ISO week of the documents store for one scope
(one study, or all studies) and compile it to a PDF.

``render_report(study, week)`` is called once per scope and week by the report pipeline,
whatever the number of recipients. It reads:

- the database, in one read-only snapshot: the week's changes (``DocumentChange``) reduced to
  one row per document, then counted and summed per study and content type by the database
  (a few ``GROUP BY`` queries, whatever the number of documents);
- the file store: every new file is streamed once to re-verify its MD5 (missing and corrupt
  files are listed), and the images among them are decoded safely for their dimensions, a
  contact sheet and near-duplicate detection (``images.py``);

What counts (the same rules are printed in the PDF, under the summary): a document deleted
in the week is *deleted*, even if it was also created in the week (it is not *new*: it is not
in the store any more); else one created in the week is *new*, even if also updated; else one
changed in the week is *updated*. A document counts under the study, type and size of its last
change in the week. Study reports: a document moved to another study during the week counts in
the study it ended the week in (as new, updated or deleted there), and in the report of each
study it was in during the week (at the week's start, or after one of its changes) but left,
as *moved out* (with the study it is in now), so it does not vanish from that study's report.
A document that moved out and came back counts as updated. The report of all studies has no
moves.

It then draws a chart of uploads per day (``chart.py``) before compiling the HTML template
``reporting/report.html`` (autoescaped: file names and studies are user data) with xhtml2pdf,
which may fetch nothing: images are embedded as ``data:`` URIs.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import hashlib
import io
import logging
import tempfile
import time
import zoneinfo
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from peewee import SQL, Case, fn

from core.db import database, is_sqlite
from plugins.reporting.reports import chart, images
from plugins.reporting.reports.timing import day_bounds, parse_week, week_monday

log = logging.getLogger(__name__)

# The report ---------------------------------------------------------------------------

CONTACT_SHEET_IMAGES = 48  # thumbnails drawn; the rest are counted ("and N more")
LISTED_ROWS = 200  # rows per table or list in the PDF; the rest are counted
LISTED_GROUP_MEMBERS = 12
THUMBNAIL_POINTS = 72
# Files are verified and images decoded by a few threads: hashlib and Pillow release the GIL
# on large buffers, and an object store answers each read after a network round trip. Not
# more than boto3's default connection pool (10) holds. Measured (bench/reporting_render.py,
# 10,000 files): each S3 read costs this process about 1.8 ms of CPU in botocore, which
# threads cannot share out: the floor of the file checks on S3 is about 18 s.
WORKERS = 8
# Images are decoded by at most images.DECODE_SLOTS of them at once (images.py).
# An image file's bytes are kept in memory up to this, then spooled to a temporary file.
SPOOL_BYTES = 8 * 1024 * 1024
CHUNK = 1024 * 1024
TEMPLATE = "reporting/report.html"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
_NO_STUDY = "(no study)"


@dataclass(frozen=True)
class Rendered:
    """A compiled weekly report. ``totals`` holds (ints): ``new``, ``updated``, ``deleted``,
    ``new_bytes``, ``updated_bytes``, ``deleted_bytes``, ``moved_out`` and
    ``moved_out_bytes`` (study reports: documents that left the study during the week),
    ``verified`` (new files whose MD5 matched), ``missing``, ``corrupt``,
    ``deleted_meanwhile`` (new documents deleted while the report was made: counted as new,
    their files not checked), ``images`` (new images examined), ``unreadable`` (images that
    could not be decoded), ``near_duplicates`` (images in a near-duplicate group),
    ``near_duplicate_groups``."""

    pdf: bytes
    study: str | None
    week: str
    totals: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict, compare=False)  # seconds per stage


@dataclass(frozen=True)
class _NewFile:
    id: int
    filename: str
    study: str | None
    content_type: str
    size: int
    md5: str
    location: str
    created_at: datetime.datetime


@dataclass(frozen=True)
class _Checked:
    file: _NewFile
    status: str  # ok, missing, corrupt, deleted (while the report was made)
    detail: str = ""
    image: images.ImageFacts | None = None
    image_seconds: float = 0.0  # in images.examine(), waiting for a decode slot included


def render_report(study: str | None, week: str, *, app=None) -> Rendered:
    """Render the weekly documents report of ``week`` (``"2026-W47"``, in the hospital's
    zone ``TIMEZONE``) for one ``study``, or for all studies when ``study`` is ``None``.

    What counts, from the week's ``DocumentChange`` rows: a document deleted in the week is
    *deleted* (even if it was also created in the week); else one created in the week is
    *new* (even if also updated); else one changed in the week is *updated*. A document
    counts under the study, type and size of its last change in the week, so one moved to
    another study during the week shows in the study it ended in, and as *moved out* in the
    report of a study it was in during the week (see the module's docstring).

    Raises ``ValueError`` for a malformed week. A missing or corrupt file, or an image that
    cannot be decoded, is listed in the report rather than raised; an unreachable database
    or file store raises (the pipeline retries the job).
    """
    if app is None:
        from flask import current_app

        app = current_app._get_current_object()
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    parse_week(week)
    zone = zoneinfo.ZoneInfo(app.config.get("TIMEZONE") or "UTC")
    days = day_bounds(week, zone)

    with _connection():
        facts = _aggregate(study, days)
    timings["queries"] = time.perf_counter() - clock

    clock = time.perf_counter()
    checked = _check_files(app, facts["new_files"])
    timings["files"] = time.perf_counter() - clock  # reading, MD5 and images, in threads
    # The file checks run after the snapshot, outside it: a document deleted meanwhile
    # (its file removed at once) is not a missing file.
    clock = time.perf_counter()
    checked = _deleted_meanwhile(checked)
    timings["recheck"] = time.perf_counter() - clock
    timings["images_in_threads"] = sum(item.image_seconds for item in checked)

    clock = time.perf_counter()
    report = _assemble(study, week, zone, days, facts, checked)
    timings["assemble"] = time.perf_counter() - clock

    clock = time.perf_counter()
    pdf = compile_pdf(render_html(report))
    timings["pdf"] = time.perf_counter() - clock
    log.info(
        "reporting: rendered %s for %s: %s in %s",
        week,
        study if study is not None else "all studies",
        report["totals"],
        {stage: round(seconds, 3) for stage, seconds in timings.items()},
    )
    return Rendered(pdf=pdf, study=study, week=week, totals=report["totals"], timings=timings)


@contextlib.contextmanager
def _connection() -> Iterator[None]:
    """One read-only snapshot for every query of the report, on a connection of its own
    unless the caller (a request, a job) already holds one."""
    with contextlib.ExitStack() as stack:
        if database.is_closed():
            stack.enter_context(database.connection_context())
        # Inside a caller's transaction the isolation level is theirs (it can no longer be
        # set, and peewee's savepoints do not count in transaction_depth()). SQLite's read
        # transaction is a snapshot already (WAL).
        ours = not database.in_transaction()
        stack.enter_context(database.atomic())
        if ours and not is_sqlite():
            database.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def _aggregate(study: str | None, days: list[datetime.datetime]) -> dict:
    """Everything the report needs from the database, by a few grouped queries."""
    from plugins.reporting.documents.models import Document, DocumentChange

    change = DocumentChange
    start, end = days[0], days[-1]
    # One row per document changed in the week: was it created, was it deleted, and which
    # change is its last (whose snapshot says its study, type and size at the week's end).
    per_document = (
        change.select(
            change.document_id.alias("document_id"),
            fn.MAX(Case(None, [(change.action == "created", 1)], 0)).alias("created"),
            fn.MAX(Case(None, [(change.action == "deleted", 1)], 0)).alias("deleted"),
            fn.MAX(change.id).alias("last_id"),
        )
        .where(change.at >= start, change.at < end)
        .group_by(change.document_id)
        .alias("per_document")
    )
    last = change.alias("last")
    in_scope = (last.study == study) if study is not None else SQL("1 = 1")

    groups = (
        last.select(
            per_document.c.created,
            per_document.c.deleted,
            last.study,
            last.content_type,
            fn.COUNT(SQL("*")).alias("count"),
            fn.COALESCE(fn.SUM(last.size), 0).alias("bytes"),
        )
        .join(per_document, on=(last.id == per_document.c.last_id))
        .where(in_scope)
        .group_by(per_document.c.created, per_document.c.deleted, last.study, last.content_type)
        .tuples()
    )
    # kind -> (study, content type) -> [count, bytes]
    by_kind: dict[str, dict[tuple, list[int]]] = {
        "new": defaultdict(lambda: [0, 0]),
        "updated": defaultdict(lambda: [0, 0]),
        "deleted": defaultdict(lambda: [0, 0]),
        "moved_out": defaultdict(lambda: [0, 0]),  # keyed by the study it is in now
    }
    for created, deleted, row_study, content_type, count, total in groups:
        kind = "deleted" if deleted else "new" if created else "updated"
        cell = by_kind[kind][(row_study, content_type or "")]
        cell[0] += int(count)
        cell[1] += int(total or 0)

    if study is not None:
        # Moved out: in this study during the week (after one of its changes in the week,
        # or at the week's start: its last change before the week), not at its end.
        during = change.alias("during")
        in_study_during = during.select(during.document_id).where(
            during.study == study, during.at >= start, during.at < end
        )
        in_week = change.alias("in_week")
        changed_in_week = in_week.select(in_week.document_id).where(
            in_week.at >= start, in_week.at < end
        )
        prior = change.alias("prior")
        last_before = (
            prior.select(fn.MAX(prior.id))
            .where(prior.at < start, prior.document_id.in_(changed_in_week))
            .group_by(prior.document_id)
        )
        at_start = change.alias("at_start")
        in_study_at_start = at_start.select(at_start.document_id).where(
            at_start.id.in_(last_before), at_start.study == study
        )
        moved = (
            last.select(
                last.study,
                last.content_type,
                fn.COUNT(SQL("*")).alias("count"),
                fn.COALESCE(fn.SUM(last.size), 0).alias("bytes"),
            )
            .join(per_document, on=(last.id == per_document.c.last_id))
            .where(
                (last.study != study) | last.study.is_null(),
                per_document.c.document_id.in_(in_study_during)
                | per_document.c.document_id.in_(in_study_at_start),
            )
            .group_by(last.study, last.content_type)
            .tuples()
        )
        for row_study, content_type, count, total in moved:
            cell = by_kind["moved_out"][(row_study, content_type or "")]
            cell[0] += int(count)
            cell[1] += int(total or 0)

    # Uploads per local day: the creation time of each document that counts as new.
    created = change.alias("created_change")
    day = Case(None, [(created.at < bound, index) for index, bound in enumerate(days[1:])], 6)
    per_day = [0] * 7
    day_rows = (
        created.select(day.alias("day"), fn.COUNT(SQL("*")).alias("count"))
        .join(per_document, on=(created.document_id == per_document.c.document_id))
        .join(last, on=(last.id == per_document.c.last_id))
        .where(
            created.action == "created",
            created.at >= start,
            created.at < end,
            per_document.c.deleted == 0,
            in_scope,
        )
        .group_by(SQL("1"))
        .tuples()
    )
    for index, count in day_rows:
        per_day[int(index)] += int(count)

    # The new documents still in the store, for the file checks and the images.
    new_ids = (
        last.select(per_document.c.document_id)
        .join(per_document, on=(last.id == per_document.c.last_id))
        .where(per_document.c.created == 1, per_document.c.deleted == 0, in_scope)
    )
    document = Document
    new_files = [
        _NewFile(*row)
        for row in document.select(
            document.id,
            document.filename,
            document.study,
            document.content_type,
            document.size,
            document.md5,
            document.file_location,
            document.created_at,
        )
        .where(document.id.in_(new_ids))
        .order_by(document.created_at, document.id)
        .tuples()
        .iterator()
    ]
    return {"by_kind": by_kind, "per_day": per_day, "new_files": new_files}


def _check_files(app, files: list[_NewFile]) -> list[_Checked]:
    """Stream each new file once: verify its size and MD5, and examine it if it is an
    image (the first ``CONTACT_SHEET_IMAGES`` images also get a thumbnail)."""
    from plugins.reporting.documents.storage import store_for

    store = store_for(app)
    thumbnails = set()
    for file in files:
        if len(thumbnails) >= CONTACT_SHEET_IMAGES:
            break
        if _is_image(file.content_type):
            thumbnails.add(file.id)
    if not files:
        return []
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="report-files") as pool:
        return list(pool.map(lambda file: _check_file(store, file, file.id in thumbnails), files))


def _is_image(content_type: str | None) -> bool:
    return (content_type or "").lower().startswith("image/")


def _check_file(store, file: _NewFile, thumbnail: bool) -> _Checked:
    from plugins.reporting.documents.storage import Missing

    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    keep = _is_image(file.content_type)
    with contextlib.ExitStack() as stack:
        # An image's bytes are kept for decoding: in memory up to SPOOL_BYTES, then in a
        # temporary file, so WORKERS threads hold at most WORKERS x SPOOL_BYTES between them.
        buffer = (
            stack.enter_context(tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES))
            if keep
            else None
        )
        try:
            for chunk in store.open(file.location):
                digest.update(chunk)
                size += len(chunk)
                if buffer is not None:
                    if size > images.MAX_IMAGE_BYTES:
                        buffer = None  # still hashed to the end, never decoded
                    else:
                        buffer.write(chunk)
        except Missing:
            return _Checked(file, "missing", "the file is not in the store")
        if size != file.size:
            status, detail = "corrupt", f"{size:,} bytes in the store, {file.size:,} recorded"
        elif digest.hexdigest() != (file.md5 or "").lower():
            status, detail = "corrupt", f"MD5 {digest.hexdigest()}, {file.md5} recorded"
        else:
            status, detail = "ok", ""
        if not keep:
            return _Checked(file, status, detail)
        if buffer is None:
            facts = images.ImageFacts(
                unreadable=f"{size:,} bytes is over the {images.MAX_IMAGE_BYTES:,}-byte limit "
                "for decoding"
            )
            return _Checked(file, status, detail, facts)
        buffer.seek(0)
        clock = time.perf_counter()
        facts = images.examine(buffer, thumbnail=thumbnail)  # no copy of the bytes
        return _Checked(file, status, detail, facts, time.perf_counter() - clock)


RECHECK_BATCH = 500  # ids per query when looking again for the documents of missing files


def _deleted_meanwhile(checked: list[_Checked]) -> list[_Checked]:
    """Each file found missing whose document no longer exists (asked again, after the file
    checks) becomes ``deleted``: deleted while the report was made, not a missing file."""
    from plugins.reporting.documents.models import Document

    missing = [item.file.id for item in checked if item.status == "missing"]
    if not missing:
        return checked
    remaining: set[int] = set()
    with _connection():
        for start in range(0, len(missing), RECHECK_BATCH):
            batch = missing[start : start + RECHECK_BATCH]
            query = Document.select(Document.id).where(Document.id.in_(batch)).tuples()
            remaining.update(document_id for (document_id,) in query)
    return [
        dataclasses.replace(item, status="deleted", detail="deleted while the report was made")
        if item.status == "missing" and item.file.id not in remaining
        else item
        for item in checked
    ]


def _assemble(
    study: str | None,
    week: str,
    zone: zoneinfo.ZoneInfo,
    days: list[datetime.datetime],
    facts: dict,
    checked: list[_Checked],
) -> dict:
    """The template's context: totals, tables, problems, images, chart."""
    by_kind = facts["by_kind"]
    totals = {}
    for kind, cells in by_kind.items():
        totals[kind] = sum(count for count, _ in cells.values())
        totals[f"{kind}_bytes"] = sum(total for _, total in cells.values())

    problems = [item for item in checked if item.status in ("missing", "corrupt")]
    deleted_meanwhile = [item for item in checked if item.status == "deleted"]
    totals["verified"] = sum(item.status == "ok" for item in checked)
    totals["missing"] = sum(item.status == "missing" for item in checked)
    totals["corrupt"] = sum(item.status == "corrupt" for item in checked)
    totals["deleted_meanwhile"] = len(deleted_meanwhile)

    examined = [item for item in checked if item.image is not None]
    readable = [item for item in examined if item.image.unreadable is None]
    unreadable = [item for item in examined if item.image.unreadable is not None]
    groups = images.near_duplicate_groups({item.file.id: item.image.dhash for item in readable})
    by_id = {item.file.id: item for item in readable}
    totals["images"] = len(examined)
    totals["unreadable"] = len(unreadable)
    totals["near_duplicates"] = sum(len(group) for group in groups)
    totals["near_duplicate_groups"] = len(groups)

    monday = week_monday(week)
    dates = [monday + datetime.timedelta(days=i) for i in range(7)]
    labels = [f"{day:%a} {day.day}" for day in dates]
    chart_png = chart.bar_chart(labels, facts["per_day"])
    sheet = [
        {
            "filename": item.file.filename,
            "width": item.image.width,
            "height": item.image.height,
            # printed size in points, the longer side THUMBNAIL_POINTS
            "print_width": round(THUMBNAIL_POINTS * item.image.width / _longer(item.image)),
            "print_height": round(THUMBNAIL_POINTS * item.image.height / _longer(item.image)),
            "src": _data_uri("image/jpeg", item.image.thumbnail),
        }
        for item in readable
        if item.image.thumbnail is not None
    ]
    return {
        "week": week,
        "study": study,
        "zone": str(zone),
        "first_day": dates[0],
        "last_day": dates[6],
        "generated_at": datetime.datetime.now(zone),
        "totals": totals,
        "kinds": [
            {
                "name": kind.replace("_", " "),
                "by_study": _table(by_kind[kind], lambda key: key[0]),
                "by_type": _table(by_kind[kind], lambda key: key[1]),
            }
            for kind in ("new", "updated", "deleted", "moved_out")
            if kind != "moved_out" or study is not None
        ],
        "per_day": list(zip(labels, facts["per_day"], strict=True)),
        "chart": _data_uri("image/png", chart_png),
        "problems": problems[:LISTED_ROWS],
        "problems_more": max(len(problems) - LISTED_ROWS, 0),
        "deleted_meanwhile": deleted_meanwhile[:LISTED_ROWS],
        "deleted_meanwhile_more": max(len(deleted_meanwhile) - LISTED_ROWS, 0),
        "unreadable": unreadable[:LISTED_ROWS],
        "unreadable_more": max(len(unreadable) - LISTED_ROWS, 0),
        "dimensions": _dimensions(readable),
        "groups": [
            {
                "members": [by_id[key] for key in group[:LISTED_GROUP_MEMBERS]],
                "more": max(len(group) - LISTED_GROUP_MEMBERS, 0),
            }
            for group in groups[:LISTED_ROWS]
        ],
        "groups_more": max(len(groups) - LISTED_ROWS, 0),
        "sheet": sheet,
        "sheet_more": max(len(readable) - len(sheet), 0),
        "no_study": _NO_STUDY,
        "font": report_font(),
    }


def _longer(facts: images.ImageFacts) -> int:
    return max(facts.width or 1, facts.height or 1, 1)


def _table(cells: dict[tuple, list[int]], key) -> dict:
    """Rows ``(name, count, bytes)`` grouped by ``key`` of (study, type), most first."""
    merged: dict = defaultdict(lambda: [0, 0])
    for cell_key, (count, total) in cells.items():
        row = merged[key(cell_key)]
        row[0] += count
        row[1] += total
    rows = sorted(
        ((name, count, total) for name, (count, total) in merged.items()),
        key=lambda row: (-row[1], "" if row[0] is None else str(row[0])),
    )
    return {"rows": rows[:LISTED_ROWS], "more": max(len(rows) - LISTED_ROWS, 0)}


def _dimensions(readable: list[_Checked]) -> dict:
    if not readable:
        return {}
    areas = sorted(item.image.width * item.image.height for item in readable)
    widest = max(readable, key=lambda item: item.image.width * item.image.height).image
    return {
        "smallest": min(
            (item.image for item in readable), key=lambda facts: facts.width * facts.height
        ),
        "largest": widest,
        "median_megapixels": areas[len(areas) // 2] / 1_000_000,
        "formats": sorted(
            _count(item.image.format or "?" for item in readable).items(),
            key=lambda pair: (-pair[1], pair[0]),
        ),
    }


def _count(values) -> dict:
    counts: dict = defaultdict(int)
    for value in values:
        counts[value] += 1
    return counts


def _data_uri(content_type: str, data: bytes) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


# HTML and PDF -------------------------------------------------------------------------


def human_bytes(value: int) -> str:
    """``1536`` -> ``"1.5 KB"`` (binary multiples, as file managers show them)."""
    size = float(value)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{int(size):,} bytes" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    # Every value is escaped: file names and study names are whatever users typed.
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_environment.filters["bytes"] = human_bytes


def shorten(text: str, width: int = 40) -> str:
    """Keep the start and the end (the extension) of a long name."""
    text = str(text)
    if len(text) <= width:
        return text
    return text[: width - 12] + "\u2026" + text[-11:]


_environment.filters["shorten"] = shorten


def render_html(context: dict) -> str:
    """The report's HTML (``reporting/report.html``), ready for xhtml2pdf."""
    return _environment.get_template(TEMPLATE).render(**context)


# A transparent 1 x 1 GIF: what any reference but an embedded data: URI turns into.
_BLANK = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def _refuse_links(uri, rel) -> str | None:
    """xhtml2pdf's link_callback: only the ``data:`` URIs the report embeds resolve; any
    other reference (a URL, a local path) becomes a blank image, so rendering fetches
    nothing (the resource policy below refuses them too)."""
    if isinstance(uri, str) and uri.startswith("data:"):
        return None  # unchanged
    log.warning("reporting: the report referred to %.80r; not fetched", uri)
    return _BLANK


# Helvetica, the PDF's built-in font, draws Latin-1 only: a file name in Cyrillic, Greek or
# most of Central Europe's letters would come out as boxes. DejaVu Sans draws those; it is
# used where the system has it (Debian: fonts-dejavu-core), else Helvetica.
FONT_FILES = {
    (0, 0): ("DejaVuSans.ttf",),
    (1, 0): ("DejaVuSans-Bold.ttf",),
}
FONT_FOLDERS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu")
_font: list[str] = []  # the chosen family, once found


def report_font() -> str:
    """The font family the report is set in: ``DejaVuSans`` if installed, else Helvetica."""
    if _font:
        return _font[0]
    family = "Helvetica"
    folder = next(
        (Path(f) for f in FONT_FOLDERS if (Path(f) / FONT_FILES[(0, 0)][0]).is_file()), None
    )
    if folder is not None:
        try:
            from reportlab.lib.fonts import addMapping
            from reportlab.pdfbase import pdfmetrics
            from reportlab.pdfbase.ttfonts import TTFont
            from xhtml2pdf import default

            names = {}
            for (bold, italic), (filename,) in FONT_FILES.items():
                name = "DejaVuSans" + ("-Bold" if bold else "")
                pdfmetrics.registerFont(TTFont(name, str(folder / filename)))
                names[bold, italic] = name
            for bold in (0, 1):
                for italic in (0, 1):
                    addMapping("DejaVuSans", bold, italic, names[bold, 0])
            default.DEFAULT_FONT["dejavusans"] = "DejaVuSans"
            family = "DejaVuSans"
        except Exception:  # a broken font file costs the wider alphabet, not the report
            log.warning("reporting: cannot use the fonts in %s", folder, exc_info=True)
    _font.append(family)
    return family


def compile_pdf(html: str) -> bytes:
    """Compile the report's HTML to PDF bytes; a failure raises ``RuntimeError``."""
    from xhtml2pdf import pisa
    from xhtml2pdf.config.resources import ResourceAccessPolicy

    policy = ResourceAccessPolicy.server(
        None,  # no local folder may be read
        allow_remote=False,
        max_render_seconds=600,
        max_document_bytes=64 * 1024 * 1024,
    )
    out = io.BytesIO()
    status = pisa.pisaDocument(
        html,
        dest=out,
        link_callback=_refuse_links,
        resource_policy=policy,
        encoding="utf-8",
    )
    if status.err:
        raise RuntimeError(f"xhtml2pdf could not compile the report ({status.err} errors)")
    return out.getvalue()
