"""``/api/report-subscriptions`` (staff, their own) and ``/api/report-runs`` (admin)."""

from __future__ import annotations

import json
import urllib.parse

import marshmallow as ma
from flask import Response, stream_with_context, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from core.auth import STAFF, allow, current_user
from core.db import utcnow
from plugins.reporting.reports import pipeline, subscriptions, timing
from plugins.reporting.reports.models import (
    ALL_STUDIES,
    RUN_STATES,
    STUDY_MAX_LENGTH,
    ReportRun,
    Subscription,
)
from plugins.reporting.reports.subscriptions import (
    ReportingSubscriptionNewSchema,
    ReportingSubscriptionSchema,
    check_study,
)

blp = Blueprint(
    "reporting_reports",
    __name__,
    url_prefix="/api",
    description="Weekly documents reports by email: your subscriptions (staff), and the "
    "report runs (admins).",
)

SUBSCRIPTION_EXAMPLE = {
    "weekday": "monday",
    "time": "08:00",
    "timezone": "Europe/Berlin",
    "study": None,
}


# Subscriptions ---------------------------------------------------------------------------


@blp.route("/report-subscriptions")
class ReportSubscriptions(MethodView):
    @allow(*STAFF)
    @blp.response(200, ReportingSubscriptionSchema(many=True))
    def get(self):
        """Your report subscriptions

        Each arrives weekly on its weekday at its local time in its time zone (08:00
        Europe/Berlin stays 08:00 local across daylight-saving changes), with the report of
        the last complete ISO week. `next_due_at` is the next one, in UTC.
        """
        return [subscriptions.as_dict(s) for s in subscriptions.of_user(current_user())]

    @allow(*STAFF)
    @blp.arguments(ReportingSubscriptionNewSchema, example=SUBSCRIPTION_EXAMPLE)
    @blp.response(201, ReportingSubscriptionSchema)
    @blp.alt_response(409, description="You already have this subscription, or too many")
    @blp.alt_response(422, description="Names each bad field")
    def post(self, data):
        """Subscribe to the weekly documents report

        `weekday` (`monday` ... `sunday`), `time` (`HH:MM`, local), `timezone` (IANA, e.g.
        `Europe/Berlin`) and optionally `study` (null: all studies). A local time that does
        not exist on the day the clocks go forward is sent as late as the clocks jumped
        (02:30 becomes 03:30); a time that happens twice when they go back is sent at its
        first occurrence, once.
        """
        try:
            created = subscriptions.create(current_user(), data)
        except subscriptions.SubscriptionError as error:
            abort(error.status, message=error.message)
        location = url_for("reporting_reports.ReportSubscription", subscription_id=created.id)
        return subscriptions.as_dict(created), 201, {"Location": location}


@blp.route("/report-subscriptions/<int(max=9223372036854775807):subscription_id>")
class ReportSubscription(MethodView):
    @allow(*STAFF)
    @blp.response(200, ReportingSubscriptionSchema)
    @blp.alt_response(404, description="No such subscription of yours")
    def get(self, subscription_id):
        """One of your subscriptions"""
        return subscriptions.as_dict(_own_or_404(subscription_id))

    @allow(*STAFF)
    @blp.response(204)
    @blp.alt_response(404, description="No such subscription of yours")
    def delete(self, subscription_id):
        """Unsubscribe

        Reports not yet sent for it are not sent (they are counted as suppressed).
        """
        subscriptions.cancel(_own_or_404(subscription_id))


def _own_or_404(subscription_id: int) -> Subscription:
    found = subscriptions.find_own(current_user(), subscription_id)
    if found is None:
        abort(404, message=f"You have no subscription {subscription_id}.")
    return found


# Runs ------------------------------------------------------------------------------------


def _check_week(text: str) -> None:
    try:
        timing.week_monday(text)
    except ValueError as error:
        raise ma.ValidationError(str(error)) from None


