"""The patient pages: the list at ``/``, the add and edit forms, and the chart."""

from __future__ import annotations

import datetime
import math

import marshmallow as ma
from flask import Blueprint, current_app, redirect, render_template, request, url_for

from core.audit import audited, note, recent_access
from core.auth import ROLES, STAFF, allow, current_user
from core.patients.facts import attach, page_text
from core.patients.models import (
    SEXES,
    DuplicateMrnError,
    Patient,
    create_patient,
    search,
    update_patient,
    visible_or_404,
    visible_patients,
)
from core.patients.schemas import (
    EARLIEST_BIRTH_DATE,
    CorePatientQuerySchema,
    CorePatientSchema,
    CorePatientUpdateSchema,
    hospital_today,
)

PAGE_SIZE = 25
FORM_FIELDS = (
    "mrn",
    "first_name",
    "last_name",
    "date_of_birth",
    "sex",
    "phone",
    "email",
    "address",
    "insurance_provider",
    "insurance_policy_number",
    "primary_physician",
)
create_schema = CorePatientSchema()
update_schema = CorePatientUpdateSchema()
query_schema = CorePatientQuerySchema()

pages = Blueprint("core_patients", __name__)


@pages.context_processor
def _helpers():
    return {"sexes": SEXES}


def _page_number() -> int:
    try:
        return max(1, int(request.args.get("page", "1")))
    except ValueError:
        return 1


@pages.route("/")
@allow(*ROLES)
@audited("search patients")  # patient data without an MRN in the URL
def index():
    """Staff get the patient list; a patient user goes straight to their own chart."""
    user = current_user()
    if user.role not in STAFF:
        own_mrn = getattr(user, "patient_mrn", None)
        if own_mrn:
            return redirect(url_for(".chart", mrn=own_mrn))
        return render_template("caredeck/patients/unlinked.html")

    try:
        filters = query_schema.load({"q": request.args.get("q", "")})
        error = None
    except ma.ValidationError as invalid:
        filters, error = {}, " ".join(invalid.messages.get("q", []))
    query = search(visible_patients(user), filters.get("q"))
    total = query.count()
    page_count = max(1, math.ceil(total / PAGE_SIZE))
    page = min(_page_number(), page_count)
    patients = list(query.paginate(page, PAGE_SIZE))
    facts = current_app.extensions["caredeck"].patient_facts
    attach(patients, facts)
    return render_template(
        "caredeck/patients/index.html",
        patients=patients,
        columns={name: label for fact in facts for name, label in fact.columns.items()},
        fact_text=page_text,
        q=request.args.get("q", ""),
        search_error=error,
        total=total,
        page=page,
        page_count=page_count,
    )


def _submitted() -> dict[str, str]:
    """The form's patient fields only (not the CSRF token or the submit button)."""
    return {name: request.form[name] for name in FORM_FIELDS if name in request.form}


def _render_form(patient: Patient | None, values: dict, errors: dict, status: int = 200):
    return (
        render_template(
            "caredeck/patients/form.html",
            patient=patient,
            values=values,
            # In the order of the form, so the summary reads top to bottom like the page.
            errors={name: " ".join(errors[name]) for name in FORM_FIELDS if name in errors},
            earliest_birth_date=EARLIEST_BIRTH_DATE.isoformat(),
            today=hospital_today().isoformat(),
        ),
        status,
    )


@pages.route("/patients/new", methods=["GET", "POST"])
@allow(*STAFF)
def new():
    if request.method == "GET":
        return _render_form(None, {"sex": "unknown"}, {})
    values = _submitted()
    note(patient=values.get("mrn") or None)
    try:
        patient = create_patient(create_schema.load(values))
    except ma.ValidationError as invalid:
        return _render_form(None, values, invalid.messages, 422)
    except DuplicateMrnError as duplicate:
        return _render_form(None, values, {"mrn": [str(duplicate)]}, 409)
    return redirect(url_for(".chart", mrn=patient.mrn), 303)


@pages.route("/patients/<mrn>/edit", methods=["GET", "POST"])
@allow(*STAFF)
def edit(mrn: str):
    patient = visible_or_404(mrn)
    if request.method == "GET":
        current = create_schema.dump(patient)
        values = {name: current.get(name) or "" for name in FORM_FIELDS}
        return _render_form(patient, values, {})
    note(action="update")
    values = _submitted()
    values.pop("mrn", None)  # shown, not editable; the schema would refuse it
    try:
        changes = update_schema.load(values)
    except ma.ValidationError as invalid:
        return _render_form(patient, {**values, "mrn": patient.mrn}, invalid.messages, 422)
    update_patient(patient, changes)
    return redirect(url_for(".chart", mrn=patient.mrn), 303)


@pages.route("/patients/<mrn>")
@allow(*ROLES)
def chart(mrn: str):
    patient = visible_or_404(mrn)
    user = current_user()
    sections = [
        section
        for section in current_app.extensions["caredeck"].chart_sections.values()
        if user.role in section.roles
    ]
    is_staff = user.role in STAFF
    return render_template(
        "caredeck/patients/chart.html",
        patient=patient,
        age=_age(patient.date_of_birth),
        sections=sections,
        is_staff=is_staff,
        access_history=_access_history(patient.mrn) if is_staff else None,
    )


def _age(born: datetime.date | None) -> int | None:
    if born is None:
        return None
    today = hospital_today()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _access_history(mrn: str):
    return recent_access(mrn, limit=20)
