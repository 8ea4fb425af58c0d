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


def consume_everything(app, seconds: float = 15) -> None:
    """Run the app's consumer loop until every queue it serves is empty and nothing is held
    in a batch: what a running ``caredeck consume`` would have done by now."""
    import time

    from core import messaging

    state = app.extensions["caredeck"]
    deadline = time.monotonic() + seconds
    with messaging.connection(app) as conn:
        loop = messaging.Consumer(app, conn, state.consumers)
        with loop.consumer_context() as (connection, channel, _):
            while time.monotonic() < deadline:
                try:
                    connection.drain_events(timeout=0.2)
                except TimeoutError:
                    loop.flush(force=True)
                    ready = (
                        entry.queue.bind(channel).queue_declare(passive=True).message_count
                        for entry in state.consumers
                    )
                    if not any(ready):
                        return
    raise AssertionError(f"the queues were not drained within {seconds} s")
