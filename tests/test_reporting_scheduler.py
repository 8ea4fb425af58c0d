"""The scheduler: the core loop and hook, the reporting task, two schedulers at once, and
the `caredeck scheduler` command stopping cleanly on SIGTERM."""

import datetime
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import reporting_fakes as fakes

from core import plugins
from core.auth.models import User
from core.db import database, utcnow
from core.scheduler import Schedule, Scheduler, collect
from core.testing import ROLE_PASSWORD, run_jobs
from plugins.reporting import plugin as reporting
from plugins.reporting.reports import pipeline, subscriptions
from plugins.reporting.reports.models import Delivery, ReportRun, Subscription

UTC = datetime.UTC
# Monday 23 November 2026, 09:00 UTC: Monday 08:00 Europe/Berlin subscriptions are due.
NOW = datetime.datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture
def caredeck_plugins():
    return {"reporting": reporting}


@pytest.fixture
def fake(monkeypatch):
    return fakes.install(monkeypatch)


def subscribe_many(count, weekday="monday", zone="Europe/Berlin", due=True):
    made = []
    with database.connection_context():
        for n in range(count):
            user = User.create_user(
                f"{weekday}{n}@example.org",
                ROLE_PASSWORD,
                name="R",
                role="nurse",
                status="active",
            )
            made.append(
                subscriptions.create(
                    user, {"weekday": weekday, "time": "08:00", "timezone": zone, "study": None}
                )
            )
        # As if created a while ago: due at the latest occurrence before NOW, or the next.
        timing = pipeline.timing
        for sub in made:
            when = (timing.latest_due if due else timing.next_due)(
                sub.weekday, sub.time, sub.timezone, NOW
            )
            Subscription.update(next_due_at=when).where(Subscription.id == sub.id).execute()
    return made


def test_the_core_collects_schedules_and_survives_a_failing_task(app, caplog):
    assert [s.name for s in collect(app)] == [
        "reporting.sweep_document_files",
        "reporting.due_reports",
    ]
    calls = []

    def broken():
        calls.append("broken")
        raise RuntimeError("on purpose")

    scheduler = Scheduler(
        app,
        [
            Schedule("test.broken", datetime.timedelta(hours=1), broken),
            Schedule("test.fine", datetime.timedelta(hours=1), lambda: calls.append("fine")),
        ],
    )
    with caplog.at_level(logging.ERROR, logger="caredeck.scheduler"):
        assert scheduler.run_due() == ["test.broken", "test.fine"]
    assert calls == ["broken", "fine"] and "test.broken failed" in caplog.text
    assert scheduler.run_due() == []  # not due again for an hour


def test_a_plugin_schedule_must_be_named_for_its_plugin(make_app):
    from core.hookspecs import hookimpl

    class Plugin:
        CORE_API = 1

        @hookimpl
        def caredeck_schedules(self):
            return [Schedule("other.task", datetime.timedelta(seconds=1), lambda: None)]

    app = make_app(plugins={"sample": Plugin()})
    with pytest.raises(plugins.PluginError, match="must be named 'sample.<name>'"):
        collect(app)


def test_due_subscriptions_are_enqueued_once_and_move_to_next_week(app, fake):
    subs = subscribe_many(3)
    friday = subscribe_many(1, weekday="friday", due=False)
    broker = app.extensions["caredeck"].jobs.broker
    with app.app_context(), database.connection_context():
        assert pipeline.enqueue_due(NOW) == 3
        assert pipeline.enqueue_due(NOW) == 0
        (run,) = ReportRun.select()
        assert (run.week, run.study, run.state) == ("2026-W47", None, "queued")
        assert Delivery.select().count() == 3
        assert broker.queues["default"].qsize() == 1  # one render job
        for sub in subs:
            assert Subscription.get_by_id(sub.id).next_due_at == datetime.datetime(
                2026, 11, 30, 7, 0, tzinfo=UTC
            )
    run_jobs(app)
    with database.connection_context():
        assert {d.state for d in Delivery.select()} == {"sent"}
        # Friday's subscriber gets the same week's report on Friday, from the same PDF.
        with app.app_context():
            assert pipeline.enqueue_due(NOW + datetime.timedelta(days=4)) == 1
            assert ReportRun.select().count() == 1
            assert Delivery.get(Delivery.subscription == friday[0].id).week == "2026-W47"
    run_jobs(app)
    with database.connection_context():
        assert Delivery.select().where(Delivery.state == "sent").count() == 4
    renderer = fake
    assert renderer.calls == [(None, "2026-W47")]


