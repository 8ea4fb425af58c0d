"""Pytest fixtures for Caredeck and for third-party plugin authors.

Installed as a pytest plugin (entry point ``pytest11``), so a plugin's own test suite gets
these fixtures without importing anything. Override ``caredeck_plugins`` to choose the
plugins an app is built with; they are registered directly, no install needed::

    @pytest.fixture
    def caredeck_plugins():
        return {"hello": hello_plugin.plugin}

    def test_greeting(client_for):
        assert client_for("nurse").get("/api/hello/greeting").status_code == 200

Apps use embedded backends (SQLite, Kombu ``memory://``, Dramatiq ``StubBroker``) in a
temporary folder. Database tests run on SQLite and, when ``CAREDECK_TEST_DATABASE_URL`` is
set, again on PostgreSQL. SQLite is a temporary file rather than ``:memory:`` because each
connection to ``:memory:`` is a different, empty database, and the core opens a connection
per request, per job and per message (PostgreSQL's come from a pool, closed after each test).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

ROLE_PASSWORD = "correct horse battery staple"  # noqa: S105 (test accounts only)
SERVICE_VARIABLES = {
    "database": "CAREDECK_TEST_DATABASE_URL",
    "redis": "CAREDECK_TEST_REDIS_URL",
    "amqp": "CAREDECK_TEST_AMQP_URL",
}


def service_url(service: str) -> str:
    """The URL of a real test server, or skip (fail with ``CAREDECK_REQUIRE_SERVICES=1``)."""
    variable = SERVICE_VARIABLES[service]
    url = os.environ.get(variable)
    if url:
        return url
    message = f"{variable} is not set: no real {service} server to test against"
    if os.environ.get("CAREDECK_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (CAREDECK_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With ``CAREDECK_REQUIRE_SERVICES=1`` (CI) a skipped test fails: a suite must not
    pass by skipping, whatever the reason for the skip."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and os.environ.get("CAREDECK_REQUIRE_SERVICES") == "1"
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped, but CAREDECK_REQUIRE_SERVICES=1 runs every test: {report.longrepr}"
        )


def reset_postgresql(url: str) -> None:
    """Drop everything in the test database's public schema."""
    from core.db import close_pool, connect

    database = connect(url)
    try:
        with database.connection_context():
            database.execute_sql("DROP SCHEMA IF EXISTS public CASCADE")
            database.execute_sql("CREATE SCHEMA public")
    finally:
        close_pool(database)


