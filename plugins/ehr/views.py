"""The EHR plugin's pages: the mapping editor, the patient questionnaire and the clinical
team's questions, organizations, bulk updates, the sandbox EHR's inbox and the chart
section.

Every form posts to a page of its own that calls the backend modules (mappings,
questionnaire, organizations, delivery, bulk): errors come back on the page next to their
fields with what was typed; success redirects (303) to a page that shows the result.
"""

from __future__ import annotations

import hashlib
import json

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
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from core.audit import audited, note
from core.auth import ROLES, STAFF, allow, current_user
from core.dashboard import ChartSection, NavItem
from core.patients.models import find_visible, visible_or_404
from plugins.ehr import (
    bulk,
    chart,
    connectors,
    delivery,
    mappings,
    organizations,
    questionnaire,
    sandbox,
)
from plugins.ehr.fields import FIELD_LABELS, OUR_FIELDS
from plugins.ehr.models import Question

pages = Blueprint("ehr_pages", __name__, template_folder="templates")

LANGUAGES = {"en": "English", "es": "Español"}
SECTION_DELIVERIES = 20  # the chart shows the newest
BULK_PREVIEW_SECONDS = 30 * 60  # a preview older than this must be made again
BULK_PREVIEW_ROWS = 500  # rows listed; the count, and the confirmation, cover them all
# The editor's names for the backend's transform kinds (mappings.TRANSFORM_KINDS).
TRANSFORM_LABELS = {"date": "Date format", "codes": "Code list", "upper": "Upper case"}
TRANSFORM_PARTS = ("field", "endpoint", "kind", "option")  # the inputs of one editor row
LONG_ANSWERS = {
    "address",
    "allergies",
    "current_medications",
    "medical_history",
    "social_history",
    "family_history",
    "symptoms",
}
INPUT_TYPES = {"dob": "date", "email": "email", "phone": "tel"}
GENDERS = ("female", "male", "other", "unknown")
GENDER_LABELS = {
    "en": {"female": "Female", "male": "Male", "other": "Other", "unknown": "Prefer not to say"},
    "es": {
        "female": "Femenino",
        "male": "Masculino",
        "other": "Otro",
        "unknown": "Prefiero no decirlo",
    },
}
# The questionnaire page's own words; the questions come in both languages from the backend.
WORDS = {
    "en": {
        "title": "Questionnaire",
        "intro": "Your answers go to your care team's health record system.",
        "language": "Language",
        "required": "(required)",
        "choose": "Choose…",
        "submit": "Send my answers",
        "errors": "Please correct these answers",
        "cannot": "The answers cannot be sent",
        "no_questions": "There are no questions to answer at the moment.",
        "unlinked": "Answers cannot be sent yet: this record is not linked to the care team's "
        "health record system. Please ask the clinic to link it.",
        "sent_title": "Thank you, your answers are saved",
        "queued": "They are being sent to the health record system:",
        "endpoint": "Destination",
        "state": "State",
        "nothing": "None of the answers is sent to a health record system.",
        "again": "Answer again",
        "refresh": "This page updates itself until every delivery is sent.",
        "chart": "Back to the chart",
        "states": {"pending": "Queued", "sent": "Sent", "failed": "Failed"},
    },
    "es": {
        "title": "Cuestionario",
        "intro": "Sus respuestas se envían al sistema de historia clínica de su equipo médico.",
        "language": "Idioma",
        "required": "(obligatoria)",
        "choose": "Elija…",
        "submit": "Enviar mis respuestas",
        "errors": "Corrija estas respuestas",
        "cannot": "No se pueden enviar las respuestas",
        "no_questions": "No hay preguntas que responder en este momento.",
        "unlinked": "Aún no se pueden enviar respuestas: esta historia no está vinculada al "
        "sistema de historia clínica del equipo médico. Pida a la clínica que la vincule.",
        "sent_title": "Gracias, sus respuestas están guardadas",
        "queued": "Se están enviando al sistema de historia clínica:",
        "endpoint": "Destino",
        "state": "Estado",
        "nothing": "Ninguna respuesta se envía a un sistema de historia clínica.",
        "again": "Responder de nuevo",
        "refresh": "Esta página se actualiza sola hasta que se envíe todo.",
        "chart": "Volver a la historia",
        "states": {"pending": "En cola", "sent": "Enviado", "failed": "Fallido"},
    },
}