def test_two_schedulers_at_once_double_nothing(app, fake):
    subscribe_many(40)
    broker = app.extensions["caredeck"].jobs.broker
    start = threading.Barrier(2)
    results, errors = [], []

    def scheduler():
        try:
            with app.app_context(), database.connection_context():
                start.wait()
                results.append(pipeline.enqueue_due(NOW))
        except Exception as error:  # pragma: no cover - shown by the assertion
            errors.append(error)

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sum(results) == 40  # each due subscription taken by one scheduler
    with database.connection_context():
        assert ReportRun.select().count() == 1
        assert Delivery.select().count() == 40
    assert broker.queues["default"].qsize() == 1  # one render job, not two
    run_jobs(app)
    outbox = Path(app.config["SMTP_URL"].removeprefix("file://"))
    assert len(list(outbox.glob("*.eml"))) == 40


def test_two_scheduler_loops_side_by_side(app, fake):
    subscribe_many(10)
    with database.connection_context():
        Subscription.update(next_due_at=utcnow() - datetime.timedelta(minutes=5)).execute()
    loops = [Scheduler(app, tick=0.05) for _ in range(2)]
    for loop in loops:
        loop.start()
    time.sleep(1.0)
    for loop in loops:
        loop.stop()
    run_jobs(app)
    with database.connection_context():
        assert Delivery.select().count() == 10
        assert ReportRun.select().count() == 1
    outbox = Path(app.config["SMTP_URL"].removeprefix("file://"))
    assert len(list(outbox.glob("*.eml"))) == 10