class ReportingRunNewSchema(ma.Schema):
    week = ma.fields.String(
        required=True,
        validate=_check_week,
        metadata={"description": "ISO week, YYYY-Www.", "example": "2026-W47"},
    )
    dry_run = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "Render and count the recipients, send nothing."},
    )
    study = ma.fields.String(
        allow_none=True,
        validate=[ma.validate.Length(min=1, max=STUDY_MAX_LENGTH), check_study],
        metadata={
            "description": "Only this scope: a study, or null for the all-studies report. "
            "Leave it out for every scope that has subscribers."
        },
    )

    @ma.validates_schema
    def _week_has_ended(self, data, **kwargs):
        # A real run marks each recipient's week as delivered, so a week still under way
        # would be reported partly and never again in full. A dry run may preview it.
        week = data.get("week")
        if week is None or data.get("dry_run") or pipeline.week_complete(week, utcnow()):
            return
        ends = pipeline.week_end(week) + pipeline.WEEK_END_GRACE
        raise ma.ValidationError(
            f"{week} has not ended yet: it can be sent from {ends.isoformat()} (the week's "
            "end in the hospital's time zone, plus a grace for late uploads). Use "
            '"dry_run": true to preview it now.',
            "week",
        )

    @ma.post_load
    def _normalise(self, data, **kwargs):
        # One spelling of a week in the runs and the ledger, whatever was typed.
        data["week"] = timing.normalise_week(data["week"])
        return data


class ReportingRunSchema(ma.Schema):
    id = ma.fields.Integer()
    week = ma.fields.String()
    study = ma.fields.String(allow_none=True, metadata={"description": "null: all studies."})
    dry_run = ma.fields.Boolean()
    state = ma.fields.String(metadata={"enum": list(RUN_STATES)})
    created_at = ma.fields.AwareDateTime()
    started_at = ma.fields.AwareDateTime(allow_none=True)
    rendered_at = ma.fields.AwareDateTime(allow_none=True)
    finished_at = ma.fields.AwareDateTime(allow_none=True)
    render_attempts = ma.fields.Integer()
    recipients = ma.fields.Integer(allow_none=True)
    sent = ma.fields.Integer()
    failed = ma.fields.Integer()
    suppressed = ma.fields.Integer()
    pending = ma.fields.Integer(metadata={"description": "Not yet sent (or being sent)."})
    totals = ma.fields.Dict(allow_none=True, metadata={"description": "The report's counts."})
    pdf_size = ma.fields.Integer(allow_none=True)
    pdf = ma.fields.String(allow_none=True, metadata={"description": "Download address."})
    error = ma.fields.String(allow_none=True)


class ReportingRunQuerySchema(ma.Schema):
    week = ma.fields.String(validate=_check_week)
    state = ma.fields.String(validate=ma.validate.OneOf(RUN_STATES))

    @ma.post_load
    def _normalise(self, data, **kwargs):
        if "week" in data:
            data["week"] = timing.normalise_week(data["week"])
        return data


def run_dict(run: ReportRun, counts: dict[str, int]) -> dict:
    return {
        "id": run.id,
        "week": run.week,
        "study": run.study,
        "dry_run": run.dry_run,
        "state": run.state,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "rendered_at": run.rendered_at,
        "finished_at": run.finished_at,
        "render_attempts": run.render_attempts,
        "recipients": run.recipients,
        "sent": counts.get("sent", 0),
        "failed": counts.get("failed", 0),
        "suppressed": counts.get("suppressed", 0),
        "pending": sum(counts.get(s, 0) for s in pipeline.OPEN_STATES),
        "totals": json.loads(run.totals) if run.totals else None,
        "pdf_size": run.pdf_size,
        "pdf": url_for("reporting_reports.ReportRunPdf", run_id=run.id)
        if run.pdf_location
        else None,
        "error": run.error,
    }


def _dicts(runs: list[ReportRun]) -> list[dict]:
    counts = pipeline.delivery_counts([run.id for run in runs]) if runs else {}
    return [run_dict(run, counts.get(run.id, {})) for run in runs]


