"""The pipeline and the delivery ledger: render once per scope and week, each email once
whatever retries, duplicated jobs and crashed workers do; failures recorded, never silent."""

import datetime
import email
import email.policy
import time
from pathlib import Path

import pytest
import reporting_fakes as fakes

from core.auth.models import User
from core.db import database, utcnow
from core.testing import ROLE_PASSWORD, run_jobs
from plugins.reporting import plugin as reporting
from plugins.reporting.reports import pipeline
from plugins.reporting.reports.models import Delivery, ReportRun, Subscription

WEEK = "2026-W45"  # a week that has ended: only a dry run may cover one under way


@pytest.fixture
def caredeck_plugins():
    return {"reporting": reporting}


@pytest.fixture
def fake(monkeypatch):
    return fakes.install(monkeypatch)


@pytest.fixture
def subscribers(app, users):
    """Three staff users subscribed to the all-studies report."""
    made = []
    with database.connection_context():
        for n in range(3):
            user = User.create_user(
                f"reader{n}@example.org",
                ROLE_PASSWORD,
                name=f"Reader {n}",
                role="nurse",
                status="active",
            )
            made.append(_subscribe(user))
    return made


def _subscribe(user, study=None, weekday=0):
    from plugins.reporting.reports import subscriptions

    return subscriptions.create(
        user,
        {
            "weekday": ("monday", "friday")[weekday and 1],
            "time": "08:00",
            "timezone": "Europe/Berlin",
            "study": study,
        },
    )


def outbox(app) -> list:
    folder = Path(app.config["SMTP_URL"].removeprefix("file://"))
    if not folder.exists():
        return []
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted(folder.glob("*.eml"))
    ]


def start_run(client_for, **body):
    answer = client_for("admin").post("/api/report-runs", json={"week": WEEK, **body})
    assert answer.status_code == 202, answer.json
    return answer.json


def test_a_week_is_rendered_once_and_each_subscriber_gets_one_email(
    app, client_for, subscribers, fake
):
    renderer = fake
    (run,) = start_run(client_for)
    assert run["state"] == "queued" and run["study"] is None
    run_jobs(app)
    assert renderer.calls == [(None, WEEK)]
    sent = outbox(app)
    assert sorted(m["To"] for m in sent) == [f"reader{n}@example.org" for n in range(3)]
    done = client_for("admin").get(f"/api/report-runs/{run['id']}").json
    assert done["state"] == "succeeded"
    assert (done["sent"], done["failed"], done["suppressed"], done["pending"]) == (3, 0, 0, 0)
    assert done["recipients"] == 3 and done["totals"]["new"] == 3

    # The same week again: the same run, nothing rendered or sent again.
    (again,) = start_run(client_for)
    assert again["id"] == run["id"]
    run_jobs(app)
    assert len(outbox(app)) == 3 and len(renderer.calls) == 1


def test_a_retried_batch_sends_nothing_twice(app, subscribers, fake):
    with app.app_context(), database.connection_context():
        run = pipeline.ensure_run(None, WEEK)
        pipeline.add_all_recipients(run)
        pipeline.render_run(run.id)  # directly: the batches it enqueues are not run
        ids = [d.id for d in Delivery.select().order_by(Delivery.id)]
        pipeline.send_batch(run.id, ids)
        pipeline.send_batch(run.id, ids)  # Dramatiq redelivers it after a worker restart
        assert len(outbox(app)) == 3
        assert {d.state for d in Delivery.select()} == {"sent"}


def test_a_duplicated_job_sends_nothing_twice(app, subscribers, fake):
    with app.app_context(), database.connection_context():
        run = pipeline.ensure_run(None, WEEK)
        pipeline.add_all_recipients(run)
        pipeline.kick(run.id)
        pipeline.kick(run.id)  # a second scheduler: enqueues nothing more
        ids = [d.id for d in Delivery.select()]
        pipeline.render_run.send(run.id)  # and a duplicated message anyway
        pipeline.send_batch.send(run.id, ids)
        pipeline.send_batch.send(run.id, ids)
    run_jobs(app)
    assert len(outbox(app)) == 3
    with database.connection_context():
        assert ReportRun.get_by_id(run.id).render_attempts == 1


