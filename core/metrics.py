"""Prometheus metrics: what each process records, what a scrape gathers, and who may read it.

Each process records its own work in the metrics below (web requests, job runs, consumed
messages, scheduled tasks). A scrape of the web app's ``/metrics`` adds what is gathered at
that moment: the queues' depths, whether each broker answered, and every plugin's
``caredeck_metrics`` collectors (the ingest lag, the delivery backlog). The worker, consumer
and scheduler serve their own process's metrics on ``CAREDECK_METRICS_PORT``.

prometheus_client writes the exposition format; a hand-written one would have to get the
escaping, histogram buckets, content negotiation and the multiprocess mode right again.

Deny by default: ``/metrics`` answers only a scraper presenting ``Authorization: Bearer
<CAREDECK_METRICS_TOKEN>``; without a token configured the path is not there (404) at all.
Label values are never raw request data: routes are URL rules (``/api/patients/<mrn>``),
never paths, so no MRN or id reaches the metrics.
"""

from __future__ import annotations

import concurrent.futures
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger("caredeck.metrics")

# prometheus_client picks its mode when first imported: with PROMETHEUS_MULTIPROC_DIR set
# (gunicorn sets it, deploy/gunicorn.conf.py) every process writes its samples to files
# there and a scrape adds up all the files; without it samples stay in this process.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
# A scrape waits this long for the brokers and the plugins' collectors, together; what has
# not answered by then is reported down, so a hung broker never hangs the scrape.
SCRAPE_TIMEOUT_SECONDS = 2.0
PATH = "/metrics"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"  # the route of a request no URL rule matched (404, 405)

PROCESS = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "caredeck_http_requests_total",
    "HTTP requests answered, by method, route template and status class (2xx, 4xx, ...).",
    ["method", "route", "status"],
    registry=PROCESS,
)
HTTP_DURATION = Histogram(
    "caredeck_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=PROCESS,
)
JOB_DURATION = Histogram(
    "caredeck_job_duration_seconds",
    "Time a Dramatiq actor ran, by actor, queue and outcome (success, retry, failure).",
    ["actor", "queue", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600),
    registry=PROCESS,
)
CONSUMER_MESSAGES = Counter(
    "caredeck_consumer_messages_total",
    "Messages the consumer took from a queue, by queue and outcome (stored, dead_lettered).",
    ["queue", "outcome"],
    registry=PROCESS,
)
SCHEDULED_RUNS = Counter(
    "caredeck_scheduled_task_runs_total",
    "Runs of the plugins' periodic tasks, by task and outcome (success, failure).",
    ["task", "outcome"],
    registry=PROCESS,
)


# Web requests ---------------------------------------------------------------------------


def init_app(app: Flask) -> None:
    """Count every request by its URL rule, and serve ``/metrics`` in front of the app."""
    app.wsgi_app = Endpoint(app, app.wsgi_app, scrape=True)

    @app.after_request
    def _record(response):
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED
        method = request.method if request.method in METHODS else "other"
        HTTP_REQUESTS.labels(method, route, f"{response.status_code // 100}xx").inc()
        started = g.get("request_started")  # set by core.requestlog for its log line
        if started is not None:
            HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)
        return response


# The endpoint ---------------------------------------------------------------------------


def authorized(header: str, token: str) -> bool:
    """Whether an ``Authorization`` header presents ``token`` (compared in constant time)."""
    scheme, _, presented = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode(), token.encode()
    )


class Endpoint:
    """WSGI: ``GET /metrics`` for a scraper with the token; every other request goes on to
    ``wsgi_app``. It sits in front of Flask, so a scrape opens no session and reads no API
    token from the database: the metrics still answer while the database is down.

    With no token configured it steps aside and the path is an ordinary 404. With one, a
    missing or wrong token gets ``401`` (the endpoint's existence is documented; its
    content is what the token protects, and a 401 tells a misconfigured scraper why).
    ``scrape`` adds what is gathered at scrape time (the web app's endpoint only).
    """

    def __init__(self, app: Flask, wsgi_app: Callable, *, scrape: bool) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.scrape = scrape

    def __call__(self, environ, start_response):
        token = self.app.config["METRICS_TOKEN"]
        if environ.get("PATH_INFO") != PATH or not token:
            return self.wsgi_app(environ, start_response)
        if not authorized(environ.get("HTTP_AUTHORIZATION", ""), token):
            start_response(
                "401 Unauthorized",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("WWW-Authenticate", 'Bearer realm="caredeck-metrics"'),
                ],
            )
            return [b"Send Authorization: Bearer <CAREDECK_METRICS_TOKEN>.\n"]
        return make_wsgi_app(registry(self.app, scrape=self.scrape))(environ, start_response)


