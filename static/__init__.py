"""The dashboard's shared CSS and JavaScript, served at /static (no CDN, no build step)."""

from pathlib import Path

STATIC_FOLDER = Path(__file__).parent
