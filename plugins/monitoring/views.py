"""The worklist page, its CSV export, and the chart's "Admissions and labs" section."""

from __future__ import annotations

import marshmallow as ma
from flask import Blueprint, Response, render_template, request, stream_with_context, url_for
from peewee import fn

from core.api import describe_errors
from core.audit import audited
from core.auth import STAFF, allow
from core.db import utcnow
from core.exports import csv_lines
from plugins.monitoring import worklist
from plugins.monitoring.api import (
    MonitoringWorklistQuerySchema,
    MonitoringWorklistRowSchema,
    criteria_from,
    data_last_ingested,
)
from plugins.monitoring.models import (
    Admission,
    Finding,
    IngestFile,
    LabResult,
    LabTest,
    RejectedRow,
)

pages = Blueprint(
    "monitoring_pages", __name__, url_prefix="/monitoring", template_folder="templates"
)
PAGE_SIZE = 50
CSV_COLUMNS = tuple(MonitoringWorklistRowSchema().fields)  # the API's fields, in order
COLUMNS = (  # (sort key, heading)
    ("mrn", "MRN"),
    ("name", "Name"),
    ("department", "Department"),
    ("room", "Room"),
    ("hours_admitted", "Admitted"),
    ("hours_since_last_test", "Last lab test"),
)


def _arguments() -> tuple[dict, list[str]]:
    """The page's filters: what was valid, and a sentence per invalid one."""
    given = {
        key: value
        for key, value in request.args.items()
        if key in MonitoringWorklistQuerySchema().fields and value != ""
    }
    try:
        return MonitoringWorklistQuerySchema().load(given), []
    except ma.ValidationError as invalid:
        valid = {k: v for k, v in given.items() if k not in invalid.messages}
        return MonitoringWorklistQuerySchema().load(valid), describe_errors(invalid.messages)


@pages.route("/")
@allow(*STAFF)
@audited("worklist")
def worklist_page():
    args, problems = _arguments()
    criteria = criteria_from(args)
    page = max(1, min(request.args.get("page", 1, type=int) or 1, 100_000))
    rows, total = worklist.page(criteria, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    latest = worklist.latest_data_at()
    live = "as_of" not in args
    stale = live and latest is not None and (utcnow() - latest).days > 7
    return render_template(
        "monitoring/worklist.html",
        rows=rows,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        criteria=criteria,
        args={k: v for k, v in request.args.items() if k != "page"},
        problems=problems,
        columns=COLUMNS,
        departments=worklist.departments(),
        ingested=data_last_ingested(),
        latest=latest,
        latest_url=url_for(".worklist_page", **{**request.args, "as_of": latest.isoformat()})
        if latest
        else None,
        stale=stale,
        live=live,
    )


@pages.route("/worklist.csv")
@allow(*STAFF)
@audited("export worklist")
def worklist_csv():
    args, _ = _arguments()
    criteria = criteria_from(args)

    def lines():
        rows = worklist.rows(criteria)
        yield from csv_lines(CSV_COLUMNS, ([getattr(r, c) for c in CSV_COLUMNS] for r in rows))

    stamp = criteria.as_of.strftime("%Y%m%dT%H%MZ")
    return Response(
        stream_with_context(lines()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="worklist-{stamp}.csv"'},
    )


@pages.route("/data")
@allow("admin")
def data_quality():
    """For admins: the ingest ledger, rejected rows and data-quality findings."""
    files = list(IngestFile.select().order_by(IngestFile.ingested_at.desc()).limit(100))
    rejected = list(
        RejectedRow.select(RejectedRow, IngestFile)
        .join(IngestFile)
        .order_by(RejectedRow.id.desc())
        .limit(100)
    )
    kinds = {
        row.kind: row.count
        for row in Finding.select(Finding.kind, fn.COUNT(Finding.id).alias("count")).group_by(
            Finding.kind
        )
    }
    kind = request.args.get("kind") or None
    findings = Finding.select().order_by(Finding.id.desc())
    if kind:
        findings = findings.where(Finding.kind == kind)
    return render_template(
        "monitoring/data_quality.html",
        files=files,
        rejected=rejected,
        kinds=kinds,
        kind=kind,
        findings=list(findings.limit(200)),
    )


def sort_link(key: str, criteria: worklist.Criteria, args: dict) -> str:
    """The URL that sorts by ``key`` (again: the other way round)."""
    descending = (
        not criteria.descending
        if criteria.sort == key
        else key in ("hours_since_last_test", "hours_admitted")
    )
    return url_for(".worklist_page", **{**args, "sort": ("-" if descending else "") + key})


@pages.app_context_processor
def _helpers():
    return {"monitoring_sort_link": sort_link}


def chart_section(mrn: str) -> str:
    """The patient's admissions and latest lab tests with their results."""
    admissions = (
        Admission.select().where(Admission.patient_id == mrn).order_by(Admission.admitted_at.desc())
    )
    tests = list(
        LabTest.select()
        .where(LabTest.patient_id == mrn)
        .order_by(LabTest.ordered_at.desc())
        .limit(20)
    )
    results = {
        result.test_id: result
        for result in LabResult.select().where(LabResult.test_id.in_([t.test_id for t in tests]))
    }
    return render_template(
        "monitoring/chart_section.html",
        admissions=list(admissions),
        tests=[(test, results.get(test.test_id)) for test in tests],
    )
