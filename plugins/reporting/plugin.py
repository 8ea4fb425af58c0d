"""The reporting plugin's hook implementations.

The plugin has two parts, each a package that lists what it registers in module-level
names (``SETTINGS``, ``MODELS``, ``API_BLUEPRINTS``, ``PAGE_BLUEPRINTS``, ``NAVIGATION``,
``ACTORS``, ``SCHEDULES``, ``CLI_COMMANDS``, ``METRICS``): the documents store, and the
weekly reports, which read the documents but are never read by them.
"""

from pathlib import Path

from core.hookspecs import hookimpl
from plugins.reporting import documents, reports

CORE_API = 1
PARTS = (documents, reports)


def _gather(name: str) -> list:
    return [item for part in PARTS for item in getattr(part, name, ())]


@hookimpl
def caredeck_settings():
    return _gather("SETTINGS")


@hookimpl
def caredeck_models():
    return _gather("MODELS")


@hookimpl
def caredeck_migrations():
    return Path(__file__).parent / "migrations"


@hookimpl
def caredeck_api_blueprints():
    return _gather("API_BLUEPRINTS")


@hookimpl
def caredeck_page_blueprints():
    return _gather("PAGE_BLUEPRINTS")


@hookimpl
def caredeck_navigation():
    return _gather("NAVIGATION")


@hookimpl
def caredeck_actors():
    return _gather("ACTORS")


@hookimpl
def caredeck_schedules():
    return _gather("SCHEDULES")


@hookimpl
def caredeck_metrics():
    return _gather("METRICS")


@hookimpl
def caredeck_cli_commands():
    return _gather("CLI_COMMANDS")


@hookimpl
def caredeck_demo(app):
    for part in PARTS:
        demo = getattr(part, "demo", None)
        if demo is not None:
            demo(app)
