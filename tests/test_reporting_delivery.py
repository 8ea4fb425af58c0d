"""Report emails at a real SMTP server: headers, parts, the PDF attached or linked, one-click
unsubscribe, and failures retried or recorded."""

import datetime
import email
import email.policy
import re
import time

import itsdangerous.timed
import pytest
import reporting_fakes as fakes

from core.auth.models import User
from core.db import database
from core.testing import ROLE_PASSWORD, run_jobs
from plugins.reporting import plugin as reporting
from plugins.reporting.reports import pipeline, subscriptions, tokens
from plugins.reporting.reports.models import Delivery, ReportRun, Subscription

WEEK = "2026-W45"  # a week that has ended: only a dry run may cover one under way
PUBLIC = "https://caredeck.example.org"


@pytest.fixture
def caredeck_plugins():
    return {"reporting": reporting}


@pytest.fixture
def app(make_app, smtp_sink):
    return make_app(SMTP_URL=smtp_sink.url, REPORTING_PUBLIC_URL=PUBLIC)


@pytest.fixture
def fake(monkeypatch):
    return fakes.install(monkeypatch, pdf_size=3000)


@pytest.fixture
def readers(app, users):
    made = []
    with database.connection_context():
        for n in range(3):
            user = User.create_user(
                f"reader{n}@example.org",
                ROLE_PASSWORD,
                name=f"Reader {n}",
                role="doctor",
                status="active",
            )
            made.append(
                subscriptions.create(
                    user,
                    {"weekday": "monday", "time": "08:00", "timezone": "UTC", "study": None},
                )
            )
    return made


def run_week(app, client_for):
    answer = client_for("admin").post("/api/report-runs", json={"week": WEEK})
    assert answer.status_code == 202
    run_jobs(app)
    return answer.json[0]["id"]


def test_each_reader_gets_one_email_with_text_html_pdf_and_unsubscribe_headers(
    app, client_for, readers, fake, smtp_sink
):
    run_week(app, client_for)
    messages = smtp_sink.wait_for(3)
    assert sorted(m["To"] for m in messages) == [f"reader{n}@example.org" for n in range(3)]
    for message in messages:
        assert message["From"] == app.config["REPORTING_MAIL_FROM"]
        assert WEEK in message["Subject"]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        link = re.fullmatch(r"<(https://\S+)>", message["List-Unsubscribe"]).group(1)
        assert link.startswith(f"{PUBLIC}/reports/unsubscribe/")
        text = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        assert "New documents: 3" in text and "attached" in text and link in text
        assert "New documents" in html and link in html
        (pdf,) = [part for part in message.iter_attachments()]
        assert pdf.get_content_type() == "application/pdf"
        assert pdf.get_filename() == f"caredeck-report-{WEEK}.pdf"
        assert pdf.get_content().startswith(b"%PDF-1.4")
    assert len(smtp_sink.sessions) == 1  # one batch, one SMTP connection
    ids = {m["Message-ID"] for m in messages}
    assert len(ids) == 3 and all(i.startswith("<report-") for i in ids)
    # The same week again: nothing more.
    run_week(app, client_for)
    time.sleep(0.2)
    assert len(smtp_sink.envelopes) == 3


def test_a_server_that_says_try_later_is_retried_without_duplicates(app, readers, fake, smtp_sink):
    smtp_sink.fail_next = 1  # the first message is answered 451
    with app.app_context(), database.connection_context():
        run = pipeline.ensure_run(None, WEEK)
        pipeline.add_all_recipients(run)
        pipeline.render_run(run.id)
        ids = [d.id for d in Delivery.select()]
        with pytest.raises(pipeline.TemporaryFailure, match="451"):
            pipeline.send_batch(run.id, ids)
        rows = list(Delivery.select())
        assert {r.state for r in rows} == {"pending"} and all("451" in r.error for r in rows)
        pipeline.send_batch(run.id, ids)  # Dramatiq's retry, after its back-off
        assert {d.state for d in Delivery.select()} == {"sent"}
        assert ReportRun.get_by_id(run.id).state == "succeeded"
    assert len(smtp_sink.envelopes) == 3


