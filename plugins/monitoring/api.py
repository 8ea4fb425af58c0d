"""``/api/monitoring``: the worklist."""

from __future__ import annotations

import datetime
import zoneinfo

import marshmallow as ma
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from core.audit import audited
from core.auth import STAFF, allow
from core.db import utcnow
from plugins.monitoring import worklist
from plugins.monitoring.models import Finding, IngestFile

blp = Blueprint(
    "monitoring",
    __name__,
    url_prefix="/api/monitoring",
    description="Patients admitted for longer than a threshold without a new lab test.",
)


class MonitoringWorklistQuerySchema(ma.Schema):
    hours = ma.fields.Integer(
        load_default=48,
        validate=ma.validate.Range(min=1, max=24 * 365),
        metadata={"description": "The threshold in hours (admitted longer, untested longer)."},
    )
    as_of = ma.fields.DateTime(
        metadata={
            "description": "The moment to evaluate (ISO 8601; without an offset it is read in "
            "the hospital's time zone). Default: now. Nothing after it counts."
        }
    )
    department = ma.fields.String(validate=ma.validate.Length(min=1, max=100))
    q = ma.fields.String(
        validate=ma.validate.Length(max=100),
        metadata={"description": "Part of the MRN, the name or the case number."},
    )
    sort = ma.fields.String(
        load_default="-" + worklist.DEFAULT_SORT,
        validate=ma.validate.OneOf([name for key in worklist.SORTS for name in (key, "-" + key)]),
        metadata={"description": "A column; '-' first for descending."},
    )


class MonitoringWorklistRowSchema(ma.Schema):
    mrn = ma.fields.String()
    name = ma.fields.String()
    admission_id = ma.fields.String(metadata={"description": "The hospitalization case number."})
    department = ma.fields.String(allow_none=True)
    room = ma.fields.String(allow_none=True)
    admitted_at = ma.fields.AwareDateTime()
    hours_admitted = ma.fields.Float()
    last_test_at = ma.fields.AwareDateTime(
        allow_none=True, metadata={"description": "Latest test ordered or performed."}
    )
    last_test_name = ma.fields.String(allow_none=True)
    hours_since_last_test = ma.fields.Float(allow_none=True)
    never_tested = ma.fields.Boolean()


def criteria_from(args: dict) -> worklist.Criteria:
    """Criteria from validated arguments (shared by the API, the page and the export)."""
    as_of = args.get("as_of") or utcnow()
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=zoneinfo.ZoneInfo(current_app.config["TIMEZONE"]))
    sort = args.get("sort") or "-" + worklist.DEFAULT_SORT
    return worklist.Criteria(
        as_of=as_of.astimezone(datetime.UTC),
        hours=args.get("hours", 48),
        department=args.get("department") or None,
        q=args.get("q") or None,
        sort=sort.lstrip("-"),
        descending=sort.startswith("-"),
    )


def data_last_ingested() -> datetime.datetime | None:
    latest = (
        IngestFile.select(IngestFile.ingested_at)
        .where(IngestFile.status == "applied")
        .order_by(IngestFile.ingested_at.desc())
        .first()
    )
    return latest.ingested_at if latest else None


@blp.route("/worklist")
class Worklist(MethodView):
    @allow(*STAFF)
    @audited("worklist")
    @blp.arguments(MonitoringWorklistQuerySchema, location="query")
    @blp.response(200, MonitoringWorklistRowSchema(many=True))
    @blp.paginate()
    def get(self, args, pagination_parameters):
        """The worklist: open admissions longer than `hours` without a lab test in `hours`.

        Sorted by hours since the last test, never tested first. The headers
        `X-Worklist-As-Of` and `X-Data-Last-Ingested` say when the list is for and how fresh
        its data is.
        """
        criteria = criteria_from(args)
        page, size = pagination_parameters.page, pagination_parameters.page_size
        rows, pagination_parameters.item_count = worklist.page(
            criteria, limit=size, offset=(page - 1) * size
        )
        ingested = data_last_ingested()
        headers = {
            "X-Worklist-As-Of": criteria.as_of.isoformat(),
            "X-Data-Last-Ingested": ingested.isoformat() if ingested else "",
        }
        return rows, 200, headers


class MonitoringIngestFileSchema(ma.Schema):
    id = ma.fields.Integer()
    key = ma.fields.String()
    etag = ma.fields.String()
    table = ma.fields.String(allow_none=True)
    status = ma.fields.String(metadata={"enum": ["applied", "quarantined"]})
    message = ma.fields.String(allow_none=True)
    rows_read = ma.fields.Integer()
    inserted = ma.fields.Integer()
    updated = ma.fields.Integer()
    rejected = ma.fields.Integer()
    ingested_at = ma.fields.AwareDateTime()


class MonitoringFindingSchema(ma.Schema):
    kind = ma.fields.String()
    table = ma.fields.String()
    record_key = ma.fields.String()
    detail = ma.fields.String()
    created_at = ma.fields.AwareDateTime()


class MonitoringFindingQuerySchema(ma.Schema):
    kind = ma.fields.String(validate=ma.validate.Length(max=48))


@blp.route("/ingest-files")
class IngestFiles(MethodView):
    @allow("admin")
    @blp.response(200, MonitoringIngestFileSchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters):
        """The ingest ledger, newest first: every file taken, applied or quarantined."""
        query = IngestFile.select().order_by(IngestFile.ingested_at.desc(), IngestFile.id.desc())
        pagination_parameters.item_count = query.count()
        return list(query.paginate(pagination_parameters.page, pagination_parameters.page_size))


@blp.route("/findings")
class Findings(MethodView):
    @allow("admin")
    @blp.arguments(MonitoringFindingQuerySchema, location="query")
    @blp.response(200, MonitoringFindingSchema(many=True))
    @blp.paginate()
    def get(self, args, pagination_parameters):
        """Data-quality findings (duplicate ids, results before orders, ...), newest first."""
        query = Finding.select().order_by(Finding.created_at.desc(), Finding.id.desc())
        if args.get("kind"):
            query = query.where(Finding.kind == args["kind"])
        pagination_parameters.item_count = query.count()
        return list(query.paginate(pagination_parameters.page, pagination_parameters.page_size))
