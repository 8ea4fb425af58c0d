"""The hook implementations: the only place Caredeck looks at this plugin."""

from pathlib import Path

from core.config import Setting
from core.dashboard import ChartSection, NavItem
from core.hookspecs import hookimpl
from hello_plugin.api import blp
from hello_plugin.jobs import deliver
from hello_plugin.models import HelloGreeting
from hello_plugin.views import chart_section, pages

CORE_API = 1


@hookimpl
def caredeck_settings():
    return [Setting("HELLO_SIGNATURE", "— the ward", help="Appended to every greeting.")]


@hookimpl
def caredeck_models():
    return [HelloGreeting]


@hookimpl
def caredeck_migrations():
    return Path(__file__).parent / "migrations"


@hookimpl
def caredeck_api_blueprints():
    return [blp]


@hookimpl
def caredeck_page_blueprints():
    return [pages]


@hookimpl
def caredeck_navigation():
    return [NavItem("hello", "Greetings", "hello_pages.index", order=50)]


@hookimpl
def caredeck_chart_sections():
    return [ChartSection("hello", "Greetings", chart_section, order=90)]


@hookimpl
def caredeck_actors():
    return [deliver]
