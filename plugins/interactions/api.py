"""``/api/patients/<mrn>/interactions``: doctors write, staff and the patient read."""

from __future__ import annotations

import marshmallow as ma
from flask import url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from core.audit import audited
from core.auth import ROLES, allow, current_user
from core.patients.models import visible_or_404
from plugins.interactions import records
from plugins.interactions.models import CONTENT_FIELDS, KINDS, OUTCOMES
from plugins.interactions.schemas import (
    EXAMPLE_TIME,
    InteractionsAmendmentSchema,
    InteractionsErrorMarkSchema,
    InteractionsNewSchema,
    check_plausible,
)

blp = Blueprint(
    "interactions",
    __name__,
    url_prefix="/api",
    description="Doctors document their interactions with a patient and whether the patient "
    "was healthy. The record is append-only: a doctor corrects their own entry by an "
    "amendment with a reason, or marks it entered in error; nothing is ever deleted. Doctors, "
    "nurses and admins read every patient's history; a patient user reads their own.",
)

MRN_PARAMETER = {
    "in": "path",
    "name": "mrn",
    "description": "The patient's MRN.",
    "example": "DEMO-0001",
}
ID_PARAMETER = {
    "in": "path",
    "name": "interaction_id",
    "description": "The interaction's id (from the list, or the answer that created it).",
    "example": 1,
}
ONE = [MRN_PARAMETER, ID_PARAMETER]


# Answers --------------------------------------------------------------------------------


class InteractionsPersonSchema(ma.Schema):
    id = ma.fields.Integer(metadata={"description": "The user's id (filter the list by it)."})
    name = ma.fields.String()
    email = ma.fields.String()


class InteractionsErrorMarkOutSchema(ma.Schema):
    at = ma.fields.AwareDateTime(metadata={"description": "When it was marked."})
    by = ma.fields.Nested(InteractionsPersonSchema)
    reason = ma.fields.String()


class _Content(ma.Schema):
    occurred_at = ma.fields.AwareDateTime(metadata={"description": "When it happened."})
    kind = ma.fields.String(metadata={"enum": list(KINDS)})
    summary = ma.fields.String()
    notes = ma.fields.String(allow_none=True)
    outcome = ma.fields.String(metadata={"enum": list(OUTCOMES)})
    status_note = ma.fields.String(
        allow_none=True, metadata={"description": "The optional clinical status note."}
    )


class InteractionsSchema(_Content):
    """An interaction as it reads now (its latest version)."""

    id = ma.fields.Integer()
    mrn = ma.fields.String(metadata={"description": "The patient's MRN."})
    author = ma.fields.Nested(InteractionsPersonSchema, metadata={"description": "Who wrote it."})
    created_at = ma.fields.AwareDateTime(metadata={"description": "When it was recorded."})
    version = ma.fields.Integer(
        metadata={"description": "1 for the original; each amendment adds one."}
    )
    amended_at = ma.fields.AwareDateTime(
        allow_none=True, metadata={"description": "When the latest amendment was recorded."}
    )
    entered_in_error = ma.fields.Boolean(
        metadata={"description": "Marked entered in error: kept in the record, flagged."}
    )
    error_mark = ma.fields.Nested(
        InteractionsErrorMarkOutSchema,
        allow_none=True,
        metadata={"description": "Who marked it entered in error, when and why."},
    )


class InteractionsVersionSchema(_Content):
    """One version: the original, or an amendment (the full new version)."""

    version = ma.fields.Integer()
    change = ma.fields.String(metadata={"enum": ["original", "amendment"]})
    recorded_at = ma.fields.AwareDateTime()
    author = ma.fields.Nested(InteractionsPersonSchema)
    reason = ma.fields.String(
        allow_none=True, metadata={"description": "Why it was amended (null: the original)."}
    )
    changed = ma.fields.List(
        ma.fields.String(),
        metadata={"description": "The fields this version changed from the one before it."},
    )


class InteractionsDetailSchema(InteractionsSchema):
    """An interaction as it reads now, with its original and every amendment."""

    original = ma.fields.Nested(InteractionsVersionSchema)
    amendments = ma.fields.List(
        ma.fields.Nested(InteractionsVersionSchema),
        metadata={"description": "Every amendment, oldest first."},
    )


