"""The EHR plugin's hook implementations: patient questionnaires mapped into each
organization's EHR and delivered by a job (docs/ehr.md)."""

from __future__ import annotations

import datetime
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from core.config import Setting, integer, url
from core.hookspecs import hookimpl
from core.scheduler import Schedule
from plugins.ehr import api, connectors, delivery, demo, ratelimit, sandbox
from plugins.ehr.models import MODELS

CORE_API = 1
SWEEP_EVERY = datetime.timedelta(minutes=1)


def _sandbox_token(settings) -> str:
    # Derived from the secret key: stable across restarts and processes, unguessable.
    key = str(settings["SECRET_KEY"]).encode()
    return hmac.new(key, b"caredeck-ehr-sandbox", hashlib.sha256).hexdigest()


def _timeout(text: str) -> int:
    seconds = integer(minimum=1)(text)
    if seconds > HTTP_TIMEOUT_MAX:
        # A delivery makes two requests (the identity lookup, the send) within its job's
        # time limit; a longer wait would have the job killed mid-send instead.
        raise ValueError(f"must be at most {HTTP_TIMEOUT_MAX} seconds")
    return seconds


def _token(text: str) -> str:
    if len(text.strip()) < SANDBOX_TOKEN_MIN:
        raise ValueError(f"must be at least {SANDBOX_TOKEN_MIN} characters")
    return text.strip()


HTTP_TIMEOUT_MAX = 50
SANDBOX_TOKEN_MIN = 16
SETTINGS = [
    Setting(
        "EHR_HTTP_TIMEOUT_SECONDS",
        "20",
        _timeout,
        "Seconds to wait for an EHR's answer (connecting: at most 10), at most 50; a timeout "
        "is retried.",
    ),
    Setting(
        "EHR_MAX_ATTEMPTS",
        "8",
        integer(minimum=1),
        "Attempts at a delivery before it is failed (timeouts, connection errors, 5xx).",
    ),
    Setting(
        "EHR_RETRY_BASE_SECONDS",
        "30",
        integer(minimum=0),
        "The first retry's delay; each later one doubles it (at most an hour), with jitter.",
    ),
    Setting(
        "EHR_SANDBOX_URL",
        "http://127.0.0.1:5000/ehr-sandbox",
        url("http", "https"),
        "Where the sandbox EHR (inside this app) is reached; the demo organization uses it. "
        "Change it when the app serves on another address or port.",
    ),
    Setting(
        "EHR_SANDBOX_TOKEN",
        _sandbox_token,
        _token,
        "The bearer token the sandbox EHR accepts (default: derived from the secret key).",
        secret=True,
    ),
]


@dataclass(frozen=True)
class EhrState:
    """What the plugin keeps on the app (``app.extensions["ehr"]``)."""

    connectors: dict
    limiter: ratelimit.RateLimiter


@hookimpl
def caredeck_settings():
    return SETTINGS


@hookimpl
def caredeck_models():
    return list(MODELS)


@hookimpl
def caredeck_migrations():
    return Path(__file__).parent / "migrations"


@hookimpl
def caredeck_api_blueprints():
    return [api.blp]


@hookimpl
def caredeck_actors():
    return list(delivery.ACTORS)


@hookimpl
def caredeck_schedules():
    # Enqueues again the deliveries whose message was lost; idempotent (docs/ehr.md).
    return [Schedule("ehr.sweep_deliveries", SWEEP_EVERY, delivery.sweep)]


@hookimpl
def caredeck_startup(app):
    # Connectors are read from their entry points once per app: a broken one stops start-up.
    app.extensions["ehr"] = EhrState(
        connectors=connectors.load(), limiter=ratelimit.RateLimiter(app.config["REDIS_URL"])
    )


@hookimpl
def caredeck_demo(app):
    demo.load(app)


# ----------------------------------------------------------------------------------------
# PAGES (owned by the ehr-pages helper): page blueprints, navigation entries and chart
# sections. plugins/ehr/views.py holds the pages and lists what they register; the pages
# call plugins/ehr/{mappings,organizations,questionnaire,delivery,bulk,sandbox}.py and
# plugins.ehr.chart.chart_data(mrn), never the ORM directly for writes.
# ----------------------------------------------------------------------------------------

from plugins.ehr import views  # noqa: E402


@hookimpl
def caredeck_page_blueprints():
    return [sandbox.blueprint, views.pages]


@hookimpl
def caredeck_navigation():
    return views.NAVIGATION


@hookimpl
def caredeck_chart_sections():
    return views.CHART_SECTIONS


# ------------------------------------------------------------------------ end of PAGES ---
