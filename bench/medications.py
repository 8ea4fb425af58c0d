"""Benchmark of the medications plugin (issue 5): publish, consume-and-store, periods.

Generates 200,000 valid medication events for 10,000 patients (several medications each,
start/stop pairs, a few cancels, about 1% redelivered duplicates sharing an ``event_id``,
some late arrivals) plus one patient with 10,000 events, with a fixed seed. Then, against the
local RabbitMQ and PostgreSQL, in a database (``caredeck_bench_medications``, dropped and
created) and an exchange and queues of its own (deleted at the end):

1. publishes the 200,000 through the product's publisher (``plugins.medications.bus.publish``,
   publisher confirms): events/s;
2. with all of them waiting in the queue, starts one ``caredeck consume`` and polls
   ``count(*)`` until every distinct event is stored: events/s; then empties the table,
   refills the queue and does the same with two consumer processes; each consumer is
   stopped with SIGTERM and must exit with status 0;
3. a bare Kombu consume-and-ack loop (no database) on the same queue with the consumer's
   prefetch, over the same 200,000 messages, acknowledging each message as the consumer
   does: the limit the stored rate is compared with; then the same loop with one
   ``multiple`` acknowledgement per batch, for comparison;
4. the periods of the 10,000-event patient: ``medication_history`` in-process (and its
   parts: the rows from the cursor, ``derive``, the response schema's dump, the JSON), and
   ``GET /api/patients/<mrn>/medication-periods`` through the app's test client and through
   a real ``caredeck serve`` (p50/p95; the goal is judged on the latter).

CPU seconds of the consumers, PostgreSQL and RabbitMQ are recorded per phase, so the figures
say which side was busy. Before each timed phase it waits while another ``bench/`` script
runs, and a watcher notes any that starts during a phase (``disturbed_by``); the short
phases (bare loops, periods) are then measured again, up to twice.

Prints one JSON line on stdout (progress and a summary go to stderr) and exits 0 whether or
not the goals are met: it is a benchmark, not a test. Run from the checkout::

    .venv/bin/python bench/medications.py [--events 200000] [--patients 10000] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import hashlib
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import kombu  # noqa: E402
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
SEED = 20261122
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/caredeck_bench_medications"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
HEAVY_MRN = "9000001"  # the patient with 10,000 events (the others are below 9,000,000)
BASE = datetime.datetime(2026, 8, 1, tzinfo=UTC)  # the events span the 90 days after it
SPAN_DAYS = 90
DUPLICATES = 0.01  # share of the messages that redeliver an earlier event (same event_id)
POLL_S = 0.2  # how often the stored count is read
PHASE_LIMIT_S = 240  # a consumer phase that has not stored everything by then gives up
RUNS = 50
WARM_UP = 5
GOALS = {"stored_per_s_1": 5000, "stored_vs_bare": 1 / 3, "periods_ms": 50.0}
CODE = [
    "plugins/medications/bus.py",
    "plugins/medications/events.py",
    "plugins/medications/history.py",
    "plugins/medications/periods.py",
    "plugins/medications/api.py",
    "plugins/medications/models.py",
    "core/messaging.py",
    "core/db.py",
    "core/cli.py",
]
MEDICATIONS = [
    "Heparin",
    "Enoxaparin",
    "Ceftriaxone",
    "Piperacillin/Tazobactam",
    "Vancomycin",
    "Meropenem",
    "Amoxicillin",
    "Morphine",
    "Fentanyl",
    "Paracetamol",
    "Ibuprofen",
    "Ondansetron",
    "Pantoprazole",
    "Insulin glargine",
    "Insulin aspart",
    "Metoprolol",
    "Furosemide",
    "Norepinephrine",
    "Propofol",
    "Midazolam",
    "Dexamethasone",
    "Prednisolone",
    "Potassium chloride",
    "Magnesium sulfate",
    "Amiodarone",
    "Warfarin",
    "Atorvastatin",
    "Levetiracetam",
    "Salbutamol",
    "Sodium chloride 0.9%",
]
WARDS = ["3B", "4A", "ICU-1", "ICU-2", "ER", "5C", "Cardiology", "Oncology"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Generation --------------------------------------------------------------------------------


class Generator:
    """Events as hospital systems send them: mostly ``patient_id``/``medication`` with a
    ``+00:00`` offset and a producer id; some in the older spelling, with ``+0000``, without
    an id, or with extra fields."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.counter = 0

    def event(self, mrn: str, medication: str, action: str, moment: datetime.datetime) -> dict:
        rng = self.rng
        self.counter += 1
        moment = moment.replace(microsecond=0)
        if rng.random() < 0.1:
            when = moment.strftime("%Y-%m-%dT%H:%M:%S+0000")
        else:
            when = moment.isoformat()
        if rng.random() < 0.05:
            body = {"p_id": mrn, "medication_name": medication}
        else:
            body = {"patient_id": mrn, "medication": medication}
        body.update(action=action, event_time=when)
        if rng.random() < 0.95:
            body["event_id"] = f"mar-{self.counter:09d}"
        if rng.random() < 0.2:
            body["ward"] = rng.choice(WARDS)
        return body

    def patient(
        self, mrn: str, count: int, admitted: datetime.datetime, medications: list[str]
    ) -> list[tuple[datetime.datetime, dict]]:
        """``count`` events: the medications in turn, each a start then (mostly) a stop, with
        an occasional cancel; the last period of a medication may stay open."""
        rng = self.rng
        cursor = {m: admitted + datetime.timedelta(hours=rng.uniform(0, 12)) for m in medications}
        out: list[tuple[datetime.datetime, dict]] = []
        turn = 0
        while len(out) < count:
            medication = medications[turn % len(medications)]
            turn += 1
            start = cursor[medication]
            out.append((start, self.event(mrn, medication, "start", start)))
            if rng.random() < 0.015:  # given by mistake: the start is cancelled
                cancel = start + datetime.timedelta(minutes=rng.uniform(1, 30))
                out.append((cancel, self.event(mrn, medication, "cancel_start", cancel)))
                cursor[medication] = cancel + datetime.timedelta(hours=rng.uniform(1, 12))
                continue
            stop = start + datetime.timedelta(hours=rng.uniform(0.5, 72))
            out.append((stop, self.event(mrn, medication, "stop", stop)))
            if rng.random() < 0.01:  # a stop recorded by mistake: cancelled later
                cancel = stop + datetime.timedelta(minutes=rng.uniform(1, 60))
                out.append((cancel, self.event(mrn, medication, "cancel_stop", cancel)))
            cursor[medication] = stop + datetime.timedelta(hours=rng.uniform(1, 48))
        return out[:count]


