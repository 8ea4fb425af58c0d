"""Prometheus metrics: the token, the web metrics, queue depths, job durations, the plugins'
metrics (ingest lag, delivery backlog), the non-HTTP roles' endpoint and gunicorn's
multiprocess mode."""

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import kombu
import pytest
from helpers import consume_everything, make_plugin
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

import jobs
from core import messaging, metrics
from core.config import ConfigError
from core.db import database
from core.messaging import QueueConsumer, Reject
from core.scheduler import Schedule, Scheduler
from core.testing import service_url
from plugins.monitoring import plugin as monitoring
from plugins.monitoring.models import IngestFile
from plugins.reporting import plugin as reporting
from plugins.reporting.reports.models import ReportRun

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "metrics-token-for-the-tests-0123456789abcdef"
MRN = "MRN-4711-SECRET"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def scrape(app, headers=AUTH) -> str:
    response = app.test_client().get("/metrics", headers=headers)
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return response.get_data(as_text=True)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, labels): value}`` of an exposition, parsed by prometheus_client."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels) -> float | None:
    return found.get((name, frozenset(labels.items())))


# Jobs and plugins used below --------------------------------------------------------------


@jobs.actor("labs.measure", time_limit=datetime.timedelta(seconds=10), max_retries=0)
def measure(seconds: float) -> None:
    time.sleep(seconds)


@jobs.actor(
    "labs.flaky",
    time_limit=datetime.timedelta(seconds=10),
    max_retries=1,
    min_backoff=10,
    max_backoff=20,
    queue_name="labs_slow",
)
def flaky() -> None:
    raise RuntimeError("the lab system is down")


def labs(**hooks):
    return make_plugin("labs", caredeck_actors=lambda: [measure, flaky], **hooks)


@pytest.fixture
def caredeck_plugins():
    return {"labs": labs()}


# The token ------------------------------------------------------------------------------


