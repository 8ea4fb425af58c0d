"""The dashboard shell: navigation built from the plugins' entries, and chart sections.

Pages are server-rendered and extend ``caredeck/base.html``; the shared CSS and JavaScript
live in the top-level ``static`` package.
"""

from __future__ import annotations

import datetime
import logging
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, abort, current_app, url_for
from markupsafe import Markup

from core.auth.access import ROLES, STAFF, allow, current_user

log = logging.getLogger("caredeck.dashboard")


@dataclass(frozen=True)
class NavItem:
    """An entry in the navigation bar.

    ``key`` is namespaced by the plugin (``hello`` or ``hello_*``); ``endpoint`` is a Flask
    endpoint (``"hello_pages.index"``); lower ``order`` comes first; only users with one of
    ``roles`` see it.
    """

    key: str
    label: str
    endpoint: str
    order: int = 100
    roles: tuple[str, ...] = STAFF


@dataclass(frozen=True)
class ChartSection:
    """A section of the patient chart.

    ``render(mrn)`` returns the section's HTML (render a template of the plugin's); it runs
    in a request of its own, so a failure shows in the section's box only. Lower ``order``
    comes first; only users with one of ``roles`` see it.
    """

    key: str
    title: str
    render: Callable[[str], str]
    order: int = 100
    roles: tuple[str, ...] = STAFF


pages = Blueprint("core_pages", __name__)


@pages.route("/patients/<mrn>/sections/<key>")
@allow(*ROLES)
def chart_section(mrn: str, key: str):
    """One chart section's HTML, fetched by the chart page on its own."""
    section = current_app.extensions["caredeck"].chart_sections.get(key)
    user = current_user()
    if section is None or user.role not in section.roles:
        abort(404, f"There is no chart section {key!r}.")
    try:
        return str(section.render(mrn))
    except Exception:
        log.exception("chart section %s failed for patient %s", key, mrn)
        message = Markup(
            '<p class="section-error" role="alert">This section could not be loaded. '
            "The error has been logged; the rest of the chart is unaffected.</p>"
        )
        return message, 500


def navigation() -> list[dict]:
    """The navigation entries the signed-in user may see, in order."""
    user = current_user()
    if user is None:
        return []
    items = current_app.extensions["caredeck"].navigation
    return [
        {"label": item.label, "url": url_for(item.endpoint), "key": item.key}
        for item in items
        if user.role in item.roles
    ]


def local_time(moment: datetime.datetime | None) -> str:
    """A stored (UTC) moment as the hospital's wall-clock time, for pages."""
    if moment is None:
        return ""
    zone = zoneinfo.ZoneInfo(current_app.config["TIMEZONE"])
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def init_app(app) -> None:
    app.register_blueprint(pages)
    app.context_processor(
        lambda: {"navigation": navigation, "current_user": current_user, "local_time": local_time}
    )
