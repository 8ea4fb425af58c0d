"""The weekly report's rendering: ISO weeks across a DST change, the week's counts per study
and type, scope, file checks (missing, corrupt), images (dimensions, near-duplicates,
unreadable files), the PDF's text, and user data coming out as plain text."""

import datetime
import io
import random
import re
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from itertools import combinations
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from PIL import Image, ImageDraw
from pypdf import PdfReader

from core.db import database
from plugins.reporting import plugin as reporting
from plugins.reporting.reports import images, render
from plugins.reporting.reports.render import Rendered, render_report
from plugins.reporting.reports.timing import (
    day_bounds,
    last_full_week,
    parse_week,
    previous_week,
    week_bounds,
    week_of,
)

BERLIN = ZoneInfo("Europe/Berlin")
UTC = datetime.UTC
WEEK = "2026-W43"  # Monday 19 to Sunday 25 October 2026; Berlin leaves summer time on the 25th


@pytest.fixture
def caredeck_plugins():
    return {"reporting": reporting}


@pytest.fixture
def app(make_app):
    return make_app(TIMEZONE="Europe/Berlin")


def local(*args) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=BERLIN)


class Library:
    """Documents made the way the documents store makes them: the file through the store,
    the row and its change history through the models."""

    def __init__(self, app):
        from plugins.reporting.documents.storage import store_for

        self.store = store_for(app)
        self.count = 0

    def add(
        self,
        filename,
        data: bytes,
        *,
        at,
        content_type="application/pdf",
        study=None,
        updated=(),
        moves=(),
        deleted=None,
    ):
        from plugins.reporting.documents.models import Document, DocumentChange

        self.count += 1
        stored = self.store.put(f"test/{self.count}", io.BytesIO(data), content_type)
        with database.connection_context():
            document = Document.create(
                filename=filename,
                file_location=stored.location,
                size=stored.size,
                md5=stored.md5,
                content_type=content_type,
                study=moves[-1][1] if moves else study,
                uploaded_by="doctor@example.org",
                created_at=at,
                updated_at=max([at, *updated, *(moment for moment, _ in moves)]),
            )
            snapshot = {
                "document_id": document.id,
                "filename": filename,
                "study": study,
                "content_type": content_type,
                "size": stored.size,
                "md5": stored.md5,
                "file_location": stored.location,
                "by": "doctor@example.org",
            }
            DocumentChange.create(action="created", at=at, **snapshot)
            for moment in updated:
                DocumentChange.create(action="updated", at=moment, **snapshot)
            for moment, to_study in moves:  # (when, to which study), in order
                snapshot["study"] = to_study
                DocumentChange.create(action="updated", at=moment, **snapshot)
            if deleted is not None:
                DocumentChange.create(action="deleted", at=deleted, **snapshot)
                document.delete_instance()
        return document


def pdf_text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return re.sub(r"\s+", " ", " ".join(page.extract_text() for page in reader.pages))


def picture(seed: int, size=(640, 480)) -> Image.Image:
    """A picture with structure (gradient, shapes), different for each seed."""
    rng = random.Random(seed)
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        w, h = rng.randrange(40, 250), rng.randrange(40, 250)
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse([x, y, x + w, y + h], fill=colour)
    return image


def encode(image: Image.Image, format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format, **options)
    return out.getvalue()


def bomb_png(width=60_000, height=60_000) -> bytes:
    """A tiny PNG whose header declares width x height pixels."""
    data = bytearray(encode(Image.new("L", (8, 8)), "PNG"))
    ihdr = 8 + 8  # signature, then length and type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def flat_png(width: int, height: int) -> bytes:
    """An RGBA PNG of one colour, compressed row by row (never held decoded here)."""
    row = b"\x00" + bytes([10, 200, 30, 128]) * width  # filter type 0, then the pixels
    squeeze = zlib.compressobj(1)
    body = b"".join([*(squeeze.compress(row) for _ in range(height)), squeeze.flush()])

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8 bits, RGBA
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


