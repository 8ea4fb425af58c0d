"""Benchmark of the monitoring plugin (issue 4): ingestion, worklist latency, freshness.

Generates a hospital in the real PMS/LIS file formats (100,000 patients, 100,000 admissions
of which 20,000 open, 5,000,000 lab tests and 5,000,000 results by default), then measures on
the local PostgreSQL, in a database of its own (``caredeck_bench``, dropped and created):

1. a bare ``COPY`` of the files into text staging tables (the reference rate);
2. ``plugins.monitoring.ingest.ingest_source`` of the same files (rows/s, ratio to COPY);
3. the worklist's first page and a department's first page through the HTTP API of a real
   ``caredeck serve`` (p50/p95/p99), and the bare SQL of the same pages;
4. freshness: how long a 1,000-row lab_tests file dropped into a folder watched by
   ``caredeck ingest --watch --interval 1`` takes to take its patients off the worklist.

Prints one JSON line on stdout (everything else goes to stderr) and exits 0 whether or not
the goals are met: it is a benchmark, not a test. Run from the checkout::

    .venv/bin/python bench/monitoring.py [--patients 100000] [--tests 5000000] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import hashlib
import json
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402
import requests  # noqa: E402
from _common import (  # noqa: E402
    database_name,
    drop_database,
    free_port,
    maintenance_url,
    recreate_database,
)

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # the hospital's fixed "now"
SEED = 20261122
DEMO_DATA = ROOT / "plugins" / "monitoring" / "demo_data"
PLUGIN_MODULE = "plugins.monitoring.plugin"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/caredeck_bench"
DEPARTMENT = "Cardiology"  # the department-filtered page
REQUESTS = 200
WARM_UP = 20
BUDGET_S = 60  # per timed series: fewer than REQUESTS samples when the page is that slow
FRESH_ROWS = 1000
GOALS = {
    "ingest_rows_per_s": 100_000,
    "ingest_vs_copy": 0.5,
    "p95_ms": 50.0,
    "http_vs_sql_p95": 3.0,
    "freshness_s": 5.0,
}
HEADERS = {
    "patients": "patient_id,first_name,last_name,date_of_birth,primary_physician,"
    "insurance_provider,blood_type,allergies",
    "admissions": "patient_id,hospitalization_case_number,admission_date,admission_time,"
    "release_date,release_time,department,room_number",
    "lab_tests": "test_id,patient_id,test_name,order_date,order_time,ordering_physician",
    "lab_results": "result_id,test_id,result_value,result_unit,reference_range,result_status,"
    "performed_date,performed_time,reviewing_physician",
}
FILE_NAMES = {
    "patients": "patient_information",
    "admissions": "admissions",
    "lab_tests": "lab_tests",
    "lab_results": "lab_results",
}
TABLES = tuple(HEADERS)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Generation --------------------------------------------------------------------------------


def _quoted(value: str) -> str:
    """A CSV field as the source systems write it: quoted only when it must be."""
    if any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _vocabulary() -> dict[str, list[str]]:
    """Names, physicians, departments, tests and units as the real files spell them."""
    columns: dict[str, set[str]] = {}
    for name in ("patient_information", "admissions", "lab_tests", "lab_results"):
        with open(DEMO_DATA / f"{name}.csv", newline="", encoding="utf-8") as handle:
            for record in csv.DictReader(handle):
                for key, value in record.items():
                    columns.setdefault(key, set()).add(value)

    def values(column: str) -> list[str]:
        found = {v for v in columns[column] if v and v not in ("NULL", "NA")}
        return sorted(_quoted(v) for v in found)

    physicians = sorted(
        set(values("primary_physician"))
        | set(values("ordering_physician"))
        | {"Dr. Ana Lyze", "Dr. Al Bumin", "Dr. Hema Tocrit"}
    )
    allergies = values("allergies")
    # A few patients have several allergies: quoted fields, as in the LIS's unit column.
    allergies += [_quoted("Penicillin, Latex"), _quoted("Peanuts, Shellfish, Eggs")]
    return {
        "first_names": values("first_name"),
        "last_names": values("last_name"),
        "physicians": physicians,
        "insurers": values("insurance_provider"),
        "blood_types": values("blood_type"),
        "allergies": allergies,
        "departments": values("department"),
        "tests": values("test_name"),
        "units": values("result_unit"),
    }


class Clock:
    """Seconds since ``base`` (a midnight) to the real files' text, through lookup tables."""

    def __init__(self, base: datetime.datetime, days: int):
        self.base = base
        dates = [base.date() + datetime.timedelta(days=d) for d in range(days)]
        self.mdy = [f"{d.month}/{d.day}/{d.year}" for d in dates]  # 3/20/2022
        self.iso = [d.isoformat() for d in dates]  # 2018-10-21
        self.hms12 = [
            f"{(s // 3600) % 12 or 12}:{s // 60 % 60:02d}:{s % 60:02d} "
            f"{'AM' if s < 43200 else 'PM'}"
            for s in range(86400)
        ]  # 5:20:00 AM
        self.hhmm = [f"{m // 60:02d}:{m % 60:02d}" for m in range(1440)]  # 16:08

    def seconds(self, moment: datetime.datetime) -> int:
        return int((moment - self.base).total_seconds())


