"""The data layer: one peewee ``DatabaseProxy``, a connection per request, job and message,
and versioned migrations kept per plugin.

Models subclass :class:`Model`; the app factory points the proxy at the configured database.
Each plugin keeps its own migrations folder and its own history table
(``<plugin>_schema_migrations``), so plugins are upgraded independently.

PostgreSQL connections come from a pool (``playhouse.pool``): a request, job or message takes
one and gives it back when it ends, instead of starting a new server session each time. A new
session cost 4-7 ms to open, and its first queries run with cold catalog caches: on the
benchmark's data (``bench/monitoring.py``) a department's worklist page took 46 ms per
request with a new connection and 23 ms from the pool. SQLite opens its file per request.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import peewee
from playhouse import db_url
from playhouse.migrations import Runner
from playhouse.pool import PooledDatabase

database = peewee.DatabaseProxy()


class Model(peewee.Model):
    """Base class for every Caredeck model (core and plugins)."""

    class Meta:
        database = database
        legacy_table_names = False


class UTCDateTimeField(peewee.DateTimeField):
    """A moment in time: takes aware datetimes, stores naive UTC, returns aware UTC.

    Storing naive UTC keeps SQLite and PostgreSQL (``timestamp``) identical and independent
    of the server's time zone; refusing naive input stops local times slipping in unlabelled.
    """

    def db_value(self, value):
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                raise ValueError(f"{self.name}: a naive datetime is ambiguous; pass an aware one")
            value = value.astimezone(datetime.UTC).replace(tzinfo=None)
        return super().db_value(value)

    def python_value(self, value):
        value = super().python_value(value)
        if isinstance(value, datetime.datetime):
            return value.replace(tzinfo=datetime.UTC)
        return value


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# The pool of each process: at most this many connections open at once (a request waits up
# to ``timeout`` seconds for one, then fails), and a connection is replaced once it is older
# than ``stale_timeout`` seconds. Each can be set in the database URL's query string
# (``postgresql://.../caredeck?max_connections=40``).
POOL_DEFAULTS = {"max_connections": 20, "stale_timeout": 300, "timeout": 10}


def connect(url: str) -> peewee.Database:
    """Open the database named by ``url`` (not yet connected); PostgreSQL is pooled."""
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # WAL lets the web app read while a job writes; the busy timeout makes a writer
        # wait for the lock instead of failing at once.
        return db_url.connect(
            url,
            pragmas={
                "journal_mode": "wal",
                "foreign_keys": 1,
                "busy_timeout": 10_000,
                # REPLACE deletes a conflicting row; with this, the delete fires DELETE
                # triggers, so append-only tables cannot be rewritten by INSERT OR REPLACE.
                "recursive_triggers": 1,
            },
            check_same_thread=False,
        )
    # JIT compilation pays off for long analytical queries; for the short queries of a web
    # request it costs more than the query (750 ms of an 830 ms worklist page, measured in
    # bench/monitoring.py), so it is off for every connection. Sessions run in UTC, so a
    # query that turns a stored (naive UTC) time into timestamptz gets it back in UTC.
    scheme, _, rest = url.partition("://")
    given = db_url.parse(url)
    pool = {name: value for name, value in POOL_DEFAULTS.items() if name not in given}
    # The pool checks a connection on the way out (a round trip) and drops it if the server
    # closed it, so a restarted server costs no failed request.
    return db_url.connect(
        f"{scheme.removesuffix('+pool')}+pool://{rest}",
        autoconnect=True,
        options="-c jit=off -c timezone=UTC",
        **pool,
    )


def close_pool(db: peewee.Database) -> None:
    """Close every connection of ``db``'s pool, the calling thread's included (a no-op for
    a database without a pool, beyond closing the calling thread's connection)."""
    if isinstance(db, PooledDatabase):
        db.close_all()
    elif not db.is_closed():
        db.close()


def init_app(app) -> None:
    """Point the proxy at the app's database. A request takes a connection (from the pool on
    PostgreSQL) at its first query and gives it back when it ends, whatever happened; a
    request that never queries (``/healthz``, ``/readyz``, static files) takes none, so
    they still answer while the database is down."""
    previous = database.obj
    database.initialize(connect(app.config["DATABASE_URL"]))
    if isinstance(previous, PooledDatabase):
        previous.close_idle()  # another app's pool in this process (tests build several)

    @app.teardown_request
    def _close_connection(exc: BaseException | None) -> None:
        if not database.is_closed():
            database.close()  # back to the pool (a broken one is discarded)


def is_sqlite() -> bool:
    return isinstance(database.obj, peewee.SqliteDatabase)


@contextlib.contextmanager
def _upgrade_lock() -> Iterator[None]:
    """Serialise concurrent upgrades (two pods starting at once) on PostgreSQL."""
    if is_sqlite():  # SQLite takes a write lock for each migration already.
        yield
        return
    key = int.from_bytes(hashlib.sha256(b"caredeck-migrations").digest()[:8], "big", signed=True)
    database.execute_sql("SELECT pg_advisory_lock(%s)", (key,))
    try:
        yield
    finally:
        database.execute_sql("SELECT pg_advisory_unlock(%s)", (key,))


def _runner(owner: str, directory: Path) -> Runner:
    return Runner(database.obj, str(directory), table_name=f"{owner}_schema_migrations")


def upgrade(sources: Mapping[str, Path]) -> dict[str, list[str]]:
    """Apply every pending migration, owner by owner (``core`` first). Idempotent.

    ``sources`` maps an owner (``core`` or a plugin name) to its migrations folder.
    Returns the names applied per owner.
    """
    applied: dict[str, list[str]] = {}
    with database.connection_context(), _upgrade_lock():
        for owner, directory in sources.items():
            applied[owner] = _runner(owner, directory).up()
    return applied


def pending(sources: Mapping[str, Path]) -> dict[str, list[str]]:
    """Migrations not yet applied, per owner (only owners with something pending)."""
    result = {}
    for owner, directory in sources.items():
        names = [m.name for m in _runner(owner, directory).status() if not m.applied]
        if names:
            result[owner] = names
    return result
