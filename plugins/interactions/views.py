"""The chart's "Interactions" section, the full history page, and the doctors' forms
(record, amend, mark entered in error). Forms post to pages of their own: errors come back
on that page next to their fields; success goes back to the chart."""

from __future__ import annotations

import dataclasses
import datetime
import math
import zoneinfo

import marshmallow as ma
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)

from core.audit import note
from core.auth import ROLES, allow, current_user
from core.db import utcnow
from core.patients.models import find_visible, visible_or_404
from plugins.interactions import records
from plugins.interactions.models import (
    CONTENT_FIELDS,
    KIND_LABELS,
    KINDS,
    OUTCOME_LABELS,
    OUTCOMES,
    REASON_MAX_LENGTH,
    STATUS_NOTE_MAX_LENGTH,
    SUMMARY_MAX_LENGTH,
)
from plugins.interactions.schemas import (
    InteractionsAmendmentSchema,
    InteractionsErrorMarkSchema,
    InteractionsNewSchema,
)

pages = Blueprint("interactions_pages", __name__, template_folder="templates")

SECTION_ENTRIES = 20  # the chart shows the newest; the history page has them all
HISTORY_PAGE_SIZE = 25
MARK_RADIUS = 6
FORM_FIELDS = (*CONTENT_FIELDS, "reason")
new_schema = InteractionsNewSchema()
amendment_schema = InteractionsAmendmentSchema()
error_mark_schema = InteractionsErrorMarkSchema()


def helpers() -> dict:
    """What the templates use besides their data (passed to each render: the chart section
    is rendered by the core's blueprint, where this blueprint's context processors do not
    run)."""
    return {
        "kinds": KINDS,
        "kind_labels": KIND_LABELS,
        "outcomes": OUTCOMES,
        "outcome_labels": OUTCOME_LABELS,
        "limits": {
            "summary": SUMMARY_MAX_LENGTH,
            "status_note": STATUS_NOTE_MAX_LENGTH,
            "reason": REASON_MAX_LENGTH,
        },
        "zone_name": current_app.config["TIMEZONE"],
        "local_input": local_input,
        "now_utc": utcnow,
        "current_values": current_values,
        "changed_fields": records.changed_fields,
    }


# Times in forms: the hospital's wall clock ------------------------------------------------


def _zone() -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(current_app.config["TIMEZONE"])


def local_input(moment: datetime.datetime | None) -> str:
    """A moment as a ``datetime-local`` input shows it (hospital time, to the minute)."""
    return moment.astimezone(_zone()).strftime("%Y-%m-%dT%H:%M") if moment else ""