# The backend's messages a patient meets most, in Spanish (any other shows as it is).
SPANISH_ERRORS = {
    "This question must be answered.": "Responda esta pregunta.",
    "Answer at least one question.": "Responda al menos una pregunta.",
    "Give the date as YYYY-MM-DD, e.g. 1980-04-23.": "Escriba la fecha como AAAA-MM-DD, "
    "p. ej. 1980-04-23.",
    "The date must be between 1900-01-01 and today.": "La fecha debe estar entre el "
    "1900-01-01 y hoy.",
}


# Shown on several pages ---------------------------------------------------------------------


def who(user) -> str:
    """A user (or a stored email) as pages name them."""
    if user is None:
        return ""
    return getattr(user, "email", None) or str(user)


def describe_transform(transform) -> str:
    if not transform:
        return "none"
    kind = transform.get("kind")
    if kind == "date":
        return f"date as {transform.get('format', '')}"
    if kind == "codes":
        codes = transform.get("codes") or {}
        return "codes: " + ", ".join(f"{ours} → {theirs}" for ours, theirs in codes.items())
    if kind == "upper":
        return "upper case"
    return json.dumps(transform, ensure_ascii=False, sort_keys=True)


def describe_entry(entry) -> str:
    """One field's mapping as a sentence: where it goes and how it is changed."""
    if not entry:
        return "not sent"
    text = f"{entry.get('field', '')} at {entry.get('endpoint', '')}"
    if entry.get("transform"):
        text += f", {describe_transform(entry['transform'])}"
    return text


def pretty_json(value) -> str:
    """A payload as indented text (the template escapes it: it is shown, never rendered)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def helpers() -> dict:
    """What the templates use besides their data (passed to each render: the chart section
    is rendered by the core's blueprint, where this blueprint's context processors do not
    run)."""
    return {
        "field_labels": FIELD_LABELS,
        "our_fields": OUR_FIELDS,
        "who": who,
        "describe_transform": describe_transform,
        "describe_entry": describe_entry,
        "pretty_json": pretty_json,
    }


def _render(template: str, status: int = 200, **context):
    return render_template(template, **helpers(), **context), status


def _connector_or_404(name: str):
    try:
        return connectors.get(name)
    except connectors.UnknownConnector:
        abort(404, f"There is no EHR connector {name!r}.")


# Mappings -------------------------------------------------------------------------------------


@pages.route("/ehr/mappings")
@allow("admin")
def mappings_page():
    installed = connectors.installed()
    rows = [(connector, mappings.current(name)) for name, connector in sorted(installed.items())]
    return _render("ehr/mappings.html", rows=rows)


def codes_text(codes: dict) -> str:
    return "; ".join(f"{ours}={theirs}" for ours, theirs in codes.items())


def mapping_form_values(fields: dict) -> dict[str, dict[str, str]]:
    """A mapping document as the editor's inputs show it, one row per our field."""
    values = {}
    for name in OUR_FIELDS:
        entry = fields.get(name) or {}
        transform = entry.get("transform") or {}
        kind = transform.get("kind", "")
        option = ""
        if kind == "date":
            option = transform.get("format", "")
        elif kind == "codes":
            option = codes_text(transform.get("codes") or {})
        values[name] = {
            "field": entry.get("field", ""),
            "endpoint": entry.get("endpoint", ""),
            "kind": kind,
            "option": option,
        }
    return values


