"""The plugin contract: one hook per extension point.

A plugin is a module (or object) registered under the ``caredeck.plugins`` entry-point group;
the entry point's name is the plugin's name. It declares ``CORE_API = 1`` (the contract
version it targets) and implements any of the hooks below with ``@hookimpl``. An
implementation may accept any subset of a hook's arguments, so the core can add arguments
later without breaking plugins.

Everything a plugin registers is namespaced by its name: tables ``<plugin>_*``, actors
``<plugin>.<name>``, blueprints ``<plugin>`` or ``<plugin>_*``, settings ``<PLUGIN>_*``,
navigation and chart-section keys ``<plugin>`` or ``<plugin>_*``. The loader refuses
anything else, so two plugins can never collide.

This module's docstrings are the reference; ``docs/plugins.md`` shows each hook in use.
"""

import pluggy

hookspec = pluggy.HookspecMarker("caredeck")
hookimpl = pluggy.HookimplMarker("caredeck")


@hookspec
def caredeck_settings(app):
    """Declare the plugin's settings.

    Return a list of :class:`core.config.Setting`. Each is read from
    ``CAREDECK_<NAME>`` with the same validation as the core's settings (a malformed value
    stops start-up naming the variable) and lands in ``app.config[NAME]``. Names start with
    the plugin's name in capitals: plugin ``hello`` declares ``HELLO_GREETING``.
    """


@hookspec
def caredeck_models(app):
    """Return the plugin's peewee model classes (subclasses of :class:`core.db.Model`).

    Tables are created by the plugin's migrations, not from this list; the list is used to
    check table names (``<plugin>_*``), to report what the plugin registers, and by
    ``core.testing.assert_migrations_create`` to prove the migrations match the models.
    """


@hookspec
def caredeck_migrations(app):
    """Return the folder (``str`` or ``pathlib.Path``) holding the plugin's migrations.

    Files are named ``0001_description.py`` and define ``up(migrator, db)`` (and optionally
    ``down``), as in ``playhouse.migrations``. ``caredeck db upgrade`` applies them in order
    and records them in the table ``<plugin>_schema_migrations``.
    """


@hookspec
def caredeck_api_blueprints(app):
    """Return flask-smorest ``Blueprint`` objects to register on the API under ``/api``.

    Give each blueprint a ``url_prefix`` starting with ``/api/``. Every view must declare
    who may call it with :func:`core.auth.allow` (or :func:`core.auth.public`); a view
    without a declaration stops start-up. Schema class names appear in the OpenAPI document,
    so prefix them with the plugin's name (``HelloGreetingSchema``).
    """


@hookspec
def caredeck_page_blueprints(app):
    """Return Flask ``Blueprint`` objects for the plugin's browser pages.

    Templates extend ``"caredeck/base.html"`` to get the dashboard shell. Views declare
    access with :func:`core.auth.allow` like API views.
    """


@hookspec
def caredeck_navigation(app):
    """Return :class:`core.dashboard.NavItem` entries for the dashboard's navigation bar.

    Each entry names an endpoint, a label, an order and the roles that see it.
    """


@hookspec
def caredeck_chart_sections(app):
    """Return :class:`core.dashboard.ChartSection` entries for the patient chart.

    A section has a key, a title, an order, the roles that see it, and a ``render(mrn)``
    callable returning an HTML fragment. Each section is loaded on its own, so one that
    raises shows an error in its own box and never breaks the chart.
    """


@hookspec
def caredeck_patient_facts(app):
    """Return :class:`core.patients.facts.PatientFacts`: fields added to each patient in
    ``GET /api/patients`` (and columns on the patient list page), and filters on them.

    ``values(mrns)`` is called once per page with that page's MRNs. Field and filter names
    are what API clients type, so they are not prefixed, but they must not clash with the
    core's patient fields and parameters or another plugin's.
    """


@hookspec
def caredeck_actors(app):
    """Return Dramatiq actors declared with :func:`jobs.actor`.

    The core binds them to the app's broker (so importing a plugin never binds an actor to
    a default broker), runs each inside an app context with a database connection, and
    checks that each is named ``<plugin>.<name>`` (the full name is given to ``jobs.actor``).
    """


@hookspec
def caredeck_consumers(app):
    """Return :class:`core.messaging.QueueConsumer` entries: a Kombu queue and a handler.

    One core consumer loop serves every plugin's queues. The handler runs inside an app
    context with a database connection; the message is acknowledged only after the handler
    returns. Raising :class:`core.messaging.Reject` dead-letters the message with the reason.
    """


@hookspec
def caredeck_schedules(app):
    """Return :class:`core.scheduler.Schedule` entries: periodic tasks for the scheduler.

    ``caredeck scheduler`` (and ``caredeck serve`` with the embedded task queue) calls each
    task's ``run()`` about every ``every``, inside an app context with a database connection.
    Name each ``<plugin>.<name>``. Two schedulers may run at once, so a task must be safe to
    run concurrently and twice: make its effects idempotent in the database, and keep it short
    (enqueue jobs rather than doing the work).
    """


@hookspec
def caredeck_metrics(app):
    """Return Prometheus collectors: objects whose ``collect()`` returns metric families
    (``prometheus_client.core.GaugeMetricFamily``, ``CounterMetricFamily``, ...).

    ``collect()`` runs at each scrape of the web app's ``/metrics``, inside an app context
    with a database connection, beside the other plugins' and within the scrape's time
    limit (2 s). Read what is already recorded (a count, the newest row); keep it to a few
    indexed queries. Name every metric ``caredeck_<plugin>_*``; label values must never
    carry patient data. A collector that raises, is too slow, or names a metric otherwise
    is left out of that scrape, and ``caredeck_plugin_metrics_up{plugin="<plugin>"}`` is 0.
    """


@hookspec
def caredeck_cli_commands(app):
    """Return click commands (or groups) to add to the ``caredeck`` command line."""


@hookspec
def caredeck_startup(app):
    """Called once the app is fully built (all plugins registered). Return nothing."""


@hookspec
def caredeck_demo(app):
    """Load the plugin's demo data (``caredeck serve --demo``). Must be idempotent.

    Runs inside an app context with a database connection, after migrations and after the
    demo users exist. Ship the data inside the plugin's package.
    """
