"""The runs API (admins): trigger a week, dry runs, states, counts, the PDF."""

from pathlib import Path

import pytest
import reporting_fakes as fakes

from core.db import database
from core.testing import run_jobs
from plugins.reporting import plugin as reporting
from plugins.reporting.reports import subscriptions

WEEK = "2026-W45"  # a week that has ended: only a dry run may cover one under way


@pytest.fixture
def caredeck_plugins():
    return {"reporting": reporting}


@pytest.fixture
def fake(monkeypatch):
    return fakes.install(monkeypatch)


@pytest.fixture
def subscribed(app, users):
    with database.connection_context():
        for role in ("doctor", "nurse"):
            subscriptions.create(
                users[role],
                {"weekday": "monday", "time": "08:00", "timezone": "UTC", "study": None},
            )


def emails(app):
    folder = Path(app.config["SMTP_URL"].removeprefix("file://"))
    return list(folder.glob("*.eml")) if folder.exists() else []


def test_only_admins(client, client_for):
    assert client.get("/api/report-runs").status_code == 401
    assert client.post("/api/report-runs", json={"week": WEEK}).status_code == 401
    doctor = client_for("doctor")
    assert doctor.get("/api/report-runs").status_code == 403
    assert doctor.post("/api/report-runs", json={"week": WEEK}).status_code == 403
    assert doctor.get("/api/report-runs/1").status_code == 403
    assert doctor.get("/api/report-runs/1/pdf").status_code == 403


@pytest.mark.parametrize(
    "week",
    [
        "2026-47",
        "2026-W54",
        "2027-W53",
        "W47",
        "",
        None,
        "\uff12\uff10\uff12\uff16-W47",
        "2026-W47\n",
    ],
)
def test_the_week_is_validated(client_for, week):
    answer = client_for("admin").post("/api/report-runs", json={"week": week})
    assert answer.status_code == 422 and "week" in answer.json["errors"]["json"]


def test_a_week_under_way_is_only_previewed(app, client_for, subscribed, fake):
    from core.db import utcnow
    from plugins.reporting.reports import timing
    from plugins.reporting.reports.models import ReportRun

    admin = client_for("admin")
    this_week = timing.week_of(utcnow(), app.config["TIMEZONE"])
    answer = admin.post("/api/report-runs", json={"week": this_week})
    assert answer.status_code == 422
    (message,) = answer.json["errors"]["json"]["week"]
    assert message.startswith(f"{this_week} has not ended yet") and "dry_run" in message
    with database.connection_context():
        assert ReportRun.select().count() == 0
    (dry,) = admin.post("/api/report-runs", json={"week": this_week, "dry_run": True}).json
    assert dry["dry_run"] is True
    run_jobs(app)
    assert emails(app) == []


def test_a_dry_run_renders_and_counts_but_sends_nothing(app, client_for, subscribed, fake):
    admin = client_for("admin")
    (dry,) = admin.post("/api/report-runs", json={"week": WEEK, "dry_run": True}).json
    assert dry["dry_run"] is True and dry["state"] == "queued"
    run_jobs(app)
    done = admin.get(f"/api/report-runs/{dry['id']}").json
    assert done["state"] == "succeeded" and done["recipients"] == 2
    assert (done["sent"], done["pending"]) == (0, 0)
    assert done["rendered_at"] and done["finished_at"] and done["totals"]["new"] == 3
    assert emails(app) == []
    pdf = admin.get(done["pdf"])
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
    assert pdf.data.startswith(b"%PDF") and "attachment" in pdf.headers["Content-Disposition"]
    # A dry run does not stand in for the real one, nor does a second dry run reuse it.
    (second,) = admin.post("/api/report-runs", json={"week": WEEK, "dry_run": True}).json
    (real,) = admin.post("/api/report-runs", json={"week": WEEK}).json
    assert len({dry["id"], second["id"], real["id"]}) == 3
    run_jobs(app)
    assert len(emails(app)) == 2


