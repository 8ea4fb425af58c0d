"""Finding, loading and checking plugins.

Plugins are found through the ``caredeck.plugins`` entry-point group (the built-in ones
too). ``CAREDECK_PLUGINS`` chooses which installed plugins are enabled. Anything wrong with
a plugin stops start-up with one line naming the plugin and the reason: a hospital must
never lose a feature silently.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from core import CORE_API, hookspecs

ENTRY_POINT_GROUP = "caredeck.plugins"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
# The core's own namespaces (tables core_*, blueprints auth, health, api_docs, ...).
RESERVED = re.compile(r"^(core|auth|health|api|static|jobs)(_.*)?$")


class PluginError(Exception):
    """A plugin cannot be loaded; the message names the plugin and the reason."""


@dataclass
class Plugin:
    """A loaded plugin and what it registered, hook by hook."""

    name: str
    obj: Any
    version: str = ""
    distribution: str = ""
    registered: dict[str, list] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    name: str
    load: Any  # a callable returning the plugin object
    version: str = ""
    distribution: str = ""


def installed() -> list[Candidate]:
    """Every plugin installed under the entry-point group."""
    found = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry.dist
        found.append(
            Candidate(
                entry.name,
                entry.load,
                version=dist.version if dist else "",
                distribution=dist.name if dist else "",
            )
        )
    return found


def direct(objects: Mapping[str, Any]) -> list[Candidate]:
    """Plugin objects given directly (tests, ``core.testing``), by name."""
    return [
        Candidate(name, lambda obj=obj: obj, getattr(obj, "__version__", ""), "")
        for name, obj in objects.items()
    ]


def load(candidates: Iterable[Candidate], enabled: list[str] | None) -> pluggy.PluginManager:
    """Import and register the enabled candidates; stop at the first broken one."""
    candidates = list(candidates)
    _check_names(candidates)
    names = {c.name for c in candidates}
    if enabled is not None:
        for name in enabled:
            if name not in names:
                raise PluginError(
                    f"CAREDECK_PLUGINS names plugin {name!r}, which is not installed "
                    f"(installed: {', '.join(sorted(names)) or 'none'})."
                )
        candidates = [c for c in candidates if c.name in enabled]

    manager = pluggy.PluginManager("caredeck")
    manager.add_hookspecs(hookspecs)
    for candidate in candidates:
        obj = _import(candidate)
        _check_api(candidate, obj)
        _check_hooks(candidate.name, obj)
        manager.register(obj, name=candidate.name)
    manager.check_pending()  # a backstop: _check_hooks has already explained any mismatch
    return manager


def _check_names(candidates: list[Candidate]) -> None:
    seen: dict[str, Candidate] = {}
    for candidate in candidates:
        if not NAME_PATTERN.match(candidate.name) or RESERVED.match(candidate.name):
            raise PluginError(
                f"Plugin {candidate.name!r} has an invalid name: use lowercase letters, digits "
                f"and underscores, starting with a letter; names starting with core, auth, "
                f"health, api, static or jobs belong to the core."
            )
        if candidate.name in seen:
            first = seen[candidate.name]
            raise PluginError(
                f"Plugin {candidate.name!r} is installed twice "
                f"(by {first.distribution or 'an unnamed package'} and "
                f"{candidate.distribution or 'an unnamed package'}); uninstall one of them."
            )
        seen[candidate.name] = candidate


def _import(candidate: Candidate) -> Any:
    try:
        return candidate.load()
    except Exception as error:  # any import failure must name the plugin, whatever it is
        raise PluginError(
            f"Plugin {candidate.name!r} failed to import: {type(error).__name__}: {error}"
        ) from error


def _check_api(candidate: Candidate, obj: Any) -> None:
    target = getattr(obj, "CORE_API", None)
    if target is None:
        raise PluginError(
            f"Plugin {candidate.name!r} does not declare CORE_API; add CORE_API = {CORE_API} "
            f"to the plugin module."
        )
    if target != CORE_API:
        raise PluginError(
            f"Plugin {candidate.name!r} targets core API {target}, but this Caredeck "
            f"provides core API {CORE_API}; install a version of the plugin built for it."
        )


def _check_hooks(name: str, obj: Any) -> None:
    """Refuse misspelt hooks and implementations asking for arguments a hook does not give."""
    known = sorted(attr for attr in dir(hookspecs) if attr.startswith("caredeck_"))
    for attr in dir(obj):
        function = getattr(obj, attr, None)
        if not callable(function) or not hasattr(function, "caredeck_impl"):
            continue
        spec = getattr(hookspecs, attr, None)
        if spec is None:
            close = difflib.get_close_matches(attr, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise PluginError(f"Plugin {name!r} implements unknown hook {attr!r}.{hint}")
        offered = list(inspect.signature(spec).parameters)
        asked = [arg for arg in inspect.signature(function).parameters if arg not in offered]
        if asked:
            raise PluginError(
                f"Plugin {name!r}: hook {attr} offers the arguments ({', '.join(offered)}), "
                f"but its implementation asks for ({', '.join(asked)})."
            )


def call(manager: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> dict[str, list]:
    """Call ``hook_name`` on each plugin separately: ``{plugin name: [items]}``.

    Calling per plugin (not pluggy's merged call) keeps track of who registered what, which
    is how names are checked against their owner and how ``caredeck plugins`` reports.
    A hook returning a single item or ``None`` is normalised to a list.
    """
    result: dict[str, list] = {}
    hook = getattr(manager.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):  # registration order
        try:
            value = impl.function(*(kwargs[arg] for arg in impl.argnames))
        except Exception as error:
            raise PluginError(
                f"Plugin {impl.plugin_name!r} failed in {hook_name}: "
                f"{type(error).__name__}: {error}"
            ) from error
        if value is None:
            items = []
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            items = [value]
        result.setdefault(impl.plugin_name, []).extend(items)
    return result


def check_owned(plugin: str, kind: str, name: str, separator: str = "_") -> None:
    """Refuse a registered ``name`` that is not namespaced by its ``plugin``."""
    if name != plugin and not name.startswith(plugin + separator):
        raise PluginError(
            f"Plugin {plugin!r} registers {kind} {name!r}; {kind} names must be "
            f"{plugin!r} or start with '{plugin}{separator}'."
        )


def check_unique(kind: str, owners: Mapping[str, str], name: str, plugin: str) -> None:
    """Refuse a second registration of ``name`` (``owners`` maps names to plugins)."""
    if name in owners:
        owner = "the core" if owners[name] == "core" else f"plugin {owners[name]!r}"
        raise PluginError(
            f"Plugin {plugin!r} registers {kind} {name!r}, which {owner} already registers."
        )
