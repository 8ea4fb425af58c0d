"""The data layer on SQLite and PostgreSQL: migrations per plugin, UTC times, connections."""

import datetime
import zoneinfo

import peewee
import pytest
from hello_plugin import plugin as hello

from core import db
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


def test_each_request_gets_a_connection_and_closes_it(app, client):
    assert database.is_closed()
    assert client.get("/api/openapi.json").status_code == 200
    assert database.is_closed()
