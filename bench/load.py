"""Load test (issue 9): wrk against the production web server (gunicorn with
deploy/gunicorn.conf.py) on the worklist and the medication-periods API, 60 s each.

A hospital is generated into its own PostgreSQL database (``--patients`` patients and
admissions, ``--tests`` lab tests and results, ingested by the product; ``--events``
medication events stored by the consumer's own code), then wrk (Debian's ``wrk``) sends
requests with a nurse's bearer token from ``--connections`` connections: the worklist's
first pages (all departments and per department), then the periods of random patients.
Every request is a real one: token lookup, role check, the query, the audit row.

Prints one JSON line: requests per second, latency percentiles, and every error (socket
errors and non-2xx answers) per endpoint. The goal is no error at all.

    .venv/bin/python bench/load.py [--duration 60] [--connections 16]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import medications as medications_bench  # noqa: E402
import monitoring as monitoring_bench  # noqa: E402
from _common import drop_database, free_port, recreate_database  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/caredeck_bench_load"
DEPARTMENTS = ["Cardiology", "Neurology", "Oncology", "Pediatrics", "Orthopedics"]

# wrk's script: each request takes the next path of the list; the summary is one JSON line.
WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("LOAD_PATHS")) do paths[#paths + 1] = line end
local token = os.getenv("LOAD_TOKEN")
local n = 0
request = function()
  n = n + 1
  local path = paths[(n % #paths) + 1]
  return wrk.format("GET", path, {["Authorization"] = "Bearer " .. token})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"bytes":%d,"errors":{"connect":%d,"read":%d,'
    .. '"write":%d,"status":%d,"timeout":%d},"latency_ms":{"p50":%.2f,"p90":%.2f,'
    .. '"p99":%.2f,"max":%.2f,"mean":%.2f}}\\n',
    summary.requests, summary.duration / 1e6, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3, latency.mean / 1e3))
end
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def config_for(url: str, instance: Path) -> dict[str, str]:
    config = monitoring_bench.app_config(url, instance)
    config.update({"PLUGINS": "monitoring,medications", "LOG_LEVEL": "WARNING"})
    return config


def store_events(config: dict[str, str], count: int, patients: int) -> list[str]:
    """``count`` generated events stored as the consumer stores them; their MRNs."""
    from core.db import database
    from plugins.medications import bus

    generated = medications_bench.generate(count, patients, n_heavy=2)
    events = medications_bench.parse_all(generated["messages"])
    app = monitoring_bench.build_app(config)
    with app.app_context(), database.connection_context():
        for start in range(0, len(events), 500):
            with database.atomic():
                bus.store(events[start : start + 500])
    return sorted({event.patient_id for event in events})


def wrk(base: str, paths: list[str], token: str, args, work: Path, name: str) -> dict:
    listing = work / f"{name}.paths"
    listing.write_text("\n".join(paths) + "\n")
    script = work / "load.lua"
    script.write_text(WRK_SCRIPT)
    done = subprocess.run(  # noqa: S603 (our own command line)
        [
            shutil.which("wrk"),
            f"--threads={args.threads}",
            f"--connections={args.connections}",
            f"--duration={args.duration}s",
            "--timeout=10s",
            f"--script={script}",
            base,
        ],
        env={**os.environ, "LOAD_PATHS": str(listing), "LOAD_TOKEN": token},
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["requests_per_s"] = round(figures["requests"] / figures["seconds"], 1)
    figures["error_rate"] = round(sum(figures["errors"].values()) / max(figures["requests"], 1), 6)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20_000, help="also the admissions")
    parser.add_argument("--tests", type=int, default=500_000, help="also the results")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--duration", type=int, default=60, help="seconds per endpoint")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk's threads")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")

    work = Path(tempfile.mkdtemp(prefix="caredeck-load-"))
    config = config_for(args.database_url, work / "instance")
    server = None
    try:
        recreate_database(args.database_url, "load")
        monitoring_bench.prepare_database(config)
        log(f"generating {args.patients} patients and {args.tests} lab tests")
        (work / "csv").mkdir()
        monitoring_bench.generate(work / "csv", args.patients, args.tests)
        ingest = monitoring_bench.run_ingest(config, work / "csv", timeout=1800)
        if "error" in ingest:
            raise SystemExit(ingest["error"])
        log(f"storing {args.events} medication events")
        mrns = store_events(config, args.events, patients=max(args.events // 20, 1))
        monitoring_bench.settle(args.database_url)
        token = monitoring_bench.issue_token(config)

        port = free_port()
        server = subprocess.Popen(  # noqa: S603 (our own command line)
            [str(Path(sys.executable).parent / "gunicorn"), "--config"]
            + [str(ROOT / "deploy/gunicorn.conf.py"), "wsgi:app"],
            cwd=ROOT,
            env={
                **monitoring_bench.caredeck_env(config),
                "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}",
            },
        )
        base = f"http://127.0.0.1:{port}"
        monitoring_bench.wait_for_server(base, server)

        rng = random.Random(monitoring_bench.SEED)
        worklist = ["/api/monitoring/worklist?as_of=2026-11-20T12:00:00%2B00:00"]
        worklist += [f"{worklist[0]}&department={d}" for d in DEPARTMENTS]
        worklist += [f"{worklist[0]}&page=2", f"{worklist[0]}&sort=hours_admitted"]
        periods = [f"/api/patients/{mrn}/medication-periods" for mrn in rng.sample(mrns, 500)]

        figures = {
            "benchmark": "load",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "data": {"patients": args.patients, "lab_tests": args.tests, "events": args.events},
            "ingest_s": round(ingest["seconds"], 1),
            "server": "gunicorn deploy/gunicorn.conf.py (WEB_CONCURRENCY 2, GUNICORN_THREADS 4)",
            "wrk": {"connections": args.connections, "threads": args.threads},
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        }
        for name, paths in (("worklist", worklist), ("medication_periods", periods)):
            log(f"wrk on {name} for {args.duration} s")
            figures[name] = wrk(base, paths, token, args, work, name)
        figures["machine"] = {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }
        figures["goals"] = {
            name: {"goal": "no errors", "errors": sum(figures[name]["errors"].values())}
            for name in ("worklist", "medication_periods")
        }
        print(json.dumps(figures, separators=(",", ":")))
        return 0 if all(goal["errors"] == 0 for goal in figures["goals"].values()) else 1
    finally:
        monitoring_bench.stop(server)
        with contextlib.suppress(Exception):
            drop_database(args.database_url, "load")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
