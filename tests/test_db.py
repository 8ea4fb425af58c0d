"""The data layer on SQLite and PostgreSQL: migrations per plugin, UTC times, connections."""

import datetime
import zoneinfo

import peewee
import pytest
from hello_plugin import plugin as hello
from playhouse.pool import PooledDatabase

from core import db
from core.api import DATABASE_UNAVAILABLE
from core.db import database


@pytest.fixture
def caredeck_plugins():
    return {"hello": hello}


def test_upgrade_is_idempotent_and_keeps_a_history_per_plugin(app):
    sources = app.extensions["caredeck"].migration_sources
    assert set(sources) == {"core", "hello"}
    assert db.upgrade(sources) == {"core": [], "hello": []}  # make_app already upgraded
    with database.connection_context():
        tables = set(database.get_tables())
        assert {"core_schema_migrations", "hello_schema_migrations"} <= tables
        assert {"core_users", "core_api_tokens", "hello_greetings"} <= tables
        assert db.pending(sources) == {}


def test_a_new_migration_is_pending_until_upgraded(app, tmp_path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_notes.py").write_text(
        "def up(migrator, db):\n"
        "    db.execute_sql('CREATE TABLE extra_notes (id INTEGER PRIMARY KEY)')\n"
    )
    sources = {**app.extensions["caredeck"].migration_sources, "extra": folder}
    with database.connection_context():
        assert db.pending(sources) == {"extra": ["0001_notes"]}
    assert db.upgrade(sources)["extra"] == ["0001_notes"]
    with database.connection_context():
        assert db.pending(sources) == {}
        assert "extra_notes" in database.get_tables()


def test_a_failing_migration_is_rolled_back_and_not_recorded(app, tmp_path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_broken.py").write_text(
        "def up(migrator, db):\n"
        "    db.execute_sql('CREATE TABLE broken_things (id INTEGER PRIMARY KEY)')\n"
        "    db.execute_sql('THIS IS NOT SQL')\n"
    )
    sources = {"broken": folder}
    with pytest.raises(peewee.DatabaseError):
        db.upgrade(sources)
    with database.connection_context():
        assert db.pending(sources) == {"broken": ["0001_broken"]}
        assert "broken_things" not in database.get_tables()


class Moment(db.Model):
    at = db.UTCDateTimeField()

    class Meta:
        table_name = "test_moments"


def test_times_are_stored_in_utc_and_come_back_aware(app):
    berlin = datetime.datetime(2026, 3, 29, 3, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin"))
    with database.connection_context():
        database.create_tables([Moment])
        Moment.create(at=berlin)
        stored = Moment.get()
        assert stored.at == berlin
        assert stored.at.tzinfo == datetime.UTC
        assert stored.at.hour == 1  # 03:30 CEST is 01:30 UTC
        assert Moment.select().where(Moment.at < berlin + datetime.timedelta(seconds=1)).count()


def test_a_naive_time_is_refused(app):
    with database.connection_context():
        database.create_tables([Moment])
        with pytest.raises(ValueError, match="naive datetime is ambiguous"):
            Moment.create(at=datetime.datetime(2026, 1, 1))


def test_each_request_gets_a_connection_and_closes_it(app, users, client_for):
    assert database.is_closed()
    assert client_for("nurse").get("/api/patients").status_code == 200  # queries
    assert database.is_closed()


def test_a_request_that_does_not_query_takes_no_connection(app, client, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("connected")

    monkeypatch.setattr(database.obj, "connect", refuse)
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/openapi.json").status_code == 200


def _request_backend(app) -> int:
    """The PostgreSQL server process that served one request (the request ends on return)."""
    with app.test_request_context("/healthz"):
        app.preprocess_request()
        (pid,) = database.execute_sql("SELECT pg_backend_pid()").fetchone()
        return pid


# Pools and servers that go away exist on PostgreSQL only; these run there (not skipped on
# SQLite, which would count as a skip in CI).
POSTGRESQL_ONLY = pytest.mark.parametrize("caredeck_database_url", ["postgresql"], indirect=True)


def _terminate(url: str, pid: int) -> None:
    other = db.connect(url)
    try:
        with other.connection_context():
            other.execute_sql("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        db.close_pool(other)


def test_postgresql_connections_are_pooled_and_bounded(caredeck_database_url):
    if caredeck_database_url.startswith("sqlite"):
        assert not isinstance(db.connect(caredeck_database_url), PooledDatabase)
        return
    pooled = db.connect(caredeck_database_url)
    assert isinstance(pooled, PooledDatabase)
    assert pooled._max_connections == db.POOL_DEFAULTS["max_connections"]
    assert pooled._stale_timeout == db.POOL_DEFAULTS["stale_timeout"]
    with pooled.connection_context():  # every session: no JIT, and UTC
        assert pooled.execute_sql("SHOW jit").fetchone() == ("off",)
        assert pooled.execute_sql("SHOW timezone").fetchone() == ("UTC",)
    db.close_pool(pooled)
    given = db.connect(caredeck_database_url + "?max_connections=3&stale_timeout=60")
    assert (given._max_connections, given._stale_timeout) == (3, 60)


@POSTGRESQL_ONLY  # SQLite has no pool: a request opens the file
def test_requests_give_their_connection_back_to_the_pool(app, caredeck_database_url):
    first = _request_backend(app)
    assert database.is_closed()  # given back when the request ended
    assert _request_backend(app) == first  # and taken again by the next one
    with database.connection_context():  # jobs and consumers take one the same way
        assert database.connection().get_backend_pid() == first
    assert database.is_closed()


@POSTGRESQL_ONLY  # SQLite has no pool
def test_a_connection_the_server_closed_is_replaced(app, caredeck_database_url):
    first = _request_backend(app)
    _terminate(caredeck_database_url, first)
    assert _request_backend(app) != first
    assert app.test_client().get("/readyz").json["backends"]["database"] == "ok"


@POSTGRESQL_ONLY  # SQLite has no server to lose
def test_readyz_reports_a_database_that_went_away(app, caredeck_database_url):
    pooled = database.obj
    _terminate(caredeck_database_url, _request_backend(app))  # the pool holds a dead one
    port = pooled.connect_params["port"]
    pooled.connect_params["port"] = 9  # and nothing listens where a new one would go
    try:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        assert response.json["backends"]["database"].startswith("error: OperationalError")
        assert app.test_client().get("/healthz").status_code == 200  # alive all the same
    finally:
        pooled.connect_params["port"] = port
    assert app.test_client().get("/readyz").status_code == 200


@POSTGRESQL_ONLY  # SQLite has no server to lose
def test_an_api_call_while_the_database_is_down_is_a_503_to_retry(app, client_for):
    client = client_for("admin")  # its token is issued while the database is up
    pooled = database.obj
    pooled.close_idle()  # the pool holds none: the request must connect
    port = pooled.connect_params["port"]
    pooled.connect_params["port"] = 9  # and nothing listens there
    try:
        response = client.post("/api/patients", json={"mrn": "DOWN-1", "first_name": "A"})
        assert response.status_code == 503, response.json
        assert response.headers["Retry-After"] == "5"
        assert response.json["message"] == DATABASE_UNAVAILABLE
    finally:
        pooled.connect_params["port"] = port
    assert client.get("/api/patients").status_code == 200
