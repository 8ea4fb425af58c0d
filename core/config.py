"""Settings from ``CAREDECK_*`` environment variables, with embedded defaults.

Every backend has one setting whose default is an embedded backend, so a fresh machine
runs with nothing else installed; production points the same setting at a real server.
A missing or malformed setting stops start-up with one sentence naming it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "CAREDECK_"


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one sentence naming it."""


@dataclass(frozen=True)
class Setting:
    """One setting, read from ``CAREDECK_<name>``.

    ``default`` is a value, or a callable taking the settings read so far (so a default can
    live under the instance folder); ``None`` makes the setting required. ``parse`` turns the
    text into a value and raises ``ValueError`` with a short reason when it cannot.
    """

    name: str
    default: Any
    parse: Callable[[str], Any] = str
    help: str = ""
    secret: bool = False

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.name


# Parsers -------------------------------------------------------------------------------


def url(*schemes: str) -> Callable[[str], str]:
    """A URL whose scheme is one of ``schemes``."""

    def parse(text: str) -> str:
        scheme = urlsplit(text).scheme
        if scheme not in schemes:
            raise ValueError(
                f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
            )
        return text

    return parse


def timezone(text: str) -> str:
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError("must be an IANA time zone such as UTC or Europe/Berlin") from None
    return text


def integer(minimum: int = 0) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return parse


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def name_list(text: str) -> list[str] | None:
    """Comma-separated names; ``*`` means all (``None``)."""
    if text.strip() == "*":
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


def secret_key(text: str) -> str:
    if len(text) < 32:
        raise ValueError("must be at least 32 characters long (use a random value)")
    return text


def metrics_token(text: str) -> str:
    """Empty (metrics off) or a random value long enough not to be guessed."""
    text = text.strip()
    if text and len(text) < 32:
        raise ValueError("must be empty (no /metrics) or at least 32 characters long")
    return text


SERVER_DATABASES = ("postgresql", "postgres", "postgresql+pool", "postgres+pool")

CORE_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "INSTANCE_PATH",
        lambda s: os.path.abspath("instance"),
        os.path.abspath,
        "Folder for embedded data: SQLite file, message bus, outbox, file store, secret key.",
    ),
    Setting(
        "DATABASE_URL",
        lambda s: f"sqlite:///{s['INSTANCE_PATH']}/caredeck.db",
        url("sqlite", *SERVER_DATABASES),
        "sqlite:///path (embedded) or postgresql://user:password@host/db.",
        secret=True,
    ),
    Setting(
        "AMQP_URL",
        "filesystem://",
        url("filesystem", "memory", "amqp", "amqps"),
        "Message bus: filesystem:// (embedded, under the instance folder), memory:// "
        "(one process) or amqp://user:password@host:5672/vhost (RabbitMQ).",
        secret=True,
    ),
    Setting(
        "DRAMATIQ_URL",
        "stub://",
        url("stub", "redis", "rediss"),
        "Task queue: stub:// (in-process worker thread) or redis://host:6379/0.",
        secret=True,
    ),
    Setting(
        "REDIS_URL",
        "memory://",
        url("memory", "redis", "rediss"),
        "Rate limits and cache: memory:// (in-process) or redis://host:6379/1.",
        secret=True,
    ),
    Setting(
        "SMTP_URL",
        lambda s: f"file://{s['INSTANCE_PATH']}/outbox",
        url("file", "smtp", "smtps"),
        "Mail: file:///folder (.eml files) or smtp://user:password@host:587 (STARTTLS), "
        "smtps://... (implicit TLS).",
        secret=True,
    ),
    Setting(
        "STORAGE_URL",
        lambda s: f"file://{s['INSTANCE_PATH']}/files",
        url("file", "s3"),
        "File store: file:///folder or s3://bucket/prefix.",
    ),
    Setting(
        "SECRET_KEY",
        # Embedded installs get a random key kept in the instance folder; a server database
        # means several processes that must share one key, so there it is required.
        lambda s: None if s["DATABASE_URL"].startswith(SERVER_DATABASES) else _instance_secret(s),
        secret_key,
        "Signs sessions and tokens; required with a server database.",
        secret=True,
    ),
    Setting("TIMEZONE", "UTC", timezone, "The hospital's zone; naive source times are read in it."),
    Setting(
        "PLUGINS",
        "*",
        name_list,
        "Enabled plugins, comma-separated; * (default) enables every installed plugin.",
    ),
    Setting("LOG_LEVEL", "INFO", log_level, "DEBUG, INFO, WARNING or ERROR."),
    Setting(
        "TRUSTED_PROXIES",
        "0",
        integer(minimum=0),
        "How many reverse proxies stand in front of the app; their X-Forwarded-For and "
        "X-Forwarded-Proto give the client's address (audit log, rate limits) and scheme.",
    ),
    Setting(
        "SECURE_COOKIES",
        "true",
        boolean,
        "Send the session cookie over HTTPS only (browsers also accept it on 127.0.0.1 and "
        "localhost); set false only for a plain-HTTP test installation.",
    ),
    Setting(
        "METRICS_TOKEN",
        "",
        metrics_token,
        "Bearer token a Prometheus scraper must present for /metrics; empty (default): "
        "/metrics is not served (404).",
        secret=True,
    ),
    Setting(
        "METRICS_PORT",
        "0",
        integer(minimum=0),
        "Port on which `caredeck worker`, `consume` and `scheduler` serve /metrics (same "
        "token); 0 (default): not served. The web app serves /metrics on its own port.",
    ),
)


def _instance_secret(settings: Mapping[str, Any]) -> str:
    """The embedded installation's secret key, made on first use. Processes that start at
    the same moment (gunicorn's workers) each write a draft and link it into place: the first
    link wins and every process reads that key, never a half-written one."""
    path = Path(settings["INSTANCE_PATH"]) / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, draft = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
            with contextlib.suppress(FileExistsError):  # another process was first
                os.link(draft, path)
        finally:
            os.unlink(draft)
    return path.read_text().strip()


def redact(text: str) -> str:
    """Hide the password in a URL so that it can be printed."""
    parts = urlsplit(text)
    if parts.password is None:
        return text
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def read_settings(
    declared: Iterable[Setting],
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    known: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Read ``declared`` settings: ``overrides`` first, then the environment, then defaults.

    ``known`` holds settings already read, for defaults that depend on them.
    """
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    values: dict[str, Any] = dict(known or {})
    for setting in declared:
        if setting.name in overrides:
            raw, source = overrides[setting.name], f"the setting {setting.name}"
        elif setting.env_name in environ:
            raw, source = environ[setting.env_name], setting.env_name
        else:
            raw = setting.default(values) if callable(setting.default) else setting.default
            source = None
            if raw is None:
                raise ConfigError(
                    f"{setting.env_name} is required but not set: {setting.help}".rstrip(": ")
                )
        if isinstance(raw, str):
            try:
                raw = setting.parse(raw)
            except ValueError as error:
                shown = "(hidden)" if setting.secret and raw.find("://") < 0 else redact(raw)
                raise ConfigError(f"{source or setting.env_name} {error}; got {shown!r}.") from None
        values[setting.name] = raw
    return values
