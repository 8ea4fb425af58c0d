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
import email
import email.policy
import io
import json
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from PIL import Image
from pypdf import PdfReader

from core.audit import AuditEvent
from core.auth.models import User
from core.db import database
from core.exports import FORMULA_PREFIXES
from core.patients.models import Patient
from core.testing import ROLE_PASSWORD, run_jobs
from plugins.ehr import plugin as ehr
from plugins.interactions import plugin as interactions
from plugins.medications import plugin as medications
from plugins.monitoring import ingest
from plugins.monitoring import plugin as monitoring
from plugins.monitoring.models import Admission, IngestFile, PmsPatient, RejectedRow
from plugins.reporting import plugin as reporting
from plugins.reporting.documents.models import Document, DocumentChange
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
@pytest.mark.parametrize(("method", "path", "content_type"), BODY_ROUTES)
def test_a_100_mb_body_is_a_413_before_it_is_read(client_for, method, path, content_type):
    admin = client_for("admin")
    before = snapshot_patients()
    body = Endless(HUNDRED_MB)

    def send():
        return getattr(admin, method)(
            path, input_stream=body, content_type=content_type
        )

    growth, answer = peak_growth_mb(send)
    error = assert_error_shape(answer, 413)
    assert body.read_bytes == 0, "refused from its Content-Length, before reading"
    assert growth < 20, f"memory grew by {growth:.0f} MB"
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


@POSTGRESQL
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/patients"),
        ("patch", "/api/patients/MRN-1"),
        ("post", "/api/medication-events"),
        ("post", "/api/auth/token"),
        ("post", "/api/report-runs"),
        ("put", "/api/ehr/mappings/athena"),
        ("post", "/api/patients/MRN-1/interactions"),
    ],
)
def test_json_nested_10000_levels_deep_is_a_400(client_for, method, path):
    create_patient(client_for("doctor"), "MRN-1")
    before = snapshot_patients()
    caller = client_for("doctor" if "interactions" in path else "admin")
    for body in ("[" * 10_000 + "]" * 10_000, '{"a":' * 10_000 + "1" + "}" * 10_000):
        answer = getattr(caller, method)(
            path, data=body, content_type="application/json"
        )
        error = assert_error_shape(answer, 400)
        assert "nested" in error["message"]
    # Brackets inside strings are text, not depth.
    create_patient(client_for("doctor"), "MRN-2", first_name="[{" * 40, last_name="{[" * 40)
    assert snapshot_patients()[0] == before[0]


@POSTGRESQL
def test_a_gzip_bomb_body_is_not_inflated(client_for):
    bomb = zlib.compress(b"[" + b" " * (200 * MB) + b"]", 9)
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
        assert error["errors"] == {"query": {name: ["Must not contain NUL characters."]}}, url
    for url in NUL_PATHS:
        error = assert_error_shape(admin.get(url), 422)
        assert error["errors"] == {"path": {"mrn": ["Must not contain NUL characters."]}}, url
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
        assert error["errors"] == {"json": {field: ["Must not contain NUL characters."]}}, url
    assert snapshot_patients() == [{"mrn": "MRN-1", "first_name": "Anna", "last_name": "Kept"}]
    with database.connection_context():
        refused = AuditEvent.get(AuditEvent.path == "/api/patients/a\ufffdb")
    assert (refused.patient, refused.outcome) == ("a\ufffdb", "invalid")
