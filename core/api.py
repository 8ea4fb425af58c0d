"""The API: flask-smorest at ``/api``, one error shape, and the docs UI from local assets.

Every error, under ``/api`` and from any plugin, is ``{"code", "status", "message",
"errors"}``; pages get the same information as an HTML page. The docs UI is Swagger UI
served from the ``swagger-ui-bundle`` package, because hospitals run air-gapped: a UI that
loads its JavaScript from a CDN is a blank page there.
"""

from __future__ import annotations

import http
import logging
from collections.abc import Mapping

import flask_smorest
import peewee
import swagger_ui_bundle
from apispec import BasePlugin
from flask import Blueprint, g, render_template, request, send_from_directory, url_for
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable

import core
from core.auth.access import PUBLIC, ROLES, declared_access, public

log = logging.getLogger("caredeck.api")
MAX_PAGE = 100_000
DATABASE_UNAVAILABLE = "The database cannot be reached right now; try again shortly."
# Every 503 says when to try again: what was unavailable (the database, the message bus)
# is usually back within seconds.
RETRY_AFTER_SECONDS = 5


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/api"


def describe_errors(errors: Mapping, prefix: str = "") -> list[str]:
    """Flatten marshmallow's nested messages into ``field: reason`` sentences."""
    lines = []
    for key, value in errors.items():
        name = (
            f"{prefix}{key}"
            if key not in ("json", "query", "form", "files", "headers", "path")
            else prefix
        )
        if isinstance(value, Mapping):
            lines.extend(describe_errors(value, f"{name}." if name else ""))
        else:
            reasons = value if isinstance(value, list) else [value]
            text = " ".join(str(reason) for reason in reasons)
            lines.append(f"{name.rstrip('.') or 'body'}: {text}")
    return lines


class Api(flask_smorest.Api):
    def handle_http_exception(self, error: HTTPException):
        data = getattr(error, "data", None) or {}
        errors = data.get("errors") or data.get("messages") or {}
        if error.code == 422 and errors:
            message = "The request is invalid: " + "; ".join(describe_errors(errors))
        else:
            message = data.get("message") or error.description
        if isinstance(error, InternalServerError):
            message = (
                "An unexpected error occurred; it has been logged with request id "
                f"{g.get('request_id', '?')}."
            )
        headers = dict(data.get("headers") or {})
        if error.code == 401 and wants_json():
            headers.setdefault("WWW-Authenticate", 'Bearer realm="caredeck"')
        if error.code == 503:
            headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
        if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
            headers.setdefault("Allow", ", ".join(error.valid_methods))
        payload = {
            "code": error.code,
            "status": error.name,
            "message": message,
            "errors": errors,
        }
        if wants_json():
            return payload, error.code, headers
        page = render_template("caredeck/error.html", error=payload)
        return page, error.code, headers


class CommonResponses(BasePlugin):
    """Document on every operation the answers it can give before (or around) its view, so
    that clients, and the fuzz test, find every status code listed: from the view's
    ``allow()`` declaration, 401 without a valid token and 403 for a role it does not allow;
    404 for a path naming nothing (or another patient's record); 400 and 413 for a body
    that is not JSON, nested too deep or too large; 422 for input ``request_guard`` refuses
    (a NUL anywhere); 503 while the database cannot be reached."""

    def __init__(self, app) -> None:
        self.app = app

    def operation_helper(self, path=None, operations=None, **kwargs) -> None:
        rule = kwargs.get("rule")
        if rule is None:
            return
        view = self.app.view_functions[rule.endpoint]
        for method, operation in (operations or {}).items():
            codes = {422, 503}
            if "requestBody" in operation:
                codes |= {400, 413}
            declared = declared_access(view, method.upper())
            if declared is not None and declared != PUBLIC:
                codes.add(401)
                if set(ROLES) - declared:
                    codes.add(403)
            if rule.arguments:
                codes.add(404)
            responses = operation.setdefault("responses", {})
            documented = {str(code) for code in responses}
            for code in sorted(codes):
                if str(code) not in documented:
                    # flask-smorest registers an error response per status, by its name.
                    responses[code] = http.HTTPStatus(code).name


# flask-smorest documents X-Pagination with an object schema, which OpenAPI reads as the
# "simple" style (total,3,page,1); the header is JSON, which OpenAPI says with content.
PAGINATION_HEADER = {
    "description": "Pagination metadata, as JSON",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PaginationMetadata"}}
    },
}


docs = Blueprint("api_docs", __name__, url_prefix="/api/docs")


@docs.route("/")
@public
def docs_page():
    return render_template(
        "caredeck/api_docs.html",
        spec_url=url_for("api-docs.openapi_json"),
        assets=url_for("api_docs.asset", filename=""),
    )


@docs.route("/assets/<path:filename>")
@public
def asset(filename: str):
    return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename, max_age=86400)


def init_app(app) -> Api:
    """Create the app's Api (one per app, so test apps never share a spec)."""
    app.config.update(
        API_TITLE="Caredeck",
        API_VERSION=core.__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "info": {
                "description": "Caredeck's hospital API. Get a token from "
                "`POST /api/auth/token`, then press **Authorize** and paste it.",
            },
            "security": [{"bearerAuth": []}],
        },
    )
    api = Api(app, spec_kwargs={"extra_plugins": [CommonResponses(app)]})
    api.spec.components.header("PAGINATION", PAGINATION_HEADER, lazy=True)
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "description": "From /api/auth/token"}
    )
    spec_view = app.view_functions["api-docs.openapi_json"]
    app.view_functions["api-docs.openapi_json"] = public(lambda: spec_view())
    app.register_blueprint(docs)

    @app.before_request
    def _refuse_absurd_pages():
        # Pagination everywhere reads ?page=; a number this large only overflows the
        # database's OFFSET, so it is refused here, once, for every list.
        page = request.args.get("page", "")
        if page.isdigit() and int(page) > MAX_PAGE:
            flask_smorest.abort(
                422,
                message=f"page must be at most {MAX_PAGE}.",
                errors={"query": {"page": [f"Must be at most {MAX_PAGE}."]}},
            )

    # A database that cannot be reached (restarting, failing over) or a statement it
    # cancelled: the request may well succeed in a moment, so say so instead of a 500.
    @app.errorhandler(peewee.OperationalError)
    @app.errorhandler(peewee.InterfaceError)
    def _database_unavailable(error: Exception):
        log.error("database unavailable in %s %s: %s", request.method, request.path, error)
        return api.handle_http_exception(ServiceUnavailable(DATABASE_UNAVAILABLE))

    # HTTP errors (unknown routes included) reach Api.handle_http_exception through
    # flask-smorest; anything else that escapes a view is a 500 in the same shape.
    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error in %s %s", request.method, request.path)
        return api.handle_http_exception(InternalServerError(original_exception=error))

    return api
