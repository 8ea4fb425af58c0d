"""``caredeck ingest SOURCE [--watch] [--interval S] [--retry-quarantined]``.

Exit status: 0 when everything was ingested; 1 when a file was quarantined or a row was
rejected (everything else is still ingested); 2 when the source cannot be listed, or a file
of it could not be read (it is tried again next time). With ``--watch`` the command runs
until interrupted (Ctrl-C or SIGTERM) and exits 0: an unreachable source is reported and
retried at every poll.
"""

from __future__ import annotations

import signal
import threading

import click
from flask import current_app
from flask.cli import with_appcontext

from plugins.monitoring import ingest, sources
from plugins.monitoring.ingest import QUARANTINED


@click.command("ingest")
@click.argument("source")
@click.option("--watch", is_flag=True, help="Keep polling for new or changed files.")
@click.option(
    "--interval",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between polls with --watch.",
)
@click.option(
    "--retry-quarantined",
    is_flag=True,
    help="Read the source's quarantined files again (after fixing the column aliases).",
)
@with_appcontext
def ingest_command(source: str, watch: bool, interval: float, retry_quarantined: bool):
    """Ingest the PMS and LIS files of SOURCE: a CSV file, a folder of them, or an S3 bucket
    (https://BUCKET.s3.REGION.amazonaws.com/[prefix] or s3://BUCKET/prefix)."""
    app = current_app._get_current_object()
    if watch:
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
        click.echo(f"Watching {source} every {interval:g} s (Ctrl-C to stop).")
        try:
            if retry_quarantined:
                ingest.ingest_source(source, app=app, retry_quarantined=True)
        except sources.SourceError as error:
            click.echo(f"{source}: {error}")
        try:
            ingest.watch(source, app=app, interval=interval, stop=stop)
        except sources.SourceError as error:  # the argument itself is unusable
            click.echo(f"Error: {error}", err=True)
            click.get_current_context().exit(2)
        click.echo("Stopped.")
        return
    try:
        files = ingest.ingest_source(source, app=app, retry_quarantined=retry_quarantined)
    except sources.SourceError as error:
        click.echo(f"Error: {error}", err=True)
        click.get_current_context().exit(2)
    if any(f.status == QUARANTINED or f.rejected for f in files):
        click.get_current_context().exit(1)