def test_gives_up_after_the_attempts_and_records_it(app, readers, fake, smtp_sink):
    smtp_sink.fail_next = 100
    with app.app_context(), database.connection_context():
        run = pipeline.ensure_run(None, WEEK)
        pipeline.add_all_recipients(run)
        pipeline.render_run(run.id)
        ids = [d.id for d in Delivery.select()]
        for _ in range(pipeline.MAX_DELIVERY_ATTEMPTS):
            with pytest.raises(pipeline.TemporaryFailure):
                pipeline.send_batch(run.id, ids)
        failed = ReportRun.get_by_id(run.id)
        assert failed.state == "failed" and "gave up after 5 attempts" in failed.error
        assert {d.state for d in Delivery.select()} == {"failed"}


def test_a_refused_recipient_is_recorded_and_the_others_get_theirs(
    app, client_for, readers, fake, smtp_sink
):
    smtp_sink.refuse = {"reader1@example.org"}
    run_id = run_week(app, client_for)
    assert sorted(e.rcpt_tos[0] for e in smtp_sink.envelopes) == [
        "reader0@example.org",
        "reader2@example.org",
    ]
    run = client_for("admin").get(f"/api/report-runs/{run_id}").json
    assert (run["state"], run["sent"], run["failed"]) == ("succeeded", 2, 1)
    assert "reader1@example.org" in run["error"] and "550" in run["error"]


def test_a_pdf_over_the_limit_is_linked_and_the_link_expires(
    app, client_for, readers, fake, smtp_sink
):
    app.config["REPORTING_ATTACHMENT_MAX_BYTES"] = 1000  # the fake PDF has 3000 bytes
    run_week(app, client_for)
    messages = smtp_sink.wait_for(3)
    for message in messages:
        assert list(message.iter_attachments()) == []
    text = messages[0].get_body(("plain",)).get_content()
    assert "too large to attach" in text
    link = re.search(rf"{PUBLIC}(/reports/pdf/\S+)", text).group(1)
    assert link in messages[0].get_body(("html",)).get_content()
    client = app.test_client()  # no login: the signed link is the authority
    answer = client.get(link)
    assert answer.status_code == 200 and answer.mimetype == "application/pdf"
    assert answer.data.startswith(b"%PDF-1.4") and len(answer.data) == 3000
    assert client.get(link[:-3] + "xyz").status_code == 410
    with app.test_request_context():
        expired = _signed_long_ago(lambda: tokens.report_link_token(1), days=15)
        wrong_kind = tokens.unsubscribe_token(1)  # another salt: not a report link
    assert client.get(f"/reports/pdf/{expired}").status_code == 410
    assert "expired" in client.get(f"/reports/pdf/{expired}").text
    assert client.get(f"/reports/pdf/{wrong_kind}").status_code == 410


def _signed_long_ago(make, days):
    real = itsdangerous.timed.time.time
    itsdangerous.timed.time.time = lambda: real() - days * 86400
    try:
        return make()
    finally:
        itsdangerous.timed.time.time = real


