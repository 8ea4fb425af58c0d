"""Hostile files, payloads and injection (issue 10): each gets a clear 4xx or a recorded
rejection, memory stays bounded, nothing already stored is touched, and text that looks like
SQL, HTML, a template or a spreadsheet formula comes back as plain data everywhere: the API,
pages, CSV exports, the PDF report and its email.

On PostgreSQL (the production database, and the stricter one: it refuses NUL characters and
has its own LIKE escapes); the searches run on SQLite too. Memory is the peak resident size
of this process, measured around the request (Linux: ``/proc/self/clear_refs``), so a test
fails if a 100 MB body is read into memory or a bomb is decoded.
"""

import csv
import datetime
import io
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import markupsafe
import pytest
from PIL import Image
from pypdf import PdfReader

from core.audit import AuditEvent
from core.auth.models import User
from core.db import database
from core.exports import FORMULA_PREFIXES
from core.patients.models import Patient
from core.request_guard import NUL_MESSAGE
from core.testing import ROLE_PASSWORD, run_jobs
from plugins.ehr import plugin as ehr
from plugins.interactions import plugin as interactions
from plugins.medications import plugin as medications
from plugins.monitoring import ingest
from plugins.monitoring import plugin as monitoring
from plugins.monitoring.models import Admission, IngestFile, PmsPatient, RejectedRow
from plugins.reporting import plugin as reporting
from plugins.reporting.documents import records
from plugins.reporting.documents.models import Document
from plugins.reporting.documents.storage import store_for
from plugins.reporting.reports import subscriptions, timing

POSTGRESQL = pytest.mark.parametrize("caredeck_database_url", ["postgresql"], indirect=True)
MB = 1024 * 1024

SQL = ["' OR 1=1 --", "'; DROP TABLE core_patients; --", "100%", "a_b", "back\\slash"]
HTML = ["<script>alert(1)</script>", '<img src=x onerror="alert(1)">']
TEMPLATE = ["{{7*7}}", "{% print(7*7) %}", "${7*7}"]
FORMULAS = [
    '=HYPERLINK("http://evil.example/","open")',
    "+1+1",
    "-1+1",
    "@SUM(A1)",
    "\tTAB=1",
    "\rCR=1",
]


@pytest.fixture
def caredeck_plugins():
    return {
        "monitoring": monitoring,
        "medications": medications,
        "interactions": interactions,
        "reporting": reporting,
        "ehr": ehr,
    }


def peak_growth_mb(action: Callable[[], object]) -> tuple[float, object]:
    """Run ``action``; how far it raised this process's peak resident memory (MB), and what
    it returned. (Writing 5 to clear_refs starts the peak again from the memory in use.)"""

    def status(field: str) -> float:
        with open("/proc/self/status") as lines:
            line = next(line for line in lines if line.startswith(field + ":"))
        return int(line.split()[1]) / 1024

    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = status("VmRSS")
    result = action()
    return status("VmHWM") - before, result