def test_without_a_token_configured_metrics_is_an_ordinary_404(app):
    client = app.test_client()
    for headers in ({}, AUTH, {"Authorization": "Bearer "}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 404
        assert response.data == client.get("/no-such-page").data  # nothing tells it apart
        assert b"caredeck_" not in response.data


def test_a_missing_or_wrong_token_is_refused_with_401(make_app):
    app = make_app(METRICS_TOKEN=TOKEN)
    client = app.test_client()
    for header in (None, f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
        headers = {} if header is None else {"Authorization": header}
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401, header
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"caredeck_http" not in response.data
    assert client.get("/metrics", headers={"Authorization": f"bearer  {TOKEN}"}).status_code == 200


def test_a_short_token_stops_start_up(make_app):
    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        make_app(METRICS_TOKEN="guessable")


# Web requests ---------------------------------------------------------------------------


def test_requests_are_counted_by_route_template_and_no_mrn_reaches_the_metrics(
    make_app, users, client_for
):
    app = make_app(METRICS_TOKEN=TOKEN)
    route = "/api/patients/<mrn>"
    before = samples(scrape(app))
    doctor = client_for("doctor")
    created = doctor.post(
        "/api/patients",
        json={"mrn": MRN, "first_name": "Ada", "last_name": "Lovelace", "sex": "female"},
    )
    assert created.status_code == 201, created.json
    assert doctor.get(f"/api/patients/{MRN}").status_code == 200
    assert doctor.get(f"/api/patients/{MRN}-GONE").status_code == 404
    assert app.test_client().get(f"/no/such/{MRN}").status_code == 404
    text = scrape(app)
    after = samples(text)

    def delta(name, **labels):
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    counted = "caredeck_http_requests_total"
    assert delta(counted, method="GET", route=route, status="2xx") == 1
    assert delta(counted, method="GET", route=route, status="4xx") == 1
    assert delta(counted, method="POST", route="/api/patients", status="2xx") == 1
    assert delta(counted, method="GET", route=metrics.UNMATCHED, status="4xx") == 1
    timed = "caredeck_http_request_duration_seconds_count"
    assert delta(timed, method="GET", route=route) == 2
    assert MRN not in text and "SECRET" not in text


# Job durations ----------------------------------------------------------------------------


def test_job_durations_record_real_actor_runs_with_their_outcome(make_app):
    app = make_app(METRICS_TOKEN=TOKEN)
    state = app.extensions["caredeck"].jobs
    before = samples(scrape(app))
    with app.app_context():
        measure.send(0.05)
        flaky.send()
    worker = state.worker(threads=1)
    worker.start()
    try:
        for queue in ("default", "labs_slow"):
            state.broker.join(queue, timeout=10_000, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    after = samples(scrape(app))

    def delta(name, **labels):
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    name = "caredeck_job_duration_seconds"
    ok = {"actor": "labs.measure", "queue": "default", "outcome": "success"}
    assert delta(f"{name}_count", **ok) == 1
    assert delta(f"{name}_sum", **ok) >= 0.05
    flaky_run = {"actor": "labs.flaky", "queue": "labs_slow"}
    assert delta(f"{name}_count", **flaky_run, outcome="retry") == 1
    assert delta(f"{name}_count", **flaky_run, outcome="failure") == 1
    # Given up: in the dead-letter queue, which the embedded broker counts too.
    depth = "caredeck_queue_messages"
    assert value(after, depth, backend="task_queue", queue="labs_slow.XQ") == 1
    assert value(after, "caredeck_backend_up", backend="task_queue") == 1


# Queue depths on the real servers ----------------------------------------------------------


@pytest.mark.integration
def test_queue_depths_count_what_is_on_a_real_redis_broker(make_app):
    url = service_url("redis")
    app = make_app(DRAMATIQ_URL=url, METRICS_TOKEN=TOKEN)
    state = app.extensions["caredeck"].jobs
    state.broker.namespace = f"caredeck-test-{uuid.uuid4().hex[:8]}"
    try:
        with app.app_context():
            for _ in range(3):
                measure.send(0)
            measure.send_with_options(args=(0,), delay=600_000)
            flaky.send()
        found = samples(scrape(app))
        depth = "caredeck_queue_messages"
        assert value(found, depth, backend="task_queue", queue="default") == 3
        assert value(found, depth, backend="task_queue", queue="default.DQ") == 1
        assert value(found, depth, backend="task_queue", queue="default.XQ") == 0
        assert value(found, depth, backend="task_queue", queue="labs_slow") == 1
        assert value(found, "caredeck_backend_up", backend="task_queue") == 1

        # A worker runs them: the ready ones are done, the failing one ends dead-lettered.
        worker = state.worker(threads=2)
        worker.start()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                found = samples(scrape(app))
                if (
                    value(found, depth, backend="task_queue", queue="default") == 0
                    and value(found, depth, backend="task_queue", queue="labs_slow.XQ") == 1
                ):
                    break
                time.sleep(0.2)
        finally:
            worker.stop()
        assert value(found, depth, backend="task_queue", queue="default") == 0
        assert value(found, depth, backend="task_queue", queue="default.DQ") == 1
        assert value(found, depth, backend="task_queue", queue="labs_slow") == 0
        assert value(found, depth, backend="task_queue", queue="labs_slow.XQ") == 1
    finally:
        client = state.broker.client
        client.delete(*client.keys(f"{state.broker.namespace}*") or ["-"])


def _bus_plugin(suffix: str, stored: list):
    exchange = kombu.Exchange(f"labs{suffix}", type="direct", durable=True)
    queue = kombu.Queue(f"labs.results{suffix}", exchange, routing_key="r", durable=True)
    dead_exchange = kombu.Exchange(f"labs{suffix}.dead", type="fanout")
    dead = kombu.Queue(f"labs.results{suffix}.dead", dead_exchange)
    consumer = QueueConsumer(queue, stored.extend, parse=_parse, dead_letter_queue=dead)
    plugin = labs(caredeck_consumers=lambda: [consumer])
    return plugin, exchange, queue


def _parse(body, message):
    if "n" not in body:
        raise Reject("a result without a number")
    return body


def test_message_bus_depths_and_consumed_messages_on_the_memory_bus(make_app):
    stored = []
    suffix = uuid.uuid4().hex[:8]
    plugin, exchange, queue = _bus_plugin(suffix, stored)
    app = make_app(plugins={"labs": plugin}, METRICS_TOKEN=TOKEN)
    before = samples(scrape(app))
    bodies = [("r", {"n": 1}), ("r", {"odd": True}), ("r", {"n": 2})]
    messaging.publish(app, bodies, exchange=exchange, declare=[queue])
    found = samples(scrape(app))
    depth = "caredeck_queue_messages"
    assert value(found, depth, backend="message_bus", queue=queue.name) == 3
    assert value(found, "caredeck_backend_up", backend="message_bus") == 1
    consume_everything(app)
    assert stored == [{"n": 1}, {"n": 2}]
    after = samples(scrape(app))
    assert value(after, depth, backend="message_bus", queue=queue.name) == 0
    assert value(after, depth, backend="message_bus", queue=f"{queue.name}.dead") == 1

    def delta(**labels):
        name = "caredeck_consumer_messages_total"
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    assert delta(queue=queue.name, outcome="stored") == 2
    assert delta(queue=queue.name, outcome="dead_lettered") == 1


@pytest.mark.integration
def test_message_bus_depth_on_a_real_rabbitmq(make_app):
    stored = []
    suffix = uuid.uuid4().hex[:8]
    plugin, exchange, queue = _bus_plugin(suffix, stored)
    app = make_app(plugins={"labs": plugin}, AMQP_URL=service_url("amqp"), METRICS_TOKEN=TOKEN)
    try:
        found = samples(scrape(app))
        # Not declared yet: left out, and the broker still answered.
        assert (
            value(found, "caredeck_queue_messages", backend="message_bus", queue=queue.name) is None
        )
        assert value(found, "caredeck_backend_up", backend="message_bus") == 1
        messaging.publish(
            app, [("r", {"n": n}) for n in range(5)], exchange=exchange, declare=[queue]
        )
        found = samples(scrape(app))
        assert value(found, "caredeck_queue_messages", backend="message_bus", queue=queue.name) == 5
    finally:
        with messaging.connection(app) as conn:
            queue.bind(conn.channel()).delete()
            exchange.bind(conn.channel()).delete()


def test_a_hung_broker_is_reported_down_and_does_not_hang_the_scrape(make_app):
    stored = []
    plugin, _, _ = _bus_plugin(uuid.uuid4().hex[:8], stored)
    # Accepts connections (the kernel's backlog) and never says a word.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        app = make_app(
            plugins={"labs": plugin, "monitoring": monitoring},
            DRAMATIQ_URL=f"redis://127.0.0.1:{port}/0",
            AMQP_URL=f"amqp://guest:guest@127.0.0.1:{port}//",
            METRICS_TOKEN=TOKEN,
        )
        started = time.monotonic()
        found = samples(scrape(app))
        elapsed = time.monotonic() - started
    assert elapsed < metrics.SCRAPE_TIMEOUT_SECONDS + 1.5, elapsed
    assert value(found, "caredeck_backend_up", backend="task_queue") == 0
    assert value(found, "caredeck_backend_up", backend="message_bus") == 0
    assert value(found, "caredeck_plugin_metrics_up", plugin="monitoring") == 1  # unaffected
    assert not any(name == "caredeck_queue_messages" for name, _ in found)


# The plugins' metrics ---------------------------------------------------------------------


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\r\n".join(lines))


def test_the_ingest_lag_and_counts_follow_the_ledger(make_app, tmp_path):
    app = make_app(plugins={"monitoring": monitoring}, METRICS_TOKEN=TOKEN)
    found = samples(scrape(app))
    assert value(found, "caredeck_monitoring_ingest_lag_seconds") is None  # nothing yet
    assert value(found, "caredeck_monitoring_ingest_files_total", status="applied") == 0
    assert value(found, "caredeck_plugin_metrics_up", plugin="monitoring") == 1

    folder = tmp_path / "drop"
    _write(
        folder / "patient_information.csv",
        [
            "patient_id,first_name,last_name,date_of_birth,primary_physician,"
            "insurance_provider,blood_type,allergies",
            "1001,Ada,Lovelace,12/10/1815,Dr. Babbage,BlueCross,A+,None",
            "1002,Alan,Turing,6/23/1912,Dr. Church,Medicare,O-,None",
            "1003,Grace,Hopper,12/9/1906,Dr. Aiken,Medicare,B+,None",
        ],
    )
    (folder / "empty.csv").write_text("")
    from plugins.monitoring import ingest

    with app.app_context():
        ingest.ingest_source(str(folder), app=app, echo=lambda line: None)
    found = samples(scrape(app))
    assert 0 <= value(found, "caredeck_monitoring_ingest_lag_seconds") < 60
    assert value(found, "caredeck_monitoring_ingest_files_total", status="applied") == 1
    assert value(found, "caredeck_monitoring_ingest_files_total", status="quarantined") == 1
    assert value(found, "caredeck_monitoring_ingest_rows_total", outcome="inserted") == 3
    assert value(found, "caredeck_monitoring_ingest_rows_total", outcome="rejected") == 0

    # Nothing new for an hour: the lag is an hour.
    with database.connection_context():
        an_hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
        IngestFile.update(ingested_at=an_hour_ago).execute()
    lag = value(samples(scrape(app)), "caredeck_monitoring_ingest_lag_seconds")
    assert 3600 <= lag < 3660


def test_the_reporting_backlog_counts_runs_and_deliveries_by_state(make_app):
    app = make_app(plugins={"reporting": reporting}, METRICS_TOKEN=TOKEN)
    with database.connection_context():
        ReportRun.create(scope="*", week="2026-W46", state="succeeded")
        ReportRun.create(scope="*", week="2026-W47")
    found = samples(scrape(app))
    assert value(found, "caredeck_reporting_runs", state="queued") == 1
    assert value(found, "caredeck_reporting_runs", state="succeeded") == 1
    assert value(found, "caredeck_reporting_runs", state="failed") == 0
    for state in ("pending", "sending", "sent", "failed"):
        assert value(found, "caredeck_reporting_deliveries", state=state) == 0


class _Fixed:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail = name, fail

    def collect(self):
        if self.fail:
            raise RuntimeError("the ledger is unreadable")
        family = GaugeMetricFamily(self.name, "A test gauge.")
        family.add_metric([], 7)
        return [family]


def test_a_broken_or_misnamed_plugin_collector_is_left_out_and_reported(make_app):
    plugins = {
        "good": make_plugin("good", caredeck_metrics=lambda: [_Fixed("caredeck_good_things")]),
        "misnamed": make_plugin("misnamed", caredeck_metrics=lambda: _Fixed("caredeck_things")),
        "broken": make_plugin(
            "broken", caredeck_metrics=lambda: _Fixed("caredeck_broken_x", fail=True)
        ),
    }
    app = make_app(plugins=plugins, METRICS_TOKEN=TOKEN)
    found = samples(scrape(app))
    assert value(found, "caredeck_good_things") == 7
    assert value(found, "caredeck_things") is None
    up = "caredeck_plugin_metrics_up"
    assert value(found, up, plugin="good") == 1
    assert value(found, up, plugin="misnamed") == 0
    assert value(found, up, plugin="broken") == 0


def test_a_plugin_returning_something_else_stops_start_up(make_app):
    from core.plugins import PluginError

    with pytest.raises(PluginError, match="Prometheus collectors"):
        make_app(plugins={"odd": make_plugin("odd", caredeck_metrics=lambda: ["gauge"])})


# The roles without HTTP -------------------------------------------------------------------


def test_the_process_endpoint_serves_its_own_metrics_with_the_same_token(make_app):
    app = make_app(METRICS_TOKEN=TOKEN)
    Scheduler(app, [Schedule("labs.tick", datetime.timedelta(seconds=1), lambda: 1)]).run_due()
    server = metrics.serve(app, 0)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        request = urllib.request.Request(f"{base}/metrics", headers=AUTH)
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            text = response.read().decode()
        found = samples(text)
        assert value(
            found, "caredeck_scheduled_task_runs_total", task="labs.tick", outcome="success"
        )
        assert "caredeck_backend_up" not in text  # scrape-time gauges are the web app's
        for path, headers, status in (
            ("/metrics", {}, 401),
            ("/metrics", {"Authorization": "Bearer wrong"}, 401),
            ("/", AUTH, 404),
        ):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(  # noqa: S310
                    urllib.request.Request(base + path, headers=headers), timeout=5
                )
            assert refused.value.code == status, path
    finally:
        server.shutdown()
        server.server_close()


# gunicorn: several processes, one set of metrics ------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str, headers=None) -> str:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return response.read().decode()


def _total(text: str) -> float:
    found = samples(text)
    labels = {"method": "GET", "route": "/healthz", "status": "2xx"}
    return value(found, "caredeck_http_requests_total", **labels) or 0


def test_gunicorn_workers_add_up_in_one_scrape_and_a_dead_workers_counts_stay(tmp_path):
    gunicorn = Path(sys.executable).with_name("gunicorn")
    assert gunicorn.exists(), "gunicorn is not installed; run pip install -e '.[test]'"
    folder = tmp_path / "prometheus"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDECK_")}
    env |= {
        "CAREDECK_INSTANCE_PATH": str(tmp_path / "instance"),
        "CAREDECK_METRICS_TOKEN": TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "WEB_CONCURRENCY": "2",
    }
    # A run before this server's, in the same folder: the server must not count it.
    stale = (
        "from core import metrics; metrics.HTTP_REQUESTS.labels('GET', '/healthz', '2xx').inc(1000)"
    )
    folder.mkdir()
    subprocess.run([sys.executable, "-c", stale], cwd=ROOT, env=env, check=True, timeout=60)
    assert list(folder.glob("counter_*.db"))

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "gunicorn.log").open("w")
    server = subprocess.Popen(  # noqa: S603 (our own config, fixed arguments)
        [str(gunicorn), "--config", "deploy/gunicorn.conf.py", "--bind", f"127.0.0.1:{port}"]
        + ["wsgi:app"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"{base}/healthz")
                break
            except (urllib.error.URLError, OSError):
                assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()
                assert time.monotonic() < deadline, "gunicorn did not start within 60 s"
                time.sleep(0.2)
        sent = 1

        def writers() -> set[str]:
            return {path.stem.split("_")[-1] for path in folder.glob("counter_*.db")}

        # Until both workers have answered some (the kernel chooses which one accepts).
        while len(writers()) < 2 and sent < 2000:
            _get(f"{base}/healthz")
            sent += 1
        assert len(writers()) == 2, "one worker answered every request"
        for _ in range(4):  # whichever worker answers the scrape, it sees both
            assert _total(_get(f"{base}/metrics", AUTH)) == sent

        # A worker killed: gunicorn starts another; what the dead one counted still counts.
        victim = int(sorted(writers())[0])
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(f"{base}/healthz")
                sent += 1
                break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert _total(_get(f"{base}/metrics", AUTH)) == sent
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    assert not list(folder.glob("*.db")), "gunicorn leaves its samples behind"


# The deployment files agree ---------------------------------------------------------------


def test_every_long_running_role_is_annotated_for_scraping_on_the_port_it_serves():
    import yaml
    from test_deploy import COMPOSE, K8S_BASE, ROLES, containers, find, render

    objects = render(K8S_BASE)
    config = find(objects, "ConfigMap", "caredeck-config")["data"]
    metrics_port = config["CAREDECK_METRICS_PORT"]
    for role in ROLES:
        deployment = find(objects, "Deployment", f"caredeck-{role}")
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", role
        assert annotations["prometheus.io/path"] == metrics.PATH, role
        (container,) = containers(deployment)
        ports = {port["containerPort"] for port in container["ports"]}
        assert int(annotations["prometheus.io/port"]) in ports, role
        if container["command"][0] == "caredeck":  # the roles without HTTP
            assert annotations["prometheus.io/port"] == metrics_port, role
    compose = yaml.safe_load(COMPOSE.read_text())
    assert compose["x-caredeck-environment"]["CAREDECK_METRICS_PORT"] == metrics_port
    assert compose["x-caredeck-environment"]["CAREDECK_METRICS_TOKEN"] == (
        "${CAREDECK_METRICS_TOKEN:-}"  # no default token: not served until one is set
    )
    for role in ("worker", "consumer", "scheduler"):
        assert compose["services"][role]["expose"] == [metrics_port], role
        assert "ports" not in compose["services"][role], role  # not on the host
