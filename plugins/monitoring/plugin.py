"""The monitoring plugin's hook implementations."""

from pathlib import Path

from core.config import Setting
from core.dashboard import ChartSection, NavItem
from core.hookspecs import hookimpl
from plugins.monitoring import api, cli, ingest, metrics, views
from plugins.monitoring.formats import parse_aliases
from plugins.monitoring.models import MODELS

CORE_API = 1
DEMO_DATA = Path(__file__).parent / "demo_data"


@hookimpl
def caredeck_settings():
    return [
        Setting(
            "MONITORING_COLUMN_ALIASES",
            "",
            parse_aliases,
            "Renamed source columns, comma-separated: table.new_name=known_name "
            "(e.g. admissions.ward=department).",
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
def caredeck_navigation():
    return [
        NavItem("monitoring", "Worklist", "monitoring_pages.worklist_page", order=20),
        NavItem(
            "monitoring_data",
            "Source data",
            "monitoring_pages.data_quality",
            order=800,
            roles=("admin",),
        ),
    ]


@hookimpl
def caredeck_chart_sections():
    return [ChartSection("monitoring", "Admissions and labs", views.chart_section, order=20)]


@hookimpl
def caredeck_metrics():
    return [metrics.IngestMetrics()]


@hookimpl
def caredeck_cli_commands():
    return [cli.ingest_command]


@hookimpl
def caredeck_demo(app):
    ingest.ingest_source(str(DEMO_DATA), app=app)
