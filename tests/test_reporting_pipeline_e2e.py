"""End to end with real servers: PostgreSQL, the Redis broker, a real Dramatiq worker, and
an SMTP server. Upload documents with images, three users subscribe, run the week: three
emails, each with the PDF whose text shows the week's counts; run it again: nothing more."""

import io
import re
import time

import pytest
import redis
from PIL import Image
from pypdf import PdfReader

from core.db import utcnow
from core.testing import fresh_postgresql_url, service_url
from plugins.reporting import plugin as reporting
from plugins.reporting.reports import api as reports_api
from plugins.reporting.reports import pipeline, timing

pytestmark = pytest.mark.integration


@pytest.fixture
def caredeck_plugins():
    return {"reporting": reporting}


@pytest.fixture
def caredeck_database_url():
    return fresh_postgresql_url()


@pytest.fixture
def broker_url():
    url = service_url("redis")
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def app(make_app, smtp_sink, broker_url):
    return make_app(
        DRAMATIQ_URL=broker_url,
        SMTP_URL=smtp_sink.url,
        REPORTING_PUBLIC_URL="https://caredeck.example.org",
    )


@pytest.fixture
def worker(app):
    running = app.extensions["caredeck"].jobs.worker(threads=2)
    running.start()
    yield running
    running.stop()


def image(seed: int) -> bytes:
    picture = Image.new("RGB", (320, 240), (seed * 40 % 256, 90, 200 - seed * 30 % 200))
    for x in range(0, 320, 16):
        for y in range(0, 240, 16):
            if (x // 16 + y // 16 + seed) % 3 == 0:
                picture.paste((seed * 70 % 256, 255 - x % 256, y % 256), (x, y, x + 16, y + 16))
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def upload(client, content, name, content_type, study="ONCO-7"):
    data = {"file": (io.BytesIO(content), name, content_type), "study": study}
    answer = client.post("/api/documents", data=data, content_type="multipart/form-data")
    assert answer.status_code == 201, answer.json
    return answer.json


def pdf_text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return re.sub(r"\s+", " ", " ".join(page.extract_text() for page in reader.pages))


def wait_for_run(admin, run_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = admin.get(f"/api/report-runs/{run_id}").json
        if run["state"] in ("succeeded", "failed"):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish: {run}")


def test_upload_subscribe_run_the_week_three_emails_then_nothing(
    app, client_for, users, smtp_sink, worker, monkeypatch
):
    nurse = client_for("nurse")
    for n in range(3):
        upload(nurse, image(n), f"scan-{n}.png", "image/png")
    upload(nurse, b"%PDF-1.4 consent form\n" * 50, "consent.pdf", "application/pdf")
    upload(nurse, b"visit notes\n" * 20, "notes.txt", "text/plain")

    subscribers = ("admin", "doctor", "nurse")
    for role in subscribers:
        answer = client_for(role).post(
            "/api/report-subscriptions",
            json={"weekday": "monday", "time": "08:00", "timezone": "Europe/Berlin"},
        )
        assert answer.status_code == 201

    week = timing.week_of(utcnow(), app.config["TIMEZONE"])
    # The documents went in this week; the admin runs it once it has ended.
    with app.app_context():
        ended = pipeline.week_end(week) + pipeline.WEEK_END_GRACE
    monkeypatch.setattr(reports_api, "utcnow", lambda: ended)
    admin = client_for("admin")
    (run,) = admin.post("/api/report-runs", json={"week": week}).json
    done = wait_for_run(admin, run["id"])
    assert done["state"] == "succeeded", done
    assert (done["sent"], done["failed"], done["recipients"]) == (3, 0, 3)
    assert done["totals"]["new"] == 5 and done["totals"]["images"] == 3

    messages = smtp_sink.wait_for(3)
    assert sorted(m["To"] for m in messages) == sorted(f"{r}@example.org" for r in subscribers)
    for message in messages:
        (attachment,) = list(message.iter_attachments())
        text = pdf_text(attachment.get_content())
        assert "New documents: 5" in text, text[:500]
        assert "Images: 3" in text and "Deleted documents: 0" in text
        assert "Missing files: 0" in text and "Corrupt files: 0" in text
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    pdf = admin.get(f"/api/report-runs/{run['id']}/pdf")
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF")

    # The same week again: the same run, and not one more email.
    (again,) = admin.post("/api/report-runs", json={"week": week}).json
    assert again["id"] == run["id"]
    time.sleep(2)
    assert wait_for_run(admin, run["id"])["sent"] == 3
    assert len(smtp_sink.envelopes) == 3