def aware_from_form(text: str) -> str:
    """A ``datetime-local`` value (hospital time) as ISO 8601 with its offset, for the
    schema; ``ValueError`` with the reason for a time that cannot be read."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("Enter the time as YYYY-MM-DD HH:MM, e.g. 2024-11-20 08:30.") from None
    if moment.tzinfo is not None:
        return moment.isoformat()
    if moment.year < 1900:  # near year 1 the zone's offset overflows
        raise ValueError("The time cannot be before 1900-01-01.")
    zone = _zone()
    local = moment.replace(tzinfo=zone)
    try:
        round_trip = local.astimezone(datetime.UTC).astimezone(zone).replace(tzinfo=None)
    except OverflowError:  # 9999-12-31 late in the evening, west of UTC
        raise ValueError("The time is too late: its offset overflows.") from None
    if round_trip != moment:
        raise ValueError(
            f"{text.replace('T', ' ')} does not exist in {zone.key}: the clocks were put "
            "forward then. Enter the time as the clock showed it."
        )
    later = moment.replace(tzinfo=zone, fold=1)
    if later.utcoffset() != local.utcoffset():
        # The hour the clocks were put back happened twice: do not guess which.
        shown = text.replace("T", " ")[:16]
        raise ValueError(
            f"{shown} happened twice in {zone.key}: the clocks were put back then. Give the "
            f"time with its offset: {local.isoformat(timespec='minutes')} for the first "
            f"{moment:%H:%M}, {later.isoformat(timespec='minutes')} for the second (or a "
            "time outside that hour)."
        )
    return local.isoformat()


# The picture: one mark per interaction, by time and outcome ------------------------------


@dataclasses.dataclass(frozen=True)
class Mark:
    entry: object
    x: float  # percent of the track's width


def picture(entries: list, now: datetime.datetime) -> dict:
    """Marks per outcome lane, placed between the first interaction and now."""
    if not entries:
        return {"lanes": {}, "first": None, "last": None}
    moments = [entry.current.occurred_at for entry in entries]
    first, last = min(moments), max([*moments, now])
    span = max((last - first).total_seconds(), 1.0)
    lanes: dict[str, list[Mark]] = {outcome: [] for outcome in OUTCOMES}
    # Oldest first, so that a newer mark is drawn over an older one at the same place.
    for entry in sorted(entries, key=lambda e: (e.current.occurred_at, e.id)):
        x = (entry.current.occurred_at - first).total_seconds() / span * 100
        lanes[entry.current.outcome].append(Mark(entry, round(min(max(x, 1.0), 99.0), 3)))
    return {"lanes": lanes, "first": first, "last": last}


def _counts(entries: list) -> dict[str, int]:
    valid = [entry for entry in entries if not entry.error_mark]
    return {
        outcome: sum(1 for entry in valid if entry.current.outcome == outcome)
        for outcome in OUTCOMES
    }


def chart_section(mrn: str) -> str:
    user = current_user()
    patient = find_visible(user, mrn)
    if patient is None:  # the core answers 404 before this; never show another's record
        return '<p class="section-error">There is no such patient.</p>'
    everything = records.points(patient.mrn)  # slim: the picture and the counts
    shown = records.entries(records.history(patient.mrn).limit(SECTION_ENTRIES))
    return render_template(
        "interactions/chart_section.html",
        **helpers(),
        patient=patient,
        picture=picture(everything, utcnow()),
        counts=_counts(everything),
        entries=shown,
        versions=records.versions_of([entry.id for entry in shown]),
        total=len(everything),
        can_write=user.role == "doctor",
        user=user,
        new_values={},
        radius=MARK_RADIUS,
    )


# Pages ------------------------------------------------------------------------------------


def _chart(mrn: str):
    return redirect(url_for("core_patients.chart", mrn=mrn) + "#section-interactions-title", 303)


def _page_number() -> int:
    try:
        return max(1, int(request.args.get("page", "1")))
    except ValueError:
        return 1


@pages.route("/patients/<mrn>/interactions")
@allow(*ROLES)
def history_page(mrn: str):
    """Every interaction of the patient, newest first, a page at a time."""
    patient = visible_or_404(mrn)
    outcome = request.args.get("outcome") or None
    if outcome not in (None, *OUTCOMES):
        outcome = None
    query = records.history(patient.mrn, records.Filters(outcome=outcome))
    total = query.count()
    page_count = max(1, math.ceil(total / HISTORY_PAGE_SIZE))
    page = min(_page_number(), page_count)
    shown = records.entries(query.paginate(page, HISTORY_PAGE_SIZE))
    user = current_user()
    return render_template(
        "interactions/history.html",
        **helpers(),
        patient=patient,
        entries=shown,
        versions=records.versions_of([entry.id for entry in shown]),
        total=total,
        page=page,
        page_count=page_count,
        outcome=outcome,
        can_write=user.role == "doctor",
        user=user,
    )


def _submitted() -> dict[str, str]:
    return {name: request.form[name] for name in FORM_FIELDS if name in request.form}


def _load(schema: ma.Schema, values: dict) -> tuple[dict | None, dict]:
    """The values as the schema reads them (the time converted from hospital time), or the
    errors, one sentence per field."""
    data = dict(values)
    errors: dict[str, list[str]] = {}
    if data.get("occurred_at", "").strip():
        try:
            data["occurred_at"] = aware_from_form(data["occurred_at"].strip())
        except ValueError as error:
            errors["occurred_at"] = [str(error)]
            data.pop("occurred_at")
    try:
        loaded = schema.load(data)
    except ma.ValidationError as invalid:
        errors = {**invalid.messages, **errors}
        loaded = None
    if errors:
        return None, _sentences(errors)
    return loaded, {}


def _sentences(errors: dict) -> dict[str, str]:
    """Field errors in the order of the form, each as one sentence."""
    order = [*FORM_FIELDS, "_schema"]
    flat = {
        name: " ".join(message) if isinstance(message, list) else str(message)
        for name, message in errors.items()
    }
    return dict(
        sorted(flat.items(), key=lambda item: order.index(item[0]) if item[0] in order else 99)
    )


def _form(
    mode: str,
    patient,
    values: dict,
    errors: dict,
    entry=None,
    status: int = 200,
    *,
    stale: bool = False,
):
    return (
        render_template(
            "interactions/form.html",
            **helpers(),
            mode=mode,
            patient=patient,
            entry=entry,
            values=values,
            errors=errors,
            closed=status == 409,  # the entry can no longer be changed: no form to offer
            stale=stale,  # amended meanwhile: link to the current version instead
        ),
        status,
    )


@pages.route("/patients/<mrn>/interactions/new", methods=["GET", "POST"])
@allow("doctor")
def new(mrn: str):
    patient = visible_or_404(mrn)
    if request.method == "GET":
        return _form("new", patient, {}, {})
    values = _submitted()
    data, errors = _load(new_schema, values)
    if errors:
        return _form("new", patient, values, errors, status=422)
    records.create(patient.mrn, current_user(), data)
    flash("The interaction is recorded.")
    return _chart(patient.mrn)


def _entry_or_404(patient, interaction_id: int):
    entry = records.find(patient.mrn, interaction_id)
    if entry is None:
        abort(404, f"Patient {patient.mrn} has no interaction {interaction_id}.")
    return entry


def _refused(mode: str, patient, entry, values: dict, error: records.RecordError):
    if isinstance(error, records.NotTheAuthor):
        abort(403, error.message)
    status = 409 if error.status == 409 else 422
    return _form(mode, patient, values, {error.field or "_schema": error.message}, entry, status)


def _open_or_refused(mode: str, patient, entry):
    """``None`` if the signed-in doctor may change the entry, else the page that says why."""
    try:
        records.refuse_unless_open(entry, current_user(), "change")
    except records.RecordError as error:
        return _refused(mode, patient, entry, {}, error)
    return None


def _seen_version() -> int | None:
    """The version the amend form was filled in from (its hidden ``version`` field)."""
    seen = request.form.get("version", "").strip()
    if seen.isascii() and seen.isdigit() and len(seen) <= 9:
        return int(seen)
    return None


def current_values(entry) -> dict[str, str]:
    """An entry's current version as the amendment form shows it."""
    version = entry.current
    return {
        "occurred_at": local_input(version.occurred_at),
        "kind": version.kind,
        "summary": version.summary,
        "notes": version.notes or "",
        "outcome": version.outcome,
        "status_note": version.status_note or "",
    }


