"""Caredeck's built-in plugins. Each is a subpackage registered through the same
``caredeck.plugins`` entry points as a third-party plugin (see setup.cfg)."""