def not_found(environ, start_response):
    start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"Not found.\n"]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the process open


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the stdlib's signature)
        pass  # a line per scrape would drown the role's own log


def serve(app: Flask, port: int) -> _Server:
    """Serve this process's metrics on ``port`` (all interfaces) from a background thread,
    for the roles that serve no HTTP (worker, consumer, scheduler): the standard library's
    WSGI server, as prometheus_client's own ``start_http_server`` uses. Returns the server:
    ``server_port`` is the port (useful with 0), ``shutdown()`` stops it."""
    server = make_server(
        "0.0.0.0",  # noqa: S104 (inside a container; scraped over the pod network)
        port,
        Endpoint(app, not_found, scrape=False),
        server_class=_Server,
        handler_class=_Quiet,
    )
    threading.Thread(target=server.serve_forever, name="caredeck-metrics", daemon=True).start()
    log.info("metrics served on port %d at %s", server.server_port, PATH)
    return server


# What a scrape reads --------------------------------------------------------------------


def registry(app: Flask, *, scrape: bool) -> CollectorRegistry:
    """A registry for one scrape: this process's metrics (every process's, in multiprocess
    mode), plus with ``scrape`` what is gathered now."""
    found = CollectorRegistry(auto_describe=False)
    if MULTIPROCESS_DIR:
        MultiProcessCollector(found, path=MULTIPROCESS_DIR)
    else:
        found.register(_Collected(PROCESS.collect))
    if scrape:
        found.register(_Collected(lambda: gather(app)))
    return found


class _Collected:
    def __init__(self, collect: Callable[[], Iterable[Any]]) -> None:
        self.collect = collect


def gather(app: Flask, timeout: float = SCRAPE_TIMEOUT_SECONDS) -> list[Any]:
    """Queue depths, broker state and the plugins' metrics, gathered side by side within
    ``timeout`` seconds in all."""
    state = app.extensions["caredeck"]
    jobs: dict[tuple[str, str], Callable[[], Any]] = {
        ("backend", "task_queue"): lambda: state.jobs.depths(timeout)
    }
    if state.consumers:
        jobs["backend", "message_bus"] = lambda: _bus_depths(app, timeout)
    for plugin, collectors in state.metrics.items():
        jobs["plugin", plugin] = lambda p=plugin, c=collectors: _plugin(app, p, c)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs))
    futures = {key: pool.submit(fn) for key, fn in jobs.items()}
    concurrent.futures.wait(futures.values(), timeout=timeout)
    pool.shutdown(wait=False)  # a hung broker's thread ends with its own socket timeout

    depths = GaugeMetricFamily(
        "caredeck_queue_messages",
        "Messages in a queue not yet done with, by backend (task_queue: Dramatiq, with its "
        ".DQ delay and .XQ dead-letter queues; message_bus: the consumers' queues).",
        labels=["backend", "queue"],
    )
    up = {
        "backend": GaugeMetricFamily(
            "caredeck_backend_up",
            "Whether a broker answered this scrape's queue-depth query (1) or not (0).",
            labels=["backend"],
        ),
        "plugin": GaugeMetricFamily(
            "caredeck_plugin_metrics_up",
            "Whether a plugin's metrics were gathered for this scrape (1) or not (0).",
            labels=["plugin"],
        ),
    }
    families: list[Any] = [depths]
    for (kind, name), future in futures.items():
        ok = future.done() and future.exception() is None
        if not ok:
            reason = future.exception() if future.done() else f"no answer in {timeout:g} s"
            log.warning("metrics: %s %s not gathered: %s", kind, name, reason)
        elif kind == "backend":
            for queue, count in sorted(future.result().items()):
                depths.add_metric([name, queue], count)
        else:
            families.extend(future.result())
        up[kind].add_metric([name], 1 if ok else 0)
    return [*families, *up.values()]


def _bus_depths(app: Flask, timeout: float) -> dict[str, int]:
    from core import messaging  # (messaging records its messages here: imported when used)

    return messaging.queue_depths(app, app.extensions["caredeck"].consumers, timeout)


def _plugin(app: Flask, plugin: str, collectors: list[Any]) -> list[Any]:
    from core.db import database

    prefix = f"caredeck_{plugin}_"
    with app.app_context(), database.connection_context():
        families = [family for collector in collectors for family in collector.collect()]
    for family in families:
        if not family.name.startswith(prefix):
            raise ValueError(f"metric {family.name!r} is not named {prefix}*")
    return families
