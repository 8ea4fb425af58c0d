"""``python -m core`` is the ``caredeck`` command."""

from core.cli import main

main()