def _parse_codes(text: str) -> dict[str, str]:
    codes = {}
    for part in text.replace("\n", ";").split(";"):
        if not part.strip():
            continue
        ours, equals, theirs = part.partition("=")
        if not equals or not ours.strip() or not theirs.strip():
            raise ValueError(
                "Write the codes as answer=CODE separated by semicolons, e.g. female=F; male=M."
            )
        codes[ours.strip()] = theirs.strip()
    if not codes:
        raise ValueError("Give at least one code, e.g. female=F; male=M.")
    return codes


def mapping_from_form(form) -> tuple[dict, dict[str, dict[str, str]], dict[str, str]]:
    """The editor's inputs as a mapping document, the inputs as typed, and the errors the
    form itself can tell (a code list it cannot read). A row without an EHR field and
    endpoint is not sent."""
    fields, values, errors = {}, {}, {}
    for name in OUR_FIELDS:
        row = {part: form.get(f"{name}.{part}", "").strip() for part in TRANSFORM_PARTS}
        values[name] = row
        if not row["field"] and not row["endpoint"]:
            continue
        transform = None
        if row["kind"] == "date":
            transform = {"kind": "date", "format": row["option"]}
        elif row["kind"] == "codes":
            try:
                transform = {"kind": "codes", "codes": _parse_codes(row["option"])}
            except ValueError as error:
                errors[name] = str(error)
        elif row["kind"]:
            transform = {"kind": row["kind"]}
        fields[name] = {"field": row["field"], "endpoint": row["endpoint"], "transform": transform}
    return fields, values, errors


def by_field(errors: dict, keep: tuple[str, ...] = ()) -> dict[str, str]:
    """Errors keyed by our field, to show next to it (``dob``, ``dob.transform.format``,
    ``answers.dob`` and ``{"answers": {"dob": [...]}}`` all go next to ``dob``); the form's
    other fields in ``keep`` keep theirs; anything else is about the whole form
    (``_schema``)."""
    found: dict[str, list[str]] = {}

    def walk(value, path: tuple[str, ...]) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, (*path, *str(key).split(".")))
            return
        text = " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        field = next((part for part in path if part in OUR_FIELDS or part in keep), "_schema")
        found.setdefault(field, []).append(text)

    walk(errors, ())
    return {field: " ".join(messages) for field, messages in found.items()}


def _editor(connector, values, errors, status=200, *, validated=False, note_text="", base=None):
    """The editor page. ``base`` is the version the form was filled in on top of (the
    current one for a fresh form), sent back with a save to catch a concurrent one."""
    versions = mappings.versions(connector.name)
    kinds = {"": "None"} | {
        kind: TRANSFORM_LABELS.get(kind, kind) for kind in mappings.TRANSFORM_KINDS
    }
    return _render(
        "ehr/mapping_editor.html",
        status,
        connector=connector,
        current=versions[0],
        versions=versions,
        base=base or versions[0].version,
        values=values,
        errors=by_field(errors, keep=("note",)),
        validated=validated,
        note_text=note_text,
        transform_kinds=kinds,
    )


@pages.route("/ehr/mappings/<connector_name>", methods=["GET", "POST"])
@allow("admin")
def mapping_editor(connector_name: str):
    connector = _connector_or_404(connector_name)
    if request.method == "GET":
        start = mappings.current(connector.name)
        wanted = request.args.get("version", type=int)
        if wanted is not None:
            start = mappings.version(connector.name, wanted) or abort(
                404, f"{connector.title} has no mapping version {wanted}."
            )
        return _editor(connector, mapping_form_values(start.fields), {})
    fields, values, errors = mapping_from_form(request.form)
    typed = {"note_text": request.form.get("note", "").strip()}
    typed["base"] = request.form.get("base", type=int)
    # The form's own errors (a code list it cannot read) and the backend's, all at once.
    errors = {**mappings.validate(connector.name, fields), **errors}
    if errors:
        return _editor(connector, values, errors, 422, **typed)
    if request.form.get("action") != "save":  # Validate: say so, save nothing
        return _editor(connector, values, {}, validated=True, **typed)
    try:
        saved = mappings.save(
            connector.name,
            fields,
            user=current_user(),
            note=typed["note_text"],
            base_version=typed["base"],
        )
    except mappings.MappingConflict as conflict:
        # Saved by someone else meanwhile: the form now builds on theirs (a second save
        # replaces it, knowingly), with what was typed.
        return _editor(connector, values, conflict.errors, 409, note_text=typed["note_text"])
    except mappings.MappingError as error:
        return _editor(connector, values, error.errors, 422, **typed)
    if saved.version == typed["base"]:
        flash(f"Nothing changed: version {saved.version} is still the current mapping.")
    else:
        flash(f"Saved as version {saved.version} of the {connector.title} mapping.")
    return redirect(url_for(".mapping_editor", connector_name=connector.name), 303)


