"""The one app factory."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import flask
import flask_smorest
import peewee
from werkzeug.middleware.proxy_fix import ProxyFix

import core
from core import api as api_module
from core import (
    audit,
    dashboard,
    db,
    health,
    metrics,
    patients,
    plugins,
    request_guard,
    requestlog,
)
from core.auth import access, limits, users_api
from core.auth import api as auth_api
from core.auth import views as auth_views
from core.auth.models import SESSION_LIFETIME
from core.config import CORE_SETTINGS, ConfigError, Setting, read_settings
from core.dashboard import ChartSection, NavItem
from core.messaging import QueueConsumer
from core.patients.facts import PatientFacts
from core.patients.schemas import CorePatientQuerySchema, CorePatientSchema
from jobs import Job
from jobs.broker import JobQueue
from static import STATIC_FOLDER

CORE_MIGRATIONS = Path(core.__file__).parent / "migrations"
CORE_NAVIGATION = (
    NavItem("core_patients", "Patients", "core_patients.index", order=10),
    NavItem("core_users", "Users", "auth_pages.users", order=900, roles=("admin",)),
    NavItem("core_audit", "Audit log", "auth_pages.audit_log", order=910, roles=("admin",)),
)
CORE_COMMANDS = {
    "serve",
    "db",
    "plugins",
    "users",
    "seed",
    "worker",
    "consume",
    "scheduler",
    "routes",
    "run",
    "shell",
}


@dataclass
class Caredeck:
    """What the core keeps on the app (``app.extensions["caredeck"]``), not in globals, so
    that tests can build apps with different plugins side by side."""

    manager: Any
    plugins: dict[str, plugins.Plugin]
    api: flask_smorest.Api
    jobs: JobQueue
    migration_sources: dict[str, Path] = field(default_factory=dict)
    navigation: list[NavItem] = field(default_factory=list)
    chart_sections: dict[str, ChartSection] = field(default_factory=dict)
    consumers: list[QueueConsumer] = field(default_factory=list)
    patient_facts: list[PatientFacts] = field(default_factory=list)
    metrics: dict[str, list[Any]] = field(default_factory=dict)  # collectors, by plugin


def create_app(
    config: Mapping[str, Any] | None = None, *, plugin_objects: Mapping[str, Any] | None = None
) -> flask.Flask:
    """Build the app.

    ``config`` overrides settings by name (``{"DATABASE_URL": ...}``); everything else comes
    from ``CAREDECK_*`` environment variables or the embedded defaults. ``plugin_objects``
    (name to module or object) replaces entry-point discovery; ``core.testing`` uses it.
    Raises :class:`ConfigError` or :class:`PluginError` with one sentence naming the problem.
    """
    settings = read_settings(CORE_SETTINGS, config)
    requestlog.configure(settings["LOG_LEVEL"])
    if plugin_objects is not None:
        candidates, enabled = plugins.direct(plugin_objects), None
    else:
        candidates, enabled = plugins.installed(), settings["PLUGINS"]
    manager = plugins.load(candidates, enabled)
    loaded = _describe(manager, candidates)

    app = flask.Flask(
        "core",
        instance_path=settings["INSTANCE_PATH"],
        static_folder=str(STATIC_FOLDER),
        static_url_path="/static",
    )
    app.config.update(settings)
    for name, setting_list in plugins.call(manager, "caredeck_settings", app=app).items():
        app.config.update(_plugin_settings(name, setting_list, config, app.config))
    app.config.update(
        # Any larger body is a 413 before it is read (from its Content-Length, or as soon as
        # a chunked body passes the limit). The largest JSON body (10,000 medication events)
        # is about 3 MB; document uploads set their own, larger limit (REPORTING_UPLOAD_MAX_BYTES).
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,
        SESSION_COOKIE_NAME="caredeck_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings["SECURE_COOKIES"],
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )

    if settings["TRUSTED_PROXIES"]:
        proxies = settings["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)
    requestlog.init_app(app)  # first, so that every response carries a request id
    metrics.init_app(app)
    db.init_app(app)
    access.init_app(app)
    request_guard.init_app(app)  # after the access checks: a refused caller's body is not read
    audit.init_app(app)
    limits.init_app(app)
    state = Caredeck(
        manager=manager,
        plugins=loaded,
        api=api_module.init_app(app),
        jobs=JobQueue(app, settings["DRAMATIQ_URL"]),
        migration_sources={"core": CORE_MIGRATIONS},
    )
    app.extensions["caredeck"] = state
    app.register_blueprint(health.health)
    dashboard.init_app(app)
    for blueprint in (auth_api.blp, users_api.blp, audit.blp):
        state.api.register_blueprint(blueprint)
    auth_views.init_app(app)
    patients.init_app(app)
    state.navigation.extend(CORE_NAVIGATION)

    _register_plugins(app, state)
    patients.register_api(state.api, state.patient_facts)
    _refuse_undeclared_routes(app, state)
    plugins.call(manager, "caredeck_startup", app=app)
    return app


def _describe(manager, candidates: list[plugins.Candidate]) -> dict[str, plugins.Plugin]:
    """The registered plugins with the version and package their candidate named."""
    found = {candidate.name: candidate for candidate in candidates}
    return {
        name: plugins.Plugin(
            name, obj, version=found[name].version, distribution=found[name].distribution
        )
        for name, obj in manager.list_name_plugin()
    }


def _plugin_settings(name: str, declared: list[Setting], overrides, known) -> dict[str, Any]:
    taken = set(known)
    for setting in declared:
        _expect(name, "caredeck_settings", setting, Setting, "core.config.Setting objects")
        if not setting.name.startswith(name.upper() + "_") or setting.name in taken:
            raise plugins.PluginError(
                f"Plugin {name!r} declares setting {setting.name!r}; its settings must start "
                f"with '{name.upper()}_' and not repeat another setting."
            )
        taken.add(setting.name)
    try:
        return read_settings(declared, overrides, known=known)
    except ConfigError as error:
        raise ConfigError(f"{error} (a setting of plugin {name!r})") from None


def _expect(plugin: str, hook: str, item: Any, kind: type, description: str) -> None:
    if not isinstance(item, kind):
        raise plugins.PluginError(
            f"Plugin {plugin!r}: {hook} must return {description}, got {item!r}."
        )


def _register_plugins(app: flask.Flask, state: Caredeck) -> None:
    call = lambda hook: plugins.call(state.manager, hook, app=app)  # noqa: E731
    owners: dict[str, dict[str, str]] = {}

    def claim(kind: str, plugin: str, name: str, separator: str | None = "_") -> None:
        if separator is not None:
            plugins.check_owned(plugin, kind, name, separator)
        plugins.check_unique(kind, owners.setdefault(kind, {}), name, plugin)
        owners[kind][name] = plugin
        state.plugins[plugin].registered.setdefault(kind, []).append(name)

    for plugin, models in call("caredeck_models").items():
        for model in models:
            if not (isinstance(model, type) and issubclass(model, peewee.Model)):
                raise plugins.PluginError(
                    f"Plugin {plugin!r}: caredeck_models must return peewee model classes, "
                    f"got {model!r}."
                )
            claim("table", plugin, model._meta.table_name)

    for plugin, folders in call("caredeck_migrations").items():
        if len(folders) != 1 or not Path(folders[0]).is_dir():
            raise plugins.PluginError(
                f"Plugin {plugin!r}: caredeck_migrations must return one existing folder, "
                f"got {folders!r}."
            )
        state.migration_sources[plugin] = Path(folders[0])
        state.plugins[plugin].registered["migrations"] = [str(folders[0])]

    for plugin, blueprints in call("caredeck_api_blueprints").items():
        for blueprint in blueprints:
            claim("API blueprint", plugin, blueprint.name)
            state.api.register_blueprint(blueprint)

    for plugin, blueprints in call("caredeck_page_blueprints").items():
        for blueprint in blueprints:
            claim("page blueprint", plugin, blueprint.name)
            app.register_blueprint(blueprint)

    for plugin, items in call("caredeck_navigation").items():
        for item in items:
            _expect(plugin, "caredeck_navigation", item, NavItem, "core.dashboard.NavItem objects")
            if item.endpoint not in app.view_functions:
                raise plugins.PluginError(
                    f"Plugin {plugin!r}: navigation entry {item.key!r} points at endpoint "
                    f"{item.endpoint!r}, which no registered view has."
                )
            claim("navigation entry", plugin, item.key)
            state.navigation.append(item)
    state.navigation.sort(key=lambda item: (item.order, item.label))

    sections = []
    for plugin, items in call("caredeck_chart_sections").items():
        for section in items:
            _expect(
                plugin,
                "caredeck_chart_sections",
                section,
                ChartSection,
                "core.dashboard.ChartSection objects",
            )
            claim("chart section", plugin, section.key)
            sections.append(section)
    state.chart_sections = {s.key: s for s in sorted(sections, key=lambda s: (s.order, s.title))}

    # The list's JSON fields and query parameters are what API clients type, so they are
    # not prefixed; a clash with the core's or another plugin's stops start-up instead.
    owners["patient field"] = dict.fromkeys(CorePatientSchema._declared_fields, "core")
    owners["patient filter"] = dict.fromkeys(
        (*CorePatientQuerySchema._declared_fields, "page", "page_size"), "core"
    )
    for plugin, items in call("caredeck_patient_facts").items():
        for facts in items:
            _expect(
                plugin,
                "caredeck_patient_facts",
                facts,
                PatientFacts,
                "core.patients.facts.PatientFacts objects",
            )
            for name in facts.fields:
                claim("patient field", plugin, name, separator=None)
            for name in facts.filters:
                claim("patient filter", plugin, name, separator=None)
            if unknown := set(facts.columns) - set(facts.fields):
                raise plugins.PluginError(
                    f"Plugin {plugin!r}: patient list columns {sorted(unknown)} are not "
                    "among its fields."
                )
            state.patient_facts.append(facts)

    for plugin, jobs in call("caredeck_actors").items():
        for job in jobs:
            _expect(plugin, "caredeck_actors", job, Job, "actors declared with jobs.actor")
            claim("actor", plugin, job.name, separator=".")
            known = state.jobs.broker.actor_options
            if unknown := set(job.options) - known:
                raise plugins.PluginError(
                    f"Plugin {plugin!r}: actor {job.name!r} has unknown options "
                    f"{sorted(unknown)}; the broker knows {sorted(known)}."
                )
            state.jobs.bind(job)

    for plugin, consumers in call("caredeck_consumers").items():
        for consumer in consumers:
            _expect(
                plugin,
                "caredeck_consumers",
                consumer,
                QueueConsumer,
                "core.messaging.QueueConsumer objects",
            )
            claim("queue consumer", plugin, f"{plugin}:{consumer.queue.name}", separator=":")
            state.consumers.append(consumer)

    for plugin, collectors in call("caredeck_metrics").items():
        for collector in collectors:
            if not callable(getattr(collector, "collect", None)):
                raise plugins.PluginError(
                    f"Plugin {plugin!r}: caredeck_metrics must return Prometheus collectors "
                    f"(objects with a collect() method), got {collector!r}."
                )
        state.metrics[plugin] = collectors
        state.plugins[plugin].registered["metrics"] = [type(c).__name__ for c in collectors]

    for plugin, commands in call("caredeck_cli_commands").items():
        for command in commands:
            _expect(plugin, "caredeck_cli_commands", command, click.Command, "click commands")
            if command.name in CORE_COMMANDS:
                raise plugins.PluginError(
                    f"Plugin {plugin!r} registers command {command.name!r}, which is a core "
                    f"command."
                )
            # Commands are what operators type (`caredeck ingest`), so they are not prefixed;
            # a clash with the core's or another plugin's command stops start-up instead.
            claim("command", plugin, command.name, separator=None)
            app.cli.add_command(command)


def _refuse_undeclared_routes(app: flask.Flask, state: Caredeck) -> None:
    missing = access.undeclared_routes(app)
    if missing:
        first = missing[0]
        endpoint = first.rsplit("(", 1)[-1].rstrip(")")
        owner = endpoint.split(".")[0]
        plugin = next((p for p in state.plugins if owner == p or owner.startswith(p + "_")), None)
        who = f"Plugin {plugin!r}: route" if plugin else "Route"
        raise plugins.PluginError(
            f"{who} {first} declares no access rule; decorate the view with "
            f"core.auth.allow(...) or core.auth.public (deny by default)."
        )


def settle_heap() -> None:
    """Call once a server process has built its app: what start-up built (the app, its
    plugins, every imported module) is moved out of the garbage collector's reach, so a
    full collection walks only what requests allocate. A request that builds 10,000 objects
    (a patient's medication history) triggered one, which put 50 ms on the slowest answers
    (bench/RESULTS.md, issue 5)."""
    gc.collect()
    gc.freeze()
