"""Reporting, the documents part: what it registers (gathered by plugins/reporting/plugin.py)."""

SETTINGS: list = []
MODELS: list = []
API_BLUEPRINTS: list = []
PAGE_BLUEPRINTS: list = []
NAVIGATION: list = []
ACTORS: list = []
CLI_COMMANDS: list = []