@pages.route(
    "/patients/<mrn>/interactions/<int(max=9223372036854775807):interaction_id>/amend",
    methods=["GET", "POST"],
)
@allow("doctor")
def amend(mrn: str, interaction_id: int):
    if request.method == "POST":
        note(action="amend")
    patient = visible_or_404(mrn)
    entry = _entry_or_404(patient, interaction_id)
    if (refusal := _open_or_refused("amend", patient, entry)) is not None:
        return refusal
    if request.method == "GET":
        return _form("amend", patient, current_values(entry), {}, entry)
    values = _submitted()
    submitted = dict(values)
    if submitted.get("occurred_at") == current_values(entry)["occurred_at"]:
        # Shown to the minute: sending it back unchanged must not cut off the seconds.
        submitted.pop("occurred_at")
    data, errors = _load(amendment_schema, submitted)
    if errors:
        return _form("amend", patient, values, errors, entry, 422)
    reason = data.pop("reason")
    try:
        records.amend(entry, current_user(), data, reason, base_version=_seen_version())
    except records.ChangedMeanwhile as error:
        # A stale form (another tab, a colleague's session): show what it reads now.
        entry = _entry_or_404(patient, interaction_id)
        return _form("amend", patient, values, {"_schema": error.message}, entry, 409, stale=True)
    except records.RecordError as error:
        return _refused("amend", patient, entry, values, error)
    flash("The amendment is recorded; the original stays in the history.")
    return _chart(patient.mrn)


@pages.route(
    "/patients/<mrn>/interactions/<int(max=9223372036854775807):interaction_id>/entered-in-error",
    methods=["GET", "POST"],
)
@allow("doctor")
def entered_in_error(mrn: str, interaction_id: int):
    if request.method == "POST":
        note(action="mark in error")
    patient = visible_or_404(mrn)
    entry = _entry_or_404(patient, interaction_id)
    if (refusal := _open_or_refused("error", patient, entry)) is not None:
        return refusal
    if request.method == "GET":
        return _form("error", patient, {}, {}, entry)
    values = _submitted()
    data, errors = _load(error_mark_schema, {"reason": values.get("reason", "")})
    if errors:
        return _form("error", patient, values, errors, entry, 422)
    try:
        records.mark_in_error(entry, current_user(), data["reason"])
    except records.RecordError as error:
        return _refused("error", patient, entry, values, error)
    flash("The interaction is marked entered in error; it stays in the record, flagged.")
    return _chart(patient.mrn)
