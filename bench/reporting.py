"""Benchmark of the weekly reports end to end (issue 7): one week rendered once and mailed
to 10,000 subscribers by two ``caredeck worker`` processes, on the real servers.

In a database of its own (``caredeck_bench_reporting``, dropped and created) and a file
store in a temporary folder, it generates with ``bench/reporting_render.py``'s generator the
week 2026-W47 (Europe/Berlin): ``--documents`` new documents, ``--images`` of them images,
plus updated, deleted and older ones; then ``--subscribers`` users, each subscribed to the
all-studies report (one scope). A local SMTP sink (aiosmtpd, in a process of its own) counts
what it accepts and keeps nothing; two ``caredeck worker`` processes take the jobs from
Redis. Then, as ``POST /api/report-runs`` does, the week's run is created, its ledger
filled and its render job queued, and the benchmark waits until the run has finished:

- the PDF: rendered once (the run's render attempts and the store's PDFs), in how long;
- the emails: how many the sink accepted, and at what rate (first to last accepted, and
  from the run's start);
- a second run of the same week: how many more emails (the goal: none).

Prints one JSON line on stdout (progress on stderr); a benchmark, not a test: exit status 0
whatever the figures. Run from the checkout::

    .venv/bin/python bench/reporting.py [--documents 10000] [--images 500] [--subscribers 10000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import reporting_render  # noqa: E402 (the week's documents, as the render benchmark makes them)
from _common import database_name, free_port, recreate_database  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/caredeck_bench_reporting"
REDIS_URL = "redis://127.0.0.1:6379/9"
WEEK = reporting_render.WEEK
WORKERS = 2
WORKER_THREADS = 4
GOALS = {"render_s": 60.0, "emails_per_s": 200.0, "second_run_emails": 0}
RUN_LIMIT_S = 900


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sink(port: int, accepted, first, last, ready) -> None:
    """An SMTP server that accepts every message and keeps only the count and the times."""
    import asyncio

    from aiosmtpd.controller import Controller

    class Count:
        async def handle_DATA(self, server, session, envelope):
            now = time.time()
            with accepted.get_lock():
                if accepted.value == 0:
                    first.value = now
                accepted.value += 1
                last.value = now
            return "250 Message accepted for delivery"

    controller = Controller(Count(), hostname="127.0.0.1", port=port, data_size_limit=None)
    controller.start()
    ready.set()
    asyncio.run(asyncio.sleep(10**6))


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def postgresql_cpu() -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    total += cpu_seconds(int(entry.name))
            except OSError:
                continue
    return total


def settings(url: str, work: Path, smtp_port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "DRAMATIQ_URL": REDIS_URL,
        "REDIS_URL": "memory://",
        "AMQP_URL": "memory://",
        "SMTP_URL": f"smtp://127.0.0.1:{smtp_port}?starttls=disable",
        "STORAGE_URL": f"file://{work}/files",
        "INSTANCE_PATH": str(work / "instance"),
        "SECRET_KEY": "bench-secret-key-that-is-long-enough-0123456789",
        "TIMEZONE": str(reporting_render.ZONE),
        "PLUGINS": "reporting",
        "LOG_LEVEL": "WARNING",
    }


def subscribe(count: int) -> None:
    """``count`` active nurses, each subscribed to the all-studies report."""
    from core.auth.models import User
    from core.db import database, utcnow
    from plugins.reporting.reports.models import Subscription

    now = utcnow()
    with database.atomic():
        for start in range(0, count, 1000):
            User.insert_many(
                [
                    {
                        "email": f"subscriber{n:06d}@bench.example.org",
                        "name": f"Subscriber {n}",
                        "role": "nurse",
                        "status": "active",
                        "password_hash": "!bench: no password",
                        "created_at": now,
                    }
                    for n in range(start, min(count, start + 1000))
                ]
            ).execute()
        users = [user.id for user in User.select(User.id).where(User.role == "nurse")]
        for start in range(0, len(users), 1000):
            Subscription.insert_many(
                [
                    {
                        "user": user,
                        "weekday": 0,
                        "time": "08:00",
                        "timezone": "Europe/Berlin",
                        "study": None,
                        "scope": "*",
                        "created_at": now,
                        "next_due_at": now + datetime.timedelta(days=7),
                    }
                    for user in users[start : start + 1000]
                ]
            ).execute()


def start_run() -> int:
    """What ``POST /api/report-runs {"week": WEEK}`` does for the all-studies scope."""
    from plugins.reporting.reports import pipeline

    run = pipeline.ensure_run(None, WEEK)
    pipeline.add_all_recipients(run)
    pipeline.kick(run.id)
    return run.id


def wait_for_run(run_id: int, accepted, limit: float = RUN_LIMIT_S) -> dict:
    from core.db import database
    from plugins.reporting.reports.models import ReportRun

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with database.connection_context():
            run = ReportRun.get_by_id(run_id)
        if run.state in ("succeeded", "failed"):
            return {
                "state": run.state,
                "render_attempts": run.render_attempts,
                "started_at": run.started_at,
                "rendered_at": run.rendered_at,
                "finished_at": run.finished_at,
                "error": run.error,
            }
        time.sleep(0.25)
    raise RuntimeError(f"run {run_id} did not finish within {limit} s (sink: {accepted.value})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument(
        "--attachment-max-bytes",
        type=int,
        help="REPORTING_ATTACHMENT_MAX_BYTES: a larger PDF is sent as a link instead",
    )
    options = parser.parse_args(argv)
    url = options.database_url
    database_name(url)
    work = Path(tempfile.mkdtemp(prefix="caredeck-bench-reporting-"))
    context = multiprocessing.get_context("spawn")
    accepted, first, last = context.Value("l", 0), context.Value("d", 0.0), context.Value("d", 0.0)
    ready = context.Event()
    port = free_port()
    smtp = context.Process(target=sink, args=(port, accepted, first, last, ready), daemon=True)
    smtp.start()
    ready.wait(30)
    config = settings(url, work, port)
    if options.attachment_max_bytes is not None:
        config["REPORTING_ATTACHMENT_MAX_BYTES"] = str(options.attachment_max_bytes)
    workers: list[subprocess.Popen] = []
    figures: dict = {
        "benchmark": "reporting",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "documents": options.documents,
        "images": options.images,
        "subscribers": options.subscribers,
        "attachment_max_bytes": options.attachment_max_bytes,
        "workers": f"{WORKERS} x caredeck worker --threads {WORKER_THREADS}",
    }
    try:
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()  # no jobs left from an earlier run
        recreate_database(url)
        from core import db
        from core.app import create_app
        from core.db import database

        app = create_app(dict(config))
        db.upgrade(app.extensions["caredeck"].migration_sources)
        with app.app_context(), database.connection_context():
            clock = time.perf_counter()
            made = reporting_render.generate(app, options.documents, options.images)
            figures["generate_s"] = round(time.perf_counter() - clock, 1)
            figures["files_mb"] = round(made["files_bytes"] / 1e6)
            subscribe(options.subscribers)
        log(f"generated in {figures['generate_s']} s; {options.subscribers:,} subscribers")

        environment = {**os.environ, **{f"CAREDECK_{k}": v for k, v in config.items()}}
        for _ in range(WORKERS):
            workers.append(
                subprocess.Popen(  # noqa: S603 (our own command line)
                    [sys.executable, "-m", "core", "worker", "--threads", str(WORKER_THREADS)],
                    env=environment,
                    cwd=work,
                    stdout=sys.stderr,  # stdout is the one JSON line
                )
            )
        time.sleep(3)  # the workers connect to Redis

        for label in ("first_run", "second_run"):
            before = accepted.value
            cpu = {"sink": cpu_seconds(smtp.pid), "postgresql": postgresql_cpu()}
            cpu.update({f"worker_{n}": cpu_seconds(w.pid) for n, w in enumerate(workers)})
            clock = time.time()
            with app.app_context(), database.connection_context():
                run_id = start_run()
            with app.app_context():
                run = wait_for_run(run_id, accepted)
            time.sleep(2)  # anything still in flight reaches the sink
            sent = accepted.value - before
            cpu_after = {"sink": cpu_seconds(smtp.pid), "postgresql": postgresql_cpu()}
            cpu_after.update({f"worker_{n}": cpu_seconds(w.pid) for n, w in enumerate(workers)})
            result = {
                "run": run_id,
                "state": run["state"],
                "error": run["error"],
                "render_attempts": run["render_attempts"],
                "emails": sent,
                "wall_s": round(time.time() - clock, 1),
                "cpu_s": {name: round(cpu_after[name] - cpu[name], 1) for name in cpu},
            }
            if run["rendered_at"] and run["started_at"]:
                rendering = run["rendered_at"] - run["started_at"]
                result["render_s"] = round(rendering.total_seconds(), 1)
            if sent:
                span = last.value - first.value if before == 0 else None
                result["emails_first_to_last_s"] = span and round(span, 1)
                result["emails_per_s"] = span and round(sent / span)
                result["emails_per_s_from_start"] = round(sent / (last.value - clock))
            figures[label] = result
            log(f"{label}: {result}")
        with app.app_context(), database.connection_context():
            from plugins.reporting.reports.models import Delivery

            figures["ledger"] = {
                state: Delivery.select().where(Delivery.state == state).count()
                for state in ("pending", "claimed", "sending", "sent", "failed", "suppressed")
            }
        first_run = figures["first_run"]
        figures["goals"] = {
            "render_s": {
                "goal": GOALS["render_s"],
                "measured": first_run.get("render_s"),
                "met": first_run.get("render_attempts") == 1
                and (first_run.get("render_s") or 1e9) < GOALS["render_s"],
            },
            "emails_per_s": {
                "goal": GOALS["emails_per_s"],
                "measured": first_run.get("emails_per_s"),
                "met": first_run["emails"] == options.subscribers
                and (first_run.get("emails_per_s") or 0) >= GOALS["emails_per_s"],
            },
            "second_run_emails": {
                "goal": 0,
                "measured": figures["second_run"]["emails"],
                "met": figures["second_run"]["emails"] == 0,
            },
        }
        figures["machine"] = {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
        smtp.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