class InteractionsQuerySchema(ma.Schema):
    outcome = ma.fields.String(
        validate=ma.validate.OneOf(OUTCOMES, error="Choose one of: " + ", ".join(OUTCOMES) + "."),
        metadata={"description": "Only entries whose (latest) outcome is this."},
    )
    author = ma.fields.String(
        validate=ma.validate.Length(min=1, max=254),
        metadata={"description": "Only entries written by this user: an email or a user id."},
    )
    from_ = ma.fields.AwareDateTime(
        data_key="from",
        validate=check_plausible,
        error_messages={"invalid_awareness": "The time has no offset: add one, e.g. +00:00."},
        metadata={"description": "Only entries that happened at or after this time."},
    )
    to = ma.fields.AwareDateTime(
        validate=check_plausible,
        error_messages={"invalid_awareness": "The time has no offset: add one, e.g. +00:00."},
        metadata={"description": "Only entries that happened at or before this time."},
    )
    entered_in_error = ma.fields.Boolean(
        metadata={"description": "true: only entries marked in error; false: only the others."}
    )

    @ma.validates_schema
    def _ordered(self, data, **kwargs):
        if "from_" in data and "to" in data and data["from_"] > data["to"]:
            raise ma.ValidationError("'from' is after 'to'.", "from")


def _person(user) -> dict:
    return {"id": user.id, "name": user.name, "email": user.email}


def _content(version) -> dict:
    return {name: getattr(version, name) for name in CONTENT_FIELDS}


def summary(entry) -> dict:
    version, mark = entry.current, entry.error_mark
    return {
        "id": entry.id,
        "mrn": entry.patient_mrn,
        **_content(version),
        "author": _person(entry.author),
        "created_at": entry.created_at,
        "version": version.number,
        "amended_at": version.recorded_at if version.number > 1 else None,
        "entered_in_error": mark is not None,
        "error_mark": (
            {"at": mark.recorded_at, "by": _person(mark.author), "reason": mark.reason}
            if mark is not None
            else None
        ),
    }


def detail(entry) -> dict:
    shown, before = [], None
    for version in records.versions(entry):
        shown.append(
            {
                "version": version.number,
                "change": "original" if version.number == 1 else "amendment",
                "recorded_at": version.recorded_at,
                "author": _person(version.author),
                "reason": version.reason,
                "changed": records.changed_fields(before, version),
                **_content(version),
            }
        )
        before = version
    return summary(entry) | {"original": shown[0], "amendments": shown[1:]}


def _refuse(error: records.RecordError):
    if error.field:
        abort(error.status, message=error.message, errors={"json": {error.field: [error.message]}})
    abort(error.status, message=error.message)


def _entry_or_404(mrn: str, interaction_id: int):
    patient = visible_or_404(mrn)
    entry = records.find(patient.mrn, interaction_id)
    if entry is None:
        abort(404, message=f"Patient {mrn} has no interaction {interaction_id}.")
    return entry


# Examples shown in the docs UI ----------------------------------------------------------

PERSON = {"id": 2, "name": "Demo doctor", "email": "doctor@caredeck.local"}
NEW_EXAMPLE = {
    "occurred_at": EXAMPLE_TIME,
    "kind": "ward_round",
    "summary": "Day 3 after admission for pneumonia; improving",
    "notes": "Afebrile since yesterday evening. Eating. Continue oral antibiotics.",
    "outcome": "not_healthy",
    "status_note": "SpO2 96% on room air",
}
ENTRY_EXAMPLE = {
    "id": 1,
    "mrn": "DEMO-0001",
    **NEW_EXAMPLE,
    "author": PERSON,
    "created_at": "2024-11-20T08:41:12+00:00",
    "version": 1,
    "amended_at": None,
    "entered_in_error": False,
    "error_mark": None,
}
AMENDMENT_EXAMPLE = {
    "reason": "Wrong time: the round was at 09:30, not 08:30",
    "occurred_at": "2024-11-20T09:30:00+00:00",
}
ERROR_MARK_EXAMPLE = {"reason": "Written in the wrong patient's record"}


# Routes ---------------------------------------------------------------------------------


