"""The medications plugin's hook implementations."""

import re
from pathlib import Path

from core.config import Setting
from core.dashboard import ChartSection
from core.db import database
from core.hookspecs import hookimpl
from plugins.medications import api, bus, cli, views
from plugins.medications.events import read
from plugins.medications.models import MODELS

CORE_API = 1
SAMPLE_EVENTS = Path(__file__).parent / "sample_data" / "events.jsonl"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


def bus_name(text: str) -> str:
    """An exchange or queue name that says it carries medication events."""
    if not _NAME.fullmatch(text) or "medication" not in text:
        raise ValueError(
            "use letters, digits, '.', '_' and '-', and include the word 'medication' "
            "(operators find the medication queues by it)"
        )
    return text


@hookimpl
def caredeck_settings():
    return [
        Setting(
            "MEDICATIONS_EXCHANGE",
            "caredeck.medications",
            bus_name,
            "The topic exchange medication events are published to (its dead-letter "
            "exchange is this name plus '.dead-letter').",
        ),
        Setting(
            "MEDICATIONS_QUEUE",
            "caredeck.medications.events",
            bus_name,
            "The queue the consumer reads medication events from (what cannot be processed "
            "goes to this name plus '.dead').",
        ),
    ]


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
def caredeck_page_blueprints():
    return [views.pages]


@hookimpl
def caredeck_chart_sections():
    return [ChartSection("medications", "Medications", views.chart_section, order=30)]


@hookimpl
def caredeck_consumers(app):
    return [bus.consumer(app)]


@hookimpl
def caredeck_cli_commands():
    return [cli.publish_command]


@hookimpl
def caredeck_startup(app):
    api.keep_answers(app)


@hookimpl
def caredeck_demo():
    """The sample events' valid lines, stored directly (the demo needs no bus round trip)."""
    with SAMPLE_EVENTS.open(encoding="utf-8") as sample:
        events = [line.event for line in read(sample) if line.event is not None]
    with database.atomic():
        bus.store(events)
