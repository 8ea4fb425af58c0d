"""The interactions plugin's hook implementations."""

from pathlib import Path

from core.hookspecs import hookimpl
from plugins.interactions import api
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
def caredeck_patient_facts():
    return [FACTS]