def _version_or_404(connector, number: int):
    found = mappings.version(connector.name, number)
    if found is None:
        abort(404, f"{connector.title} has no mapping version {number}.")
    return found


@pages.route("/ehr/mappings/<connector_name>/versions/<int:number>")
@allow("admin")
def mapping_version(connector_name: str, number: int):
    connector = _connector_or_404(connector_name)
    return _render(
        "ehr/mapping_version.html",
        connector=connector,
        version=_version_or_404(connector, number),
        current=mappings.current(connector.name),
    )


@pages.route("/ehr/mappings/<connector_name>/diff")
@allow("admin")
def mapping_diff(connector_name: str):
    connector = _connector_or_404(connector_name)
    versions = mappings.versions(connector.name)
    newest = versions[0].version
    older_number = request.args.get("from", type=int) or max(newest - 1, 1)
    newer_number = request.args.get("to", type=int) or newest
    older = _version_or_404(connector, older_number)
    newer = _version_or_404(connector, newer_number)
    return _render(
        "ehr/mapping_diff.html",
        connector=connector,
        versions=versions,
        older=older,
        newer=newer,
        rows=mappings.diff(older, newer),
    )


# The questionnaire -----------------------------------------------------------------------------


def _language(value: str | None) -> str:
    return value if value in LANGUAGES else "en"


def _prefill(patient) -> dict[str, str]:
    """What the registry already knows, so that nobody types it twice."""
    known = {
        "name": " ".join(p for p in (patient.first_name, patient.last_name) if p),
        # The registry's "unknown" means not recorded: let the patient answer.
        "gender": patient.sex if patient.sex in ("female", "male", "other") else "",
        "dob": patient.date_of_birth.isoformat() if patient.date_of_birth else "",
        "address": patient.address,
        "phone": patient.phone,
        "email": patient.email,
        "insurance_provider": patient.insurance_provider,
        "insurance_policy_number": patient.insurance_policy_number,
        "primary_care_physician": patient.primary_physician,
    }
    return {key: value or "" for key, value in known.items()}


def _questionnaire(patient, language, values, errors, status=200):
    errors = by_field(errors)
    if language == "es":
        errors = {field: SPANISH_ERRORS.get(text, text) for field, text in errors.items()}
    return _render(
        "ehr/questionnaire.html",
        status,
        patient=patient,
        language=language,
        languages=LANGUAGES,
        words=WORDS[language],
        questions=questionnaire.questions(active_only=True),
        values=values,
        errors=errors,
        long_answers=LONG_ANSWERS,
        input_types=INPUT_TYPES,
        genders=GENDERS,
        gender_labels=GENDER_LABELS[language],
        is_staff=current_user().role in STAFF,
        linked=organizations.link_of(patient.mrn) is not None,
    )


@pages.route("/questionnaire")
@allow("patient")
def my_questionnaire():
    """The signed-in patient's own questionnaire (the navigation's entry for patients)."""
    mrn = current_user().patient_mrn
    if not mrn:
        abort(404, "Your account is not linked to a patient record; ask the hospital to link it.")
    return redirect(url_for(".questionnaire_page", mrn=mrn))


