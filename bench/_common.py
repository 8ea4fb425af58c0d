"""What every benchmark here needs: a database of its own to drop and create, a free port."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit, urlunsplit

import psycopg2


def database_name(url: str, *words: str) -> str:
    """The database ``url`` names; exits unless its name contains ``bench`` and each of
    ``words``: a benchmark never drops the test database or anyone else's."""
    name = urlsplit(url).path.lstrip("/")
    required = ("bench", *words)
    if not all(word in name for word in required):
        raise SystemExit(
            f"refusing to drop database {name!r}: its name must contain "
            + " and ".join(repr(word) for word in required)
        )
    return name


def administer(url: str, *statements: str) -> None:
    """Run statements on the server's maintenance database (outside any transaction)."""
    connection = psycopg2.connect(maintenance_url(url))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        connection.close()


def maintenance_url(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/postgres"))


def recreate_database(url: str, *words: str) -> None:
    name = database_name(url, *words)
    administer(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')


def drop_database(url: str, *words: str) -> None:
    administer(url, f'DROP DATABASE IF EXISTS "{database_name(url, *words)}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
