"""``/healthz`` (the process is alive) and ``/readyz`` (each backend's state)."""

from __future__ import annotations

import concurrent.futures
import os
import smtplib
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, current_app

from core import db, messaging
from core.auth.access import public

health = Blueprint("health", __name__)
CHECK_TIMEOUT_SECONDS = 5.0


@health.route("/healthz")
@public
def healthz():
    return {"status": "ok"}


@health.route("/readyz")
@public
def readyz():
    """Every backend's state (``ok``, ``unchecked: ...`` or ``error: ...``); ``503`` when
    any is in error."""
    app = current_app._get_current_object()
    checks = {
        "database": lambda: _database(app),
        "message_bus": lambda: _message_bus(app),
        "task_queue": lambda: app.extensions["caredeck"].jobs.check(),
        "cache": lambda: _redis(app.config["REDIS_URL"]),
        "mail": lambda: _mail(app.config["SMTP_URL"]),
        "file_store": lambda: _folder_or_remote(app.config["STORAGE_URL"]),
    }
    # Checks run side by side, each bounded, so one hung backend cannot hang the probe.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(checks))
    futures = {name: pool.submit(_run, app, check) for name, check in checks.items()}
    backends = {}
    for name, future in futures.items():
        try:
            backends[name] = future.result(timeout=CHECK_TIMEOUT_SECONDS)
        except concurrent.futures.TimeoutError:
            backends[name] = f"error: no answer within {CHECK_TIMEOUT_SECONDS:g} s"
    pool.shutdown(wait=False)
    ready = not any(state.startswith("error") for state in backends.values())
    return {"status": "ready" if ready else "not ready", "backends": backends}, (
        200 if ready else 503
    )


def _run(app, check) -> str:
    try:
        with app.app_context():
            return check()
    except Exception as error:  # a readiness probe reports, it does not raise
        return f"error: {type(error).__name__}: {error}"


def _database(app) -> str:
    with db.database.connection_context():
        db.database.execute_sql("SELECT 1")
        waiting = db.pending(app.extensions["caredeck"].migration_sources)
    if waiting:
        names = ", ".join(f"{owner} ({len(names)})" for owner, names in waiting.items())
        return f"error: migrations pending for {names}; run `caredeck db upgrade`"
    return "ok"


def _message_bus(app) -> str:
    with messaging.connection(app) as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)
    return "ok"


def _redis(url: str) -> str:
    if url.startswith("memory:"):
        return "ok"
    import redis

    redis.Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_SECONDS).ping()
    return "ok"


def _mail(url: str) -> str:
    if url.startswith("file:"):
        return _folder_or_remote(url)
    parts = urlsplit(url)
    smtp_class = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    with smtp_class(parts.hostname, parts.port or 0, timeout=CHECK_TIMEOUT_SECONDS) as client:
        client.noop()
    return "ok"


def _folder_or_remote(url: str) -> str:
    if not url.startswith("file:"):
        return "unchecked: a remote store is checked by the plugin that uses it"
    folder = Path(urlsplit(url).path)
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        return f"error: {folder} is not writable"
    return "ok"