def _write(path: Path, table: str, rows: list[str]) -> None:
    """CRLF lines, no final newline, like the real files; one large write."""
    with open(path, "w", encoding="utf-8", newline="", buffering=8 << 20) as handle:
        handle.write(HEADERS[table] + "\r\n" + "\r\n".join(rows))


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    step = -(-n // parts)
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def generate(folder: Path, n_patients: int, n_tests: int, seed: int = SEED) -> dict:
    """Write the hospital's files into ``folder``; return what was written."""
    rng = random.Random(seed)
    vocab = _vocabulary()
    day = 86400
    hour = 3600
    base = (NOW - datetime.timedelta(days=800)).replace(hour=0, minute=0, second=0)
    clock = Clock(base, 802)
    now = clock.seconds(NOW)
    cutoff = now - 48 * hour
    n_adm = n_patients
    n_open = n_adm // 5
    files: dict[str, list[str]] = {t: [] for t in TABLES}

    def emit(table: str, rows: list[str], parts: int) -> None:
        for number, (start, stop) in enumerate(_chunks(len(rows), parts), 1):
            path = folder / f"{FILE_NAMES[table]}_{number:02d}.csv"
            _write(path, table, rows[start:stop])
            files[table].append(path.name)

    # Patients: 7-digit MRNs, like the PMS's.
    pids = [str(p) for p in rng.sample(range(1_000_000, 10_000_000), n_patients)]
    dob_base = datetime.date(1925, 1, 1).toordinal()
    dobs = [datetime.date.fromordinal(dob_base + rng.randrange(36500)) for _ in range(n_patients)]
    choice = rng.choice
    rows = [
        f"{pid},{choice(vocab['first_names'])},{choice(vocab['last_names'])},"
        f"{d.month}/{d.day}/{d.year},"
        f"{choice(vocab['physicians']) if rng.random() > 0.13 else ''},"
        f"{choice(vocab['insurers'])},{choice(vocab['blood_types'])},"
        f"{choice(vocab['allergies'])}"
        for pid, d in zip(pids, dobs, strict=True)
    ]
    emit("patients", rows, 4)

    # Admissions: the first n_open patients are in hospital now; the others' stays are over.
    # Each admission gets ``last``: the latest moment its lab activity may reach. An open
    # admission is "recently tested" (40%): activity in the last 48 h; "young" (8%): admitted
    # under 48 h ago; otherwise its last activity is 49 h to 7 days ago, or none at all.
    departments = vocab["departments"]
    weights = [12 if d in ("Cardiology", "Internal Medicine", "Emergency Medicine") else 3
               for d in departments]  # fmt: skip
    cases = rng.sample(range(100_000, 1_000_000), n_adm)
    adm_pid: list[str] = []
    admitted: list[int] = []
    released: list[int | None] = []
    last: list[int] = []
    cap: list[int] = []  # results performed no later than this
    for i in range(n_adm):
        if i < n_open:
            adm_pid.append(pids[i])
            if rng.random() < 0.08:  # young
                start = now - rng.randrange(hour, 47 * hour)
                end = now - rng.randrange(300, max(301, (now - start) // 2))
                ceiling = now - 60
            else:
                start = now - 48 * hour - int(min(rng.expovariate(1 / (6 * day)), 120 * day))
                if rng.random() < 0.4:  # recently tested
                    end = now - rng.randrange(300, 47 * hour)
                    ceiling = now - 60
                else:
                    end = cutoff - rng.randrange(hour, 120 * hour)
                    ceiling = end
            released.append(None)
        else:
            adm_pid.append(
                pids[n_open + rng.randrange(n_patients - n_open)]
                if n_open < n_patients
                else pids[i]
            )
            start = now - rng.randrange(2 * day, 730 * day)
            stay = int(min(max(rng.lognormvariate(11.8, 0.8), 3 * hour), 90 * day))  # ~4 days
            end = min(start + stay, now - rng.randrange(600, day))
            end = max(end, start + hour)
            released.append(end - end % 60)
            ceiling = now - 60
        start -= start % 60
        admitted.append(start)
        last.append(end)
        cap.append(ceiling)
    room_of = [
        f"{rng.randrange(1, 6)}{rng.randrange(1, 21):02d}{'ABCD'[rng.randrange(4)]}"
        for _ in range(n_adm)
    ]
    dept_of = rng.choices(departments, weights=weights, k=n_adm)
    order = sorted(range(n_adm), key=admitted.__getitem__)
    mdy, iso, hms12, hhmm = clock.mdy, clock.iso, clock.hms12, clock.hhmm
    rows = []
    for i in order:
        a, r = admitted[i], released[i]
        release = "NULL,NULL" if r is None else f"{iso[r // day]},{hhmm[r % day // 60]}"
        rows.append(
            f"{adm_pid[i]},{cases[i]},{mdy[a // day]},{hms12[a % day]},{release},"
            f"{dept_of[i]},{room_of[i]}"
        )
    emit("admissions", rows, 4)

    # Lab tests: spread over the admissions in proportion to their (tested) length, each
    # admission's first draw placed at its latest activity; ids given in order time.
    cum = []
    total = 0
    for i in range(n_adm):
        total += max(0, last[i] - admitted[i] - 600)
        cum.append(total)
    adm_of = rng.choices(range(n_adm), cum_weights=cum, k=n_tests)
    rand = rng.random
    seen = bytearray(n_adm)
    ordered = [0] * n_tests
    for t, i in enumerate(adm_of):
        if seen[i]:
            o = admitted[i] + 600 + int(rand() * (last[i] - admitted[i] - 600))
        else:
            seen[i] = 1
            o = last[i]
        ordered[t] = o - o % 60
    performed = [0] * n_tests
    expo = rng.expovariate
    for t, i in enumerate(adm_of):
        o = ordered[t]
        p = o + 300 + int(expo(1 / (3 * hour)))
        if p > cap[i]:
            p = max(o, cap[i])
        if rand() < 0.0001:  # a result stamped before its order: a data-quality finding
            p = o - rng.randrange(hour, 10 * day)
        performed[t] = p
    by_time = sorted(range(n_tests), key=ordered.__getitem__)
    test_names = rng.choices(vocab["tests"], k=n_tests)
    physicians = vocab["physicians"]
    ordering = [choice(physicians) if rand() > 0.005 else "NULL" for _ in range(n_tests)]
    first_test_id = 10_000_000
    rows = [
        f"{first_test_id + k},{adm_pid[adm_of[t]]},{test_names[t]},"
        f"{mdy[ordered[t] // day]},{hms12[ordered[t] % day]},{ordering[t]}"
        for k, t in enumerate(by_time)
    ]
    emit("lab_tests", rows, max(1, n_tests // 500_000))
    del rows

    units = rng.choices(vocab["units"], k=n_tests)
    statuses = rng.choices(
        ["Normal", "Abnormal High", "Abnormal Low"], weights=[80, 10, 10], k=n_tests
    )
    reviewers = [choice(physicians) if rand() < 0.3 else "NA" for _ in range(n_tests)]
    first_result_id = 50_000_000
    rows = [
        f"{first_result_id + k},{first_test_id + k},{rand():.10f},{units[t]},NA,{statuses[t]},"
        f"{mdy[performed[t] // day]},{hms12[performed[t] % day]},{reviewers[t]}"
        for k, t in enumerate(by_time)
    ]
    emit("lab_results", rows, max(1, n_tests // 500_000))
    del rows

    counts = {
        "patients": n_patients,
        "admissions": n_adm,
        "lab_tests": n_tests,
        "lab_results": n_tests,
    }
    return {
        "rows": counts,
        "open_admissions": n_open,
        "files": files,
        "never_tested_open": sum(1 for i in range(n_open) if not seen[i]),
        "departments": len(departments),
        "next_test_id": first_test_id + n_tests,
    }


# Database ----------------------------------------------------------------------------------


def copy_baseline(url: str, folder: Path, files: dict[str, list[str]]) -> dict:
    """A bare COPY of every file into text staging tables: the rate ingestion is held to."""
    connection = psycopg2.connect(url)
    rows = 0
    try:
        with connection.cursor() as cursor:
            cursor.execute("CREATE SCHEMA bench_copy")
            for table in TABLES:
                columns = ", ".join(f"{c} text" for c in HEADERS[table].split(","))
                cursor.execute(f"CREATE TABLE bench_copy.{table} ({columns})")
            connection.commit()
            started = time.perf_counter()
            for table in TABLES:
                for name in files[table]:
                    with open(folder / name, "rb") as handle:
                        cursor.copy_expert(
                            f"COPY bench_copy.{table} FROM STDIN WITH (FORMAT csv, HEADER true)",
                            handle,
                            size=1 << 20,
                        )
                    rows += cursor.rowcount
                connection.commit()
            elapsed = time.perf_counter() - started
            cursor.execute("DROP SCHEMA bench_copy CASCADE")
            connection.commit()
    finally:
        connection.close()
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed}


# The app -----------------------------------------------------------------------------------


def app_config(url: str, instance: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "SECRET_KEY": "x" * 40,
        "INSTANCE_PATH": str(instance),
        "AMQP_URL": "memory://",
        "DRAMATIQ_URL": "stub://",
        "REDIS_URL": "memory://",
        "PLUGINS": "monitoring",
        "TIMEZONE": "UTC",
        "SECURE_COOKIES": "false",
    }


def _entry_point_installed() -> bool:
    import importlib.metadata

    return any(
        entry.name == "monitoring"
        for entry in importlib.metadata.entry_points(group="caredeck.plugins")
    )


def build_app(config: dict[str, str]):
    """The app with the monitoring plugin: from its entry point, or directly if the
    checkout is not (re)installed yet."""
    import importlib

    from core.app import create_app

    if _entry_point_installed():
        return create_app(config)
    plugin = importlib.import_module(PLUGIN_MODULE)
    return create_app(config, plugin_objects={"monitoring": plugin})


def caredeck_command(*args: str) -> list[str]:
    """``caredeck ARGS``, run through a launcher when the plugin's entry point is missing."""
    if _entry_point_installed():
        return [str(Path(sys.executable).parent / "caredeck"), *args]
    launcher = (
        "import importlib, sys\n"
        "from core import cli\n"
        "from core.app import create_app\n"
        f"plugin = importlib.import_module({PLUGIN_MODULE!r})\n"
        "cli.cli.create_app = lambda: create_app(plugin_objects={'monitoring': plugin})\n"
        "cli.main()\n"
    )
    return [sys.executable, "-c", launcher, *args]


def caredeck_env(config: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({f"CAREDECK_{key}": value for key, value in config.items()})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def prepare_database(config: dict[str, str]) -> None:
    from core.db import database, upgrade

    app = build_app(config)
    with app.app_context(), contextlib.redirect_stdout(sys.stderr):
        upgrade(app.extensions["caredeck"].migration_sources)
    with contextlib.suppress(Exception):
        database.close()


def _ingest_child(config: dict[str, str], folder: str, results) -> None:
    """In a child process (so that a runaway ingestion can be stopped): time the real thing."""
    os.dup2(2, 1)  # the ingestion's summary lines go to stderr; stdout is the JSON line
    sys.stdout = sys.stderr
    from plugins.monitoring.ingest import ingest_source

    app = build_app(config)
    per_table: dict[str, float] = {}
    mark = [0.0]

    def echo(line: str) -> None:
        """Each file's summary line ("NAME: TABLE, ..."): the time since the previous one."""
        now = time.perf_counter()
        table = line.split(": ", 1)[-1].split(",", 1)[0]
        per_table[table] = per_table.get(table, 0.0) + now - mark[0]
        mark[0] = now
        print(line, flush=True)

    with app.app_context():
        started = mark[0] = time.perf_counter()
        files = ingest_source(folder, app=app, echo=echo)
        elapsed = time.perf_counter() - started
    results.send(
        {
            "seconds": elapsed,
            "files": len(files),
            "seconds_per_table": {k: round(v, 1) for k, v in per_table.items()},
        }
    )


def run_ingest(config: dict[str, str], folder: Path, timeout: float) -> dict:
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_ingest_child, args=(config, str(folder), sender))
    child.start()
    sender.close()
    try:
        if receiver.poll(timeout):
            try:
                result = receiver.recv()
            except EOFError:
                result = {"error": f"ingestion died (exit status {child.exitcode})"}
        else:
            result = {"error": f"ingestion stopped after {timeout:.0f} s (timeout)"}
    finally:
        if child.is_alive():
            child.terminate()
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
    return result


def table_counts(url: str) -> dict:
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            counts = {}
            for key, table in (
                ("patients", "monitoring_patients"),
                ("admissions", "monitoring_admissions"),
                ("lab_tests", "monitoring_lab_tests"),
                ("lab_results", "monitoring_lab_results"),
                ("last_tests", "monitoring_last_tests"),
                ("core_patients", "core_patients"),
                ("findings", "monitoring_findings"),
                ("rejected_rows", "monitoring_rejected_rows"),
            ):
                cursor.execute(f"SELECT COUNT(*) FROM {table}")  # noqa: S608 (constant names)
                counts[key] = cursor.fetchone()[0]
            cursor.execute("SELECT status, COUNT(*) FROM monitoring_ingest_files GROUP BY status")
            counts["files"] = dict(cursor.fetchall())
        return counts
    finally:
        connection.close()


def settle(url: str) -> float:
    """VACUUM ANALYZE: what autovacuum does in the minutes after a bulk load (the benchmark
    does not wait for it, nor let it compete with the timings). Returns seconds."""
    connection = psycopg2.connect(url)
    connection.autocommit = True
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("VACUUM (ANALYZE)")
    finally:
        connection.close()
    return time.perf_counter() - started


# The worklist ------------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50": round(cuts[49], 2),
        "p95": round(cuts[94], 2),
        "p99": round(cuts[98], 2),
        "max": round(max(samples), 2),
        "n": len(samples),
    }


def _criteria(department: str | None):
    """The criteria the API builds for ``?as_of=NOW[&department=...]``."""
    from plugins.monitoring.api import criteria_from

    args = {"as_of": NOW, "hours": 48, "department": department}
    return criteria_from({key: value for key, value in args.items() if value is not None})


def worklist_sql(department: str | None, page_size: int) -> list[tuple[str, list]]:
    """The statements the API runs for a page: one, its rows with the total."""
    from plugins.monitoring import worklist

    return [worklist.page_sql(_criteria(department), limit=page_size, offset=0)]


def series(call) -> list[float]:
    """Milliseconds of REQUESTS calls after WARM_UP ones, within a time budget: a page
    slow enough to blow it gets fewer samples (at least 5), so the run stays bounded."""
    deadline = time.perf_counter() + BUDGET_S / 6  # warm-up
    for _ in range(WARM_UP):
        call()
        if time.perf_counter() > deadline:
            break
    samples: list[float] = []
    deadline = time.perf_counter() + BUDGET_S
    for _ in range(REQUESTS):
        if time.perf_counter() > deadline and len(samples) >= 5:
            break
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def time_sql(url: str, statements: list[tuple[str, list]], jit: bool = True) -> list[float]:
    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            if not jit:
                cursor.execute("SET jit = off")

            def page() -> None:
                for sql, params in statements:
                    cursor.execute(sql, params)
                    cursor.fetchall()

            return series(page)
    finally:
        connection.close()


def explain(url: str, sql: str, params: list) -> list[str]:
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            return [line for (line,) in cursor.fetchall()]
    finally:
        connection.rollback()
        connection.close()


def plan_times(plan: list[str]) -> dict:
    """Planning, JIT and execution milliseconds from an EXPLAIN ANALYZE."""
    times = {}
    for line in plan:
        text = line.strip()
        for label, key in (
            ("Planning Time:", "planning_ms"),
            ("Execution Time:", "execution_ms"),
        ):
            if text.startswith(label):
                times[key] = float(text.split()[2])
        if text.startswith("Timing:") and "Total" in text:
            times["jit_ms"] = float(text.rsplit("Total", 1)[1].split()[0])
    return times


def issue_token(config: dict[str, str]) -> str:
    from core.auth.models import ApiToken, User
    from core.db import database

    app = build_app(config)
    with app.app_context(), database.connection_context():
        user = User.create_user(
            "bench.nurse@caredeck.local",
            "bench-" + os.urandom(12).hex(),
            name="Bench Nurse",
            role="nurse",
            status="active",
        )
        secret, _record = ApiToken.issue(user, label="bench")
    return secret


def wait_for_server(base: str, process: subprocess.Popen, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"caredeck serve exited with status {process.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(base + "/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"caredeck serve did not answer /healthz within {limit:.0f} s")


def time_http(session: requests.Session, url: str, params: dict) -> tuple[list[float], dict]:
    last: list[requests.Response] = []

    def page() -> None:
        response = session.get(url, params=params, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"GET {response.url}: {response.status_code} {response.text[:300]}")
        last[:] = [response]

    samples = series(page)
    response = last[0]
    pagination = json.loads(response.headers.get("X-Pagination", "{}"))
    return samples, {"rows_on_page": len(response.json()), "total": pagination.get("total")}


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# Freshness ---------------------------------------------------------------------------------


def worklist_patients(url: str, limit: int) -> list[str]:
    """The first ``limit`` patients of the worklist, in its order."""
    sql, params = worklist_sql(None, limit)[0]
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return [row[0] for row in cursor.fetchall()]
    finally:
        connection.close()


def freshness(
    url: str,
    config: dict[str, str],
    work: Path,
    session: requests.Session,
    api: str,
    next_test_id: int,
) -> dict:
    """Seconds from a 1,000-row lab_tests file landing in a watched folder until its
    patients are off the worklist, as seen through the API."""
    patients = worklist_patients(url, FRESH_ROWS)
    watched = work / "watched"
    watched.mkdir()
    first = session.get(api, params={"as_of": NOW.isoformat(), "page_size": 1}, timeout=30)
    before = json.loads(first.headers["X-Pagination"])["total"]
    target = before - len(patients)
    ordered = NOW - datetime.timedelta(minutes=1)
    stamp = f"{ordered.month}/{ordered.day}/{ordered.year}"
    clock = (
        f"{ordered.hour % 12 or 12}:{ordered.minute:02d}:00 {'AM' if ordered.hour < 12 else 'PM'}"
    )
    lines = [
        f"{next_test_id + n},{mrn},Complete Blood Count,{stamp},{clock},Dr. Fresh Draw"
        for n, mrn in enumerate(patients)
    ]
    staged = work / "lab_tests_fresh.csv"
    _write(staged, "lab_tests", lines)

    from plugins.monitoring.cli import ingest_command  # its name: plugin commands are prefixed

    watch_log = open(work / "watch.log", "wb")
    watcher = subprocess.Popen(  # noqa: S603 (our own command line)
        caredeck_command(ingest_command.name, str(watched), "--watch", "--interval", "1"),
        env=caredeck_env(config),
        stdout=watch_log,
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    try:
        deadline = time.monotonic() + 30  # the watcher starts, then lists the empty folder
        while time.monotonic() < deadline and watcher.poll() is None:
            if (work / "watch.log").read_bytes().strip():
                break
            time.sleep(0.1)
        time.sleep(2)
        if watcher.poll() is not None:
            raise RuntimeError(
                f"caredeck ingest --watch exited with status {watcher.returncode}: "
                + (work / "watch.log").read_text(errors="replace")[-500:]
            )
        landed = time.perf_counter()
        os.replace(staged, watched / "lab_tests_fresh.csv")
        seconds = None
        polls = 0
        while time.perf_counter() - landed < 60:
            polls += 1
            response = session.get(
                api, params={"as_of": NOW.isoformat(), "page_size": 1}, timeout=30
            )
            total = json.loads(response.headers["X-Pagination"])["total"]
            if total <= target:
                seconds = time.perf_counter() - landed
                break
            time.sleep(0.1)
        page = session.get(api, params={"as_of": NOW.isoformat()}, timeout=30).json()
        still_listed = len({row["mrn"] for row in page} & set(patients))
    finally:
        stop(watcher)
        watch_log.close()
    return {
        "seconds": round(seconds, 2) if seconds is not None else None,
        "patients": len(patients),
        "worklist_before": before,
        "worklist_after": total,
        "still_on_first_page": still_listed,
        "polls": polls,
        "watch_log_tail": (work / "watch.log").read_text(errors="replace")[-300:],
    }


# The run -----------------------------------------------------------------------------------


def code_digest() -> str:
    """The monitoring plugin's source, hashed: a run whose code changed midway says so."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "plugins" / "monitoring").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def machine(url: str) -> dict:
    memory = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    version = ""
    with contextlib.suppress(psycopg2.Error):
        connection = psycopg2.connect(url)
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            version = cursor.fetchone()[0]
        connection.close()
    return {
        "nproc": os.cpu_count(),
        "ram_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "postgresql": version,
        "platform": platform.platform(),
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=100_000, help="also the admissions")
    parser.add_argument("--tests", type=int, default=5_000_000, help="also the results")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--ingest-timeout", type=float, default=600, help="give up on ingestion after (s)"
    )
    options = parser.parse_args(argv)
    url = options.database_url
    database_name(url)
    figures: dict = {
        "benchmark": "monitoring",
        "date": datetime.datetime.now(UTC).isoformat(timespec="seconds"),
        "now": NOW.isoformat(),
        "seed": SEED,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],  # other work on the machine
        "plugin_code": code_digest(),
    }
    work = Path(tempfile.mkdtemp(prefix="caredeck-bench-"))
    server = None
    server_log = None
    plans = None
    try:
        folder = work / "hospital"
        folder.mkdir()
        log(f"Generating {options.patients:,} patients and {options.tests:,} tests in {folder}")
        started = time.perf_counter()
        generated = generate(folder, options.patients, options.tests)
        figures["generate_s"] = round(time.perf_counter() - started, 1)
        figures["rows"] = dict(generated["rows"], total=sum(generated["rows"].values()))
        figures["open_admissions"] = generated["open_admissions"]
        figures["departments"] = generated["departments"]
        figures["files"] = {table: len(names) for table, names in generated["files"].items()}
        figures["csv_mib"] = round(sum(p.stat().st_size for p in folder.iterdir()) / 2**20)
        log(f"  {figures['generate_s']} s, {figures['csv_mib']} MiB")

        recreate_database(url)
        log("COPY into text staging tables")
        copied = copy_baseline(url, folder, generated["files"])
        figures["copy_s"] = round(copied["seconds"], 1)
        figures["copy_rows_per_s"] = round(copied["rows_per_s"])
        log(f"  {copied['rows']:,} rows in {copied['seconds']:.1f} s")

        config = app_config(url, work / "instance")
        prepare_database(config)
        log("Ingesting with plugins.monitoring.ingest.ingest_source")
        ingested = run_ingest(config, folder, options.ingest_timeout)
        if "seconds" in ingested:
            rate = figures["rows"]["total"] / ingested["seconds"]
            figures["ingest_s"] = round(ingested["seconds"], 1)
            figures["ingest_rows_per_s"] = round(rate)
            figures["ingest_vs_copy"] = round(rate / copied["rows_per_s"], 2)
            figures["ingest_s_per_table"] = ingested["seconds_per_table"]
            log(f"  {ingested['seconds']:.1f} s")
        else:
            figures["ingest_error"] = ingested["error"]
            log(f"  {ingested['error']}")
        figures["ingested"] = table_counts(url)
        figures["vacuum_analyze_s"] = round(settle(url), 1)

        statements = {}
        token = issue_token(config)
        port = free_port()
        server_log = open(work / "serve.log", "wb")
        server = subprocess.Popen(  # noqa: S603 (our own command line)
            caredeck_command("serve", "--port", str(port)),
            env=caredeck_env(config),
            stdout=server_log,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_server(base, server)
        except RuntimeError as error:
            tail = (work / "serve.log").read_text(errors="replace")[-800:]
            raise RuntimeError(f"{error}; it said: {tail}") from None
        api = base + "/api/monitoring/worklist"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        pages = {"first_page": {}, "department_page": {"department": DEPARTMENT}}
        figures["department"] = DEPARTMENT
        figures["worklist"] = {}
        for name, extra in pages.items():
            log(f"Worklist {name}: {REQUESTS} HTTP requests, then the bare SQL")
            http, seen = time_http(session, api, {"as_of": NOW.isoformat(), **extra})
            # The same page bare: the API's default page size, as many rows as it answered.
            statements[name] = worklist_sql(extra.get("department"), seen["rows_on_page"])
            sql = time_sql(url, statements[name])
            entry = {"http_ms": percentiles(http), "sql_ms": percentiles(sql), **seen}
            entry["http_vs_sql_p95"] = round(entry["http_ms"]["p95"] / entry["sql_ms"]["p95"], 2)
            # Diagnostic, not a goal: the same SQL with PostgreSQL's JIT compiler off.
            entry["sql_ms_jit_off"] = percentiles(time_sql(url, statements[name], jit=False))
            figures["worklist"][name] = entry
            log(f"  HTTP {entry['http_ms']}  SQL {entry['sql_ms']}  rows {seen}")
        page_sql, page_params = statements["first_page"][0]
        plans = {"page": explain(url, page_sql, page_params)}
        figures["explain_first_page"] = {name: plan_times(plan) for name, plan in plans.items()}

        log("Freshness: a 1,000-row lab_tests file into a folder under ingest --watch")
        fresh = freshness(url, config, work, session, api, generated["next_test_id"])
        figures["freshness_s"] = fresh.pop("seconds")
        figures["freshness"] = {k: v for k, v in fresh.items() if k != "watch_log_tail"}
        if figures["freshness_s"] is None:
            log("  not seen within 60 s; the watcher said: " + fresh["watch_log_tail"])
    except Exception as error:  # a benchmark reports what it could measure
        figures["error"] = f"{type(error).__name__}: {error}"
        log(f"Stopped: {figures['error']}")
    finally:
        stop(server)
        if server_log:
            server_log.close()
        if not options.keep:
            with contextlib.suppress(psycopg2.Error):
                drop_database(url)
        shutil.rmtree(work, ignore_errors=True)

    figures["machine"] = machine(maintenance_url(url))
    if code_digest() != figures["plugin_code"]:
        figures["plugin_code_changed_during_run"] = True
    figures["goals"] = goals(figures)
    print(json.dumps(figures, separators=(",", ":")), flush=True)
    summary(figures, plans)
    return 0


def goals(figures: dict) -> dict:
    """Each goal: met (true/false), or null when it could not be measured."""

    def worst(key: str) -> float | None:
        pages = figures.get("worklist") or {}
        values = [page[key]["p95"] if key == "http_ms" else page[key] for page in pages.values()]
        return max(values) if len(values) == 2 else None

    measured = {
        "ingest_rows_per_s": figures.get("ingest_rows_per_s"),
        "ingest_vs_copy": figures.get("ingest_vs_copy"),
        "p95_ms": worst("http_ms"),
        "http_vs_sql_p95": worst("http_vs_sql_p95"),
        "freshness_s": figures.get("freshness_s"),
    }
    result = {}
    for key, goal in GOALS.items():
        value = measured[key]
        at_least = key in ("ingest_rows_per_s", "ingest_vs_copy")
        met = None if value is None else (value >= goal if at_least else value <= goal)
        if key == "p95_ms" and value is not None:
            met = value < goal
        result[key] = {"goal": goal, "measured": value, "met": met}
    return result


def summary(figures: dict, plans: dict | None) -> None:
    log("")
    log(f"Monitoring benchmark, {figures['date']} ({figures['machine']['nproc']} cores)")
    rows = figures.get("rows", {})
    if rows:
        log(f"  data: {rows['total']:,} rows generated in {figures['generate_s']} s")
    if "copy_rows_per_s" in figures:
        log(f"  COPY: {figures['copy_rows_per_s']:,} rows/s")
    if "ingest_rows_per_s" in figures:
        log(
            f"  ingest: {figures['ingest_rows_per_s']:,} rows/s "
            f"({figures['ingest_vs_copy']} x COPY) in {figures['ingest_s']} s"
        )
    for name, page in (figures.get("worklist") or {}).items():
        http, sql = page["http_ms"], page["sql_ms"]
        log(
            f"  {name}: HTTP p50/p95/p99 {http['p50']}/{http['p95']}/{http['p99']} ms, "
            f"SQL p95 {sql['p95']} ms ({page['http_vs_sql_p95']} x; with jit off "
            f"{page['sql_ms_jit_off']['p95']} ms), {page['total']} listed"
        )
    if "freshness_s" in figures:
        log(f"  freshness: {figures['freshness_s']} s")
    for key, goal in figures["goals"].items():
        verdict = {True: "met", False: "MISSED", None: "not measured"}[goal["met"]]
        log(f"  goal {key} {goal['goal']}: {goal['measured']} {verdict}")
    if plans:
        for name, plan in plans.items():
            log(f"  EXPLAIN (ANALYZE, BUFFERS) of the first page's {name} (top lines):")
            tail = next((i for i, line in enumerate(plan) if line.startswith("Planning")), -1)
            for line in plan[:10] + ["    ..."] + plan[tail:]:
                log("    " + line)


if __name__ == "__main__":
    sys.exit(main())
