"""``caredeck publish``: validate medication events from a file and publish the valid ones."""

from __future__ import annotations

import json
from pathlib import Path

import click
from flask import current_app

from core.messaging import PublishError
from plugins.medications import bus
from plugins.medications.events import read

STDIN_REJECTS = "medication-events.rejects.jsonl"


@click.command("publish")
@click.argument("source", type=click.File("rb", lazy=False))
@click.option(
    "--encoding",
    default="utf-8",
    show_default=True,
    help="The file's text encoding (for instance cp1252 for some Windows exports).",
)
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
def publish_command(source, encoding, format_, rejects):
    """Publish medication events from SOURCE (a file, or - for standard input).

    Each invalid event is printed with its line number and reason and written to the
    rejects file; the valid ones are published. Exits with status 1 if any were rejected.
    """
    name = getattr(source, "name", "<stdin>")  # standard input is a buffer without one
    if rejects is None:
        rejects = Path(STDIN_REJECTS if name == "<stdin>" else f"{name}.rejects.jsonl")
    refused = []

    def refuse(number, error, text):
        click.echo(f"line {number}: {error}", err=True)
        refused.append({"line": number, "reason": error, "input": text})

    def decoded():
        """The file's lines as text; a line that is not text in the encoding is refused
        (and read as blank), not the whole file."""
        for number, raw in enumerate(source, start=1):
            try:
                yield raw.decode(encoding)
            except UnicodeDecodeError as error:
                refuse(
                    number,
                    f"Not {encoding} text (byte {raw[error.start]:#04x} at column "
                    f"{error.start + 1}); give the file's encoding with --encoding.",
                    raw.decode(encoding, errors="backslashreplace").rstrip("\r\n"),
                )
                yield "\n"

    def valid_events():
        for line in read(decoded(), format=format_):
            if line.event is not None:
                yield line.event
            else:
                refuse(line.number, line.error, line.text)

    try:
        published = bus.publish(valid_events(), app=current_app._get_current_object())
    except PublishError as error:
        raise click.ClickException(
            f"The message bus is unavailable: {error}. {error.published} events were "
            "published before it; events already published are stored once, so run the "
            "command again."
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
