"""The production shape on one machine (issue 9): every role's command line from
docker-compose.yml, run as separate processes against real servers, two of each (web,
worker, consumer, scheduler) plus an ingestion watcher, then faults.

The servers are private instances of the machine's PostgreSQL, Redis and RabbitMQ
(tests/private_servers.py): the drills restart and stop them, which the machine's own
servers, shared with everything else, must not suffer. ``stop()`` runs whatever happens.

What "nothing lost, nothing done twice" means here, counted in the database and at the
mail server: every medication event accepted (202) is stored exactly once; every report
run succeeds with one ledger row per subscriber and the mail server receives each email
once; every file dropped into the watched folder is applied once, its rows all there.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime
import itertools
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kombu
import psycopg2
import pytest
import redis
import requests
import yaml
from private_servers import (
    PrivatePostgres,
    PrivateRabbitMQ,
    PrivateRedis,
    free_port,
    missing_programs,
    wait_until,
)

from core.testing import SMTPSink, fresh_postgresql_url, service_url, serving

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PASSWORD = "scale-out-admin-password-0123"
SUBSCRIBERS = 20
WEEKS = [f"2026-W{week}" for week in range(30, 40)]  # ten weeks that have ended
EVENTS = 50_000


def compose_argv(service: str) -> list[str]:
    """The service's command from docker-compose.yml, with the image's paths made this
    checkout's (the programs from this virtualenv)."""
    argv = list(COMPOSE["services"][service]["command"])
    argv[0] = str(BIN / argv[0])
    return [
        str(ROOT / "deploy/gunicorn.conf.py") if a.startswith("/etc/caredeck/") else a for a in argv
    ]


class SlowSink(SMTPSink):
    """The test's mail server; ``delay`` seconds per message keeps a report run sending
    long enough to break something in the middle of it."""

    delay = 0.0

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)

    def received(self, week: str) -> Counter:
        """Emails of ``week`` by recipient (a report's Message-ID is its subscription's
        and week's: ``<report-<subscription>-<week>@...>``)."""
        return Counter(m["To"] for m in self.messages if f"-{week}@" in m["Message-ID"])