class Endless(io.RawIOBase):
    """``size`` bytes of ``fill``, made as they are read (never held); counts what was read.
    Seekable only so that the test client can measure it."""

    def __init__(self, size: int, fill: bytes = b"x") -> None:
        self.size, self.left, self.read_bytes, self.fill = size, size, 0, fill

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size - self.left

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position = offset if whence == io.SEEK_SET else self.size + offset
        self.left = self.size - position
        return position

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = (self.fill * (count // len(self.fill) + 1))[:count]
        self.left -= count
        self.read_bytes += count
        return count


def assert_error_shape(answer, status: int) -> dict:
    assert answer.status_code == status, answer.get_data(as_text=True)[:500]
    body = answer.json
    assert set(body) == {"code", "status", "message", "errors"}, body
    assert body["code"] == status and body["message"]
    return body


def create_patient(client, mrn: str, first_name: str = "Anna", last_name: str = "Kept"):
    answer = client.post(
        "/api/patients",
        json={
            "mrn": mrn,
            "first_name": first_name,
            "last_name": last_name,
            "date_of_birth": "1980-01-01",
            "sex": "female",
        },
    )
    assert answer.status_code == 201, answer.json
    return answer.json


def snapshot_patients() -> list[dict]:
    with database.connection_context():
        return [
            {field: getattr(p, field) for field in ("mrn", "first_name", "last_name")}
            for p in Patient.select().order_by(Patient.mrn)
        ]


# Request bodies ---------------------------------------------------------------------------

HUNDRED_MB = 100 * MB
BODY_ROUTES = [
    ("post", "/api/patients", "application/json"),
    ("post", "/api/medication-events", "application/json"),
    ("put", "/api/ehr/mappings/athena", "application/json"),
    ("post", "/api/documents", "multipart/form-data; boundary=x"),
]


@POSTGRESQL
def test_a_100_mb_body_is_a_413_before_it_is_read(client_for):
    admin = client_for("admin")
    before = snapshot_patients()
    for method, path, content_type in BODY_ROUTES:
        body = Endless(HUNDRED_MB)

        def send(method=method, path=path, content_type=content_type, body=body):
            return getattr(admin, method)(path, input_stream=body, content_type=content_type)

        growth, answer = peak_growth_mb(send)
        error = assert_error_shape(answer, 413)
        assert body.read_bytes == 0, f"{path}: refused from its Content-Length, before reading"
        assert growth < 20, f"{path}: memory grew by {growth:.0f} MB"
        if path == "/api/documents":
            assert "upload limit" in error["message"]
    assert snapshot_patients() == before


@POSTGRESQL
def test_a_body_without_a_length_is_cut_off_at_the_limit(app, client_for):
    """A chunked body (no Content-Length; the server says the stream ends): read up to the
    limit, then a 413, never the whole 100 MB."""
    body = Endless(HUNDRED_MB, b"[1,")

    def send():
        return client_for("admin").post(
            "/api/medication-events",
            input_stream=body,
            content_type="application/json",
            headers={"Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )

    growth, answer = peak_growth_mb(send)
    assert_error_shape(answer, 413)
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert limit <= 16 * MB
    assert body.read_bytes <= limit + MB
    assert growth < 3 * limit / MB + 20, f"memory grew by {growth:.0f} MB"


DEEP_JSON_ROUTES = [
    ("post", "/api/patients"),
    ("patch", "/api/patients/MRN-1"),
    ("post", "/api/medication-events"),
    ("post", "/api/auth/token"),
    ("post", "/api/report-runs"),
    ("put", "/api/ehr/mappings/athena"),
    ("post", "/api/patients/MRN-1/interactions"),
]


@POSTGRESQL
def test_json_nested_10000_levels_deep_is_a_400(client_for):
    create_patient(client_for("doctor"), "MRN-1")
    before = snapshot_patients()
    for method, path in DEEP_JSON_ROUTES:
        caller = client_for("doctor" if "interactions" in path else "admin")
        for body in ("[" * 10_000 + "]" * 10_000, '{"a":' * 10_000 + "1" + "}" * 10_000):
            answer = getattr(caller, method)(path, data=body, content_type="application/json")
            error = assert_error_shape(answer, 400)
            assert "nested" in error["message"], path
    # Brackets inside strings are text, not depth.
    create_patient(client_for("doctor"), "MRN-2", first_name="[{" * 40, last_name="{[" * 40)
    assert snapshot_patients()[0] == before[0]


@POSTGRESQL
def test_a_gzip_bomb_body_is_not_inflated(client_for):
    squeeze = zlib.compressobj(9, wbits=31)  # gzip, a megabyte of blanks at a time
    blanks = b" " * MB
    bomb = b"".join([squeeze.compress(b"["), *(squeeze.compress(blanks) for _ in range(100))])
    bomb += squeeze.compress(b"]") + squeeze.flush()
    assert len(bomb) < MB

    def send():
        return client_for("doctor").post(
            "/api/patients",
            data=bomb,
            content_type="application/json",
            headers={"Content-Encoding": "gzip"},
        )

    growth, answer = peak_growth_mb(send)
    assert 400 <= answer.status_code < 500
    assert growth < 20, f"memory grew by {growth:.0f} MB"
    assert snapshot_patients() == []


# NUL characters: PostgreSQL cannot hold them ------------------------------------------------

NUL_QUERIES = [
    "/api/patients?q=a%00b",
    "/api/monitoring/worklist?q=a%00b",
    "/api/monitoring/worklist?department=a%00b",
    "/api/audit?user=a%00b",
    "/api/audit?patient=a%00b",
    "/api/documents?study=a%00b",
    "/api/monitoring/findings?kind=a%00b",
    "/api/patients/MRN-1/medication-periods?medication=a%00b",
]
NUL_PATHS = [
    "/api/patients/a%00b",
    "/api/patients/a%00b/interactions",
    "/api/patients/a%00b/medication-periods",
]
NUL_PAGES = ["/?q=a%00b", "/monitoring/?q=a%00b", "/admin/audit?user=a%00b", "/patients/a%00b"]


@POSTGRESQL
def test_a_nul_character_anywhere_is_a_422_naming_it_and_is_audited(app, client_for):
    admin = client_for("admin")
    create_patient(client_for("doctor"), "MRN-1")
    for url in NUL_QUERIES:
        error = assert_error_shape(admin.get(url), 422)
        name = url.rsplit("?", 1)[1].split("=")[0]
        assert error["errors"] == {"query": {name: [NUL_MESSAGE]}}, url
    for url in NUL_PATHS:
        error = assert_error_shape(admin.get(url), 422)
        assert error["errors"] == {"path": {"mrn": [NUL_MESSAGE]}}, url
    for url in NUL_PAGES:
        page = admin.get(url)
        assert page.status_code == 422 and page.mimetype == "text/html", url
        assert "NUL" in page.get_data(as_text=True)
    bodies = [
        ("post", "/api/patients", {"mrn": "MRN-2", "last_name": "a\x00b"}, "last_name"),
        ("patch", "/api/patients/MRN-1", {"first_name": "a\x00b"}, "first_name"),
        ("post", "/api/medication-events", [{"patient_id": "M\x00"}], "0.patient_id"),
        ("post", "/api/auth/token", {"email": "a\x00@example.org", "password": "x"}, "email"),
    ]
    for method, url, body, field in bodies:
        error = assert_error_shape(getattr(admin, method)(url, json=body), 422)
        assert error["errors"] == {"json": {field: [NUL_MESSAGE]}}, url
    browser = app.test_client()  # a form, with the session's CSRF token
    token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/login").text).group(1)
    form = {"email": "a\x00@example.org", "password": "x", "csrf_token": token}
    refused = browser.post("/login", data=form)
    assert refused.status_code == 422 and "NUL" in refused.text
    assert snapshot_patients() == [{"mrn": "MRN-1", "first_name": "Anna", "last_name": "Kept"}]
    with database.connection_context():
        refused = AuditEvent.get(AuditEvent.path == "/api/patients/a\ufffdb")
    assert (refused.patient, refused.outcome) == ("a\ufffdb", "invalid")


# Uploads to the documents store -----------------------------------------------------------

KEPT = b"%PDF-1.4 a document stored before the hostile uploads\n"
PATH_NAMES = [
    "../../etc/passwd",
    "/etc/passwd",
    "..\\..\\windows\\win.ini",
    "C:\\boot.ini",
    "....//....//etc/shadow",
    "%2e%2e%2fetc%2fpasswd",
    "documents/../../../instance/caredeck.db",
]


def upload(client, content: bytes, name: str, content_type="application/pdf", **parts):
    data = {"file": (io.BytesIO(content), name, content_type), **parts}
    return client.post("/api/documents", data=data, content_type="multipart/form-data")


def files_under(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def stored_documents() -> list[dict]:
    with database.connection_context():
        return list(Document.select().order_by(Document.id).dicts())


@pytest.fixture
def kept(app, client_for):
    """A document stored before anything hostile arrives: its record and bytes."""
    answer = upload(client_for("nurse"), KEPT, "kept.pdf", study="ONC-1")
    assert answer.status_code == 201, answer.json
    return answer.json


@POSTGRESQL
def test_an_upload_name_that_is_a_path_is_only_metadata(app, client_for, kept, tmp_path):
    nurse = client_for("nurse")
    root = Path(store_for(app).root)
    before_files = files_under(tmp_path)
    for name in PATH_NAMES:
        for parts in ({}, {"filename": name}):  # the file part's name, or the filename part
            answer = upload(nurse, b"payload", "x.bin" if parts else name, **parts)
            assert answer.status_code == 201, (name, answer.json)
            if parts:  # (a backslash in the part header is a quoted-string escape)
                assert answer.json["filename"] == name  # kept as given: it is a label
            assert re.fullmatch(r"documents/[0-9a-f]{32}", answer.json["file_location"])
            download = nurse.get(f"/api/documents/{answer.json['id']}/file")
            disposition = download.headers["Content-Disposition"]
            assert "/" not in disposition and "\\" not in disposition.split(";")[1], disposition
            assert download.data == b"payload"
    new_files = set(files_under(tmp_path)) - set(before_files)
    assert len(new_files) == 2 * len(PATH_NAMES)
    assert all(path.is_relative_to(root / "documents") for path in new_files), new_files
    assert not (tmp_path / "etc").exists() and not Path("/etc/shadow").read_bytes() == b"payload"
    for parts, name in (({}, "a\x00b.pdf"), ({"filename": "a\x00b.pdf"}, "x.pdf")):
        answer = upload(nurse, b"payload", name, **parts)
        assert_error_shape(answer, 422)
        assert "filename" in answer.json["errors"]["form"]
    assert len(files_under(tmp_path)) == len(before_files) + 2 * len(PATH_NAMES)
    assert stored_documents()[0] == {**stored_documents()[0], "id": kept["id"], "size": len(KEPT)}
    assert nurse.get(f"/api/documents/{kept['id']}").json == kept
    assert nurse.get(f"/api/documents/{kept['id']}/file").data == KEPT


LYING_TYPES = {  # declared: served
    "image/png": "image/png",  # HTML that says it is an image
    "text/html": "text/html",  # HTML that says so
    'image/png; charset="><script>"': "image/png",
    "text/<script>": "application/octet-stream",
}


@POSTGRESQL
def test_a_content_type_that_lies_never_runs_as_a_page(client_for, kept):
    nurse = client_for("nurse")
    page = b"<html><script>alert(document.cookie)</script></html>"
    for declared, served in LYING_TYPES.items():
        answer = upload(nurse, page, "scan.png", content_type=declared)
        assert answer.status_code == 201, answer.json
        download = nurse.get(f"/api/documents/{answer.json['id']}/file")
        assert download.data == page
        assert download.mimetype == served, declared
        assert download.headers["Content-Disposition"].startswith("attachment;")
        assert download.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in download.headers["Content-Security-Policy"]
    assert nurse.get(f"/api/documents/{kept['id']}/file").data == KEPT


def zip_bomb(inflated: int) -> bytes:
    """A zip holding ``inflated`` zero bytes, written a megabyte at a time."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("zeros.bin", "w", force_zip64=True) as member:
            chunk = bytes(MB)
            for _ in range(inflated // MB):
                member.write(chunk)
    return out.getvalue()


@POSTGRESQL
def test_a_zip_bomb_is_stored_as_its_bytes_never_inflated(app, client_for, kept):
    bomb = zip_bomb(256 * MB)
    assert len(bomb) < MB
    growth, answer = peak_growth_mb(
        lambda: upload(client_for("nurse"), bomb, "bomb.zip", content_type="application/zip")
    )
    assert answer.status_code == 201, answer.json
    assert answer.json["size"] == len(bomb)
    assert growth < 40, f"memory grew by {growth:.0f} MB"
    download = client_for("nurse").get(f"/api/documents/{answer.json['id']}/file")
    assert download.data == bomb and download.mimetype == "application/zip"
    assert client_for("nurse").get(f"/api/documents/{kept['id']}/file").data == KEPT


def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A PNG of a few hundred bytes whose header declares width x height pixels (3.6
    gigapixels: 14 GB decoded as RGBA)."""
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, "PNG")
    data = bytearray(out.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # the IHDR chunk's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# Hostile text, by kind -------------------------------------------------------------------
# What must come back as itself: never run, never a wildcard, never markup, never a formula.
HOSTILE_STUDY = "<b>Trial</b> {{7*7}} ' OR 1=1 --"
# The report lists unreadable images by name: a bomb, and files that only say they are images.
HOSTILE_IMAGES = {
    "{{7*7}} {% print(7*7) %} ${7*7}.png": "a possible decompression bomb",
    "<script>alert(1)</script>.jpg": "cannot be decoded as an image",
    "' OR 1=1 -- 100% a_b.jpg": "cannot be decoded as an image",
}
HOSTILE_NAME = '<img src=x onerror="alert(1)"> {{7*7}}'


def pdf_text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return re.sub(r"\s+", " ", " ".join(page.extract_text() for page in reader.pages))


@POSTGRESQL
def test_the_report_and_its_email_show_hostile_data_as_text_and_refuse_the_bomb(
    make_app, smtp_sink, monkeypatch
):
    """Through the real paths: uploads by the API (made last week: only a week that has
    ended is sent), the report run by the API and the job queue, the email at a real SMTP
    server."""
    app = make_app(SMTP_URL=smtp_sink.url, REPORTING_PUBLIC_URL="https://caredeck.example.org")
    admin = app.test_client()
    with database.connection_context():
        reader = User.create_user(
            "reader@example.org", ROLE_PASSWORD, name=HOSTILE_NAME, role="admin", status="active"
        )
        subscriptions.create(
            reader,
            {"weekday": "monday", "time": "08:00", "timezone": "UTC", "study": HOSTILE_STUDY},
        )
    token = admin.post(
        "/api/auth/token", json={"email": "reader@example.org", "password": ROLE_PASSWORD}
    ).json["access_token"]
    admin.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    week = timing.last_full_week(datetime.datetime.now(datetime.UTC), "UTC")
    monday = timing.week_monday(week)
    last_week = datetime.datetime.combine(monday, datetime.time(12), datetime.UTC)
    monkeypatch.setattr(records, "utcnow", lambda: last_week + datetime.timedelta(days=2))
    contents = [bomb_png(), b"<html><script>alert(1)</script>", b"\xff\xd8 not a JPEG"]
    for (name, _), content in zip(HOSTILE_IMAGES.items(), contents, strict=True):
        content_type = "image/png" if name.endswith(".png") else "image/jpeg"
        answer = upload(admin, content, name, content_type, study=HOSTILE_STUDY)
        assert answer.status_code == 201, answer.json
    monkeypatch.undo()

    answer = admin.post("/api/report-runs", json={"week": week})
    assert answer.status_code == 202, answer.json
    growth, _ = peak_growth_mb(lambda: run_jobs(app))
    assert growth < 250, f"memory grew by {growth:.0f} MB while the report was made"

    [message] = smtp_sink.wait_for(1)
    assert message["To"] == "reader@example.org"
    assert HOSTILE_STUDY in message["Subject"]
    html = message.get_body(("html",)).get_content()
    assert "<img src=x" not in html
    # The whole name, escaped and with its template syntax as typed (not "49": that can
    # occur in the signed unsubscribe link).
    assert str(markupsafe.escape(HOSTILE_NAME)) in html
    text = message.get_body(("plain",)).get_content()
    assert HOSTILE_NAME in text  # plain text is plain
    [attachment] = list(message.iter_attachments())
    report = pdf_text(attachment.get_content())
    assert f"report {week}, {HOSTILE_STUDY}." in report
    # A line break, which could add a header to the email, does not get in at all.
    injection = "x\r\nBcc: evil@attacker.example"
    subscription = {"weekday": "monday", "time": "09:00", "timezone": "UTC", "study": injection}
    assert_error_shape(admin.post("/api/report-subscriptions", json=subscription), 422)
    assert_error_shape(upload(admin, b"x", "x.pdf", study=injection), 422)
    assert_error_shape(admin.patch("/api/documents/1", json={"study": injection}), 422)
    for name, why in HOSTILE_IMAGES.items():
        assert f"{name} {why}" in report or f"{name} not decoded: {why}" in report, name
    assert "object at 0x" not in report  # reasons name the file's problem, not Python's


# Monitoring ingestion and the CSV exports ---------------------------------------------------

PATIENTS_HEADER = (
    "patient_id,first_name,last_name,date_of_birth,primary_physician,insurance_provider,"
    "blood_type,allergies"
)
ADMISSIONS_HEADER = (
    "patient_id,hospitalization_case_number,admission_date,admission_time,release_date,"
    "release_time,department,room_number"
)
WARD_AS_OF = "2026-03-05T12:00:00+00:00"  # the admissions below: open for days, never tested
# Ingestion strips the blanks around a value, tabs and CRs included.
STORED_FORMULAS = sorted(formula.strip() for formula in FORMULAS)


def csv_bytes(header: str, rows: list[list[str]], bom: bool = False) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # quotes the tabs and CRs
    writer.writerow(header.split(","))
    writer.writerows(rows)
    return (b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode()


def ingest_folder(app, folder: Path) -> list[str]:
    lines: list[str] = []
    with app.app_context():
        ingest.ingest_source(str(folder), app=app, echo=lines.append)
    return lines


@pytest.fixture
def ward(app, tmp_path):
    """A patient file (with a BOM) and an admissions file whose text is formulas, HTML and
    template syntax, ingested: one open admission per formula."""
    folder = tmp_path / "pms"
    folder.mkdir()
    hostile = HTML + TEMPLATE
    patients = [
        [f"P-{n}", hostile[n % len(hostile)], formula, "1/2/1980", "", "", "", ""]
        for n, formula in enumerate(FORMULAS)
    ]
    admissions = [
        [f"P-{n}", f"C-{n}", "3/1/2026", "8:00:00 AM", "NULL", "NULL", formula, "+1"]
        for n, formula in enumerate(FORMULAS)
    ]
    (folder / "patients.csv").write_bytes(csv_bytes(PATIENTS_HEADER, patients, bom=True))
    (folder / "admissions.csv").write_bytes(csv_bytes(ADMISSIONS_HEADER, admissions))
    lines = ingest_folder(app, folder)
    assert all(" 0 rejected" in line and f"{len(FORMULAS)} inserted" in line for line in lines)
    return folder


def stored_rows() -> dict[str, list[dict]]:
    with database.connection_context():
        return {
            model.__name__: list(model.select().order_by(model.id).dicts())
            for model in (PmsPatient, Admission, Patient)
        }


@POSTGRESQL
def test_hostile_csv_files_are_quarantined_or_rejected_and_change_nothing(app, ward, tmp_path):
    before = stored_rows()
    folder = tmp_path / "hostile"
    folder.mkdir()
    # Each file names a stored patient: whatever it did to P-0 would show.
    latin1 = f"{PATIENTS_HEADER}\r\nP-0,Jos\xe9,M\xfcller,1/2/1980,,,,\r\n".encode("latin-1")
    (folder / "latin1.csv").write_bytes(latin1)
    with (folder / "long_line.csv").open("wb") as out:  # 10 MB lines, written as they go
        out.write(f"{PATIENTS_HEADER}\r\nP-0,".encode())
        out.write(b"x," * (5 * MB) + b"\r\nP-0,")  # 5 million fields
        out.write(b"y" * (10 * MB) + b",Doe,1/2/1980,,,,\r\n")  # one 10 MB field
    (folder / "long_header.csv").write_bytes(b"z" * (10 * MB))
    wide = PATIENTS_HEADER + "".join(f",extra_{n}" for n in range(50_000 - 8))
    (folder / "wide.csv").write_bytes(f"{wide}\r\nP-0,A,B,1/2/1980{',v' * 49_996}\r\n".encode())

    growth, lines = peak_growth_mb(lambda: ingest_folder(app, folder))
    assert growth < 60, f"memory grew by {growth:.0f} MB"
    with database.connection_context():
        ledger = {f.key: f for f in IngestFile.select() if f.key in os.listdir(folder)}
        rejected = list(RejectedRow.select().where(RejectedRow.file == ledger["long_line.csv"]))
    assert ledger["latin1.csv"].status == "quarantined"
    assert "not UTF-8" in ledger["latin1.csv"].message
    assert ledger["long_header.csv"].status == "quarantined"
    assert "header line is longer than" in ledger["long_header.csv"].message
    assert ledger["wide.csv"].status == "quarantined"
    assert "50,000 columns" in ledger["wide.csv"].message
    assert (ledger["long_line.csv"].status, ledger["long_line.csv"].rejected) == ("applied", 2)
    assert [row.line for row in rejected] == [2, 3]
    assert all(len(row.raw) <= ingest.MAX_RAW_CHARS + 40 for row in rejected)
    assert all(len(row.reason) < 200 for row in rejected)
    assert all(len(line) < 2000 for line in lines), "the summaries stay readable"
    assert stored_rows() == before


def cells_of(export) -> list[list[str]]:
    assert export.status_code == 200 and export.mimetype == "text/csv", export.status_code
    return list(csv.reader(io.StringIO(export.get_data(as_text=True))))


def assert_no_formula_cell(rows: list[list[str]]) -> None:
    for row in rows:
        for value in row:
            assert not value.startswith(FORMULA_PREFIXES), f"a formula in a cell: {value!r}"


@POSTGRESQL
def test_every_csv_export_neutralises_formulas_and_the_api_keeps_the_data(
    app, ward, client_for, users
):
    nurse = client_for("nurse")
    worklist = nurse.get(f"/api/monitoring/worklist?as_of={quote(WARD_AS_OF)}&page_size=100")
    assert sorted(row["department"] for row in worklist.json) == STORED_FORMULAS  # as stored
    rows = cells_of(nurse.get(f"/monitoring/worklist.csv?as_of={quote(WARD_AS_OF)}"))
    assert len(rows) == 1 + len(FORMULAS)
    assert_no_formula_cell(rows)
    header = rows[0]
    departments = sorted(row[header.index("department")] for row in rows[1:])
    assert departments == sorted(
        "'" + formula if formula[0] in "=+-@" else formula for formula in STORED_FORMULAS
    )
    assert {row[header.index("room")] for row in rows[1:]} == {"'+1"}
    names = [row[header.index("name")] for row in rows[1:]]  # "last, first"
    assert sorted(name.split(", ")[0] for name in names) == departments

    # The audit log: a user whose address starts with a sign, and patients and searches
    # named by formulas.
    with database.connection_context():
        User.update(email="+1@example.org").where(User.id == users["doctor"].id).execute()
    doctor = client_for("doctor")
    for formula in FORMULAS:
        doctor.get(f"/api/patients/{quote(formula, safe='')}")
        doctor.get(f"/api/patients?q={quote(formula, safe='')}")
    rows = cells_of(client_for("admin").get("/admin/audit.csv"))
    assert_no_formula_cell(rows)
    header = rows[0]
    assert {row[header.index("user")] for row in rows[1:]} >= {"'+1@example.org"}
    patients = {row[header.index("patient")] for row in rows[1:]}
    assert {"'" + formula for formula in FORMULAS if "/" not in formula} <= patients
    assert client_for("admin").get("/api/audit?user=%2B1%40example.org").json[0]["user"] == (
        "+1@example.org"
    )


# Injection: search and filter parameters --------------------------------------------------

# One patient per hostile text, as its last name; MRNs without "_" so that a wildcard "_"
# would show.
HOSTILE_TEXT = SQL + HTML + TEMPLATE


def registry(client) -> dict[str, str]:
    """The hostile patients, MRN to last name."""
    names = {f"H-{n}": text for n, text in enumerate(HOSTILE_TEXT)}
    for mrn, text in names.items():
        create_patient(client, mrn, first_name="Hostile", last_name=text)
    create_patient(client, "PLAIN-1", first_name="Anna", last_name="Schmidt")
    return names


def matches(names: dict[str, str], q: str) -> list[str]:
    """What a literal search finds: every word occurs in the first name, last name or MRN."""
    words = q.lower().split()
    return sorted(
        mrn
        for mrn, last in {**names, "PLAIN-1": "Schmidt"}.items()
        if all(
            any(
                word in field.lower()
                for field in (mrn, last, "Anna" if mrn == "PLAIN-1" else "Hostile")
            )
            for word in words
        )
    )


def test_patient_search_matches_sql_wildcards_and_markup_literally(client_for):
    doctor = client_for("doctor")
    names = registry(doctor)
    for q in [*HOSTILE_TEXT, "%", "_", "\\", "%%", "' OR '1'='1", "*", ".*"]:
        answer = doctor.get(f"/api/patients?q={quote(q, safe='')}&page_size=100")
        assert answer.status_code == 200, (q, answer.json)
        assert sorted(p["mrn"] for p in answer.json) == matches(names, q), q
    # "100%" and "{% print(7*7) %}"
    assert [p["mrn"] for p in doctor.get("/api/patients?q=%25").json] == ["H-2", "H-8"]
    # "core_patients" and "a_b"
    assert [p["mrn"] for p in doctor.get("/api/patients?q=_").json] == ["H-1", "H-3"]
    assert [p["mrn"] for p in doctor.get("/api/patients?q=%5C").json] == ["H-4"]  # back\slash
    assert_error_shape(doctor.get("/api/patients?sex=' OR 1=1 --"), 422)
    assert len(doctor.get("/api/patients?page_size=100").json) == len(names) + 1  # all there


@POSTGRESQL
def test_worklist_audit_and_document_filters_take_hostile_text_literally(app, ward, client_for):
    nurse = client_for("nurse")

    def worklist(**params) -> list[str]:
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        answer = nurse.get(f"/api/monitoring/worklist?as_of={quote(WARD_AS_OF)}&{query}")
        assert answer.status_code == 200, answer.json
        return sorted(row["mrn"] for row in answer.json)

    for q in ["%", "_", "\\", "' OR 1=1 --", "'; DROP TABLE monitoring_admissions; --"]:
        assert worklist(q=q) == (["P-3"] if q == "%" else []), q  # "{% print(7*7) %}"
        assert worklist(department=q) == [], q
    assert worklist(department="+1+1") == ["P-1"]
    assert worklist(department='=HYPERLINK("http://evil.example/","open")') == ["P-0"]
    assert worklist(q="{{7*7}}") == ["P-2"]  # the first name, as text
    assert worklist(q="onerror=") == ["P-1"]
    assert len(worklist()) == len(FORMULAS)  # nothing was dropped

    admin = client_for("admin")
    for text in ["' OR 1=1 --", "%", "_", "*", "<script>alert(1)</script>"]:
        for name in ("user", "patient"):
            answer = admin.get(f"/api/audit?{name}={quote(text, safe='')}")
            assert answer.status_code == 200 and answer.json == [], (name, text)
    assert admin.get("/api/audit?page_size=100").json, "the log itself is there"

    study = upload(nurse, KEPT, "kept.pdf", study=HOSTILE_STUDY).json["study"]
    assert study == HOSTILE_STUDY
    upload(nurse, KEPT, "other.pdf", study="ONC-1")
    for text in ["%", "_", "' OR 1=1 --", "<b>Trial</b>"]:
        answer = nurse.get(f"/api/documents?study={quote(text, safe='')}")
        assert answer.status_code == 200 and answer.json == [], text
    found = nurse.get(f"/api/documents?study={quote(HOSTILE_STUDY, safe='')}").json
    assert [d["filename"] for d in found] == ["kept.pdf"]
    assert_error_shape(nurse.get("/api/monitoring/worklist?sort=name;DROP TABLE x"), 422)


# Injection: what pages and the API give back ------------------------------------------------

SCRIPT = "<script>alert(1)</script>"
IMAGE = '<img src=x onerror="alert(1)">'
PAGE_TEXT = f"{SCRIPT} {{{{7*7}}}} {{% print(7*7) %}} ${{7*7}}"


def assert_escaped(html: str, where: str) -> None:
    """The hostile text is in the page as text: escaped markup, template syntax as typed."""
    assert SCRIPT not in html and "<img src=x" not in html, where
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, where
    assert "{{7*7}}" in html, where


@POSTGRESQL
def test_hostile_text_is_plain_data_in_the_api_and_escaped_in_every_page(app, ward, client_for):
    doctor, admin = client_for("doctor"), client_for("admin")
    created = create_patient(doctor, "H-1", first_name=IMAGE, last_name=PAGE_TEXT)
    assert (created["first_name"], created["last_name"]) == (IMAGE, PAGE_TEXT)
    entry = doctor.post(
        "/api/patients/H-1/interactions",
        json={
            "occurred_at": datetime.datetime.now(datetime.UTC).isoformat(),
            "kind": "visit",
            "summary": PAGE_TEXT[:200],
            "notes": f"{PAGE_TEXT}\n' OR 1=1 --",
            "outcome": "healthy",
        },
    )
    assert entry.status_code == 201, entry.json
    assert entry.json["summary"] == PAGE_TEXT and entry.json["notes"].startswith(PAGE_TEXT)
    organization = admin.post(
        "/api/ehr/organizations",
        json={"name": PAGE_TEXT[:200], "connector": "athena", "base_url": "https://ehr.test/"},
    )
    assert organization.status_code == 201, organization.json
    assert organization.json["name"] == PAGE_TEXT
    assert doctor.get("/api/patients/H-1").json["last_name"] == PAGE_TEXT

    q = quote(PAGE_TEXT, safe="")
    pages = {
        "/": doctor,
        f"/?q={q}": doctor,
        "/patients/H-1": doctor,
        "/patients/H-1/interactions": doctor,
        "/patients/H-1/sections/interactions": doctor,
        f"/monitoring/?as_of={quote(WARD_AS_OF)}": doctor,  # the ward's names
        f"/monitoring/?q={q}": doctor,
        f"/admin/audit?user={q}": admin,
        "/ehr/organizations": admin,
    }
    for url, client in pages.items():
        page = client.get(url)
        assert page.status_code == 200, (url, page.status_code)
        assert_escaped(page.get_data(as_text=True), url)
    for key in ("monitoring", "medications"):  # the other sections show the name nowhere
        section = doctor.get(f"/patients/H-1/sections/{key}")
        assert section.status_code == 200 and SCRIPT not in section.get_data(as_text=True)