@pages.route("/patients/<mrn>/questionnaire", methods=["GET", "POST"])
@allow(*ROLES)
def questionnaire_page(mrn: str):
    patient = visible_or_404(mrn)
    if request.method == "GET":
        # The language asked for, else the browser's preference, else English.
        wanted = request.args.get("lang") or request.accept_languages.best_match(LANGUAGES)
        return _questionnaire(patient, _language(wanted), _prefill(patient), {})
    language = _language(request.form.get("language"))
    asked = [question.field for question in questionnaire.questions(active_only=True)]
    values = {field: request.form.get(field, "").strip() for field in asked}
    answers = {field: value for field, value in values.items() if value}
    try:
        submission = questionnaire.submit(
            patient.mrn, answers, user=current_user(), language=language
        )
    except questionnaire.SubmissionError as error:
        return _questionnaire(patient, language, values, error.errors, error.status)
    return redirect(url_for(".submission_page", mrn=patient.mrn, submission_id=submission.id), 303)


@pages.route("/patients/<mrn>/questionnaire/submissions/<int:submission_id>")
@allow(*ROLES)
def submission_page(mrn: str, submission_id: int):
    """The confirmation after a submit: what was saved and the deliveries queued for it."""
    patient = visible_or_404(mrn)
    submission = next(
        (found for found in questionnaire.submissions_of(patient.mrn) if found.id == submission_id),
        None,
    )
    if submission is None:
        abort(404, f"Patient {patient.mrn} has no questionnaire submission {submission_id}.")
    language = _language(submission.language)
    queued = [
        found
        for found in delivery.deliveries_of(patient.mrn)
        if found.submission_id == submission.id
    ]
    return _render(
        "ehr/submission.html",
        patient=patient,
        submission=submission,
        deliveries=queued,
        language=language,
        words=WORDS[language],
    )


# Organizations and patient links ----------------------------------------------------------------

ORGANIZATION_FIELDS = ("name", "connector", "base_url", "credentials", "rate_limit_per_second")
LINK_FIELDS = ("mrn", "organization_id", "ehr_patient_id", "provider")


def _organization_values(organization) -> dict[str, str]:
    """An organization as its edit form shows it: never the stored credentials."""
    return {
        "name": organization.name,
        "connector": organization.connector,
        "base_url": organization.base_url or "",
        "credentials": "",
        "rate_limit_per_second": str(organization.rate_limit_per_second or ""),
    }


def _organization_data(form, *, editing: bool) -> dict:
    """The form as the backend takes it. An empty credentials field on an edit keeps the
    stored credentials (the form never shows them, so it cannot send them back)."""
    data = {name: form.get(name, "").strip() for name in ORGANIZATION_FIELDS}
    data["credentials"] = form.get("credentials", "")  # a secret is taken as typed
    if editing and form.get("clear_credentials") == "yes":
        data["credentials"] = None  # the backend's "remove them"
    elif editing and not data["credentials"]:
        data.pop("credentials")
    if data["rate_limit_per_second"] == "":
        data.pop("rate_limit_per_second")
    return data


def organization_options() -> list[tuple[str, str]]:
    """The organizations as a select's options, after a "Choose…" prompt."""
    return [("", "Choose…")] + [(str(found.id), found.name) for found in organizations.all()]


def _organizations(values, errors, link_values, link_errors, status=200):
    return _render(
        "ehr/organizations.html",
        status,
        organizations=organizations.all(),
        organization_options=organization_options(),
        connectors=connectors.installed(),
        values=values,
        errors=errors,
        link_values=link_values,
        link_errors=link_errors,
    )


def _shown(data: dict) -> dict:
    """Typed values to show again: never a typed secret."""
    return {**data, "credentials": ""}


@pages.route("/ehr/organizations", methods=["GET", "POST"])
@allow("admin")
def organizations_page():
    if request.method == "GET":
        return _organizations({}, {}, {}, {})
    typed = {name: request.form.get(name, "").strip() for name in ORGANIZATION_FIELDS}
    try:
        created = organizations.create(
            _organization_data(request.form, editing=False), current_user()
        )
    except organizations.OrganizationError as error:
        return _organizations(_shown(typed), error.errors, {}, {}, error.status)
    flash(f"Organization {created.name} is created.")
    return redirect(url_for(".organizations_page"), 303)