def fresh_postgresql_url() -> str:
    """The PostgreSQL test database's URL, its schema emptied (skip, or fail, without one);
    a module that runs on PostgreSQL only returns it from its ``caredeck_database_url``."""
    url = service_url("database")
    reset_postgresql(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def caredeck_database_url(request, tmp_path) -> str:
    """Each database test runs on SQLite and on PostgreSQL (a clean schema each time)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/caredeck.db"
    return fresh_postgresql_url()


@pytest.fixture
def caredeck_config(tmp_path, caredeck_database_url) -> dict[str, Any]:
    """Settings for a test app: embedded backends in a temporary folder."""
    return {
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "DATABASE_URL": caredeck_database_url,
        "AMQP_URL": "memory://",
        "DRAMATIQ_URL": "stub://",
        "REDIS_URL": "memory://",
        "SMTP_URL": f"file://{tmp_path}/outbox",
        "STORAGE_URL": f"file://{tmp_path}/files",
        "SECRET_KEY": "test-secret-key-that-is-long-enough-0123456789",
        "TIMEZONE": "UTC",
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture
def caredeck_plugins() -> Mapping[str, Any]:
    """The plugins a test app is built with (name to module). Override in a conftest."""
    return {}


@pytest.fixture
def make_app(caredeck_config, caredeck_plugins) -> Callable[..., Any]:
    """Build a migrated test app: ``make_app(plugins=None, **settings)``."""
    from core import db
    from core.app import create_app

    built = []

    def build(plugins: Mapping[str, Any] | None = None, **settings: Any):
        app = create_app(
            {**caredeck_config, **settings},
            plugin_objects=caredeck_plugins if plugins is None else plugins,
        )
        app.config["TESTING"] = True
        db.upgrade(app.extensions["caredeck"].migration_sources)
        built.append(app)
        return app

    yield build
    for app in built:
        app.extensions["caredeck"].jobs.stop()
    if db.database.obj is not None:
        db.close_pool(db.database.obj)  # no connection outlives its test


@pytest.fixture
def app(make_app):
    """A migrated app with ``caredeck_plugins`` registered."""
    return make_app()


@pytest.fixture
def client(app):
    """An anonymous test client."""
    return app.test_client()


@functools.cache
def role_password_hash() -> str:
    """``ROLE_PASSWORD`` hashed once per test process. A hash costs 0.15 s of scrypt, and
    every test with the ``users`` fixture needs four of them; signing in still verifies."""
    from core.auth.models import generate_password_hash

    return generate_password_hash(ROLE_PASSWORD)


@pytest.fixture
def users(app) -> dict[str, Any]:
    """One active user per role (password ``ROLE_PASSWORD``), by role."""
    from core.auth.access import ROLES
    from core.auth.models import User
    from core.db import database

    with database.connection_context():
        return {
            role: User.create(
                email=f"{role}@example.org",
                name=f"Test {role}",
                role=role,
                status="active",
                password_hash=role_password_hash(),
            )
            for role in ROLES
        }


@pytest.fixture
def client_for(app, users) -> Callable[[str], Any]:
    """``client_for("doctor")``: a test client signed in as that role (bearer token)."""
    from core.auth.models import ApiToken
    from core.db import database

    def signed_in(role: str):
        with database.connection_context():
            token, _ = ApiToken.issue(users[role])
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        return client

    return signed_in


def run_jobs(app, timeout_seconds: float = 30) -> None:
    """Run every queued job on the app's StubBroker to completion; re-raise a failure."""
    jobs = app.extensions["caredeck"].jobs
    worker = jobs.worker(threads=1)
    worker.start()
    try:
        for queue in list(jobs.broker.get_declared_queues()):
            jobs.broker.join(queue, timeout=int(timeout_seconds * 1000), fail_fast=True)
        worker.join()
    finally:
        worker.stop()


def assert_migrations_create(app, plugin: str) -> None:
    """Fail unless the plugin's migrations created every column of every model it declares."""
    from core.db import database

    models = _models_of(app, plugin)
    assert models, f"plugin {plugin!r} declares no models"
    with database.connection_context():
        for model in models:
            table = model._meta.table_name
            columns = {column.name for column in database.get_columns(table)}
            assert columns, f"table {table} does not exist after the migrations"
            expected = {field.column_name for field in model._meta.sorted_fields}
            missing = expected - columns
            assert not missing, f"table {table} lacks columns {sorted(missing)}"


def _models_of(app, plugin: str) -> list:
    from core import plugins

    state = app.extensions["caredeck"]
    return plugins.call(state.manager, "caredeck_models", app=app).get(plugin, [])


# S3 (moto's server mode) --------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server on 127.0.0.1 for the session: ``moto_server`` (the
    ``moto[server]`` console script next to the running Python) on a free port. Yields its
    endpoint URL (``http://127.0.0.1:PORT``); any access key and secret are accepted. The
    server is stopped at the end of the session, whatever happened."""
    import shutil
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    import urllib.error
    import urllib.request
    from pathlib import Path

    candidate = Path(sys.executable).with_name("moto_server")
    executable = str(candidate) if candidate.exists() else shutil.which("moto_server")
    if executable is None:
        pytest.skip("moto_server is not installed: pip install 'moto[server]'")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(  # noqa: S603 (our own console script, fixed arguments)
            [executable, "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    output.seek(0)
                    pytest.fail(
                        f"moto_server exited with {process.returncode}: "
                        f"{output.read().decode(errors='replace')[-2000:]}",
                        pytrace=False,
                    )
                try:
                    with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):  # noqa: S310
                        break
                except (urllib.error.URLError, OSError):
                    if time.monotonic() > deadline:
                        pytest.fail("moto_server did not answer within 30 s", pytrace=False)
                    time.sleep(0.1)
            yield endpoint
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# A real SMTP server for mail tests (reporting) ---------------------------------------------


class SMTPSink:
    """Messages accepted by the ``smtp_sink`` server: ``messages`` (parsed), ``envelopes``."""

    def __init__(self) -> None:
        import threading

        self.host = "127.0.0.1"
        self.port = 0
        self.envelopes: list[Any] = []
        self.refuse: set[str] = set()  # recipients answered 550
        self.fail_next = 0  # answer the next N messages 451 (try again later)
        self.sessions: list[Any] = []  # one per SMTP connection that sent a message
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}?starttls=disable"

    @property
    def messages(self) -> list[Any]:
        import email
        import email.policy

        with self._lock:
            raw = [envelope.content for envelope in self.envelopes]
        return [email.message_from_bytes(data, policy=email.policy.default) for data in raw]

    def wait_for(self, count: int, timeout: float = 30) -> list[Any]:
        import time

        deadline = time.monotonic() + timeout
        while len(self.envelopes) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return "451 4.3.0 Try again later"
            self.envelopes.append(envelope)
            if not any(known is session for known in self.sessions):
                self.sessions.append(session)
        return "250 Message accepted for delivery"


@contextlib.contextmanager
def serving(sink: SMTPSink) -> Iterator[SMTPSink]:
    """Run ``sink`` as a real SMTP server (aiosmtpd) on 127.0.0.1, at a free port, until the
    block ends."""
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        sink.port = probe.getsockname()[1]
    controller = Controller(sink, hostname=sink.host, port=sink.port, data_size_limit=0)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture
def smtp_sink():
    """A real SMTP server collecting what it accepts (:func:`serving`).

    ``smtp_sink.url`` is an ``SMTP_URL`` for it; ``smtp_sink.messages`` the parsed messages.
    """
    with serving(SMTPSink()) as sink:
        yield sink