def generate(n_events: int, n_patients: int, n_heavy: int, seed: int = SEED) -> dict:
    """The messages in arrival order, and the heavy patient's events.

    ``n_events`` messages in all, of which about 1% redeliver an earlier event (same body,
    same ``event_id``). Arrival follows event time, except that 5% arrive up to 6 hours late
    (so a stop can arrive before its start).
    """
    gen = Generator(seed)
    rng = gen.rng
    n_duplicates = round(n_events * DUPLICATES)
    distinct = n_events - n_duplicates
    mrns = [str(m) for m in rng.sample(range(1_000_000, 9_000_000), n_patients)]
    quotas = [rng.randint(8, 32) for _ in range(n_patients)]
    # Adjust the quotas (each at least 2) so that they add up to ``distinct`` exactly.
    while (gap := distinct - sum(quotas)) != 0:
        i = rng.randrange(n_patients)
        step = 1 if gap > 0 else -1
        if quotas[i] + step >= 2:
            quotas[i] += step
    timed: list[tuple[datetime.datetime, dict]] = []
    for mrn, quota in zip(mrns, quotas, strict=True):
        admitted = BASE + datetime.timedelta(days=rng.uniform(0, SPAN_DAYS - 10))
        k = min(len(MEDICATIONS), max(1, quota // 5 + rng.randint(0, 1)))
        timed.extend(gen.patient(mrn, quota, admitted, rng.sample(MEDICATIONS, k)))
    arrival = []
    for moment, body in timed:
        late = datetime.timedelta(hours=rng.uniform(0, 6)) if rng.random() < 0.05 else None
        arrival.append((moment + late if late else moment, body))
    with_id = [i for i, (_, body) in enumerate(arrival) if "event_id" in body]
    for i in rng.sample(with_id, n_duplicates):
        moment, body = arrival[i]
        arrival.append((moment + datetime.timedelta(minutes=rng.uniform(1, 600)), dict(body)))
    arrival.sort(key=lambda item: item[0])
    heavy_admitted = BASE - datetime.timedelta(days=700)
    heavy = gen.patient(HEAVY_MRN, n_heavy, heavy_admitted, MEDICATIONS[:12])
    return {
        "messages": [body for _, body in arrival],
        "heavy": [body for _, body in heavy],
        "patients": n_patients,
        "duplicates": n_duplicates,
    }


def parse_all(bodies: list[dict]) -> list:
    """The product's validation of each body (all must be valid)."""
    from plugins.medications.events import parse

    return [parse(body) for body in bodies]


# Database ----------------------------------------------------------------------------------


def sql(url: str, statement: str, params=None) -> list[tuple]:
    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


# The app and its commands ------------------------------------------------------------------


def app_config(url: str, instance: Path, exchange: str, queue: str) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "SECRET_KEY": "x" * 40,
        "INSTANCE_PATH": str(instance),
        "AMQP_URL": AMQP_URL,
        "DRAMATIQ_URL": "stub://",
        "REDIS_URL": "memory://",
        "PLUGINS": "medications",
        "MEDICATIONS_EXCHANGE": exchange,
        "MEDICATIONS_QUEUE": queue,
        "TIMEZONE": "UTC",
        "SECURE_COOKIES": "false",
        "LOG_LEVEL": "WARNING",
    }


def build_app(config: dict[str, str]):
    from core.app import create_app

    return create_app(config)


def caredeck_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "caredeck"), *args]


