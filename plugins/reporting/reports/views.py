"""Pages: managing one's report subscriptions, the one-click unsubscribe page, and the
expiring link to a report's PDF (for reports too large to attach)."""

from __future__ import annotations

import marshmallow as ma
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from core.auth import STAFF, allow, current_user, public
from core.auth.access import csrf_exempt
from plugins.reporting.reports import api, subscriptions, timing, tokens
from plugins.reporting.reports.models import WEEKDAYS, ReportRun, Subscription

pages = Blueprint("reporting_reports_pages", __name__, template_folder="../templates")

FORM_FIELDS = ("weekday", "time", "timezone", "study")
new_schema = subscriptions.ReportingSubscriptionNewSchema()
COMMON_ZONES = (
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "Europe/Paris",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Australia/Sydney",
)


def _page(values: dict, errors: dict, status: int = 200):
    return (
        render_template(
            "reporting/subscriptions.html",
            subscriptions=subscriptions.of_user(current_user()),
            weekdays=WEEKDAYS,
            zones=COMMON_ZONES,
            values=values,
            errors=errors,
        ),
        status,
    )


@pages.route("/reports/subscriptions", methods=["GET", "POST"])
@allow(*STAFF)
def subscriptions_page():
    if request.method == "GET":
        return _page({"weekday": "monday", "time": "08:00", "timezone": "UTC"}, {})
    values = {name: request.form.get(name, "").strip() for name in FORM_FIELDS}
    try:
        data = new_schema.load({**values, "study": values["study"] or None})
    except ma.ValidationError as error:
        errors = {
            name: " ".join(messages) if isinstance(messages, list) else str(messages)
            for name, messages in error.messages.items()
        }
        return _page(values, errors, 422)
    try:
        subscriptions.create(current_user(), data)
    except subscriptions.SubscriptionError as error:
        return _page(values, {"_schema": error.message}, error.status)
    flash("Subscribed: the report arrives every week at the time you chose.")
    return redirect(url_for(".subscriptions_page"))


@pages.route("/reports/subscriptions/<int:subscription_id>/cancel", methods=["POST"])
@allow(*STAFF)
def cancel_page(subscription_id: int):
    found = subscriptions.find_own(current_user(), subscription_id)
    if found is None:
        abort(404, "You have no such subscription.")
    subscriptions.cancel(found)
    flash("Unsubscribed.")
    return redirect(url_for(".subscriptions_page"))


# One-click unsubscribe (RFC 8058): the signed token is the authority, no login -----------


def _subscription_or_error(token: str) -> tuple[Subscription | None, str | None]:
    try:
        subscription_id = tokens.read_unsubscribe(token)
    except tokens.TokenError as error:
        return None, str(error)
    found = Subscription.get_or_none(Subscription.id == subscription_id)
    if found is None:
        return None, "This subscription no longer exists."
    return found, None


@pages.route("/reports/unsubscribe/<token>", methods=["GET"])
@public
def unsubscribe_confirm(token: str):
    # GET only shows the question: mail scanners follow links, and must not unsubscribe.
    found, error = _subscription_or_error(token)
    status = 200 if found else 400
    return render_template(
        "reporting/unsubscribe.html", subscription=found, error=error, token=token, done=False
    ), status


@pages.route("/reports/unsubscribe/<token>", methods=["POST"])
@public
@csrf_exempt
def unsubscribe(token: str):
    found, error = _subscription_or_error(token)
    if found is None:
        return render_template(
            "reporting/unsubscribe.html", subscription=None, error=error, token=token, done=False
        ), 400
    subscriptions.cancel(found)
    return render_template(
        "reporting/unsubscribe.html", subscription=found, error=None, token=token, done=True
    )


@pages.route("/reports/pdf/<token>")
@public
def report_link(token: str):
    try:
        run_id = tokens.read_report_link(token)
    except tokens.TokenError as error:
        return render_template("reporting/link.html", error=str(error)), 410
    run = ReportRun.get_or_none(ReportRun.id == run_id)
    if run is None or not run.pdf_location:
        return render_template("reporting/link.html", error="This report is not available."), 404
    return api.pdf_response(run)


def describe(subscription: Subscription) -> str:
    scope = f"study {subscription.study}" if subscription.study else "all studies"
    day = WEEKDAYS[subscription.weekday].capitalize()
    return f"{day}s at {subscription.time} ({subscription.timezone}), {scope}"


@pages.app_template_global("reporting_describe")
def _describe(subscription: Subscription) -> str:
    return describe(subscription)


@pages.app_template_global("reporting_next_local")
def _next_local(subscription: Subscription) -> str:
    """The next report's time as the subscriber's clock shows it."""
    local = subscription.next_due_at.astimezone(timing.zone(subscription.timezone))
    return local.strftime("%a %d %b %Y, %H:%M %Z")