def test_rows_of_a_crashed_batch(app, subscribers, fake):
    """Claimed but never attempted: sent later, once. In the SMTP transaction when the
    worker died: recorded as failed (unknown), never sent twice."""
    with app.app_context(), database.connection_context():
        run = pipeline.ensure_run(None, WEEK)
        pipeline.add_all_recipients(run)
        pipeline.render_run(run.id)
        first, second, third = Delivery.select().order_by(Delivery.id)
        long_ago = utcnow() - datetime.timedelta(hours=1)
        Delivery.update(state="claimed", claim="dead", claimed_at=long_ago, attempts=1).where(
            Delivery.id.in_([first.id, second.id])
        ).execute()
        Delivery.update(state="sending", claim="dead", claimed_at=long_ago, attempts=1).where(
            Delivery.id == third.id
        ).execute()
        # While the claim is fresh nothing happens; the scheduler recovers it once stale.
        pipeline.recover_stalled(long_ago)
        assert Delivery.get_by_id(first.id).state == "claimed"
        ReportRun.update(lease_until=long_ago).where(ReportRun.id == run.id).execute()
        pipeline.recover_stalled()
        assert Delivery.get_by_id(third.id).state == "failed"
        assert "outcome unknown" in Delivery.get_by_id(third.id).error
    run_jobs(app)
    assert sorted(m["To"] for m in outbox(app)) == ["reader0@example.org", "reader1@example.org"]
    with database.connection_context():
        done = ReportRun.get_by_id(run.id)
        assert done.state == "succeeded" and "outcome unknown" in done.error


def test_unsubscribed_before_sending_is_suppressed(app, client_for, subscribers, fake):
    with database.connection_context():
        Subscription.update(cancelled_at=utcnow()).where(
            Subscription.id == subscribers[0].id
        ).execute()
        run = pipeline.ensure_run(None, WEEK)
        Delivery.insert(subscription=subscribers[0].id, week=WEEK, run=run.id).execute()
    (answer,) = start_run(client_for)
    run_jobs(app)
    assert len(outbox(app)) == 2
    done = client_for("admin").get(f"/api/report-runs/{answer['id']}").json
    assert (done["sent"], done["suppressed"]) == (2, 1)


def test_rendering_failures_are_retried_then_recorded(app, subscribers, fake):
    renderer = fake
    renderer.fail = 5
    with app.app_context(), database.connection_context():
        run = pipeline.ensure_run(None, WEEK)
        pipeline.add_all_recipients(run)
        for _attempt in range(pipeline.MAX_RENDER_ATTEMPTS - 1):
            with pytest.raises(pipeline.TemporaryFailure):
                pipeline.render_run(run.id)
            assert ReportRun.get_by_id(run.id).state == "queued"
        pipeline.render_run(run.id)  # the last attempt records the failure
        failed = ReportRun.get_by_id(run.id)
        assert failed.state == "failed" and "renderer failed on purpose" in failed.error
    assert outbox(app) == []


def test_a_stalled_render_is_taken_over(app, subscribers, fake):
    renderer = fake
    with app.app_context(), database.connection_context():
        run = pipeline.ensure_run(None, WEEK)
        pipeline.add_all_recipients(run)
        past = utcnow() - datetime.timedelta(minutes=1)
        ReportRun.update(state="rendering", lease_until=past, render_attempts=1).where(
            ReportRun.id == run.id
        ).execute()
        pipeline.recover_stalled()
        pipeline.recover_stalled()  # a second scheduler: nothing more enqueued
    run_jobs(app)
    assert renderer.calls == [(None, WEEK)] and len(outbox(app)) == 3