def test_list_filter_and_one(app, client_for, subscribed, fake):
    admin = client_for("admin")
    admin.post("/api/report-runs", json={"week": "2026-W44"})
    admin.post("/api/report-runs", json={"week": WEEK, "study": "ONCO-7", "dry_run": True})
    listed = admin.get("/api/report-runs")
    assert [r["week"] for r in listed.json] == [WEEK, "2026-W44"]
    assert "X-Pagination" in listed.headers
    assert [r["study"] for r in admin.get(f"/api/report-runs?week={WEEK}").json] == ["ONCO-7"]
    assert admin.get("/api/report-runs?state=succeeded").json == []
    run_jobs(app)
    assert len(admin.get("/api/report-runs?state=succeeded").json) == 2
    assert admin.get("/api/report-runs/999").status_code == 404
    first = listed.json[1]
    one = admin.get(f"/api/report-runs/{first['id']}").json
    assert one["state"] == "succeeded" and one["sent"] == 2
    assert one["created_at"] <= one["started_at"] <= one["rendered_at"] <= one["finished_at"]


def test_a_run_without_a_pdf_yet(client_for, subscribed):
    admin = client_for("admin")
    (run,) = admin.post("/api/report-runs", json={"week": WEEK}).json
    answer = admin.get(f"/api/report-runs/{run['id']}/pdf")
    assert answer.status_code == 404 and "no PDF yet" in answer.json["message"]


def test_a_week_without_subscribers_starts_nothing(client_for):
    assert client_for("admin").post("/api/report-runs", json={"week": WEEK}).json == []


@pytest.mark.parametrize("study", ["a\x00b", "A\nB"])
def test_a_study_with_control_characters_is_refused(client_for, study):
    answer = client_for("admin").post("/api/report-runs", json={"week": WEEK, "study": study})
    assert answer.status_code == 422 and "study" in answer.json["errors"]["json"]


def test_the_pdf_download_names_any_study_safely(app, client_for, users, fake):
    from plugins.reporting.reports.models import ReportRun

    admin = client_for("admin")
    (run,) = admin.post(
        "/api/report-runs", json={"week": WEEK, "study": '\u03b1-study "q"', "dry_run": True}
    ).json
    run_jobs(app)
    answer = admin.get(f"/api/report-runs/{run['id']}/pdf")
    assert answer.status_code == 200
    assert answer.headers["Content-Disposition"] == (
        'attachment; filename="caredeck-report-2026-W45-_-study _q_.pdf"; '
        "filename*=UTF-8''caredeck-report-2026-W45-%CE%B1-study%20%22q%22.pdf"
    )
    answer.close()  # done with the streamed body
    with database.connection_context():  # a study stored before names were checked
        ReportRun.update(study="A\nB").where(ReportRun.id == run["id"]).execute()
    answer = admin.get(f"/api/report-runs/{run['id']}/pdf")
    assert answer.status_code == 200
    assert "\n" not in answer.headers["Content-Disposition"]
    assert (
        "filename*=UTF-8''caredeck-report-2026-W45-A%0AB.pdf"
        in (answer.headers["Content-Disposition"])
    )
    answer.close()


def test_running_a_week_that_is_sending_enqueues_batches_for_new_recipients_only(
    app, client_for, subscribed, fake, monkeypatch
):
    import types

    from core.auth.models import User
    from plugins.reporting.reports import pipeline
    from plugins.reporting.reports.models import Delivery, ReportRun

    with app.app_context(), database.connection_context():
        run = pipeline.ensure_run(None, WEEK)
        pipeline.add_all_recipients(run)
        with monkeypatch.context() as patch:
            patch.setattr(pipeline, "dispatch", lambda run_id, *args: 0)
            pipeline.render_run(run.id)  # sending; the first rows' batches are on their way
        late = User.get(User.email == "doctor@example.org")
        sub = subscriptions.create(
            late, {"weekday": "friday", "time": "08:00", "timezone": "UTC", "study": None}
        )
        before = {d.id for d in Delivery.select()}
    sent = []
    monkeypatch.setattr(
        pipeline, "send_batch", types.SimpleNamespace(send=lambda *a: sent.append(a))
    )
    (again,) = client_for("admin").post("/api/report-runs", json={"week": WEEK}).json
    with database.connection_context():
        assert ReportRun.get_by_id(run.id).state == "sending"
        new = Delivery.get(Delivery.subscription == sub.id)
    assert new.id not in before and sent == [(run.id, [new.id])]