def _organization_or_404(organization_id: int):
    found = organizations.get(organization_id)
    if found is None:
        abort(404, f"There is no organization {organization_id}.")
    return found


@pages.route("/ehr/organizations/<int:organization_id>", methods=["GET", "POST"])
@allow("admin")
def organization_page(organization_id: int):
    organization = _organization_or_404(organization_id)

    def page(values, errors, status=200):
        return _render(
            "ehr/organization.html",
            status,
            organization=organization,
            connectors=connectors.installed(),
            values=values,
            errors=errors,
        )

    if request.method == "GET":
        return page(_organization_values(organization), {})
    note(action="update")
    typed = {name: request.form.get(name, "").strip() for name in ORGANIZATION_FIELDS}
    data = _organization_data(request.form, editing=True)
    try:
        organizations.update(organization, data, current_user())
    except organizations.OrganizationError as error:
        return page(_shown(typed), error.errors, error.status)
    flash(f"Organization {organization.name} is saved.")
    return redirect(url_for(".organizations_page"), 303)


@pages.route("/ehr/patient-links", methods=["POST"])
@allow("admin")
def link_patient():
    """Which EHR record a patient is (the form on the organizations page)."""
    typed = {name: request.form.get(name, "").strip() for name in LINK_FIELDS}
    note(patient=typed["mrn"] or None, action="link")
    try:
        organization_id = int(typed["organization_id"])
    except ValueError:
        return _organizations({}, {}, typed, {"organization_id": "Choose an organization."}, 422)
    try:
        organizations.link_patient(
            typed["mrn"],
            organization_id,
            typed["ehr_patient_id"],
            provider=typed["provider"] or None,
            user=current_user(),
        )
    except organizations.OrganizationError as error:
        return _organizations({}, {}, typed, error.errors, error.status)
    flash(f"Patient {typed['mrn']} is linked to EHR record {typed['ehr_patient_id']}.")
    return redirect(url_for(".organizations_page"), 303)


# Bulk updates ---------------------------------------------------------------------------------

BULK_FIELDS = ("organization_id", "provider", "change", "new_provider", "new_organization_id")
# The backend's names for what is wrong, as the form's fields.
BULK_ERROR_FIELDS = {
    "selection.organization_id": "organization_id",
    "selection.provider": "provider",
    "change": "change",
    "change.provider": "new_provider",
    "change.organization_id": "new_organization_id",
}


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt="ehr-bulk-preview")