def caredeck_env(config: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({f"CAREDECK_{key}": value for key, value in config.items()})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def upgrade(config: dict[str, str], work: Path) -> str:
    done = subprocess.run(  # noqa: S603 (our own command line)
        caredeck_command("db", "upgrade"),
        env=caredeck_env(config),
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"caredeck db upgrade failed: {done.stderr[-800:]}")
    return done.stdout.strip().splitlines()[-1]


# The bus -----------------------------------------------------------------------------------


def queue_depth(queue: kombu.Queue) -> int:
    """Messages ready in ``queue`` (passive declare: the management API may be off)."""
    with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
        return queue.bind(conn.channel()).queue_declare(passive=True).message_count


def wait_depth(queue: kombu.Queue, expected: int, limit: float = 60) -> float:
    """Seconds until ``queue`` holds ``expected`` ready messages."""
    started = time.perf_counter()
    while (depth := queue_depth(queue)) != expected:
        if time.perf_counter() - started > limit:
            raise RuntimeError(f"queue {queue.name} holds {depth}, not {expected}")
        time.sleep(0.1)
    return time.perf_counter() - started


def refill(app, events: list) -> dict:
    """The same messages as the product's publisher sends (same exchange, routing keys,
    persistent JSON), without confirms: a fast refill, not a figure of the product."""
    from plugins.medications import bus

    top = bus.topology(app)
    before = queue_depth(top.queue)
    started = time.perf_counter()
    with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
        producer = kombu.Producer(conn.channel(), exchange=top.exchange, serializer="json")
        for event in events:
            producer.publish(event.received, routing_key=event.routing_key, delivery_mode=2)
    sent = time.perf_counter() - started
    wait_depth(top.queue, before + len(events))
    return {"no_confirm_publish_per_s": round(len(events) / sent)}


def delete_topology(app) -> list[str]:
    from plugins.medications import bus

    top = bus.topology(app)
    deleted = []
    with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
        channel = conn.channel()
        for queue in (top.queue, top.dead_letter_queue):
            with contextlib.suppress(Exception):
                queue.bind(channel).delete()
                deleted.append(queue.name)
            channel = conn.channel()
        for exchange in (top.exchange, top.dead_letter_queue.exchange):
            with contextlib.suppress(Exception):
                exchange.bind(channel).delete()
                deleted.append(exchange.name)
            channel = conn.channel()
    return deleted


def bare_loop(queue: kombu.Queue, prefetch: int, expected: int, ack_every: int = 1) -> dict:
    """Consume and ack every message with Kombu alone (its JSON decode, nothing else).

    ``ack_every=1`` acknowledges each message, as the product's consumer does; a larger
    value sends one ``multiple`` acknowledgement per that many messages (for comparison).
    """
    acked = 0

    def on_message(body, message) -> None:
        nonlocal acked
        acked += 1
        if ack_every == 1:
            message.ack()
        elif acked % ack_every == 0 or acked == expected:
            message.ack(multiple=True)

    rabbitmq, busy = cpu_by_service()["rabbitmq"], machine_busy_cpu()
    with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
        channel = conn.channel()
        consumer = kombu.Consumer(
            channel,
            queues=[queue],
            callbacks=[on_message],
            prefetch_count=prefetch,
            accept=["json"],
        )
        with consumer:
            started = time.perf_counter()
            cpu = time.process_time()
            while acked < expected:
                conn.drain_events(timeout=10)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
    rabbitmq = cpu_by_service()["rabbitmq"] - rabbitmq
    busy = machine_busy_cpu() - busy
    cores = os.cpu_count() or 1
    return {
        "messages": acked,
        "ack_every": ack_every,
        "seconds": round(elapsed, 2),
        "per_s": round(acked / elapsed),
        "cpu_s": {"loop": round(cpu, 1), "rabbitmq": round(rabbitmq, 1)},
        "others_machine_share": round(max(0.0, busy - cpu - rabbitmq) / (elapsed * cores), 2),
    }


# Processes and CPU -------------------------------------------------------------------------


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cpu_by_service() -> dict[str, float]:
    """CPU seconds used so far by PostgreSQL's and RabbitMQ's processes."""
    totals = {"postgresql": 0.0, "rabbitmq": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        comm = _comm(int(entry.name))
        if comm == "postgres":
            totals["postgresql"] += process_cpu(int(entry.name))
        elif comm == "beam.smp":
            totals["rabbitmq"] += process_cpu(int(entry.name))
    return totals


def machine_busy_cpu() -> float:
    """CPU seconds the whole machine has spent busy (all cores, from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _clock_ticks()


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def other_benchmarks() -> list[str]:
    """Command lines of other ``bench/`` processes (not this one, its parents or children)."""
    mine = _ancestors()
    found = subprocess.run(
        ["pgrep", "-af", "bench/"],  # noqa: S607
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    others = []
    for line in found:
        pid_text, _, command = line.partition(" ")
        pid = int(pid_text)
        if pid in mine or "pgrep" in command:
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) in mine:
                continue  # a child of ours
        others.append(line[:200])
    return others


LOADS: dict[str, float] = {}  # the 1-minute load average as each phase starts


def wait_for_quiet(waits: dict, phase: str, limit: float = 900) -> float:
    """Wait (up to ``limit`` s) while another benchmark runs; note how long. Returns the
    moment the phase starts (``time.monotonic()``)."""
    started = time.monotonic()
    others = other_benchmarks()
    if others:
        log(f"  waiting before {phase}: another benchmark is running: {others}")
    while others and time.monotonic() - started < limit:
        time.sleep(10)
        others = other_benchmarks()
    waited = time.monotonic() - started
    if waited >= 1 or others:
        waits[phase] = {"waited_s": round(waited), "still_running": others}
    # Other work on the machine that is not a benchmark (test suites, say) shows here.
    LOADS[phase] = round(os.getloadavg()[0], 2)
    return time.monotonic()


class Watch(threading.Thread):
    """Looks for other benchmarks every few seconds while this one runs, so that a phase
    they overlapped says so (``disturbed_by``) instead of passing for a quiet measurement."""

    def __init__(self, every: float = 2.0) -> None:
        super().__init__(name="bench-watch", daemon=True)
        self.every = every
        self.seen: list[tuple[float, list[str]]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            with contextlib.suppress(Exception):
                if others := other_benchmarks():
                    self.seen.append((time.monotonic(), others))

    def since(self, moment: float) -> list[str]:
        found = {line for at, others in self.seen if at >= moment for line in others}
        return sorted(found)


def quiet_phase(watch: Watch, waits: dict, name: str, measure, attempts: int = 3) -> dict:
    """``measure()`` after waiting for quiet; again (up to ``attempts`` in all) while another
    benchmark overlapped it. The figures say how many attempts and what overlapped."""
    for attempt in range(1, attempts + 1):
        start = wait_for_quiet(waits, name if attempt == 1 else f"{name}_{attempt}")
        figures = measure()
        figures["disturbed_by"] = watch.since(start)
        figures["attempts"] = attempt
        if not figures["disturbed_by"]:
            break
        log(f"  {name}: another benchmark overlapped it ({figures['disturbed_by']})")
    return figures


class Consumers:
    """``caredeck consume`` processes, optionally one of them sampled by py-spy."""

    def __init__(self, count: int, config: dict[str, str], work: Path, name: str) -> None:
        self.logs = [work / f"{name}-{i}.log" for i in range(count)]
        self.handles = [open(path, "wb") for path in self.logs]  # noqa: SIM115
        self.processes = [
            subprocess.Popen(  # noqa: S603 (our own command line)
                caredeck_command("consume"),
                env=caredeck_env(config),
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=work,
            )
            for handle in self.handles
        ]
        self.profiler: subprocess.Popen | None = None

    def profile(self, output: Path) -> None:
        spy = Path(sys.executable).parent / "py-spy"
        self.profiler = subprocess.Popen(  # noqa: S603 (our own command line)
            [
                str(spy),
                "record",
                "--pid",
                str(self.processes[0].pid),
                "--format",
                "raw",
                "--idle",
                "--rate",
                "100",
                "-o",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def end_profile(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.profiler.wait(30)

    def check_alive(self) -> None:
        for process, path in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                tail = path.read_text(errors="replace")[-800:]
                raise RuntimeError(f"caredeck consume exited ({process.returncode}): {tail}")

    def cpu(self) -> list[float]:
        return [round(process_cpu(process.pid), 2) for process in self.processes]

    def stop(self) -> list[dict]:
        """SIGTERM each; its exit status and how long it took to exit."""
        results = []
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            started = time.perf_counter()
            try:
                status = process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                status = f"killed after 20 s (status {process.wait(10)})"
            results.append({"exit": status, "exit_s": round(time.perf_counter() - started, 2)})
        for handle in self.handles:
            handle.close()
        return results

    def log_tail(self) -> list[str]:
        return [path.read_text(errors="replace")[-300:] for path in self.logs]


def stored_count(cursor) -> int:
    cursor.execute("SELECT count(*) FROM medications_events")
    return cursor.fetchone()[0]


def consume_phase(
    url: str,
    config: dict[str, str],
    work: Path,
    count: int,
    expected: int,
    messages: int,
    queue: kombu.Queue,
    profile: Path | None = None,
) -> tuple[dict, Consumers]:
    """Start ``count`` consumers on the full queue; time until ``expected`` rows are stored.

    Returns the figures and the still-running consumers (the caller stops them).
    """
    connection = psycopg2.connect(url)
    connection.autocommit = True
    cursor = connection.cursor()
    cpu_before = cpu_by_service()
    busy_before, own_before = machine_busy_cpu(), time.process_time()
    backends: dict[int, float] = {}  # the consumers' PostgreSQL backends: CPU seen last
    started = time.perf_counter()
    consumers = Consumers(count, config, work, f"consume{count}")
    if profile is not None:
        consumers.profile(profile)
    first = first_count = None
    polls = 0
    try:
        while True:
            stored = stored_count(cursor)
            polls += 1
            cursor.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            for (pid,) in cursor.fetchall():
                backends[pid] = process_cpu(pid) or backends.get(pid, 0.0)
            now = time.perf_counter()
            if stored and first is None:
                first, first_count = now, stored
            if stored >= expected:
                done = now
                break
            if now - started > PHASE_LIMIT_S:
                raise RuntimeError(f"only {stored} of {expected} stored after {PHASE_LIMIT_S} s")
            consumers.check_alive()
            time.sleep(POLL_S)
        cpu_after = cpu_by_service()
        busy = machine_busy_cpu() - busy_before
        own = time.process_time() - own_before
        for pid in backends:
            backends[pid] = process_cpu(pid) or backends[pid]
        consumer_cpu = consumers.cpu()
        consumers.end_profile()
    except BaseException:
        consumers.end_profile()
        consumers.stop()
        raise
    finally:
        connection.close()
    wall = done - started
    steady = done - first
    # Every message was acknowledged: none ready in the queue (none left unacknowledged is
    # checked after the consumers stop).
    figures = {
        "consumers": count,
        "stored": stored,
        "messages": messages,
        "wall_s": round(wall, 2),
        "first_row_after_s": round(first - started, 2),
        "steady_s": round(steady, 2),
        # The headline: from the first stored row to the last (process start-up excluded).
        "stored_per_s": round((expected - first_count) / steady) if steady > 0 else None,
        "stored_per_s_with_startup": round(expected / wall),
        "messages_per_s_with_startup": round(messages / wall),
        "polls": polls,
        "cpu_s": {
            "consumers": consumer_cpu,
            # The consumers' own backends, and every PostgreSQL process (WAL writer,
            # checkpointer, and other databases' backends: other work shows here).
            "postgresql_backends": round(sum(backends.values()), 1),
            "postgresql_all": round(cpu_after["postgresql"] - cpu_before["postgresql"], 1),
            "rabbitmq": round(cpu_after["rabbitmq"] - cpu_before["rabbitmq"], 1),
            "this_script": round(own, 1),
            "machine_busy": round(busy, 1),
        },
    }
    cpu = figures["cpu_s"]
    ours = sum(consumer_cpu) + cpu["postgresql_all"] + cpu["rabbitmq"] + own
    cores = os.cpu_count() or 1
    # How much of the machine this phase used, and how much other processes took meanwhile.
    figures["machine_share"] = {
        "ours": round(ours / (wall * cores), 2),
        "others": round(max(0.0, busy - ours) / (wall * cores), 2),
    }
    figures["cpu_us_per_message"] = {
        "consumers": round(sum(consumer_cpu) / messages * 1e6),
        "postgresql_backends": round(cpu["postgresql_backends"] / messages * 1e6),
        "rabbitmq": round(cpu["rabbitmq"] / messages * 1e6),
    }
    return figures, consumers


def finish_consumers(consumers: Consumers, queue: kombu.Queue, dead: kombu.Queue) -> dict:
    stops = consumers.stop()
    logs = "\n".join(path.read_text(errors="replace") for path in consumers.logs)
    return {
        "sigterm": stops,
        "clean_exit": all(entry["exit"] == 0 for entry in stops),
        # A batch the database refused (a deadlock between consumers, for instance) is
        # requeued after a back-off: counted from the consumers' logs.
        "requeued_batches": logs.count("requeueing"),
        "deadlocks": logs.count("deadlock detected"),
        "left_in_queue": queue_depth(queue),  # unacknowledged ones return to ready on exit
        "dead_lettered": queue_depth(dead),
    }


def summarize_profile(path: Path, top: int = 30) -> dict:
    """py-spy raw (collapsed) stacks of the consumer loop (start-up and idle helper threads
    left out): the share of samples spent in each function (inclusive, the loop's own
    frames left out) and at the top of the stack (self)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or "ConsumerMixin.run" not in stack:
            continue
        count = int(count_text)
        samples += count
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not samples:
        return {"samples": 0}

    def ranked(counts: dict[str, int]) -> dict[str, float]:
        shares = ((frame, n / samples) for frame, n in counts.items())
        kept = sorted((item for item in shares if item[1] < 0.97), key=lambda item: -item[1])
        return {frame: round(share, 3) for frame, share in kept[:top]}

    return {"samples": samples, "inclusive": ranked(inclusive), "self": ranked(own)}


# Periods -----------------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50": round(cuts[49], 2),
        "p95": round(cuts[94], 2),
        "max": round(max(samples), 2),
        "n": len(samples),
    }


def series(call, runs: int = RUNS) -> list[float]:
    for _ in range(WARM_UP):
        call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def issue_token(app) -> str:
    from core.auth.models import ApiToken, User
    from core.db import database

    with app.app_context(), database.connection_context():
        user = User.create_user(
            "bench.doctor@caredeck.local",
            "bench-" + os.urandom(12).hex(),
            name="Bench Doctor",
            role="doctor",
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


def time_periods(app, config: dict[str, str], work: Path, token: str) -> dict:
    """The heavy patient's periods: the function, its parts, and the API's answer."""
    from core.db import database
    from plugins.medications.api import MedicationsHistorySchema
    from plugins.medications.history import medication_history
    from plugins.medications.models import MedicationEvent
    from plugins.medications.periods import derive

    figures: dict = {"mrn": HEAVY_MRN}
    with app.app_context(), database.connection_context():
        figures["events"] = (
            MedicationEvent.select().where(MedicationEvent.patient_mrn == HEAVY_MRN).count()
        )
        periods, anomalies = medication_history(HEAVY_MRN)
        figures["periods"], figures["anomalies"] = len(periods), len(anomalies)
        figures["function_ms"] = percentiles(series(lambda: medication_history(HEAVY_MRN)))
        # Its parts: the rows straight from the cursor, and the derivation alone; then
        # what the API adds to the function: the response schema's dump and the JSON.
        query = MedicationEvent.select(
            MedicationEvent.medication, MedicationEvent.action, MedicationEvent.event_time
        ).where(MedicationEvent.patient_mrn == HEAVY_MRN)
        figures["fetch_ms"] = percentiles(series(lambda: database.execute(query).fetchall()))
        rows = database.execute(query).fetchall()
        figures["derive_ms"] = percentiles(series(lambda: derive(rows)))
        body = {"patient_id": HEAVY_MRN, "periods": periods, "anomalies": anomalies}
        schema = MedicationsHistorySchema()
        figures["dump_ms"] = percentiles(series(lambda: schema.dump(body)))
        dumped = schema.dump(body)
        figures["json_ms"] = percentiles(series(lambda: json.dumps(dumped)))
    path = f"/api/patients/{HEAVY_MRN}/medication-periods"
    headers = {"Authorization": f"Bearer {token}"}

    client = app.test_client()

    def through_client() -> None:
        response = client.get(path, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")

    figures["test_client_ms"] = percentiles(series(through_client))

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(work / "serve.log", "wb") as server_log:
        server = subprocess.Popen(  # noqa: S603 (our own command line)
            caredeck_command("serve", "--port", str(port)),
            env=caredeck_env(config),
            stdout=server_log,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
        try:
            wait_for_server(base, server)
            session = requests.Session()
            session.headers.update(headers)
            last = []

            def over_http() -> None:
                response = session.get(base + path, timeout=30)
                if response.status_code != 200:
                    raise RuntimeError(f"GET {path}: {response.status_code}")
                last[:] = [response]

            figures["http_ms"] = percentiles(series(over_http))
            # The same answer made afresh each time: one more event for the patient before
            # each request (the answer kept for the earlier events no longer holds).
            from plugins.medications import bus
            from plugins.medications.events import parse

            added = itertools.count()

            def one_more_event() -> None:
                n = next(added)
                moment = BASE + datetime.timedelta(days=SPAN_DAYS, minutes=n)
                body = {
                    "patient_id": HEAVY_MRN,
                    "medication": "Bench cold answers",
                    "action": "start" if n % 2 == 0 else "stop",
                    "event_time": moment.isoformat(),
                    "event_id": f"bench-cold-{uuid.uuid4().hex}",
                }
                with app.app_context(), database.connection_context(), database.atomic():
                    bus.store([parse(body)])

            def cold_over_http() -> None:
                one_more_event()
                started = time.perf_counter()
                over_http()
                cold.append((time.perf_counter() - started) * 1000)

            cold: list[float] = []
            for _ in range(WARM_UP + RUNS // 2):
                cold_over_http()
            figures["http_new_events_ms"] = percentiles(cold[WARM_UP:])
            body = last[0].json()
            figures["http_body_kib"] = round(len(last[0].content) / 1024)
            figures["http_periods"] = len(body["periods"])
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
    return figures


# The run -----------------------------------------------------------------------------------


def code_digest() -> str:
    digest = hashlib.sha256()
    for name in CODE:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    return digest.hexdigest()[:12]


def git_head() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(  # noqa: S603 (our own command line)
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    return ""


def uncommitted() -> list[str]:
    """Which of the measured files differ from the last commit (others edit the checkout)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(  # noqa: S603 (our own command line)
            ["git", "status", "--porcelain", "--", *CODE],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        return [line[3:] for line in out.splitlines()]
    return []


def machine(url: str) -> dict:
    memory = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    versions = {}
    with contextlib.suppress(psycopg2.Error):
        versions["postgresql"] = sql(url, "SHOW server_version")[0][0]
    with contextlib.suppress(Exception), kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
        conn.connect()
        props = conn.connection.server_properties
        versions["rabbitmq"] = props.get("version")
    return {
        "nproc": os.cpu_count(),
        "ram_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        **versions,
        "kombu": kombu.__version__,
        "platform": platform.platform(),
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="messages, duplicates in")
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--heavy", type=int, default=10_000, help="events of the one patient")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample the one-consumer phase with py-spy (--idle) into this raw stacks file",
    )
    options = parser.parse_args(argv)
    url = options.database_url
    database_name(url, "medication")
    suffix = uuid.uuid4().hex[:8]
    exchange, queue_name = f"bench-{suffix}.medications", f"bench-{suffix}.medications.events"
    figures: dict = {
        "benchmark": "medications",
        "date": datetime.datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": SEED,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "commit": git_head(),
        "code": code_digest(),
        "code_uncommitted": uncommitted(),
        "exchange": exchange,
        "queue": queue_name,
    }
    waits: dict = {}
    watch = Watch()
    watch.start()
    work = Path(tempfile.mkdtemp(prefix="caredeck-bench-medications-"))
    app = None
    consumers: Consumers | None = None
    try:
        log(f"Generating {options.events:,} messages for {options.patients:,} patients")
        started = time.perf_counter()
        data = generate(options.events, options.patients, options.heavy)
        figures["generate_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        events = parse_all(data["messages"])
        heavy = parse_all(data["heavy"])
        parse_s = time.perf_counter() - started
        figures["parse_per_s"] = round((len(events) + len(heavy)) / parse_s)
        distinct = len({event.dedupe_key for event in events})
        distinct_heavy = len({event.dedupe_key for event in heavy})
        actions: dict[str, int] = {}
        for event in events:
            actions[event.action] = actions.get(event.action, 0) + 1
        figures["data"] = {
            "messages": len(events),
            "distinct": distinct,
            "duplicates": len(events) - distinct,
            "patients": len({event.patient_id for event in events}),
            "actions": actions,
            "without_event_id": sum(1 for event in events if event.event_id is None),
            "heavy_patient_events": len(heavy),
            "heavy_patient_distinct": distinct_heavy,
        }
        log(f"  {figures['generate_s']} s; {figures['data']}")

        recreate_database(url, "medication")
        config = app_config(url, work / "instance", exchange, queue_name)
        figures["migrations"] = upgrade(config, work)
        app = build_app(config)
        from plugins.medications import bus

        top = bus.topology(app)
        prefetch = bus.consumer(app).prefetch
        figures["consumer"] = {"batch_size": bus.BATCH_SIZE, "prefetch": prefetch}

        # 1. The product's publisher.
        phase_start = wait_for_quiet(waits, "publish")
        log(f"Publishing {len(events):,} through plugins.medications.bus.publish (confirms)")
        cpu_before, busy = cpu_by_service(), machine_busy_cpu()
        started = time.perf_counter()
        cpu = time.process_time()
        published = bus.publish(events, app=app)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        cpu_after, busy = cpu_by_service(), machine_busy_cpu() - busy
        rabbitmq = cpu_after["rabbitmq"] - cpu_before["rabbitmq"]
        others = max(0.0, busy - cpu - rabbitmq) / (elapsed * (os.cpu_count() or 1))
        wait_depth(top.queue, len(events))
        figures["publish"] = {
            "published": published,
            "seconds": round(elapsed, 1),
            "per_s": round(published / elapsed),
            "cpu_s": {"publisher": round(cpu, 1), "rabbitmq": round(rabbitmq, 1)},
            "others_machine_share": round(others, 2),
            "disturbed_by": watch.since(phase_start),
        }
        log(f"  {figures['publish']}")

        # 2. One consumer, then two.
        connection = psycopg2.connect(url)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                for run in (1, 2):
                    if run == 2:
                        cursor.execute("TRUNCATE medications_events, core_patients")
                        cursor.execute("VACUUM ANALYZE medications_events, core_patients")
                        figures["refill"] = refill(app, events)
                    phase_start = wait_for_quiet(waits, f"consume_{run}")
                    log(f"Consuming with {run} caredeck consume process(es)")
                    phase, consumers = consume_phase(
                        url,
                        config,
                        work,
                        run,
                        distinct,
                        len(events),
                        top.queue,
                        profile=options.profile if run == 1 else None,
                    )
                    if run == 2:
                        # The heavy patient, published while the two consumers run.
                        log(f"Publishing the heavy patient's {len(heavy):,} events")
                        started = time.perf_counter()
                        bus.publish(heavy, app=app)
                        phase["heavy_publish_per_s"] = round(
                            len(heavy) / (time.perf_counter() - started)
                        )
                        deadline = time.monotonic() + 120
                        while stored_count(cursor) < distinct + distinct_heavy:
                            if time.monotonic() > deadline:
                                raise RuntimeError("the heavy patient's events were not stored")
                            consumers.check_alive()
                            time.sleep(POLL_S)
                        phase["heavy_stored_after_s"] = round(time.perf_counter() - started, 2)
                    phase.update(finish_consumers(consumers, top.queue, top.dead_letter_queue))
                    consumers = None
                    phase["rows_after_stop"] = stored_count(cursor)
                    phase["disturbed_by"] = watch.since(phase_start)
                    figures[f"consume_{run}"] = phase
                    log(f"  {phase}")
        finally:
            connection.close()
        if options.profile is not None and options.profile.exists():
            figures["profile_1"] = summarize_profile(options.profile)

        # 3. The bare loop on the same queue (each short phase is measured again, up to
        # twice, when another benchmark overlapped it).
        def bare(ack_every: int) -> dict:
            refill(app, events)
            result = bare_loop(top.queue, prefetch, len(events), ack_every)
            result["left_in_queue"] = queue_depth(top.queue)
            return result

        log(f"Bare Kombu consume-and-ack loop, prefetch {prefetch}")
        figures["bare"] = quiet_phase(watch, waits, "bare", lambda: bare(1))
        log(f"  {figures['bare']}")
        one = figures["consume_1"]["stored_per_s"]
        figures["stored_vs_bare"] = round(one / figures["bare"]["per_s"], 3)
        # For comparison (not the limit the goal uses): one acknowledgement per batch.
        log(f"Bare loop again, one multiple ack per {bus.BATCH_SIZE} messages")
        figures["bare_batch_ack"] = quiet_phase(
            watch, waits, "bare_batch_ack", lambda: bare(bus.BATCH_SIZE)
        )
        log(f"  {figures['bare_batch_ack']}")

        # 4. Periods of the heavy patient. This process holds 210,000 parsed events, which
        # the garbage collector would otherwise walk during the in-process timings (pauses
        # of 100-300 ms that a server's small heap does not have): freeze them first.
        gc.collect()
        gc.freeze()
        sql(url, "VACUUM ANALYZE medications_events")
        token = issue_token(app)
        log(f"Periods of the patient with {len(heavy):,} events")
        figures["periods"] = quiet_phase(
            watch, waits, "periods", lambda: time_periods(app, config, work, token)
        )
        log(f"  {figures['periods']}")
    except Exception as error:  # a benchmark reports what it could measure
        figures["error"] = f"{type(error).__name__}: {error}"
        log(f"Stopped: {figures['error']}")
    finally:
        if consumers is not None:
            consumers.stop()
            figures.setdefault("consumer_log_tail", consumers.log_tail())
        if app is not None:
            figures["deleted"] = delete_topology(app)
            with contextlib.suppress(Exception):
                from core.db import close_pool, database

                close_pool(database.obj)
            with contextlib.suppress(Exception):
                from core.db import database

                database.close()
        if not options.keep:
            with contextlib.suppress(psycopg2.Error):
                drop_database(url, "medication")
        shutil.rmtree(work, ignore_errors=True)

    watch.stopping.set()
    figures["waited_for_other_benchmarks"] = waits
    figures["loadavg_at_phase_start"] = LOADS
    figures["disturbed"] = any(
        (figures.get(key) or {}).get("disturbed_by")
        for key in ("publish", "consume_1", "consume_2", "bare", "bare_batch_ack", "periods")
    )
    figures["machine"] = machine(maintenance_url(url))
    if code_digest() != figures["code"]:
        figures["code_changed_during_run"] = True
    figures["goals"] = goals(figures)
    print(json.dumps(figures, separators=(",", ":")), flush=True)
    summary(figures)
    return 0


def goals(figures: dict) -> dict:
    """Each goal: met (true/false), or null when it could not be measured."""
    periods = figures.get("periods") or {}
    measured = {
        "stored_per_s_1": (figures.get("consume_1") or {}).get("stored_per_s"),
        "stored_vs_bare": figures.get("stored_vs_bare"),
        # What a user waits for: the HTTP p95 through a real server.
        "periods_ms": (periods.get("http_ms") or {}).get("p95"),
    }
    result = {}
    for key, goal in GOALS.items():
        value = measured[key]
        met = None if value is None else (value < goal if key == "periods_ms" else value >= goal)
        result[key] = {"goal": round(goal, 3), "measured": value, "met": met}
    return result


def summary(figures: dict) -> None:
    log("")
    log(
        f"Medications benchmark, {figures['date']} ({figures['machine']['nproc']} cores), "
        f"commit {figures.get('commit')}"
    )
    if figures.get("disturbed"):
        log("  DISTURBED: another benchmark ran during a timed phase (see disturbed_by)")
    if "publish" in figures:
        log(f"  publish (confirms): {figures['publish']['per_s']:,} events/s")
    for run in (1, 2):
        phase = figures.get(f"consume_{run}")
        if phase:
            log(
                f"  {run} consumer(s): {phase['stored_per_s']:,} stored/s "
                f"({phase['stored_per_s_with_startup']:,} with start-up), "
                f"CPU {phase['cpu_s']}, clean exit {phase['clean_exit']}"
            )
    if "bare" in figures:
        log(f"  bare loop: {figures['bare']['per_s']:,} messages/s")
    if "bare_batch_ack" in figures:
        log(f"  bare loop, ack per batch: {figures['bare_batch_ack']['per_s']:,} messages/s")
    periods = figures.get("periods") or {}
    for key in ("function_ms", "test_client_ms", "http_ms"):
        if key in periods:
            log(f"  periods {key}: {periods[key]}")
    for key, goal in figures["goals"].items():
        verdict = {True: "met", False: "MISSED", None: "not measured"}[goal["met"]]
        log(f"  goal {key} {goal['goal']}: {goal['measured']} {verdict}")


if __name__ == "__main__":
    sys.exit(main())