class Fleet:
    """The roles' processes, and what the tests ask of them."""

    def __init__(self, root: Path, env: dict[str, str], database_url: str) -> None:
        self.root, self.env, self.database_url = root, env, database_url
        self.processes: dict[str, subprocess.Popen] = {}
        self.web_ports: list[int] = []
        self.publisher_port = 0
        self.token = ""
        self.events_published = 0

    # Processes ---------------------------------------------------------------------------

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (the process's own)
        self.processes[name] = subprocess.Popen(
            argv,
            cwd=self.root,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.processes[name]

    def start_web(self, name: str, service: str = "web") -> int:
        """A gunicorn server as the Compose ``service`` runs it (the publisher: with only
        its plugin); its port."""
        port = free_port()
        plugins = COMPOSE["services"][service]["environment"]["CAREDECK_PLUGINS"]
        plugins = re.sub(r"^\$\{\w+:-(.*)\}$", r"\1", plugins)  # Compose's default
        self.start(
            name,
            compose_argv(service),
            GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
            WEB_CONCURRENCY="1",
            CAREDECK_PLUGINS=plugins,
        )
        wait_until(lambda: self._ready(port), 60, f"{name} did not become ready")
        return port

    def _ready(self, port: int) -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok
        return False

    def kill(self, name: str) -> None:
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    def assert_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        assert not dead, f"processes ended: {dead}\n{self.logs()}"

    def logs(self, lines: int = 15) -> str:
        shown = []
        for path in sorted(self.root.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            shown.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(shown)

    # The database, read directly ---------------------------------------------------------

    def scalar(self, sql: str, *params):
        with contextlib.closing(psycopg2.connect(self.database_url)) as conn, conn.cursor() as cur:
            cur.execute(sql, params or None)
            return cur.fetchone()[0]

    def rows(self, sql: str, *params) -> list[tuple]:
        with contextlib.closing(psycopg2.connect(self.database_url)) as conn, conn.cursor() as cur:
            cur.execute(sql, params or None)
            return cur.fetchall()

    # The API, spread over the web processes ----------------------------------------------

    def call(self, method: str, path: str, attempt_for: float = 60, ports=None, **kwargs):
        """A client that retries what a server could not take (503, a refused connection),
        as a real client must; the web processes (or ``ports``) are taken in turn."""
        deadline = time.monotonic() + attempt_for
        ports = itertools.cycle(ports or self.web_ports)
        while True:
            port = next(ports)
            try:
                answer = requests.request(
                    method,
                    f"http://127.0.0.1:{port}{path}",
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=30,
                    **kwargs,
                )
                if answer.status_code < 500 or time.monotonic() > deadline:
                    return answer
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def publish(self, count: int, batch: int = 1000, workers: int = 4) -> int:
        """``count`` new medication events (distinct ids) through the API of both web
        processes and the publisher; the number accepted."""
        first = self.events_published
        self.events_published += count
        ports = [*self.web_ports, self.publisher_port]

        def send(start: int) -> int:
            events = [_event(n) for n in range(start, min(start + batch, first + count))]
            answer = self.call("POST", "/api/medication-events", json=events, ports=ports)
            assert answer.status_code == 202, answer.text
            return answer.json()["accepted"]

        with ThreadPoolExecutor(workers) as pool:
            return sum(pool.map(send, range(first, first + count, batch)))

    def stored_events(self) -> int:
        return self.scalar("SELECT count(*) FROM medications_events")

    def wait_for_events(self, expected: int, seconds: float = 240) -> None:
        wait_until(
            lambda: self.stored_events() >= expected,
            seconds,
            f"{expected} events were not stored (now {self.stored_events()})\n{self.logs()}",
        )
        assert self.stored_events() == expected
        duplicates = self.scalar(
            "SELECT count(*) FROM (SELECT event_id FROM medications_events "
            "GROUP BY event_id HAVING count(*) > 1) AS twice"
        )
        assert duplicates == 0

    def run_week(self, week: str) -> int:
        answer = self.call("POST", "/api/report-runs", json={"week": week})
        assert answer.status_code == 202, answer.text
        (run,) = answer.json()
        return run["id"]

    def wait_for_run(self, run_id: int, seconds: float = 240) -> dict:
        def done() -> bool:
            state = self.scalar("SELECT state FROM reporting_runs WHERE id = %s", run_id)
            return state in ("succeeded", "failed")

        wait_until(done, seconds, f"run {run_id} did not finish\n{self.logs()}")
        return self.call("GET", f"/api/report-runs/{run_id}").json()

    def ledger(self, run_id: int) -> Counter:
        return Counter(
            state
            for (state,) in self.rows(
                "SELECT state FROM reporting_deliveries WHERE run_id = %s", run_id
            )
        )


def _event(n: int) -> dict:
    moment = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(minutes=n)
    return {
        "event_id": f"scale-{n}",
        "patient_id": f"SCALE-{n % 500:04d}",
        "medication": ("Heparin", "Insulin", "Amoxicillin", "Paracetamol")[n // 500 % 4],
        "action": ("start", "stop")[n // 2000 % 2],
        "event_time": moment.isoformat(),
    }


def drop_admissions(folder: Path, name: str, first: int, count: int) -> None:
    """A PMS file of ``count`` admissions (and their patients' information), written
    elsewhere and moved in, as a sync tool does."""
    rows = [
        [f"9{n:06d}", f"8{n:06d}", "3/20/2026", "5:20:00 AM", "NULL", "NULL", "Cardiology", "305A"]
        for n in range(first, first + count)
    ]
    staging = folder.parent / f".{name}"
    with open(staging, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            [
                "patient_id",
                "hospitalization_case_number",
                "admission_date",
                "admission_time",
                "release_date",
                "release_time",
                "department",
                "room_number",
            ]
        )
        writer.writerows(rows)
    staging.rename(folder / name)


def drop_lab_tests(folder: Path, name: str, first: int, count: int) -> None:
    staging = folder.parent / f".{name}"
    with open(staging, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["test_id", "patient_id", "test_name", "order_date", "order_time", "ordering_physician"]
        )
        for n in range(first, first + count):
            writer.writerow(
                [f"7{n:07d}", f"9{n % 1000:06d}", "CBC", "3/21/2026", "10:30:00 AM", "Dr. Who"]
            )
    staging.rename(folder / name)


# Fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers():
    missing = missing_programs()
    if missing:
        message = f"the scale-out tests need these server programs: {', '.join(missing)}"
        if os.environ.get("CAREDECK_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    made = {"postgres": PrivatePostgres(), "redis": PrivateRedis(), "rabbitmq": PrivateRabbitMQ()}
    try:
        for server in made.values():
            server.start()
        yield made
    finally:
        for server in made.values():
            server.remove()


@pytest.fixture(scope="module")
def sink():
    with serving(SlowSink()) as sink:
        yield sink


def base_env(root: Path, database_url: str, amqp_url: str, redis_url: str, smtp_url: str):
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("CAREDECK_")},
        "CAREDECK_DATABASE_URL": database_url,
        "CAREDECK_AMQP_URL": amqp_url,
        "CAREDECK_DRAMATIQ_URL": redis_url,
        "CAREDECK_REDIS_URL": redis_url,
        "CAREDECK_SMTP_URL": smtp_url,
        "CAREDECK_STORAGE_URL": f"file://{root}/files",
        "CAREDECK_INSTANCE_PATH": str(root / "instance"),
        "CAREDECK_SECRET_KEY": secrets.token_urlsafe(32),
        "CAREDECK_SECURE_COOKIES": "false",
        "CAREDECK_LOG_LEVEL": "WARNING",
        "CAREDECK_REPORTING_PUBLIC_URL": "http://127.0.0.1:8000",
    }


def launch(fleet: Fleet, copies: int, subscribe=None) -> None:
    """Migrate (Compose's ``migrate``), create the admin, then start ``copies`` of each role
    and the publisher, and sign the admin in."""
    env, root = fleet.env, fleet.root
    migrate = subprocess.run(
        compose_argv("migrate"), env=env, cwd=root, capture_output=True, text=True, timeout=120
    )
    assert migrate.returncode == 0, migrate.stderr
    created = subprocess.run(
        [str(BIN / "caredeck"), "users", "create", "admin@scale.test", "--role", "admin"]
        + ["--password-stdin"],
        input=PASSWORD,
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    if subscribe:
        subscribe(env)
    fleet.publisher_port = fleet.start_web("publisher", "publisher")
    for n in range(1, copies + 1):
        fleet.web_ports.append(fleet.start_web(f"web-{n}"))
        fleet.start(f"worker-{n}", compose_argv("worker"))
        argv = compose_argv("consumer")
        argv[argv.index("--heartbeat-file") + 1] = str(root / f"consumer-{n}.alive")
        fleet.start(f"consumer-{n}", argv)
        fleet.start(f"scheduler-{n}", compose_argv("scheduler"))
    answer = fleet.call(
        "POST", "/api/auth/token", json={"email": "admin@scale.test", "password": PASSWORD}
    )
    assert answer.status_code == 200, answer.text
    fleet.token = answer.json()["access_token"]


@pytest.fixture(scope="module")
def fleet(servers, sink, tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    (root / "incoming").mkdir()
    pg, redis_server, rabbitmq = servers["postgres"], servers["redis"], servers["rabbitmq"]
    env = base_env(root, pg.url, rabbitmq.url, redis_server.url(0), sink.url)
    env.update(
        # Small batches, so that a run has several jobs for two workers to share; leases a
        # test can wait out (the defaults are 120 s and 10 min).
        CAREDECK_REPORTING_BATCH_SIZE="5",
        CAREDECK_REPORTING_RENDER_LEASE_SECONDS="8",
        CAREDECK_REPORTING_SEND_LEASE_SECONDS="15",
    )
    fleet = Fleet(root, env, pg.url)
    try:
        launch(fleet, copies=2, subscribe=_subscribe)
        fleet.start(
            "ingest",
            [str(BIN / "caredeck"), "ingest", str(root / "incoming"), "--watch", "--interval", "1"],
        )
        yield fleet
    finally:
        fleet.stop_all()


def _subscribe(env: dict[str, str]) -> None:
    """Staff users subscribed to the weekly report, written through the app's own code."""
    script = f"""
from core.app import create_app
from core.auth.models import User
from core.db import database
from core.testing import role_password_hash
from plugins.reporting.reports import subscriptions

app = create_app()
with app.app_context(), database.connection_context():
    for n in range({SUBSCRIBERS}):
        user = User.create(email=f"reader{{n}}@scale.test", name=f"Reader {{n}}", role="nurse",
                           status="active", password_hash=role_password_hash())
        subscriptions.create(user, {{"weekday": "monday", "time": "08:00",
                                     "timezone": "UTC", "study": None}})
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_every_role_runs_against_the_machines_own_servers(tmp_path):
    """Each Compose command line, once, against the machine's PostgreSQL, Redis and
    RabbitMQ (the test database, the test Redis database, queues of its own): events go from
    the publisher through RabbitMQ to the consumer and into PostgreSQL, a report is rendered
    by the worker through Redis, the scheduler runs, and the web reports every backend up."""
    database_url = fresh_postgresql_url()
    redis_url = service_url("redis")
    redis.Redis.from_url(redis_url).flushdb()
    suffix = secrets.token_hex(4)
    env = base_env(
        tmp_path, database_url, service_url("amqp"), redis_url, f"file://{tmp_path}/outbox"
    )
    env["CAREDECK_MEDICATIONS_EXCHANGE"] = f"test-{suffix}.medications"
    env["CAREDECK_MEDICATIONS_QUEUE"] = f"test-{suffix}.medications.events"
    fleet = Fleet(tmp_path, env, database_url)
    try:
        launch(fleet, copies=1)
        assert fleet.publish(30, batch=10, workers=1) == 30
        fleet.wait_for_events(30, seconds=60)
        answer = fleet.call("POST", "/api/report-runs", json={"week": WEEKS[0], "dry_run": True})
        assert answer.status_code == 202, answer.text
        assert fleet.wait_for_run(answer.json()[0]["id"], seconds=120)["state"] == "succeeded"
        ready = requests.get(f"http://127.0.0.1:{fleet.web_ports[0]}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        heartbeat = subprocess.run(
            [sys.executable, "-m", "core.heartbeat", str(tmp_path / "consumer-1.alive"), "30"],
            capture_output=True,
        )
        assert heartbeat.returncode == 0, heartbeat.stderr
        assert "Scheduler running" in (tmp_path / "scheduler-1.log").read_text()
        fleet.assert_alive()
    finally:
        fleet.stop_all()
        _delete_topology(env)


def _delete_topology(env: dict[str, str]) -> None:
    with kombu.Connection(env["CAREDECK_AMQP_URL"]) as connection:
        channel = connection.default_channel
        queue = env["CAREDECK_MEDICATIONS_QUEUE"]
        exchange = env["CAREDECK_MEDICATIONS_EXCHANGE"]
        for name in (queue, f"{queue}.dead"):
            with contextlib.suppress(Exception):
                channel.queue_delete(name)
        for name in (exchange, f"{exchange}.dead-letter"):
            with contextlib.suppress(Exception):
                channel.exchange_delete(name)


# The tests run in this order: each starts from the counts the previous one left. ----------


def test_two_of_each_role_at_once_lose_nothing_and_do_nothing_twice(fleet, sink):
    incoming = fleet.root / "incoming"
    ingesting_done = threading.Event()

    def ingest_continuously() -> None:
        for n in range(20):
            drop_admissions(incoming, f"pms-{n:02d}.csv", n * 50, 50)
            drop_lab_tests(incoming, f"lis-{n:02d}.csv", n * 500, 500)
            time.sleep(0.5)
        ingesting_done.set()

    ingester = threading.Thread(target=ingest_continuously)
    ingester.start()
    runs = [fleet.run_week(week) for week in WEEKS]
    accepted = fleet.publish(EVENTS)
    ingester.join()

    assert accepted == EVENTS
    fleet.wait_for_events(EVENTS)
    for run_id in runs:
        run = fleet.wait_for_run(run_id)
        assert (run["state"], run["sent"], run["failed"]) == ("succeeded", SUBSCRIBERS, 0), run
        assert fleet.ledger(run_id) == {"sent": SUBSCRIBERS}
    assert len(sink.wait_for(SUBSCRIBERS * len(WEEKS), timeout=60)) == SUBSCRIBERS * len(WEEKS)
    for week in WEEKS:
        received = sink.received(week)
        assert len(received) == SUBSCRIBERS and set(received.values()) == {1}, week

    wait_until(
        lambda: fleet.scalar("SELECT count(*) FROM monitoring_ingest_files") == 40,
        60,
        f"not every file was taken\n{fleet.logs()}",
    )
    assert fleet.rows("SELECT status, count(*) FROM monitoring_ingest_files GROUP BY status") == [
        ("applied", 40)
    ]
    assert fleet.scalar("SELECT count(*) FROM monitoring_admissions") == 1000
    assert fleet.scalar("SELECT count(*) FROM monitoring_lab_tests") == 10_000
    fleet.assert_alive()


@contextlib.contextmanager
def running_again(server):
    """Whatever the block does, the server is running when it ends."""
    try:
        yield server
    finally:
        if not server.running():
            server.start()


def test_rabbitmq_restarted_mid_stream(fleet, servers):
    before = fleet.stored_events()
    with ThreadPoolExecutor(1) as pool:
        publishing = pool.submit(fleet.publish, 20_000, 500, 2)
        wait_until(lambda: fleet.stored_events() >= before + 3_000, 120, "no events flowed")
        assert not publishing.done()  # RabbitMQ goes in the middle of the stream
        with running_again(servers["rabbitmq"]) as rabbitmq:
            rabbitmq.restart(down_seconds=2)
        assert publishing.result() == 20_000
    fleet.wait_for_events(before + 20_000)
    fleet.assert_alive()  # the consumers reconnected by themselves


def test_postgresql_restarted_mid_ingest(fleet, servers):
    files = fleet.scalar("SELECT count(*) FROM monitoring_ingest_files")
    tests = fleet.scalar("SELECT count(*) FROM monitoring_lab_tests")
    events = fleet.stored_events()
    drop_lab_tests(fleet.root / "incoming", "lis-large.csv", 100_000, 200_000)

    def ingesting() -> bool:
        return bool(
            fleet.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND pid <> pg_backend_pid() AND query ILIKE '%monitoring_lab_tests%'"
            )
        )

    wait_until(ingesting, 60, "the large file's ingestion did not start")
    with running_again(servers["postgres"]) as postgres, ThreadPoolExecutor(1) as pool:
        postgres.stop()
        publishing = pool.submit(fleet.publish, 5_000, 500, 1)  # taken while it is down
        down = requests.get(
            f"http://127.0.0.1:{fleet.web_ports[0]}/api/patients",
            headers={"Authorization": f"Bearer {fleet.token}"},
            timeout=30,
        )
        assert down.status_code == 503 and down.headers["Retry-After"] == "5", down.text
        time.sleep(3)
        postgres.start()
        assert publishing.result() == 5_000

    wait_until(
        lambda: fleet.scalar("SELECT count(*) FROM monitoring_ingest_files") == files + 1,
        180,
        f"the large file was not taken after the restart\n{fleet.logs()}",
    )
    assert fleet.scalar("SELECT count(*) FROM monitoring_lab_tests") == tests + 200_000
    assert fleet.scalar(
        "SELECT status FROM monitoring_ingest_files WHERE key LIKE %s", "%large%"
    ) == ("applied")
    fleet.wait_for_events(events + 5_000)
    for port in fleet.web_ports:  # the pools replaced their dead connections
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
    fleet.assert_alive()


def _assert_each_email_once(fleet, sink, run_id: int, week: str) -> Counter:
    """The run succeeded; nobody got the week twice; every email recorded "sent" arrived;
    an email arrived only when its row says sent or "outcome unknown"."""
    run = fleet.wait_for_run(run_id)
    ledger = fleet.ledger(run_id)
    received = sink.received(week)
    sent = {r for (r,) in fleet.rows(
        "SELECT recipient FROM reporting_deliveries WHERE run_id = %s AND state = 'sent'", run_id
    )}  # fmt: skip
    unknown = {r for (r,) in fleet.rows(
        "SELECT recipient FROM reporting_deliveries WHERE run_id = %s AND state = 'failed' "
        "AND error LIKE 'outcome unknown%%'", run_id
    )}  # fmt: skip
    assert run["state"] == "succeeded", run
    assert sum(ledger.values()) == SUBSCRIBERS and ledger["sent"] + len(unknown) == SUBSCRIBERS
    assert set(received.values()) == {1}, received
    assert sent <= set(received) <= sent | unknown
    return ledger


def test_a_worker_killed_mid_report(fleet, sink):
    week = "2026-W41"
    sink.delay = 0.5  # 2.5 s a batch of five: the kill lands in the middle of the sends
    other = fleet.processes["worker-2"]
    os.kill(other.pid, signal.SIGSTOP)  # so that the run's batches all go to worker-1
    try:
        run_id = fleet.run_week(week)
        wait_until(lambda: len(sink.received(week)) >= 3, 120, "the run did not start sending")
        fleet.kill("worker-1")
        os.kill(other.pid, signal.SIGCONT)
        ledger = _assert_each_email_once(fleet, sink, run_id, week)
    finally:
        os.kill(other.pid, signal.SIGCONT)
        sink.delay = 0
        fleet.start("worker-1", compose_argv("worker"))  # what the orchestrator does
    # The kill interrupted batches: their untried rows were sent again by worker-2, and at
    # most the one email each of the dead worker's four threads had in hand is "unknown".
    taken_over = fleet.scalar(
        "SELECT count(*) FROM reporting_deliveries WHERE run_id = %s AND attempts > 1", run_id
    )
    assert taken_over + ledger.get("failed", 0) > 0, ledger
    assert ledger.get("failed", 0) <= 4, ledger


def test_redis_unavailable_for_ten_seconds(fleet, sink, servers):
    week = "2026-W42"
    sink.delay = 0.5
    try:
        run_id = fleet.run_week(week)
        wait_until(lambda: len(sink.received(week)) >= 3, 120, "the run did not start sending")
        assert fleet.ledger(run_id)["sent"] < SUBSCRIBERS  # Redis goes while it sends
        with running_again(servers["redis"]) as redis_server:
            redis_server.restart(down_seconds=10)
        ledger = _assert_each_email_once(fleet, sink, run_id, week)
    finally:
        sink.delay = 0
    assert ledger == {"sent": SUBSCRIBERS}
    # The workers reconnected: a new run goes through from start to end.
    again = fleet.run_week("2026-W43")
    assert _assert_each_email_once(fleet, sink, again, "2026-W43") == {"sent": SUBSCRIBERS}
    fleet.assert_alive()
