"""``caredeck publish``: validate medication events from a file and publish the valid ones."""

from __future__ import annotations

import json
from pathlib import Path

import click
import kombu.exceptions
from flask import current_app

from plugins.medications import bus
from plugins.medications.events import read

STDIN_REJECTS = "medication-events.rejects.jsonl"


@click.command("publish")
@click.argument("source", type=click.File("r", encoding="utf-8", lazy=False))
@click.option(
    "--format",
    "format_",
    type=click.Choice(["auto", "jsonl", "json", "csv"]),
    default="auto",
    show_default=True,
    help="auto: '[' starts a JSON array, '{' JSON Lines, anything else CSV with a header.",
)
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Where invalid events are written (JSON Lines). Default: SOURCE.rejects.jsonl, "
    f"or {STDIN_REJECTS} for standard input.",
)
def publish_command(source, format_, rejects):
    """Publish medication events from SOURCE (a file, or - for standard input).

    Each invalid event is printed with its line number and reason and written to the
    rejects file; the valid ones are published. Exits with status 1 if any were rejected.
    """
    if rejects is None:
        rejects = Path(
            STDIN_REJECTS if source.name == "<stdin>" else f"{source.name}.rejects.jsonl"
        )
    refused = []

    def valid_events():
        for line in read(source, format=format_):
            if line.event is not None:
                yield line.event
                continue
            click.echo(f"line {line.number}: {line.error}", err=True)
            refused.append({"line": line.number, "reason": line.error, "input": line.text})

    try:
        published = bus.publish(valid_events(), app=current_app._get_current_object())
    except (OSError, kombu.exceptions.KombuError) as error:
        raise click.ClickException(
            f"The message bus is unavailable ({error}); nothing more was published. Events "
            "already published are stored once, so run the command again."
        ) from error
    finally:
        if refused:
            with rejects.open("w", encoding="utf-8") as out:
                for entry in refused:
                    out.write(json.dumps(entry) + "\n")
    summary = f"Published {published} event{'s' * (published != 1)}"
    if refused:
        click.echo(f"{summary}; rejected {len(refused)} (written to {rejects}).")
        raise SystemExit(1)
    click.echo(f"{summary}; none rejected.")