def test_a_live_render_longer_than_its_lease_keeps_its_run(app, subscribers, fake, monkeypatch):
    """The worker renews the lease while it renders: the scheduler, looking in the middle
    of a render two leases long, takes nothing over: the render moves the run on."""
    app.config["REPORTING_RENDER_LEASE_SECONDS"] = 4
    lease_at_start, lease_at_end = [], []

    def slow_render(study, week):
        lease_at_start.append(ReportRun.get().lease_until)
        time.sleep(9)
        with database.connection_context():
            pipeline.recover_stalled()  # the scheduler, two leases in
            lease_at_end.append(ReportRun.get().lease_until)
        return fake(study, week)

    monkeypatch.setattr(pipeline, "render", slow_render)
    with app.app_context(), database.connection_context():
        run = pipeline.ensure_run(None, WEEK)
        pipeline.add_all_recipients(run)
        pipeline.render_run(run.id)
        assert ReportRun.get_by_id(run.id).state in ("sending", "succeeded")
    assert fake.calls == [(None, WEEK)]
    assert lease_at_end[0] > lease_at_start[0] + datetime.timedelta(seconds=4)


def test_one_run_per_scope(app, client_for, users, fake):
    renderer = fake
    with database.connection_context():
        _subscribe(users["doctor"], study="ONCO-7")
        _subscribe(users["nurse"], study="ONCO-7", weekday=4)
        _subscribe(users["admin"])
    runs = start_run(client_for)
    assert [r["study"] for r in runs] == [None, "ONCO-7"]
    run_jobs(app)
    assert sorted(renderer.calls, key=str) == sorted([(None, WEEK), ("ONCO-7", WEEK)], key=str)
    assert len(outbox(app)) == 3


def test_batches(app, users, fake):
    with database.connection_context():
        for n in range(7):
            user = User.create_user(
                f"many{n}@example.org", ROLE_PASSWORD, name="M", role="doctor", status="active"
            )
            _subscribe(user)
    app.config["REPORTING_BATCH_SIZE"] = 3
    broker = app.extensions["caredeck"].jobs.broker
    with app.app_context(), database.connection_context():
        run = pipeline.ensure_run(None, WEEK)
        assert pipeline.add_all_recipients(run) == 7
        pipeline.render_run(run.id)  # directly: it enqueues the batches
        assert broker.queues["default"].qsize() == 3  # 3 + 3 + 1 recipients
    run_jobs(app)
    assert len(outbox(app)) == 7


def _fail_rendering(run_id):
    for _attempt in range(pipeline.MAX_RENDER_ATTEMPTS - 1):
        with pytest.raises(pipeline.TemporaryFailure):
            pipeline.render_run(run_id)
    pipeline.render_run(run_id)
    assert ReportRun.get_by_id(run_id).state == "failed"


def test_a_failed_render_is_tried_again_when_an_admin_runs_the_week_again(
    app, client_for, subscribers, fake
):
    renderer = fake
    renderer.fail = pipeline.MAX_RENDER_ATTEMPTS
    with app.app_context(), database.connection_context():
        run = pipeline.ensure_run(None, WEEK)
        pipeline.add_all_recipients(run)
        _fail_rendering(run.id)
    (again,) = start_run(client_for)
    assert again["id"] == run.id
    assert (again["state"], again["render_attempts"]) == ("queued", 0)
    run_jobs(app)
    done = client_for("admin").get(f"/api/report-runs/{run.id}").json
    assert (done["state"], done["sent"], done["pending"]) == ("succeeded", 3, 0)
    assert len(outbox(app)) == 3


def test_a_failed_render_is_tried_again_when_new_recipients_arrive(app, subscribers, fake):
    renderer = fake
    renderer.fail = pipeline.MAX_RENDER_ATTEMPTS
    with app.app_context(), database.connection_context():
        run = pipeline.ensure_run(None, WEEK)
        pipeline.add_all_recipients(run)
        _fail_rendering(run.id)
        user = User.create_user(
            "late@example.org", ROLE_PASSWORD, name="Late", role="nurse", status="active"
        )
        _subscribe(user)
        # All due on the Monday that reports WEEK (08:00 Europe/Berlin): only the new
        # subscriber's ledger row is new.
        monday = datetime.datetime(2026, 11, 9, 7, 0, tzinfo=datetime.UTC)
        Subscription.update(next_due_at=monday).execute()
        pipeline.enqueue_due(monday + datetime.timedelta(minutes=5))
        assert Delivery.select().count() == 4
        assert ReportRun.get_by_id(run.id).state == "queued"
    run_jobs(app)
    assert len(outbox(app)) == 4
