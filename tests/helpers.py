"""Helpers shared by the core tests."""

import types

from core.hookspecs import hookimpl


def make_plugin(name: str = "fake", core_api: int | None = 1, **hooks) -> types.ModuleType:
    """A plugin module built in memory: ``make_plugin("x", caredeck_models=lambda: [...])``."""
    module = types.ModuleType(f"{name}_plugin")
    if core_api is not None:
        module.CORE_API = core_api
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/caredeck.db"
