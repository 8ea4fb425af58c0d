"""Who read or changed which patient's record: written by the core for every request.

Any route with ``<mrn>`` in its URL (API, pages and chart sections, the plugins' included)
is audited without the plugin doing anything; views that read patient data without an MRN
in the URL (lists, searches, exports) mark themselves with :func:`audited`, and a view can
say more with :func:`note` (the patient a new record is for, or "update" for a form POST).
Denied attempts are recorded too. If a read cannot be recorded, the record is not shown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import marshmallow as ma
import peewee
from flask import Flask, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint
from werkzeug.exceptions import ServiceUnavailable

from core.auth.access import allow, automatic_options, declared
from core.db import Model, UTCDateTimeField, utcnow
from core.exports import csv_lines

log = logging.getLogger("caredeck.audit")
ATTRIBUTE = "_caredeck_audit"
ACTIONS = {
    "GET": "view",
    "HEAD": "view",
    "POST": "create",
    "PUT": "update",
    "PATCH": "update",
    "DELETE": "delete",
}
FIELDS = ("at", "user", "role", "action", "patient", "path", "outcome", "address")


class AuditEvent(Model):
    at = UTCDateTimeField(default=utcnow, index=True)
    user = peewee.CharField(max_length=254, null=True, index=True)  # email; None: anonymous
    role = peewee.CharField(max_length=16, null=True)
    action = peewee.CharField(max_length=32)
    patient = peewee.CharField(max_length=64, null=True, index=True)  # MRN
    path = peewee.CharField(max_length=2000)
    outcome = peewee.CharField(max_length=16)  # allowed, denied, not_found, invalid, error
    address = peewee.CharField(max_length=64, null=True)
    request_id = peewee.CharField(max_length=64, null=True)

    class Meta:
        table_name = "core_audit_events"

    def as_dict(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in FIELDS}


def audited(action: str) -> Callable[[Any], Any]:
    """Audit the decorated view as ``action`` (for views without ``<mrn>`` in the URL)."""

    def mark(view: Any) -> Any:
        setattr(view, ATTRIBUTE, action)
        return view

    return mark


def note(*, patient: str | None = None, action: str | None = None) -> None:
    """Say what this request does when the URL and method cannot: the patient a new record
    is for, or the action of a form POST (``update`` rather than ``create``)."""
    if patient is not None:
        g.audit_patient = patient
    if action is not None:
        g.audit_action = action


def outcome_of(status: int) -> str:
    if g.get("access_denied") or status in (401, 403):
        return "denied"
    if status == 404:
        return "not_found"
    if status in (400, 409, 413, 422):
        return "invalid"
    return "error" if status >= 500 else "allowed"


def _storable(text: str) -> str:
    """``text`` without NUL characters, which PostgreSQL cannot store: a refused request
    whose URL held one is still recorded."""
    return text.replace("\x00", "\N{REPLACEMENT CHARACTER}")


def record(status: int, action: str, patient: str | None) -> AuditEvent:
    user = g.get("user")
    return AuditEvent.create(
        user=user.email if user else None,
        role=user.role if user else None,
        action=action,
        patient=_storable(patient[:64]) if patient else None,
        path=_storable(request.full_path.rstrip("?")[:2000]),
        outcome=outcome_of(status),
        address=request.remote_addr,
        request_id=g.get("request_id"),
    )


def query(patient: str | None = None, user: str | None = None) -> peewee.ModelSelect:
    """Audit events, newest first, optionally for one patient (MRN) or user (email)."""
    events = AuditEvent.select().order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
    if patient:
        events = events.where(AuditEvent.patient == patient)
    if user:
        events = events.where(AuditEvent.user == user.strip().lower())
    return events


def recent_access(mrn: str, limit: int = 20) -> list[AuditEvent]:
    """The latest accesses to one patient's record (the chart's "who accessed" panel)."""
    return list(query(patient=mrn).limit(limit))


def to_csv(events: peewee.ModelSelect) -> Iterable[str]:
    """The events as CSV lines (header first), safe to open in a spreadsheet."""
    # A generator: the query runs while the response streams, inside its request context.
    rows = ([getattr(event, field) for field in FIELDS] for event in events.iterator())
    yield from csv_lines(FIELDS, rows)


def init_app(app: Flask) -> None:
    @app.after_request
    def _audit(response):
        if request.endpoint is None:
            return response
        if request.method == "OPTIONS" and automatic_options(request.url_rule):
            return response
        patient = (request.view_args or {}).get("mrn") or g.get("audit_patient")
        action = g.get("audit_action") or declared(
            app.view_functions[request.endpoint], request.method, ATTRIBUTE
        )
        if action is None and patient is not None:
            action = ACTIONS.get(request.method, request.method.lower())
        if action is None:
            return response
        try:
            record(response.status_code, action, patient)
        except Exception:
            log.exception("could not record an audit event for %s %r", request.method, request.path)
            if request.method in ("GET", "HEAD"):
                # Fail closed: a read that cannot be recorded is not shown.
                refusal = ServiceUnavailable(
                    "The access could not be recorded in the audit log, so the record is not "
                    "shown; try again."
                )
                api = current_app.extensions["caredeck"].api
                return current_app.make_response(api.handle_http_exception(refusal))
        return response


class CoreAuditEventSchema(ma.Schema):
    at = ma.fields.AwareDateTime()
    user = ma.fields.String(allow_none=True)
    role = ma.fields.String(allow_none=True)
    action = ma.fields.String()
    patient = ma.fields.String(allow_none=True, metadata={"description": "The patient's MRN."})
    path = ma.fields.String()
    outcome = ma.fields.String(
        metadata={"enum": ["allowed", "denied", "not_found", "invalid", "error"]}
    )
    address = ma.fields.String(allow_none=True)


class CoreAuditQuerySchema(ma.Schema):
    patient = ma.fields.String(metadata={"description": "Only this patient (MRN)."})
    user = ma.fields.String(metadata={"description": "Only this user (email)."})


blp = Blueprint("audit", __name__, url_prefix="/api/audit", description="Audit log (admin)")


@blp.route("")
class AuditEvents(MethodView):
    @allow("admin")
    @audited("search audit")
    @blp.arguments(CoreAuditQuerySchema, location="query")
    @blp.response(200, CoreAuditEventSchema(many=True))
    @blp.paginate()
    def get(self, filters, pagination_parameters):
        """Who accessed which record, newest first (the CSV export is /admin/audit.csv)."""
        note(patient=filters.get("patient"))
        events = query(**filters)
        pagination_parameters.item_count = events.count()
        return list(events.paginate(pagination_parameters.page, pagination_parameters.page_size))