def test_the_scheduler_command_runs_until_sigterm(caredeck_config, tmp_path):
    env = {
        **os.environ,
        **{f"CAREDECK_{k}": str(v) for k, v in caredeck_config.items()},
        "CAREDECK_PLUGINS": "reporting",
    }
    caredeck = str(Path(sys.executable).with_name("caredeck"))
    subprocess.run([caredeck, "db", "upgrade"], env=env, check=True, capture_output=True)
    once = subprocess.run(
        [caredeck, "scheduler", "--once"], env=env, capture_output=True, text=True, timeout=60
    )
    assert once.returncode == 0, once.stderr
    assert "Ran 2 task(s): reporting.sweep_document_files, reporting.due_reports." in once.stdout
    process = subprocess.Popen(
        [caredeck, "scheduler", "--interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "reporting.due_reports" in process.stdout.readline()
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_with_the_embedded_queue_runs_the_scheduler_in_process(caredeck_config, monkeypatch):
    import waitress
    from click.testing import CliRunner

    from core.cli import cli

    for name, value in caredeck_config.items():
        monkeypatch.setenv(f"CAREDECK_{name}", str(value))
    monkeypatch.setenv("CAREDECK_PLUGINS", "reporting")
    CliRunner().invoke(cli, ["db", "upgrade"], catch_exceptions=False)
    seen = {}

    def fake_serve(app, **kwargs):
        seen["threads"] = {thread.name for thread in threading.enumerate()}

    monkeypatch.setattr(waitress, "serve", fake_serve)
    result = CliRunner().invoke(cli, ["serve"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "caredeck-scheduler" in seen["threads"]
    assert "caredeck-scheduler" not in {thread.name for thread in threading.enumerate()}


def test_a_week_is_rendered_only_once_it_has_ended_in_the_hospitals_zone(app, fake):
    # Monday 00:00 in Kiritimati (UTC+14) is Sunday 10:00 UTC: the subscriber's week 47 is
    # over, the hospital's (TIMEZONE, UTC here) has 14 hours to go.
    subs = subscribe_many(1, zone="Pacific/Kiritimati", due=False)
    sunday = datetime.datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    renderer = fake
    with app.app_context(), database.connection_context():
        assert app.config["TIMEZONE"] == "UTC"
        Subscription.update(next_due_at=sunday, time="00:00").where(
            Subscription.id == subs[0].id
        ).execute()
        assert pipeline.enqueue_due(sunday + datetime.timedelta(minutes=1)) == 1
        (run,) = ReportRun.select()
        assert (run.week, run.state, run.enqueued_at) == ("2026-W47", "queued", None)
        pipeline.enqueue_due(sunday + datetime.timedelta(hours=13, minutes=59))  # a later tick
    run_jobs(app)
    assert renderer.calls == []
    with app.app_context(), database.connection_context():
        end = datetime.datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
        pipeline.enqueue_due(end + pipeline.WEEK_END_GRACE)  # the tick after the week ended
    run_jobs(app)
    assert renderer.calls == [(None, "2026-W47")]
    with database.connection_context():
        assert [d.state for d in Delivery.select()] == ["sent"]


def test_a_poisoned_subscription_does_not_stop_the_others(app, fake, caplog):
    subs = subscribe_many(2)
    with database.connection_context():
        # First in line, with a zone that zoneinfo does not know (a row from before the
        # check, or a zone since removed).
        Subscription.update(
            timezone="Mars/Olympus", next_due_at=NOW - datetime.timedelta(days=1)
        ).where(Subscription.id == subs[0].id).execute()
    with app.app_context(), database.connection_context():
        with caplog.at_level(logging.ERROR, logger="caredeck.reporting"):
            assert pipeline.enqueue_due(NOW) == 1
        assert f"report subscription {subs[0].id} could not be scheduled" in caplog.text
        assert [d.subscription_id for d in Delivery.select()] == [subs[1].id]
        assert Subscription.get_by_id(subs[0].id).next_due_at > NOW  # not first next tick
        assert pipeline.enqueue_due(NOW) == 0


def test_many_due_subscriptions_take_a_few_statements_not_several_each(
    app, users, fake, monkeypatch
):
    count = 2000
    with database.connection_context():
        User.insert_many(
            [
                {
                    "email": f"many{n}@example.org",
                    "name": "M",
                    "role": "nurse",
                    "status": "active",
                    "password_hash": users["nurse"].password_hash,
                }
                for n in range(count)
            ]
        ).execute()
        ids = [u.id for u in User.select(User.id).where(User.email.startswith("many"))]
        due = NOW - datetime.timedelta(hours=2)  # Monday 07:00 UTC: 08:00 Europe/Berlin
        Subscription.insert_many(
            [
                {
                    "user": uid,
                    "weekday": 0,
                    "time": "08:00",
                    "timezone": "Europe/Berlin",
                    "study": None,
                    "scope": "*",
                    "created_at": due,
                    "next_due_at": due,
                }
                for uid in ids
            ]
        ).execute()
    statements = []
    execute_sql = type(database.obj).execute_sql

    def counted(self, sql, *args, **kwargs):
        statements.append(sql)
        return execute_sql(self, sql, *args, **kwargs)

    monkeypatch.setattr(type(database.obj), "execute_sql", counted)
    with app.app_context(), database.connection_context():
        started = time.monotonic()
        assert pipeline.enqueue_due(NOW) == count
        took = time.monotonic() - started
        assert Delivery.select().count() == count
        assert Subscription.select().where(Subscription.next_due_at <= NOW).count() == 0
    assert len(statements) < 60, (len(statements), took)


def test_a_run_already_sending_gets_batches_for_the_new_rows_only(app, fake, monkeypatch):
    first, second = subscribe_many(2)
    with app.app_context(), database.connection_context():
        run = pipeline.ensure_run(None, "2026-W47")
        pipeline.add_recipients(run, [first.id])
        with monkeypatch.context() as patch:
            patch.setattr(pipeline, "dispatch", lambda run_id, *args: 0)
            pipeline.render_run(run.id)  # sending; the first row's batch is on its way
        # Its working lease runs past NOW (the run is live, not stalled).
        later = NOW + datetime.timedelta(minutes=5)
        ReportRun.update(lease_until=later).where(ReportRun.id == run.id).execute()
        sent = []
        batches = types.SimpleNamespace(send=lambda *args: sent.append(args))
        monkeypatch.setattr(pipeline, "send_batch", batches)
        assert pipeline.enqueue_due(NOW) == 2
        new = Delivery.get(Delivery.subscription == second.id)
        assert sent == [(run.id, [new.id])]
