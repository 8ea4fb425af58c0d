"""Access declarations on views, and the checks that run before every view.

Callers are identified by a bearer token (API clients, anywhere) or by the browser session
cookie (pages only: the API never accepts the cookie, so a page on another site cannot make
a signed-in browser call it). Every state-changing page request carries a CSRF token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from flask import Flask, abort, g, redirect, request, session, url_for
from flask_wtf.csrf import CSRFProtect

ROLES = ("admin", "doctor", "nurse", "patient")
STAFF = ("admin", "doctor", "nurse")
PUBLIC = "public"
ATTRIBUTE = "_caredeck_access"
SESSION_KEY = "token"
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

csrf = CSRFProtect()


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


CSRF_EXEMPT = "_caredeck_csrf_exempt"


def csrf_exempt(view: Any) -> Any:
    """Let a public page take POST without the session's CSRF token, because something else
    in the request is the authority (a signed token in the URL, as in one-click unsubscribe
    from an email client, which has no session). Never for a view that acts on the session's
    user."""
    setattr(view, CSRF_EXEMPT, True)
    return view


def declared(view_func: Callable, method: str, attribute: str) -> Any:
    """What the view declares with ``attribute`` for ``method``: on the MethodView method
    (HEAD falls back to GET, as Flask does), else on the class, else on the function."""
    view_class = getattr(view_func, "view_class", None)
    if view_class is None:
        return getattr(view_func, attribute, None)
    handler = getattr(view_class, method.lower(), None)
    if handler is None and method == "HEAD":
        handler = getattr(view_class, "get", None)
    value = getattr(handler, attribute, None)
    return value if value is not None else getattr(view_class, attribute, None)


def is_csrf_exempt(view_func: Callable, method: str) -> bool:
    return bool(declared(view_func, method, CSRF_EXEMPT))


def declared_access(view_func: Callable, method: str) -> frozenset[str] | str | None:
    """The access declared for ``method`` on ``view_func`` (``None``: nothing declared)."""
    return declared(view_func, method, ATTRIBUTE)


def automatic_options(rule) -> bool:
    """Flask answers OPTIONS for this rule by itself, without running the view."""
    return bool(getattr(rule, "provide_automatic_options", False))


def undeclared_routes(app: Flask) -> list[str]:
    """Every ``METHOD path`` whose view declares no access (start-up refuses these)."""
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        view = app.view_functions[rule.endpoint]
        methods = (rule.methods or set()) - {"HEAD"}
        if automatic_options(rule):
            methods -= {"OPTIONS"}
        for method in sorted(methods):
            if declared_access(view, method) is None:
                missing.append(f"{method} {rule.rule} ({rule.endpoint})")
    return missing


def current_user():
    """The signed-in :class:`core.auth.models.User`, or ``None``."""
    return g.get("user")


def current_token():
    """The :class:`core.auth.models.ApiToken` (or browser session) of this request."""
    return g.get("token")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _identify():
    """This request's token record: the bearer token, else (pages only) the session's."""
    from core.auth.models import ApiToken

    token = bearer_token()
    if token is not None:
        return ApiToken.find_valid(hash_token(token), ("user", "service"))
    if request.path.startswith("/api/") or SESSION_KEY not in session:
        return None
    record = ApiToken.find_valid(hash_token(session[SESSION_KEY]), ("session",))
    if record is None:
        session.clear()  # expired, idle too long, signed out elsewhere or disabled
    return record


def init_app(app: Flask) -> None:
    app.config.update(
        WTF_CSRF_CHECK_DEFAULT=False,  # checked below, for page requests only
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
    )
    csrf.init_app(app)

    @app.before_request
    def _check_access():
        if request.endpoint is None:
            return None  # a 404 or 405 about to be raised
        if request.method == "OPTIONS" and automatic_options(request.url_rule):
            return None  # Flask answers it without running the view
        if request.endpoint == "static" or request.endpoint.endswith(".static"):
            return None
        declared = declared_access(app.view_functions[request.endpoint], request.method)
        g.token = _identify()
        g.user = g.token.user if g.token else None
        if request.method in UNSAFE_METHODS and bearer_token() is None:
            view = app.view_functions[request.endpoint]
            exempt = declared == PUBLIC and is_csrf_exempt(view, request.method)
            if not request.path.startswith("/api/") and not exempt:
                csrf.protect()  # a cookie is ambient; a bearer token never is
        if declared == PUBLIC:
            return None
        if g.user is None:
            if request.method == "GET" and not request.path.startswith("/api/"):
                # A person at a browser is sent to sign in, and brought back afterwards.
                g.access_denied = True
                return redirect(url_for("auth_pages.login", next=request.full_path.rstrip("?")))
            abort(401)
        if not declared or g.user.role not in declared:
            abort(403)
        # A patient user sees only their own record; for any other MRN the record does not
        # exist as far as they can tell.
        mrn = (request.view_args or {}).get("mrn")
        if g.user.role == "patient" and mrn is not None and mrn != g.user.patient_mrn:
            abort(404)
        return None

    @app.after_request
    def _security_headers(response):
        headers = response.headers
        headers.setdefault("Content-Security-Policy", _policy(request.path))
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")
        if request.endpoint != "static" and "Cache-Control" not in headers:
            headers["Cache-Control"] = "no-store"  # patient data stays out of shared caches
        return response


STRICT_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets style attributes from its JavaScript; its scripts stay 'self' only.
DOCS_POLICY = STRICT_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


def _policy(path: str) -> str:
    return DOCS_POLICY if path.startswith("/api/docs") else STRICT_POLICY