@blp.route("/patients/<mrn>/interactions", parameters=[MRN_PARAMETER])
class PatientInteractions(MethodView):
    @allow(*ROLES)
    @blp.arguments(InteractionsQuerySchema, location="query")
    @blp.response(200, InteractionsSchema(many=True), example=[ENTRY_EXAMPLE])
    @blp.alt_response(404, description="No such patient (or not yours, for a patient user)")
    @blp.paginate()
    def get(self, args, pagination_parameters, mrn):
        """The patient's interactions, newest first

        Each entry as it reads now (its latest amendment); entries marked entered in error
        are included, flagged (`entered_in_error=false` leaves them out). Filter by the
        outcome, the author (email or user id) and a time range (`from`, `to`: ISO 8601 with
        an offset, inclusive). Paginated: `page`, `page_size` (at most 100); the
        `X-Pagination` header holds the totals. Doctors, nurses and admins read any
        patient's; a patient user reads only their own.
        """
        patient = visible_or_404(mrn)
        query = records.history(
            patient.mrn,
            records.Filters(
                outcome=args.get("outcome"),
                author=args.get("author"),
                from_=args.get("from_"),
                to=args.get("to"),
                entered_in_error=args.get("entered_in_error"),
            ),
        )
        pagination_parameters.item_count = query.count()
        page = query.paginate(pagination_parameters.page, pagination_parameters.page_size)
        return [summary(entry) for entry in records.entries(page)]

    @allow("doctor")
    @blp.arguments(InteractionsNewSchema, example=NEW_EXAMPLE)
    @blp.response(201, InteractionsDetailSchema)
    @blp.alt_response(403, description="Only doctors record interactions")
    @blp.alt_response(404, description="No such patient")
    @blp.alt_response(422, description="Names each bad field (a time in the future, ...)")
    def post(self, data, mrn):
        """Record an interaction (doctors)

        You are its author. `occurred_at` defaults to now and cannot be in the future (two
        minutes of clock skew are accepted); `kind`, `summary` and `outcome` are required.
        The answer's `Location` header is the new entry's address.
        """
        patient = visible_or_404(mrn)
        entry = records.create(patient.mrn, current_user(), data)
        location = url_for(
            "interactions.PatientInteraction", mrn=patient.mrn, interaction_id=entry.id
        )
        return detail(entry), 201, {"Location": location}


@blp.route(
    "/patients/<mrn>/interactions/<int(max=9223372036854775807):interaction_id>", parameters=ONE
)
class PatientInteraction(MethodView):
    @allow(*ROLES)
    @blp.response(200, InteractionsDetailSchema)
    @blp.alt_response(404, description="No such patient or interaction")
    def get(self, mrn, interaction_id):
        """One interaction, with its original and every amendment

        The top-level fields are the entry as it reads now; `original` is the version first
        written and `amendments` every later one (each with its author, time, reason and the
        fields it changed).
        """
        return detail(_entry_or_404(mrn, interaction_id))


@blp.route(
    "/patients/<mrn>/interactions/<int(max=9223372036854775807):interaction_id>/amendments",
    parameters=ONE,
)
class InteractionAmendments(MethodView):
    @allow("doctor")
    @audited("amend")  # not "create": refused and invalid attempts too
    @blp.arguments(InteractionsAmendmentSchema, example=AMENDMENT_EXAMPLE)
    @blp.response(201, InteractionsDetailSchema)
    @blp.alt_response(403, description="Only the doctor who wrote the entry amends it")
    @blp.alt_response(404, description="No such patient or interaction")
    @blp.alt_response(
        409, description="Marked entered in error, or amended by another request meanwhile"
    )
    @blp.alt_response(422, description="No reason, a bad field, or nothing changes")
    def post(self, data, mrn, interaction_id):
        """Amend your interaction (its author only)

        Give a `reason` and the fields that change; the others stay as they are, and
        `base_version`, the version you read: when the entry was amended meanwhile the
        answer is `409` rather than your amendment undoing the newer one. The
        amendment is stored as a new full version: the original and every amendment stay in
        the record with their authors and times.
        """
        entry = _entry_or_404(mrn, interaction_id)
        reason = data.pop("reason")
        base_version = data.pop("base_version", None)
        try:
            return detail(
                records.amend(entry, current_user(), data, reason, base_version=base_version)
            )
        except records.RecordError as error:
            _refuse(error)


@blp.route(
    "/patients/<mrn>/interactions/<int(max=9223372036854775807):interaction_id>/entered-in-error",
    parameters=ONE,
)
class InteractionErrorMark(MethodView):
    @allow("doctor")
    @audited("mark in error")
    @blp.arguments(InteractionsErrorMarkSchema, example=ERROR_MARK_EXAMPLE)
    @blp.response(201, InteractionsDetailSchema)
    @blp.alt_response(403, description="Only the doctor who wrote the entry marks it")
    @blp.alt_response(404, description="No such patient or interaction")
    @blp.alt_response(409, description="Already marked entered in error")
    @blp.alt_response(422, description="No reason")
    def post(self, data, mrn, interaction_id):
        """Mark your interaction as entered in error (its author only)

        For an entry that should never have been written (the wrong patient, a duplicate).
        It stays in the record and in every list, flagged with your name, the time and the
        reason; it can no longer be amended. This cannot be undone: record a new
        interaction if the mark itself was a mistake.
        """
        entry = _entry_or_404(mrn, interaction_id)
        try:
            return detail(records.mark_in_error(entry, current_user(), data["reason"]))
        except records.RecordError as error:
            _refuse(error)
