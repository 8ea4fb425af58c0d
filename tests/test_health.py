"""Liveness and readiness."""

import pytest
from helpers import sqlite_url

from core.testing import service_url


@pytest.fixture
def caredeck_database_url(tmp_path):
    return sqlite_url(tmp_path)


def test_healthz_answers_without_touching_backends(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_readyz_reports_each_embedded_backend_ready(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json["status"] == "ready"
    assert set(response.json["backends"]) == {
        "database",
        "message_bus",
        "task_queue",
        "cache",
        "mail",
        "file_store",
    }
    assert set(response.json["backends"].values()) == {"ok"}


def test_readyz_names_the_backend_that_is_down(make_app):
    # Port 9 on loopback: nothing listens there, so the connection is refused at once.
    app = make_app(REDIS_URL="redis://127.0.0.1:9/0", DRAMATIQ_URL="redis://127.0.0.1:9/0")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    backends = response.json["backends"]
    assert backends["cache"].startswith("error: ConnectionError")
    assert backends["task_queue"].startswith("error: ConnectionError")
    assert backends["database"] == "ok"


def test_readyz_reports_pending_migrations(app, tmp_path):
    folder = tmp_path / "later"
    folder.mkdir()
    (folder / "0001_more.py").write_text("def up(migrator, db):\n    pass\n")
    app.extensions["caredeck"].migration_sources["later"] = folder
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["backends"]["database"] == (
        "error: migrations pending for later (1); run `caredeck db upgrade`"
    )


@pytest.mark.integration
def test_readyz_against_the_real_servers(make_app):
    app = make_app(
        DATABASE_URL=service_url("database"),
        AMQP_URL=service_url("amqp"),
        DRAMATIQ_URL=service_url("redis"),
        REDIS_URL=service_url("redis"),
    )
    response = app.test_client().get("/readyz")
    assert response.status_code == 200, response.json
    assert set(response.json["backends"].values()) == {"ok"}