def test_one_click_unsubscribe(app, client_for, readers, fake, smtp_sink):
    run_week(app, client_for)
    message = next(m for m in smtp_sink.wait_for(3) if m["To"] == "reader0@example.org")
    link = message["List-Unsubscribe"].strip("<>").removeprefix(PUBLIC)
    client = app.test_client()
    # GET (what a mail scanner does) only asks.
    page = client.get(link)
    assert page.status_code == 200 and "Stop sending" in page.text
    with database.connection_context():
        assert Subscription.get_by_id(readers[0].id).cancelled_at is None
    # POST as RFC 8058 says: no login, no CSRF token, the body the mail client sends.
    done = client.post(link, data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    with database.connection_context():
        assert Subscription.get_by_id(readers[0].id).cancelled_at is not None
        assert Subscription.get_by_id(readers[1].id).cancelled_at is None
    assert client.post(link).status_code == 200  # again: still fine
    assert client_for("doctor").get("/api/report-subscriptions").json == []


def test_unsubscribe_refuses_tampered_expired_and_foreign_tokens(app, readers):
    client = app.test_client()
    with app.test_request_context():
        good = tokens.unsubscribe_token(readers[0].id)
        expired = _signed_long_ago(lambda: tokens.unsubscribe_token(readers[0].id), days=91)
        link_token = tokens.report_link_token(readers[0].id)
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for token in (tampered, expired, link_token, "nonsense"):
        assert client.get(f"/reports/unsubscribe/{token}").status_code == 400
        assert client.post(f"/reports/unsubscribe/{token}").status_code == 400
    assert "expired" in client.post(f"/reports/unsubscribe/{expired}").text
    with database.connection_context():
        assert Subscription.get_by_id(readers[0].id).cancelled_at is None
    # Only that route skips the CSRF check: the subscriptions page still requires it.
    assert client.post("/reports/subscriptions", data={}).status_code == 400


def _rendered(app, monkeypatch):
    """The run of WEEK rendered and "sending", its batches not enqueued; the ledger ids."""
    monkeypatch.setattr(pipeline, "dispatch", lambda run_id: 0)
    run = pipeline.ensure_run(None, WEEK)
    pipeline.add_all_recipients(run)
    pipeline.render_run(run.id)
    return run, [d.id for d in Delivery.select().order_by(Delivery.id)]


def _during_first_send(monkeypatch, action):
    from core import mail

    send, calls = mail._SMTPConnection.send_bytes, []

    def hooked(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            action()
        return send(self, *args, **kwargs)

    monkeypatch.setattr(mail._SMTPConnection, "send_bytes", hooked)


def test_a_batch_whose_claim_expired_stops_and_nothing_is_sent_twice(
    app, readers, fake, smtp_sink, monkeypatch
):
    with app.app_context(), database.connection_context():
        run, ids = _rendered(app, monkeypatch)
        # Batch A stalls in its first send (a paused process) past the lease: the scheduler
        # gives its rows back and a second batch is dispatched for them.
        later = pipeline.utcnow() + pipeline.send_lease() + datetime.timedelta(minutes=1)
        _during_first_send(monkeypatch, lambda: pipeline.recover_stalled(later))
        pipeline.send_batch(run.id, ids)  # batch A: sends its first, then stops
        ReportRun.update(state="sending").where(ReportRun.id == run.id).execute()
        pipeline.send_batch(run.id, ids)  # batch B
        assert {d.state for d in Delivery.select()} == {"sent"}
    assert sorted(e.rcpt_tos[0] for e in smtp_sink.envelopes) == [
        f"reader{n}@example.org" for n in range(3)
    ]


def test_a_worker_clock_behind_the_schedulers_does_not_expire_a_live_claim(
    app, readers, fake, smtp_sink, monkeypatch
):
    real = pipeline.utcnow
    with app.app_context(), database.connection_context():
        run, ids = _rendered(app, monkeypatch)
        behind = pipeline.send_lease() + datetime.timedelta(minutes=1)
        monkeypatch.setattr(pipeline, "utcnow", lambda: real() - behind)  # the worker's clock

        def scheduler_elsewhere():
            monkeypatch.setattr(pipeline, "utcnow", real)  # the scheduler's host: right
            pipeline.recover_stalled()

        _during_first_send(monkeypatch, scheduler_elsewhere)
        pipeline.send_batch(run.id, ids)
        assert {d.state for d in Delivery.select()} == {"sent"}
    assert len(smtp_sink.envelopes) == 3


def test_a_reply_lost_after_the_message_is_recorded_failed_and_never_resent(
    make_app, smtp_sink, users, fake, monkeypatch
):
    import asyncio

    app = make_app(SMTP_URL=smtp_sink.url + "&timeout=1", REPORTING_PUBLIC_URL=PUBLIC)
    with database.connection_context():
        for n in range(2):
            user = User.create_user(
                f"r{n}@example.org", ROLE_PASSWORD, name="R", role="doctor", status="active"
            )
            subscriptions.create(
                user, {"weekday": "monday", "time": "08:00", "timezone": "UTC", "study": None}
            )
    accept, seen = type(smtp_sink).handle_DATA, []

    async def late(server, session, envelope):
        seen.append(1)
        answer = await accept(smtp_sink, server, session, envelope)  # stored: accepted
        if len(seen) == 1:
            await asyncio.sleep(2)  # its answer is lost: the client times out
        return answer

    smtp_sink.handle_DATA = late
    with app.app_context(), database.connection_context():
        run, ids = _rendered(app, monkeypatch)
        with pytest.raises(pipeline.TemporaryFailure):
            pipeline.send_batch(run.id, ids)
        first, second = Delivery.select().order_by(Delivery.id)
        assert first.state == "failed" and "outcome unknown" in first.error
        assert second.state == "pending"
        pipeline.send_batch(run.id, ids)  # the retry
        assert [d.state for d in Delivery.select().order_by(Delivery.id)] == ["failed", "sent"]
    time.sleep(0.5)
    assert sorted(e.rcpt_tos[0] for e in smtp_sink.envelopes) == [
        "r0@example.org",
        "r1@example.org",
    ]


def test_a_greylisted_recipient_is_retried_not_failed(app, readers, fake, smtp_sink, monkeypatch):
    async def grey(server, session, envelope, address, rcpt_options):
        if address == "reader1@example.org":
            return "451 4.7.1 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    smtp_sink.handle_RCPT = grey
    with app.app_context(), database.connection_context():
        run, ids = _rendered(app, monkeypatch)
        with pytest.raises(pipeline.TemporaryFailure, match="451"):
            pipeline.send_batch(run.id, ids)
        states = {d.recipient or d.id: d.state for d in Delivery.select()}
        assert states["reader0@example.org"] == "sent"
        assert "failed" not in states.values() and "sending" not in states.values()


def test_a_non_ascii_address_is_sent_with_smtputf8_not_left_sending(
    app, users, fake, smtp_sink, monkeypatch
):
    with database.connection_context():
        user = User.create_user(
            "j\u00fcrgen@example.de", ROLE_PASSWORD, name="J", role="doctor", status="active"
        )
        subscriptions.create(
            user, {"weekday": "monday", "time": "08:00", "timezone": "UTC", "study": None}
        )
    with app.app_context(), database.connection_context():
        run, ids = _rendered(app, monkeypatch)
        pipeline.send_batch(run.id, ids)
        assert [d.state for d in Delivery.select()] == ["sent"]
    assert [e.rcpt_tos for e in smtp_sink.envelopes] == [["j\u00fcrgen@example.de"]]


def test_an_error_before_sending_is_recorded_with_its_type(
    app, readers, fake, smtp_sink, monkeypatch
):
    with app.app_context(), database.connection_context():
        run, ids = _rendered(app, monkeypatch)

        def unreadable(location):
            raise FileNotFoundError(f"no such file: {location}")

        monkeypatch.setattr(pipeline, "read_pdf", unreadable)
        with pytest.raises(FileNotFoundError):
            pipeline.send_batch(run.id, ids)
        rows = list(Delivery.select())
        assert {d.state for d in rows} == {"pending"}
        assert all(d.error.startswith("FileNotFoundError: no such file") for d in rows)
    assert smtp_sink.envelopes == []


def test_the_email_labels_every_total_the_report_has(app):
    from plugins.reporting.reports import emails

    totals = {"new": 3, "moved_out": 2, "deleted_meanwhile": 1}
    with app.test_request_context():
        data = emails.compose(
            recipient="a@example.org",
            name="A",
            subscription_id=1,
            run_id=1,
            week=WEEK,
            study="ONCO-7",
            totals=totals,
            pdf_part=None,
            sender=app.config["REPORTING_MAIL_FROM"],
        )
    message = email.message_from_bytes(data, policy=email.policy.default)
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for body in (text, html):
        assert "Documents moved to another study" in body and "2" in body
        assert "New documents deleted while the report was made" in body


def test_a_stored_study_with_a_newline_cannot_inject_a_header(app):
    from plugins.reporting.reports import emails

    with app.test_request_context():
        data = emails.compose(
            recipient="a@example.org",
            name="A",
            subscription_id=1,
            run_id=1,
            week=WEEK,
            study="x\r\nBcc: evil@attacker.example\r\nX-Injected: yes",
            totals={},
            pdf_part=None,
            sender=app.config["REPORTING_MAIL_FROM"],
        )
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message["X-Injected"] is None and message["Bcc"] is None
    assert "Bcc: evil@attacker.example" in message["Subject"]  # as text, on one line
