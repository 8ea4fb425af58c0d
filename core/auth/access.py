"""Access declarations on views, and the check that enforces them on every request."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from flask import Flask, abort, g, request

ROLES = ("admin", "doctor", "nurse", "patient")
STAFF = ("admin", "doctor", "nurse")
PUBLIC = "public"
ATTRIBUTE = "_caredeck_access"


def allow(*roles: str) -> Callable[[Any], Any]:
    """Let only users with one of ``roles`` call the decorated view (function, method or
    MethodView class)."""
    unknown = set(roles) - set(ROLES)
    if not roles or unknown:
        raise ValueError(f"allow() takes one or more of {', '.join(ROLES)}; got {roles!r}")

    def declare(view: Any) -> Any:
        setattr(view, ATTRIBUTE, frozenset(roles))
        return view

    return declare


def public(view: Any) -> Any:
    """Let anyone, signed in or not, call the decorated view."""
    setattr(view, ATTRIBUTE, PUBLIC)
    # Tell the OpenAPI document that this operation needs no token.
    apidoc = getattr(view, "_apidoc", {})
    apidoc.setdefault("manual_doc", {})["security"] = []
    view._apidoc = apidoc
    return view


def declared_access(view_func: Callable, method: str) -> frozenset[str] | str | None:
    """The access declared for ``method`` on ``view_func`` (``None``: nothing declared)."""
    view_class = getattr(view_func, "view_class", None)
    if view_class is not None:
        handler = getattr(view_class, method.lower(), None)
        if handler is None and method == "HEAD":
            handler = getattr(view_class, "get", None)
        declared = getattr(handler, ATTRIBUTE, None)
        return declared if declared is not None else getattr(view_class, ATTRIBUTE, None)
    return getattr(view_func, ATTRIBUTE, None)


def undeclared_routes(app: Flask) -> list[str]:
    """Every ``METHOD path`` whose view declares no access (start-up refuses these)."""
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"OPTIONS", "HEAD"}):
            if declared_access(view, method) is None:
                missing.append(f"{method} {rule.rule} ({rule.endpoint})")
    return missing


def current_user():
    """The signed-in :class:`core.auth.models.User`, or ``None``."""
    return g.get("user")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _identify():
    """The user behind this request's bearer token, if any."""
    from core.auth.models import ApiToken

    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return ApiToken.user_for(hash_token(token.strip()))


def init_app(app: Flask) -> None:
    @app.before_request
    def _check_access():
        if request.method == "OPTIONS" or request.endpoint is None:
            return None  # Flask's automatic OPTIONS, or a 404/405 about to be raised
        if request.endpoint == "static" or request.endpoint.endswith(".static"):
            return None
        declared = declared_access(app.view_functions[request.endpoint], request.method)
        g.user = _identify()
        if declared == PUBLIC:
            return None
        if g.user is None:
            abort(401)
        if not declared or g.user.role not in declared:
            abort(403)
        return None
