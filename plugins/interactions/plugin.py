"""The interactions plugin's hook implementations."""

from pathlib import Path

from core.auth import ROLES
from core.dashboard import ChartSection
from core.hookspecs import hookimpl
from plugins.interactions import api, demo, views
from plugins.interactions.facts import FACTS
from plugins.interactions.models import MODELS

CORE_API = 1


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
    # Every role: a patient user reads their own history (the core answers 404 for another
    # patient's chart and sections).
    return [
        ChartSection("interactions", "Interactions", views.chart_section, order=10, roles=ROLES)
    ]


@hookimpl
def caredeck_patient_facts():
    return [FACTS]


@hookimpl
def caredeck_demo():
    demo.load()
