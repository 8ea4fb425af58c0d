"""The ``caredeck`` command: a Flask CLI group. Plugins add commands through a hook."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

import click
from flask import current_app
from flask.cli import FlaskGroup, NoAppException, routes_command, shell_command, with_appcontext

from core import db, messaging, metrics, plugins
from core import scheduler as scheduling
from core.auth import passwords
from core.auth.access import ROLES
from core.auth.models import User
from core.config import ConfigError, redact
from core.heartbeat import Heartbeat
from core.patients.demo import load_demo_patients
from core.patients.models import Patient

DEMO_DOMAIN = "caredeck.local"


class StartupError(NoAppException):
    """A setting or plugin is wrong: one ``Error: ...`` line, exit status 2, no usage text."""

    def show(self, file=None) -> None:
        click.secho(f"Error: {self.format_message()}", err=True, fg="red")


def _create_app():
    from core.app import create_app

    try:
        return create_app()
    except (ConfigError, plugins.PluginError) as error:
        raise StartupError(str(error)) from None


cli = FlaskGroup(
    name="caredeck",
    create_app=_create_app,
    add_default_commands=False,
    add_version_option=False,
    load_dotenv=False,
    set_debug_flag=False,
    help="Caredeck: the hospital platform. Settings come from CAREDECK_* variables.",
)
# Flask's --app/--env-file/--debug options would let the command load another app or
# settings file; Caredeck reads its settings from CAREDECK_* variables only.
cli.params = [param for param in cli.params if param.name not in {"app", "env_file", "debug"}]
cli.add_command(routes_command)
cli.add_command(shell_command)


def main() -> None:
    cli.main(prog_name="caredeck")


def _state():
    return current_app.extensions["caredeck"]


def _upgrade() -> dict[str, list[str]]:
    return db.upgrade(_state().migration_sources)


# Database ----------------------------------------------------------------------------------


@cli.group("db")
def db_group():
    """Database migrations."""


@db_group.command("upgrade")
@with_appcontext
def db_upgrade():
    """Apply the core's and every enabled plugin's pending migrations (idempotent)."""
    applied = _upgrade()
    for owner, names in applied.items():
        for name in names:
            click.echo(f"{owner}: applied {name}")
    total = sum(len(names) for names in applied.values())
    click.echo(f"Database is up to date ({total} migration(s) applied).")


@db_group.command("status")
@with_appcontext
def db_status():
    """List pending migrations; exits 1 if any are pending."""
    with db.database.connection_context():
        waiting = db.pending(_state().migration_sources)
    for owner, names in waiting.items():
        for name in names:
            click.echo(f"{owner}: pending {name}")
    if waiting:
        sys.exit(1)
    click.echo("Database is up to date.")


# Plugins -----------------------------------------------------------------------------------


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@with_appcontext
def list_plugins(as_json: bool):
    """The loaded plugins, their versions, and what each registers."""
    loaded = _state().plugins
    if as_json:
        click.echo(
            json.dumps(
                {
                    name: {
                        "version": p.version,
                        "distribution": p.distribution,
                        "registers": p.registered,
                    }
                    for name, p in loaded.items()
                },
                indent=2,
            )
        )
        return
    if not loaded:
        click.echo("No plugins enabled.")
    for name, plugin in loaded.items():
        origin = f" ({plugin.distribution})" if plugin.distribution else ""
        click.echo(f"{name} {plugin.version or '(no version)'}{origin}")
        for kind, items in plugin.registered.items():
            click.echo(f"  {kind}: {', '.join(items)}")


# Users -------------------------------------------------------------------------------------


@cli.group("users")
def users_group():
    """User accounts."""


@users_group.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--name", default="", help="Display name (defaults to the email's local part).")
@click.option("--patient", "mrn", default=None, help="For a patient user: their record's MRN.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_appcontext
def users_create(email: str, role: str, name: str, mrn: str | None, password_stdin: bool):
    """Create an active user. Without --password-stdin a random password is printed."""
    password = sys.stdin.readline().rstrip("\n") if password_stdin else _new_password()
    reasons = passwords.problems(password, email=email, name=name)
    if reasons:
        raise click.BadParameter(" ".join(reasons), param_hint="password")
    if mrn is not None and role != "patient":
        raise click.BadParameter(
            "only a patient user is linked to a patient record.", param_hint="--patient"
        )
    with db.database.connection_context():
        if User.find(email):
            raise click.ClickException(f"A user with the email {email} already exists.")
        if mrn is not None and Patient.get_or_none(Patient.mrn == mrn) is None:
            raise click.ClickException(f"There is no patient with MRN {mrn}.")
        User.create_user(email, password, name=name, role=role, status="active", patient_mrn=mrn)
    click.echo(f"Created {role} {email.lower()}")
    if not password_stdin:
        click.echo(f"Password: {password}")


@cli.command("seed")
@with_appcontext
def seed():
    """One active user per role; idempotent. Prints the credentials it set."""
    for email, role, password in _seed_users():
        shown = password or "(already existed; password unchanged)"
        click.echo(f"{role:8} {email:28} {shown}")


def _new_password() -> str:
    return secrets.token_urlsafe(12)


def _seed_users(
    known: dict[str, str] | None = None, patient_mrn: str | None = None
) -> list[tuple[str, str, str | None]]:
    """Ensure one active user per role; returns ``(email, role, password set or None)``.

    The patient user is linked to ``patient_mrn`` when given (the demo's sample patient).
    """
    known = known or {}
    result = []
    with db.database.connection_context():
        for role in ROLES:
            email = f"{role}@{DEMO_DOMAIN}"
            if User.find(email):
                result.append((email, role, None))
                continue
            password = known.get(email) or _new_password()
            User.create_user(
                email,
                password,
                name=f"Demo {role}",
                role=role,
                status="active",
                patient_mrn=patient_mrn if role == "patient" else None,
            )
            result.append((email, role, password))
    return result


# Serving -----------------------------------------------------------------------------------


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int, help="Web threads.")
@click.option("--demo", is_flag=True, help="Load the sample hospital data and demo users.")
@with_appcontext
def serve(host: str, port: int, threads: int, demo: bool):
    """The web app; with embedded backends also the job worker and message consumer."""
    import waitress

    app = current_app._get_current_object()
    state = _state()
    embedded_db = db.is_sqlite()
    if demo and not embedded_db:
        raise click.UsageError(
            "--demo loads sample patients and demo users, so it runs only on the embedded "
            "database; unset CAREDECK_DATABASE_URL to use it."
        )
    if embedded_db:  # the embedded database is ours to keep current
        _upgrade()
    if demo:
        _load_demo(app)
    embedded_scheduler = None
    if state.jobs.embedded:
        state.jobs.start_embedded_worker()
        # Jobs run in this process, so the periodic tasks that enqueue them do too.
        embedded_scheduler = scheduling.Scheduler(app)
        embedded_scheduler.start()
    if app.config["AMQP_URL"].startswith(("filesystem:", "memory:")):
        messaging.start_embedded_consumer(app, state.consumers)
    click.echo(f"Caredeck on http://{host}:{port}/ (database {redact(app.config['DATABASE_URL'])})")
    from core.app import settle_heap  # (core.app imports this module's commands)

    settle_heap()
    try:
        waitress.serve(app, host=host, port=port, threads=threads, ident="caredeck")
    finally:
        if embedded_scheduler is not None:
            embedded_scheduler.stop()
        state.jobs.stop()


def _load_demo(app) -> None:
    """Demo users (their passwords kept in the instance folder, so every start prints them)
    and every plugin's demo data."""
    path = Path(app.config["INSTANCE_PATH"]) / "demo-credentials.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    with db.database.connection_context():
        sample = load_demo_patients()
    for email, _role, password in _seed_users(known, patient_mrn=sample[0].mrn):
        if password:
            known[email] = password
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(known, handle, indent=2)
    with db.database.connection_context():
        plugins.call(_state().manager, "caredeck_demo", app=app)
    click.echo("Demo users (sign in with these):")
    for email, password in known.items():
        click.echo(f"  {email:28} {password}")


# Workers -----------------------------------------------------------------------------------


def _serve_metrics() -> None:
    """The process's own /metrics on CAREDECK_METRICS_PORT (roles that serve no HTTP)."""
    port = current_app.config["METRICS_PORT"]
    if not port:
        return
    if not current_app.config["METRICS_TOKEN"]:
        click.echo(
            "CAREDECK_METRICS_PORT is set but CAREDECK_METRICS_TOKEN is not: /metrics will "
            "answer 404 until a token is set.",
            err=True,
        )
    metrics.serve(current_app._get_current_object(), port)


def _until_stopped(stop) -> None:
    """Block until SIGINT or SIGTERM, then call ``stop``."""
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    stopping.wait()
    stop()


@cli.command("worker")
@click.option("--threads", default=4, show_default=True, type=int)
@click.option("--queue", "queues", multiple=True, help="Only these queues (repeatable).")
@with_appcontext
def worker(threads: int, queues: tuple[str, ...]):
    """Run Dramatiq jobs from the configured broker until stopped."""
    jobs = _state().jobs
    if jobs.embedded:
        raise click.UsageError(
            "CAREDECK_DRAMATIQ_URL is stub:// (in-process): `caredeck serve` runs jobs itself. "
            "Point it at redis://... to run separate workers."
        )
    running = jobs.worker(threads, queues)
    running.start()
    _serve_metrics()
    click.echo(f"Worker running {len(jobs.actors)} actor(s) with {threads} thread(s).")
    _until_stopped(running.stop)


@cli.command("consume")
@click.option(
    "--heartbeat-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Touched every few seconds while connected and consuming, removed otherwise: "
    "probe it with `python -m core.heartbeat FILE MAX_AGE`.",
)
@with_appcontext
def consume(heartbeat_file):
    """Run the message consumer for every enabled plugin's queues until stopped."""
    state = _state()
    if not state.consumers:
        raise click.UsageError("No enabled plugin consumes a queue; nothing to run.")
    consumer = messaging.Consumer(
        current_app._get_current_object(),
        messaging.connection(current_app),
        state.consumers,
        heartbeat=Heartbeat(heartbeat_file),
    )
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: setattr(consumer, "should_stop", True))
    _serve_metrics()
    names = ", ".join(entry.queue.name for entry in state.consumers)
    click.echo(f"Consuming {names} from {redact(current_app.config['AMQP_URL'])}")
    consumer.run()
    click.echo(
        f"Stopped: stored {consumer.stored} message(s), dead-lettered {consumer.dead_lettered}."
    )


@cli.command("scheduler")
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between checks for due tasks (each task has its own period).",
)
@click.option("--once", is_flag=True, help="Run every task once, then exit.")
@with_appcontext
def scheduler(interval: float, once: bool):
    """Run the periodic tasks of every enabled plugin (report subscriptions, ...) until
    stopped. Safe to run more than once at a time: tasks never double their work."""
    running = scheduling.Scheduler(current_app._get_current_object(), tick=interval)
    if once:
        ran = running.run_due()
        click.echo(f"Ran {len(ran)} task(s): {', '.join(ran) or 'none registered'}.")
        return
    names = ", ".join(s.name for s in running.schedules) or "nothing (no plugin registers a task)"
    click.echo(f"Scheduler running {names}.")
    _serve_metrics()
    thread = threading.Thread(target=running.run_forever, name="caredeck-scheduler")
    thread.start()
    _until_stopped(running.stop)
    thread.join()