@blp.route("/report-runs")
class ReportRuns(MethodView):
    @allow("admin")
    @blp.arguments(ReportingRunQuerySchema, location="query")
    @blp.response(200, ReportingRunSchema(many=True))
    @blp.paginate()
    def get(self, args, pagination_parameters):
        """Report runs, newest first (admins)

        One run per scope (a study, or all studies) and ISO week, plus dry runs. Counts of
        sent, failed and suppressed emails come from the delivery ledger.
        """
        query = ReportRun.select().order_by(ReportRun.id.desc())
        if "week" in args:
            query = query.where(ReportRun.week == args["week"])
        if "state" in args:
            query = query.where(ReportRun.state == args["state"])
        pagination_parameters.item_count = query.count()
        page = query.paginate(pagination_parameters.page, pagination_parameters.page_size)
        return _dicts(list(page))

    @allow("admin")
    @blp.arguments(ReportingRunNewSchema, example={"week": "2026-W47", "dry_run": False})
    @blp.response(202, ReportingRunSchema(many=True))
    @blp.alt_response(422, description="Names each bad field")
    def post(self, data):
        """Run a week's reports now (admins)

        For each scope that has subscribers (or only `study`, when given: null is the
        all-studies report): the run of that scope and week is created if there is none,
        every active subscriber of the scope is added to its ledger, and its jobs are
        queued. A subscriber who already received that week's report is not sent it again,
        so running a week twice sends nothing more. A week that has not ended yet (in the
        hospital's time zone, plus a grace for late uploads) is refused with a 422 naming
        `week`. `dry_run` renders the report and counts the recipients without sending (a
        new dry run each time, of any week).
        """
        week, dry = data["week"], data["dry_run"]
        if "study" in data:
            studies = [data["study"]]
        else:
            scopes = (
                Subscription.select(Subscription.study)
                .where(Subscription.cancelled_at.is_null())
                .distinct()
            )
            studies = sorted({row.study for row in scopes}, key=lambda s: (s is not None, s))
            if not studies and dry:
                studies = [None]
        runs = []
        for study in studies:
            if dry:
                run = pipeline.create_dry_run(study, week)
            else:
                run = pipeline.ensure_run(study, week)
                added = pipeline.insert_all_recipients(run)
            if not pipeline.kick(run.id) and not dry and added:
                if ReportRun.get_by_id(run.id).state == "sending":
                    # New recipients of a run sending right now: batches for them only.
                    pipeline.dispatch(run.id, added)
            runs.append(ReportRun.get_by_id(run.id))
        return _dicts(runs)


@blp.route("/report-runs/<int(max=9223372036854775807):run_id>")
class ReportRunOne(MethodView):
    @allow("admin")
    @blp.response(200, ReportingRunSchema)
    @blp.alt_response(404, description="No such run")
    def get(self, run_id):
        """One report run (admins)"""
        return _dicts([_run_or_404(run_id)])[0]


@blp.route("/report-runs/<int(max=9223372036854775807):run_id>/pdf")
class ReportRunPdf(MethodView):
    @allow("admin")
    @blp.response(200, description="The PDF", content_type="application/pdf")
    @blp.alt_response(404, description="No such run, or not rendered yet")
    def get(self, run_id):
        """Download a run's PDF (admins)"""
        run = _run_or_404(run_id)
        if not run.pdf_location:
            abort(404, message=f"Run {run_id} has no PDF yet (state {run.state}).")
        return pdf_response(run)


def pdf_response(run: ReportRun) -> Response:
    scope = "all-studies" if run.study is None else run.study
    name = f"caredeck-report-{run.week}-{scope}.pdf"
    chunks = pipeline.store().open(run.pdf_location)
    response = Response(stream_with_context(chunks), mimetype="application/pdf")
    response.headers["Content-Disposition"] = content_disposition(name)
    if run.pdf_size is not None:
        response.headers["Content-Length"] = str(run.pdf_size)
    return response


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII ``filename`` (anything else replaced) and the exact name
    as RFC 6266 / RFC 8187 ``filename*`` (UTF-8, percent-encoded): nothing in ``name`` (a
    quote, a newline) can break the header."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in name
    )
    encoded = urllib.parse.quote(name, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def _run_or_404(run_id: int) -> ReportRun:
    run = ReportRun.get_or_none(ReportRun.id == run_id)
    if run is None:
        abort(404, message=f"There is no report run {run_id}.")
    return run


__all__ = ["ALL_STUDIES", "blp"]