def _digest(rows: list[dict]) -> str:
    """What a preview showed, so that a confirm applies only what was seen."""
    text = json.dumps(rows, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _preview_token(selection: dict, change: dict, rows: list[dict]) -> str:
    return _signer().dumps({"selection": selection, "change": change, "seen": _digest(rows)})


def _bulk_request(values: dict) -> tuple[dict | None, dict | None, dict[str, str]]:
    """The form as a selection and a change, or a sentence per field that is wrong."""
    errors = {}
    ids = {
        name: int(values[name]) if values.get(name, "").isdigit() else None
        for name in ("organization_id", "new_organization_id")
    }
    if ids["organization_id"] is None:
        errors["organization_id"] = "Choose the organization whose patients change."
    change = None
    if values.get("change") == "provider":
        if not values.get("new_provider"):
            errors["new_provider"] = "Enter the new primary care physician."
        change = {"provider": values.get("new_provider", "")}
    elif values.get("change") == "organization":
        if ids["new_organization_id"] is None:
            errors["new_organization_id"] = "Choose the organization to move the patients to."
        change = {"organization_id": ids["new_organization_id"]}
    else:
        errors["change"] = "Choose what changes: the physician or the organization."
    if errors:
        return None, None, errors
    selection = {
        "organization_id": ids["organization_id"],
        "provider": values.get("provider") or None,
    }
    return selection, change, {}


def _bulk_errors(error) -> dict[str, str]:
    return {BULK_ERROR_FIELDS.get(key, "_schema"): message for key, message in error.errors.items()}


def _bulk(values, errors, status=200, *, rows=None, token=None, notice=None):
    return _render(
        "ehr/bulk.html",
        status,
        organization_options=organization_options(),
        values=values,
        errors=errors,
        rows=rows,
        shown=BULK_PREVIEW_ROWS,
        token=token,
        notice=notice,
    )


@pages.route("/ehr/bulk", methods=["GET"])
@allow("admin")
def bulk_page():
    return _bulk({"change": "provider"}, {})


@pages.route("/ehr/bulk/preview", methods=["POST"])
@allow("admin")
@audited("bulk update preview")
def bulk_preview():
    """Every patient the change would change, before and after; nothing is changed."""
    values = {name: request.form.get(name, "").strip() for name in BULK_FIELDS}
    selection, change, errors = _bulk_request(values)
    if errors:
        return _bulk(values, errors, 422)
    try:
        rows = bulk.preview(selection, change)
    except bulk.BulkError as error:
        return _bulk(values, _bulk_errors(error), error.status)
    return _bulk(values, {}, rows=rows, token=_preview_token(selection, change, rows))


@pages.route("/ehr/bulk/confirm", methods=["POST"])
@allow("admin")
@audited("bulk update")
def bulk_confirm():
    """Apply exactly what the preview showed (its signed token says what that was); if the
    patients changed since, show the new preview instead."""
    try:
        signed = _signer().loads(request.form.get("token", ""), max_age=BULK_PREVIEW_SECONDS)
    except SignatureExpired:
        flash("That preview is more than 30 minutes old; nothing was changed. Preview again.")
        return redirect(url_for(".bulk_page"), 303)
    except BadSignature:
        abort(400, "Confirm a bulk update from its preview.")
    selection, change = signed["selection"], signed["change"]
    values = _values_of(selection, change)
    try:
        rows = bulk.preview(selection, change)
        if _digest(rows) != signed["seen"]:
            notice = "The patients changed since your preview; nothing was changed. Check again."
            token = _preview_token(selection, change, rows)
            return _bulk(values, {}, 409, rows=rows, token=token, notice=notice)
        counts = bulk.apply(selection, change, user=current_user(), expected=len(rows))
    except bulk.BulkError as error:
        return _bulk(values, _bulk_errors(error), error.status)
    flash(f"Bulk update applied: {counts['changed']} of {counts['matched']} patients changed.")
    return redirect(url_for(".bulk_page"), 303)


def _values_of(selection: dict, change: dict) -> dict[str, str]:
    """A selection and change as the form shows them."""
    moving = "organization_id" in change
    return {
        "organization_id": str(selection["organization_id"]),
        "provider": selection.get("provider") or "",
        "change": "organization" if moving else "provider",
        "new_provider": "" if moving else change["provider"] or "",
        "new_organization_id": str(change["organization_id"]) if moving else "",
    }


# Questions (the clinical team's) ----------------------------------------------------------------

QUESTION_FIELDS = ("field", "text_en", "text_es", "position")
QUESTION_FLAGS = ("required", "active")


def _question_data(form) -> dict:
    """The form as the backend takes it: an unticked box is sent by no browser, so it is
    read as ``False``."""
    data = {name: form.get(name, "").strip() for name in QUESTION_FIELDS}
    if data["position"] == "":
        data.pop("position")
    return data | {flag: form.get(flag) == "yes" for flag in QUESTION_FLAGS}


def _question_values(question) -> dict:
    return {name: str(getattr(question, name)) for name in QUESTION_FIELDS} | {
        flag: getattr(question, flag) for flag in QUESTION_FLAGS
    }


def _questions_page(template: str, values: dict, errors: dict, status=200, **context):
    return _render(
        template,
        status,
        questions=questionnaire.questions(active_only=False),
        field_options=[("", "Choose…")] + [(name, FIELD_LABELS[name]["en"]) for name in OUR_FIELDS],
        values=values,
        errors=errors,
        **context,
    )


@pages.route("/ehr/questions", methods=["GET", "POST"])
@allow(*STAFF)
def questions_page():
    """The questionnaire as the clinical team sets it up: every question, and a new one."""
    if request.method == "GET":
        return _questions_page("ehr/questions.html", {"required": False, "active": True}, {})
    data = _question_data(request.form)
    try:
        created = questionnaire.create_question(data, current_user())
    except questionnaire.QuestionError as error:
        return _questions_page("ehr/questions.html", data, error.errors, 422)
    flash(f"The question on {FIELD_LABELS[created.field]['en'].lower()} is added.")
    return redirect(url_for(".questions_page"), 303)


@pages.route("/ehr/questions/<int:question_id>", methods=["GET", "POST"])
@allow(*STAFF)
def question_page(question_id: int):
    found = Question.get_or_none(Question.id == question_id)  # a read; writes go through
    if found is None:  # questionnaire.update_question
        abort(404, f"There is no question {question_id}.")
    if request.method == "GET":
        return _questions_page("ehr/question.html", _question_values(found), {}, question=found)
    data = _question_data(request.form)
    try:
        questionnaire.update_question(found, data, current_user())
    except questionnaire.QuestionError as error:
        return _questions_page("ehr/question.html", data, error.errors, 422, question=found)
    flash(f"The question on {FIELD_LABELS[found.field]['en'].lower()} is saved.")
    return redirect(url_for(".questions_page"), 303)


# The sandbox EHR ----------------------------------------------------------------------------


@pages.route("/ehr/sandbox")
@allow(*STAFF)
@audited("ehr sandbox")
def sandbox_page():
    return _render("ehr/sandbox.html", receipts=sandbox.receipts(limit=200))


# The chart section ----------------------------------------------------------------------------


def chart_section(mrn: str) -> str:
    user = current_user()
    patient = find_visible(user, mrn)
    if patient is None:  # the core answers 404 before this; never show another's record
        return '<p class="section-error">There is no such patient.</p>'
    data = chart.chart_data(patient.mrn)
    shown = data["deliveries"][:SECTION_DELIVERIES]
    return render_template(
        "ehr/chart_section.html",
        **helpers(),
        patient=patient,
        data=data,
        deliveries=shown,
        is_staff=user.role in STAFF,
    )


@pages.route("/patients/<mrn>/ehr-deliveries/<int:delivery_id>/retry", methods=["POST"])
@allow(*STAFF)
def retry_delivery(mrn: str, delivery_id: int):
    note(action="retry")
    patient = visible_or_404(mrn)
    if not any(found.id == delivery_id for found in delivery.deliveries_of(patient.mrn)):
        abort(404, f"Patient {patient.mrn} has no EHR delivery {delivery_id}.")
    try:
        delivery.retry(delivery_id, user=current_user())
    except delivery.DeliveryError as error:
        flash(f"Delivery {delivery_id} was not retried: {error.message}")
    else:
        flash(f"Delivery {delivery_id} is queued again.")
    return redirect(url_for("core_patients.chart", mrn=patient.mrn) + "#section-ehr-title", 303)


# What plugin.py registers for the pages ---------------------------------------------------------

# One entry for the administrators' pages (they link to each other), so that the bar stays
# short on a phone; staff read the sandbox; a patient user finds their questionnaire.
NAVIGATION = [
    NavItem("ehr_questionnaire", "Questionnaire", "ehr_pages.my_questionnaire", 15, ("patient",)),
    NavItem("ehr", "EHR", "ehr_pages.mappings_page", 70, ("admin",)),
    NavItem("ehr_questions", "Questionnaire", "ehr_pages.questions_page", 72, STAFF),
    NavItem("ehr_sandbox", "EHR sandbox", "ehr_pages.sandbox_page", 75, STAFF),
]
# Every role: a patient user sees their own deliveries' states and the questionnaire link
# (the core answers 404 for another patient's chart and sections).
CHART_SECTIONS = [ChartSection("ehr", "EHR deliveries", chart_section, order=40, roles=ROLES)]