_PEAK_SCRIPT = textwrap.dedent(
    """
    import sys
    from plugins.reporting.reports import images

    def status(field):  # in MB, from this process's own counters (not its parent's)
        with open("/proc/self/status") as lines:
            line = next(line for line in lines if line.startswith(field + ":"))
        return int(line.split()[1]) / 1024

    with open(sys.argv[1], "rb") as source:
        data = source.read()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the peak (VmHWM) starts again from the memory in use now
    before = status("VmRSS")
    facts = images.examine(data, thumbnail=True)
    print(round(status("VmHWM") - before), facts.width, facts.height, facts.unreadable is None)
    """
)


def peak_examining(path) -> tuple[int, int, int, bool]:
    """In a fresh process: how much ``examine`` raised the peak resident memory (MB), and
    the width, height and readability it found."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout.split()
    return int(out[0]), int(out[1]), int(out[2]), out[3] == "True"


# ISO weeks --------------------------------------------------------------------------


def test_parse_week_accepts_iso_weeks_and_names_what_it_refuses():
    assert parse_week("2026-W47") == (2026, 47)
    assert parse_week("2026-W53") == (2026, 53)  # 2026 has 53 ISO weeks
    for bad in ("2025-W53", "2026-W00", "2026-W54", "2026-47", "2026-w47", " 2026-W47", "", None):
        with pytest.raises(ValueError, match="is not an ISO week") as caught:
            parse_week(bad)
        assert repr(bad) in str(caught.value)


def test_week_bounds_follow_local_midnights_across_the_autumn_change():
    start, end = week_bounds(WEEK, "Europe/Berlin")
    assert start == datetime.datetime(2026, 10, 18, 22, 0, tzinfo=UTC)  # 00:00 CEST
    assert end == datetime.datetime(2026, 10, 25, 23, 0, tzinfo=UTC)  # 00:00 CET
    assert start.astimezone(BERLIN) == local(2026, 10, 19)
    assert end.astimezone(BERLIN) == local(2026, 10, 26)
    assert end - start == datetime.timedelta(hours=169)
    days = day_bounds(WEEK, "Europe/Berlin")
    assert [
        (b - a) / datetime.timedelta(hours=1) for a, b in zip(days, days[1:], strict=False)
    ] == [
        24,
        24,
        24,
        24,
        24,
        24,
        25,
    ]
    assert [day.astimezone(BERLIN).hour for day in days] == [0] * 8
    # Spring: Sunday 29 March 2026 has 23 hours.
    start, end = week_bounds("2026-W13", BERLIN)
    assert end - start == datetime.timedelta(hours=167)
    assert week_bounds(WEEK, "UTC")[1] - week_bounds(WEEK, "UTC")[0] == datetime.timedelta(days=7)


def test_week_of_and_previous_week():
    # Sunday 25 October 23:30 UTC is already Monday 00:30 in Berlin.
    assert (
        week_of(datetime.datetime(2026, 10, 25, 23, 30, tzinfo=UTC), "Europe/Berlin") == "2026-W44"
    )
    assert week_of(datetime.datetime(2026, 10, 25, 22, 30, tzinfo=UTC), "Europe/Berlin") == WEEK
    assert previous_week("2026-W44") == WEEK
    assert previous_week("2026-W01") == "2025-W52"
    assert previous_week("2027-W01") == "2026-W53"
    assert last_full_week(local(2026, 10, 26, 8, 0), "Europe/Berlin") == WEEK
    with pytest.raises(ValueError, match="aware"):
        week_of(datetime.datetime(2026, 10, 25), "UTC")


# Images, without a database -----------------------------------------------------------


def test_examine_reads_dimensions_and_refuses_bombs_and_non_images():
    facts = images.examine(encode(picture(1, (800, 600)), "JPEG"), thumbnail=True)
    assert (facts.width, facts.height, facts.format, facts.unreadable) == (800, 600, "JPEG", None)
    assert Image.open(io.BytesIO(facts.thumbnail)).size == (128, 96)

    bomb = images.examine(bomb_png())
    assert bomb.unreadable and "decompression bomb" in bomb.unreadable
    over_limit = images.examine(bomb_png(8_000, 6_000))  # under Pillow's guard, over ours
    assert (over_limit.width, over_limit.height) == (8_000, 6_000)
    assert "decompression bomb" in over_limit.unreadable

    for junk in (b"", b"not an image at all", encode(picture(1), "PNG")[:300]):
        facts = images.examine(junk)
        assert facts.unreadable and facts.dhash is None


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's VmHWM")
def test_examining_a_large_image_holds_one_decoded_copy(tmp_path):
    """The reviewer's 6,300 x 6,300 RGBA PNG (700 KB) raised the peak by 455 MB: it is over
    the pixel limit now and is not decoded. The largest image still decoded (16 MP, 64 MB
    as RGBA) costs about one decoded copy (66 MB measured), not five (246 MB before)."""
    over = tmp_path / "over.png"
    over.write_bytes(flat_png(6300, 6300))
    grown, width, height, readable = peak_examining(over)
    assert (width, height, readable) == (6300, 6300, False)
    assert grown < 150, f"{grown} MB"

    largest = tmp_path / "largest.png"
    largest.write_bytes(flat_png(4000, 4000))
    assert 4000 * 4000 <= images.MAX_PIXELS
    grown, width, height, readable = peak_examining(largest)
    assert (width, height, readable) == (4000, 4000, True)
    assert grown < 100, f"{grown} MB"


def test_examine_reads_a_file_object_and_thumbnails_upright():
    photo = picture(3, (800, 600))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: turn 90 degrees clockwise to show it
    data = encode(photo, "JPEG", exif=exif.tobytes())
    facts = images.examine(io.BytesIO(data), thumbnail=True)
    assert (facts.width, facts.height, facts.unreadable) == (800, 600, None)
    assert Image.open(io.BytesIO(facts.thumbnail)).size == (96, 128)
    assert facts.dhash == images.examine(data).dhash


def test_decodes_run_at_most_decode_slots_at_once(app, monkeypatch):
    """Eight threads read and hash files; only images.DECODE_SLOTS decode at once."""
    running, most, lock = [0], [0], threading.Lock()
    real = images._decode

    def counted(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(images, "_decode", counted)
    library = Library(app)
    for index in range(12):
        library.add(
            f"p{index}.png",
            encode(picture(200 + index, (320, 240)), "PNG"),
            content_type="image/png",
            at=local(2026, 10, 22),
        )
    rendered = render_report(None, WEEK, app=app)
    assert (rendered.totals["images"], rendered.totals["unreadable"]) == (12, 0)
    assert render.WORKERS > images.DECODE_SLOTS
    assert 1 <= most[0] <= images.DECODE_SLOTS


def sixteen_bit(image: Image.Image, scale: int = 257) -> Image.Image:
    """A 16-bit greyscale (I;16) copy of an 8-bit picture, each grey value times ``scale``
    (257: the full 16 bits; 16: 12 bits, as many detectors write)."""
    grey = image.convert("L")
    values = [value * scale for value in grey.tobytes()]
    return Image.frombytes("I;16", grey.size, struct.pack(f"<{len(values)}H", *values))


def test_sixteen_bit_greyscale_images_hash_and_thumbnail_by_their_content():
    """convert("L") clipped 16-bit pixels to white: every 16-bit image hashed to 0."""
    rng = random.Random(16)
    noise = []
    for _ in range(3):
        values = [rng.randrange(1000, 61000) for _ in range(72 * 64)]
        image = Image.frombytes("I;16", (72, 64), struct.pack(f"<{len(values)}H", *values))
        data = encode(image, "PNG")
        assert Image.open(io.BytesIO(data)).mode == "I;16"
        noise.append(images.examine(data, thumbnail=True))
    assert all(facts.unreadable is None for facts in noise)
    hashes = {index: facts.dhash for index, facts in enumerate(noise)}
    assert images.near_duplicate_groups(hashes) == []

    photo = picture(21)
    deep = images.examine(encode(sixteen_bit(photo), "PNG"), thumbnail=True)
    shallow = images.examine(encode(photo.convert("L"), "PNG"))
    assert deep.dhash != 0
    assert (deep.dhash ^ shallow.dhash).bit_count() <= images.NEAR_DUPLICATE_BITS
    # 12 bits used of 16: stretched, not drawn nearly black.
    twelve = images.examine(encode(sixteen_bit(photo, 16), "PNG"))
    assert (twelve.dhash ^ shallow.dhash).bit_count() <= images.NEAR_DUPLICATE_BITS
    thumb = Image.open(io.BytesIO(deep.thumbnail)).convert("L")
    low, high = thumb.getextrema()
    assert high - low > 100  # not a white (or black) square


def test_dhash_is_stable_under_re_encoding_and_small_edits():
    original = picture(7)
    edited = original.copy()
    ImageDraw.Draw(edited).rectangle([10, 10, 30, 30], fill=(255, 0, 0))
    h1 = images.examine(encode(original, "PNG")).dhash
    h2 = images.examine(encode(edited.resize((600, 450)), "JPEG", quality=60)).dhash
    h3 = images.examine(encode(picture(8), "PNG")).dhash
    assert (h1 ^ h2).bit_count() <= images.NEAR_DUPLICATE_BITS
    assert (h1 ^ h3).bit_count() > images.NEAR_DUPLICATE_BITS


def test_near_duplicate_groups_match_an_all_pairs_comparison():
    rng = random.Random(5)
    hashes = {}
    for key in range(600):
        if key % 5 == 0 or not hashes:
            hashes[key] = rng.getrandbits(64)
        else:  # a few bits away from an earlier one
            value = hashes[rng.choice(list(hashes))]
            for _ in range(rng.randrange(0, 9)):
                value ^= 1 << rng.randrange(64)
            hashes[key] = value
    parent = {key: key for key in hashes}

    def find(key):
        while parent[key] != key:
            key = parent[key]
        return key

    for a, b in combinations(hashes, 2):
        if (hashes[a] ^ hashes[b]).bit_count() <= images.NEAR_DUPLICATE_BITS:
            parent[find(a)] = find(b)
    expected = {}
    for key in hashes:
        expected.setdefault(find(key), []).append(key)
    expected = sorted(sorted(g) for g in expected.values() if len(g) > 1)
    assert sorted(images.near_duplicate_groups(hashes)) == expected


def test_near_duplicate_grouping_of_many_alike_images_is_not_quadratic(monkeypatch):
    """2,000 near-identical hashes took 20 s and 232 MB (every pair of a big bucket, in 28
    bucketings). Identical hashes are one group from the start, and a hash is never compared
    with its own group: the comparisons grow with the images, not with their pairs."""
    comparisons = [0]
    real = images._distance

    def counted(first, second):
        comparisons[0] += 1
        return real(first, second)

    monkeypatch.setattr(images, "_distance", counted)
    rng = random.Random(3)
    base = 0xF0F0F0F0F0F0F0F0
    hashes = {}
    for key in range(3000):
        if key < 1000:
            hashes[key] = base  # the same scan uploaded again and again
        else:  # re-encoded: one to three bits away (at most 6 from each other)
            value = base
            for bit in rng.sample(range(64), rng.randrange(1, 4)):
                value ^= 1 << bit
            hashes[key] = value
    different = rng.getrandbits(64)
    hashes[3000] = different  # far from all of them (with this seed)
    assert (different ^ base).bit_count() > 2 * images.NEAR_DUPLICATE_BITS

    assert images.near_duplicate_groups(hashes) == [list(range(3000))]
    distinct = len(set(hashes.values()))
    assert distinct > 1000
    assert comparisons[0] <= 4 * distinct, comparisons[0]  # all pairs: 1.1 million


# The report, on SQLite and PostgreSQL -------------------------------------------------


def test_week_counts_per_study_and_type_and_scope(app):
    library = Library(app)
    # In the week (Berlin): new, new then updated, updated, deleted; and at the edges.
    library.add("a.pdf", b"a" * 100, at=local(2026, 10, 20, 9, 0), study="S1")
    library.add(
        "b.png",
        encode(picture(1), "PNG"),
        content_type="image/png",
        at=local(2026, 10, 21, 9, 0),
        study="S1",
        updated=[local(2026, 10, 22, 9, 0)],
    )
    library.add("c.pdf", b"c" * 30, at=local(2026, 9, 1), study="S2", updated=[local(2026, 10, 23)])
    library.add(
        "first.txt", b"g" * 10, content_type="text/plain", at=local(2026, 10, 19), study="S2"
    )
    library.add(
        "last.txt", b"l" * 11, content_type="text/plain", at=local(2026, 10, 25, 23, 59), study="S2"
    )
    # Outside: just before Monday 00:00 and at the next Monday 00:00 (local).
    library.add("before.pdf", b"x" * 5, at=local(2026, 10, 18, 23, 59, 59), study="S1")
    library.add("after.pdf", b"x" * 5, at=local(2026, 10, 26), study="S1")
    library.add(
        "old.pdf", b"x" * 5, at=local(2026, 10, 1), study="S1", updated=[local(2026, 10, 27)]
    )
    library.add("d.pdf", b"d" * 40, at=local(2026, 9, 1), study="S2", deleted=local(2026, 10, 24))

    everything = render_report(None, WEEK, app=app)
    assert isinstance(everything, Rendered)
    assert (everything.study, everything.week) == (None, WEEK)
    totals = everything.totals
    png_size = len(encode(picture(1), "PNG"))
    assert (totals["new"], totals["updated"], totals["deleted"]) == (4, 1, 1)
    assert totals["new_bytes"] == 100 + png_size + 10 + 11
    assert (totals["updated_bytes"], totals["deleted_bytes"]) == (30, 40)
    assert (totals["missing"], totals["corrupt"], totals["verified"]) == (0, 0, 4)
    assert (totals["images"], totals["unreadable"], totals["near_duplicates"]) == (1, 0, 0)

    text = pdf_text(everything.pdf)
    assert everything.pdf.startswith(b"%PDF")
    assert "All studies" in text
    assert "New documents: 4" in text
    assert "Updated documents: 1" in text
    assert "Deleted documents: 1" in text
    # Per study and per type (rows: name, count, size).
    assert re.search(r"S1 2 [\d.,]+ (KB|bytes)", text)
    assert "S2 2 21 bytes" in text  # the two text files
    assert "text/plain 2 21 bytes" in text
    assert "application/pdf 1 100 bytes" in text
    # Uploads per day, Monday to Sunday (the chart's table): first.txt, a, b, -, -, -, last.
    assert "Mon 19 Tue 20 Wed 21 Thu 22 Fri 23 Sat 24 Sun 25 1 1 1 0 0 0 1" in text

    one = render_report("S1", WEEK, app=app)
    assert (one.study, one.totals["new"], one.totals["updated"], one.totals["deleted"]) == (
        "S1",
        2,
        0,
        0,
    )
    assert one.totals["new_bytes"] == 100 + png_size
    assert "New documents: 2" in pdf_text(one.pdf)
    other = render_report("S2", WEEK, app=app)
    assert (other.totals["new"], other.totals["updated"], other.totals["deleted"]) == (2, 1, 1)
    nothing = render_report("S3", WEEK, app=app)
    assert (nothing.totals["new"], nothing.totals["images"]) == (0, 0)
    assert "New documents: 0" in pdf_text(nothing.pdf)


def test_a_document_moved_out_of_a_study_shows_in_its_report(app):
    """A document counts under the study it ended the week in; the report of a study it
    left during the week lists it as moved out (it used to vanish from that report)."""
    library = Library(app)
    before = local(2026, 9, 1)

    def add(name, **options):
        options.setdefault("at", before)
        library.add(name, b"m" * 10, **options)

    add("old moved.pdf", study="A", moves=[(local(2026, 10, 21), "B")])
    add("new moved.pdf", at=local(2026, 10, 20), study="A", moves=[(local(2026, 10, 22), "B")])
    add(
        "round trip.pdf",
        study="A",
        moves=[(local(2026, 10, 20), "B"), (local(2026, 10, 22), "A")],
    )
    add("moved in.pdf", study="B", moves=[(local(2026, 10, 23), "A")])
    add("moved long ago.pdf", study="A", moves=[(local(2026, 10, 1), "B")])
    add("created and deleted.pdf", at=local(2026, 10, 20), study="A", deleted=local(2026, 10, 21))
    add(
        "moved then deleted.pdf",
        study="A",
        moves=[(local(2026, 10, 20), "B")],
        deleted=local(2026, 10, 24),
    )
    add("no study now.pdf", study="A", moves=[(local(2026, 10, 21), None)])

    def counts(rendered):
        totals = rendered.totals
        return tuple(totals[kind] for kind in ("new", "updated", "deleted", "moved_out"))

    study_a = render_report("A", WEEK, app=app)
    assert counts(study_a) == (0, 2, 1, 4)  # created and deleted in the week: deleted only
    assert study_a.totals["moved_out_bytes"] == 40
    text = pdf_text(study_a.pdf)
    assert "Moved out to other studies: 4" in text
    assert "Moved out documents By study (where they are now)" in text
    assert "B 3 30 bytes" in text and "(no study) 1 10 bytes" in text
    assert "counts as deleted only, even if it was created in the week too" in text

    assert counts(render_report("B", WEEK, app=app)) == (1, 1, 1, 2)  # moved in, round trip
    everything = render_report(None, WEEK, app=app)
    assert counts(everything) == (1, 4, 2, 0)
    assert "Moved out" not in pdf_text(everything.pdf)


def test_missing_and_corrupt_files_are_listed(app):
    library = Library(app)
    good = library.add("good.pdf", b"fine" * 100, at=local(2026, 10, 20))
    gone = library.add("gone.pdf", b"gone" * 100, at=local(2026, 10, 20))
    tampered = library.add("tampered.pdf", b"same" * 100, at=local(2026, 10, 21))
    shorter = library.add("shorter.pdf", b"long" * 100, at=local(2026, 10, 21))
    root = library.store.root
    (root / gone.file_location).unlink()
    (root / tampered.file_location).write_bytes(b"SAME" * 100)  # same size, other MD5
    (root / shorter.file_location).write_bytes(b"long")

    rendered = render_report(None, WEEK, app=app)
    totals = rendered.totals
    assert (totals["new"], totals["verified"], totals["missing"], totals["corrupt"]) == (4, 1, 1, 2)
    text = pdf_text(rendered.pdf)
    assert "Missing files: 1" in text and "Corrupt files: 2" in text
    assert re.search(rf"{gone.id} gone.pdf missing", text)
    assert re.search(rf"{tampered.id} tampered.pdf corrupt MD5", text)
    assert re.search(rf"{shorter.id} shorter.pdf corrupt 4 bytes in the store, 400 recorded", text)
    assert "good.pdf" not in text
    assert good.id


def test_a_document_deleted_while_the_report_is_made_is_not_a_missing_file(app, monkeypatch):
    """The week's figures come from one snapshot; the files are read after it. A document
    deleted in between (its file removed at once) was listed as a missing file."""
    from plugins.reporting.documents import records

    library = Library(app)
    kept = library.add("kept.pdf", b"k" * 10, at=local(2026, 10, 20))
    deleted = library.add("deleted meanwhile.pdf", b"d" * 10, at=local(2026, 10, 20))
    lost = library.add("lost.pdf", b"l" * 10, at=local(2026, 10, 21))
    (library.store.root / lost.file_location).unlink()  # really missing
    real = render._check_files

    def racing(app_, files):
        with app_.app_context(), database.connection_context():
            assert records.delete(deleted.id, "nurse@example.org")  # an ordinary delete
        assert not (library.store.root / deleted.file_location).exists()
        return real(app_, files)

    monkeypatch.setattr(render, "_check_files", racing)
    rendered = render_report(None, WEEK, app=app)
    totals = rendered.totals
    assert (totals["new"], totals["verified"], totals["missing"]) == (3, 1, 1)
    assert totals["deleted_meanwhile"] == 1
    text = pdf_text(rendered.pdf)
    assert "Missing files: 1" in text
    assert "Deleted while the report was made: 1" in text
    assert re.search(rf"{lost.id} lost.pdf missing", text)
    assert not re.search(rf"{deleted.id} deleted meanwhile.pdf missing", text)
    assert re.search(rf"{deleted.id} deleted meanwhile.pdf", text)
    assert kept.id


def test_images_dimensions_near_duplicates_and_unreadable_files(app):
    library = Library(app)
    original = picture(11)
    edited = original.copy()
    ImageDraw.Draw(edited).rectangle([600, 440, 630, 470], fill=(0, 200, 0))
    week_day = local(2026, 10, 22, 12, 0)
    first = library.add(
        "scan-1.png", encode(original, "PNG"), content_type="image/png", at=week_day
    )
    second = library.add(
        "scan-1 again.jpg",
        encode(edited, "JPEG", quality=70),
        content_type="image/jpeg",
        at=week_day,
    )
    library.add(
        "other.png", encode(picture(12, (800, 600)), "PNG"), content_type="image/png", at=week_day
    )
    library.add("bomb.png", bomb_png(), content_type="image/png", at=week_day)
    library.add("fake.jpg", b"%PDF-1.4 not a jpeg", content_type="image/jpeg", at=week_day)
    library.add("notes.txt", b"text", content_type="text/plain", at=week_day)

    rendered = render_report(None, WEEK, app=app)
    totals = rendered.totals
    assert totals["images"] == 5
    assert totals["unreadable"] == 2
    assert (totals["near_duplicates"], totals["near_duplicate_groups"]) == (2, 1)
    text = pdf_text(rendered.pdf)
    assert "Images: 5" in text and "Unreadable images: 2" in text
    assert "Near-duplicate images: 2 in 1 groups" in text
    assert f"1 {first.id}: scan-1.png (640 x 480) {second.id}: scan-1 again.jpg (640 x 480)" in text
    assert re.search(r"bomb\.png .*a possible decompression bomb", text)
    assert re.search(r"fake\.jpg cannot be decoded as an image", text)
    assert "800 x 600" in text  # the contact sheet's caption
    assert "Smallest 640 x 480, largest 800 x 600" in text


def test_contact_sheet_is_capped(app, monkeypatch):
    monkeypatch.setattr(render, "CONTACT_SHEET_IMAGES", 3)
    library = Library(app)
    for index in range(5):
        library.add(
            f"p{index}.jpg",
            encode(picture(100 + index, (320, 240)), "JPEG"),
            content_type="image/jpeg",
            at=local(2026, 10, 23),
        )
    rendered = render_report(None, WEEK, app=app)
    assert rendered.totals["images"] == 5
    assert "and 2 more images" in pdf_text(rendered.pdf)


def test_user_data_comes_out_as_plain_text(app):
    library = Library(app)
    library.add(
        "<script>alert(1)</script>.pdf",
        b"x" * 10,
        at=local(2026, 10, 20),
        study="<b>Trial</b> & co",
    )
    library.add(
        "{{ 7*7 }} {% if 1 %}yes{% endif %}.pdf", b"y" * 10, at=local(2026, 10, 20), study="T2"
    )
    library.add("Müller – Größe.pdf", b"z" * 10, at=local(2026, 10, 20))
    library.add("Пациент Ελλάδα.pdf", b"z" * 10, at=local(2026, 10, 20))
    for key in ("1", "2", "3", "4"):  # each listed with its name among the missing files
        (library.store.root / "test" / key).unlink()

    text = pdf_text(render_report(None, WEEK, app=app).pdf)
    assert "<script>alert(1)</script>.pdf" in text
    assert "{{ 7*7 }} {% if 1 %}yes{% endif %}.pdf" in text
    assert "<b>Trial</b> & co" in text
    assert "Müller – Größe.pdf" in text
    if render.report_font() == "DejaVuSans":  # installed (Debian: fonts-dejavu-core)
        assert "Пациент Ελλάδα.pdf" in text
    scoped = pdf_text(render_report("<b>Trial</b> & co", WEEK, app=app).pdf)
    assert "<b>Trial</b> & co, week 2026-W43" in scoped


def test_render_report_names_a_bad_week(app):
    with pytest.raises(ValueError, match="'2026-W60' is not an ISO week"):
        render_report(None, "2026-W60", app=app)


def test_the_pdf_fetches_nothing():
    html = (
        '<html><body><img src="http://127.0.0.1:9/x.png"><img src="/etc/passwd">'
        "<p>ok</p></body></html>"
    )
    pdf = render.compile_pdf(html)
    assert "ok" in pdf_text(pdf)


def test_render_inside_a_callers_connection_and_transaction(app):
    """A job may call the renderer with its own connection open, even inside a
    transaction: the report's snapshot nests in it and leaves it open and usable."""
    library = Library(app)
    library.add("inside.pdf", b"i" * 10, at=local(2026, 10, 20))
    with app.app_context(), database.connection_context():
        database.execute_sql("SELECT 1")  # a connection that has been used, no transaction
        assert render_report(None, WEEK).totals["new"] == 1
        with database.atomic():
            database.execute_sql("SELECT 1")  # the transaction has begun
            rendered = render_report(None, WEEK)  # app from the context
            assert database.execute_sql("SELECT 1").fetchone()[0] == 1
        assert not database.is_closed()
    assert rendered.totals["new"] == 1
