"""The EHR plugin's JSON API under ``/api``: connectors, organizations, mappings, patient
links, questions, questionnaire responses, deliveries and bulk updates."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint, abort

from core.audit import audited, note
from core.auth import ROLES, STAFF, allow, current_user
from core.patients.models import visible_or_404
from plugins.ehr import bulk, connectors, delivery, mappings, organizations, questionnaire
from plugins.ehr.models import Delivery, Organization, Question
from plugins.ehr.organizations import EhrOrganizationInputSchema
from plugins.ehr.questionnaire import EhrQuestionInputSchema
from plugins.ehr.schemas import (
    EhrBulkRequestSchema,
    EhrBulkResultSchema,
    EhrBulkRowSchema,
    EhrConnectorSchema,
    EhrDeliverySchema,
    EhrLinkInputSchema,
    EhrLinkSchema,
    EhrMappingDiffQuerySchema,
    EhrMappingDiffSchema,
    EhrMappingInputSchema,
    EhrMappingSchema,
    EhrMappingValidationSchema,
    EhrOrganizationSchema,
    EhrQuestionQuerySchema,
    EhrQuestionSchema,
    EhrSubmissionInputSchema,
    EhrSubmissionSchema,
)

blp = Blueprint(
    "ehr",
    __name__,
    url_prefix="/api",
    description="Patient questionnaires mapped into each organization's EHR. Admins manage "
    "organizations (credentials write-only), versioned mappings and patient links; the "
    "clinical team sets up questions; patients (or staff for them) submit answers, which are "
    "delivered to the patient's EHR by a job: retried on timeouts and 5xx, stopped on 4xx, "
    "in order per patient, never to the wrong patient. See docs/ehr.md.",
)
MRN = {"in": "path", "name": "mrn", "description": "The patient's MRN.", "example": "DEMO-0001"}
CONNECTOR = {
    "in": "path",
    "name": "connector",
    "description": "A connector's name.",
    "example": "athena",
}
ID = "int(max=9223372036854775807)"
PATIENT_FAILURE_NOTE = "Not delivered; the clinic staff see why and can retry it."
MAPPING_EXAMPLE = {
    "fields": {
        "dob": {
            "field": "DATE_OF_BIRTH_PATIENT",
            "endpoint": "demographics",
            "transform": {"kind": "date", "format": "%m/%d/%Y"},
        },
        "symptoms": {"field": "SYMPTOMS_PATIENT", "endpoint": "symptoms", "transform": None},
    },
    "note": "Only date of birth and symptoms for now",
}


def _refuse(errors: dict[str, str], status: int = 422, prefix: str = "", unprefixed=()):
    """422 naming each field (``{"json": {"answers.dob": [...]}}``); another status with the
    first message. ``prefix`` goes before every key but those ``unprefixed``."""
    named = {
        (key if key in unprefixed else f"{prefix}{key}"): [message]
        for key, message in errors.items()
    }
    if status == 422:
        abort(422, errors={"json": named})
    abort(status, message=next(iter(errors.values())), errors={"json": named})


def _connector_or_404(name: str):
    try:
        return connectors.get(name)
    except connectors.UnknownConnector as error:
        abort(404, message=str(error))


def _page(items: list, pagination_parameters) -> list:
    pagination_parameters.item_count = len(items)
    start = (pagination_parameters.page - 1) * pagination_parameters.page_size
    return items[start : start + pagination_parameters.page_size]


def _deliveries(items: list[Delivery]) -> list[Delivery]:
    held = delivery.waiting_for(items)
    for item in items:
        item.waiting_for = held.get(item.id)
    return items


def _submissions_out(submissions: list) -> list[dict]:
    """Submissions with their deliveries (all of the patient's read in one query)."""
    if not submissions:
        return []
    items = _deliveries(delivery.deliveries_of(submissions[0].mrn))
    if current_user().role == "patient":
        # An error may quote the EHR's record of someone else (an identity mismatch names
        # whom the identifier belongs to there): staff read it, the patient does not.
        for item in items:
            item.last_error = PATIENT_FAILURE_NOTE if item.state == "failed" else None
    by_submission: dict[int, list] = {}
    for item in sorted(items, key=lambda item: item.sequence):
        by_submission.setdefault(item.submission_id, []).append(item)
    return [_submission_out(s, by_submission.get(s.id, [])) for s in submissions]


def _submission_out(submission, items: list[Delivery]) -> dict:
    return {
        "id": submission.id,
        "mrn": submission.mrn,
        "organization_id": submission.organization_id,
        "answers": submission.answers,
        "language": submission.language,
        "submitted_by": submission.submitted_by,
        "created_at": submission.created_at,
        "state": delivery.submission_state(items),
        "deliveries": items,
    }


# Connectors -----------------------------------------------------------------------------


@blp.route("/ehr/connectors")
class Connectors(MethodView):
    @allow(*STAFF)
    @blp.response(200, EhrConnectorSchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters):
        """The installed EHR connectors

        One per EHR system, installed under the entry-point group `caredeck.ehr_connectors`
        (`athena`, `allscripts`, `sandbox`, and any added): endpoints, field names and the
        current mapping's version.
        """
        installed = list(connectors.installed().values())
        return [
            {
                "name": connector.name,
                "title": connector.title,
                "endpoints": list(connector.endpoints),
                "fields": list(connector.ehr_fields),
                "mapping_version": mappings.current(connector.name).version,
            }
            for connector in _page(installed, pagination_parameters)
        ]


# Organizations --------------------------------------------------------------------------


@blp.route("/ehr/organizations")
class Organizations(MethodView):
    @allow("admin")
    @blp.response(200, EhrOrganizationSchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters):
        """Organizations, by name (admins)"""
        query = Organization.select().order_by(Organization.name)
        pagination_parameters.item_count = query.count()
        return list(query.paginate(pagination_parameters.page, pagination_parameters.page_size))

    @allow("admin")
    @blp.arguments(EhrOrganizationInputSchema)
    @blp.response(201, EhrOrganizationSchema)
    @blp.alt_response(422, description="Names each bad or missing field")
    def post(self, data):
        """Add an organization (admins)

        `name`, `connector` (an installed one), `base_url` (the EHR's address) are required;
        `credentials` (sent to the EHR as a bearer token) is write-only: never returned.
        `rate_limit_per_second` (default 5) caps the deliveries a second to this EHR.
        """
        try:
            return organizations.create(data, current_user()), 201
        except organizations.OrganizationError as error:
            _refuse(error.errors, error.status)


@blp.route(f"/ehr/organizations/<{ID}:organization_id>")
class OrganizationById(MethodView):
    @allow("admin")
    @blp.response(200, EhrOrganizationSchema)
    def get(self, organization_id):
        """One organization (admins)"""
        found = organizations.get(organization_id)
        if found is None:
            abort(404, message=f"There is no organization {organization_id}.")
        return found

    @allow("admin")
    @blp.arguments(EhrOrganizationInputSchema)
    @blp.response(200, EhrOrganizationSchema)
    @blp.alt_response(422, description="Names each bad field")
    def patch(self, data, organization_id):
        """Change an organization (admins)

        Send the fields that change. `credentials` left out or empty keeps the stored
        ones; `null` removes them.
        """
        found = organizations.get(organization_id)
        if found is None:
            abort(404, message=f"There is no organization {organization_id}.")
        try:
            return organizations.update(found, data, current_user())
        except organizations.OrganizationError as error:
            _refuse(error.errors, error.status)


# Mappings -------------------------------------------------------------------------------


@blp.route("/ehr/mappings/<connector>", parameters=[CONNECTOR])
class Mapping(MethodView):
    @allow("admin")
    @blp.response(200, EhrMappingSchema)
    def get(self, connector):
        """The connector's current mapping (admins)"""
        _connector_or_404(connector)
        return mappings.current(connector)

    @allow("admin")
    @blp.arguments(EhrMappingInputSchema, example=MAPPING_EXAMPLE)
    @blp.response(200, EhrMappingSchema)
    @blp.alt_response(409, description="Another version was saved since base_version")
    @blp.alt_response(422, description="Names each place of the mapping that is wrong")
    def put(self, data, connector):
        """Save a new version of the mapping (admins)

        The whole mapping, with a `note` and `base_version` (the version you edited: if
        another was saved since, `409` and nothing is saved). It applies to submissions from
        now on; earlier deliveries keep the version they were built with. Saving what the
        current version holds saves nothing and answers the current version.
        """
        _connector_or_404(connector)
        try:
            return mappings.save(
                connector,
                data["fields"],
                user=current_user(),
                note=data["note"],
                base_version=data.get("base_version"),
            )
        except mappings.MappingConflict as error:
            _refuse(error.errors, 409)
        except mappings.MappingError as error:
            _refuse(error.errors, prefix="fields.", unprefixed=("note",))


@blp.route("/ehr/mappings/<connector>/versions", parameters=[CONNECTOR])
class MappingVersions(MethodView):
    @allow("admin")
    @blp.response(200, EhrMappingSchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters, connector):
        """Every version of the mapping, newest first (admins)"""
        _connector_or_404(connector)
        return _page(mappings.versions(connector), pagination_parameters)


@blp.route(f"/ehr/mappings/<connector>/versions/<{ID}:number>", parameters=[CONNECTOR])
class MappingVersionByNumber(MethodView):
    @allow("admin")
    @blp.response(200, EhrMappingSchema)
    def get(self, connector, number):
        """One version of the mapping (admins)"""
        _connector_or_404(connector)
        found = mappings.version(connector, number)
        if found is None:
            abort(404, message=f"The {connector} mapping has no version {number}.")
        return found


@blp.route("/ehr/mappings/<connector>/diff", parameters=[CONNECTOR])
class MappingDiff(MethodView):
    @allow("admin")
    @blp.arguments(EhrMappingDiffQuerySchema, location="query")
    @blp.response(200, EhrMappingDiffSchema)
    def get(self, args, connector):
        """What changed between two versions (admins)

        `from` the older version, `to` the newer (default: the current one); one row per
        field of ours that was added, removed or changed, with before and after.
        """
        _connector_or_404(connector)
        newer_number = args.get("to", mappings.current(connector).version)
        older = mappings.version(connector, args["from_"])
        newer = mappings.version(connector, newer_number)
        for number, found in ((args["from_"], older), (newer_number, newer)):
            if found is None:
                abort(404, message=f"The {connector} mapping has no version {number}.")
        return {
            "connector": connector,
            "from_": older.version,
            "to": newer.version,
            "changes": mappings.diff(older, newer),
        }


@blp.route("/ehr/mappings/<connector>/validate", parameters=[CONNECTOR])
class MappingValidation(MethodView):
    @allow("admin")
    @blp.arguments(EhrMappingInputSchema, example=MAPPING_EXAMPLE)
    @blp.response(200, EhrMappingValidationSchema)
    def post(self, data, connector):
        """Check a mapping without saving it (admins)

        `valid`, and `errors`: each place that is wrong (`dob.transform.format`) and why.
        """
        _connector_or_404(connector)
        errors = mappings.validate(connector, data["fields"])
        return {"valid": not errors, "errors": errors}


# Patient links --------------------------------------------------------------------------


@blp.route("/patients/<mrn>/ehr-link", parameters=[MRN])
class PatientEhrLink(MethodView):
    @allow(*STAFF)
    @blp.response(200, EhrLinkSchema)
    def get(self, mrn):
        """Which EHR record the patient is (staff)"""
        patient = visible_or_404(mrn)
        link = organizations.link_of(patient.mrn)
        if link is None:
            abort(404, message=f"Patient {mrn} is not linked to an EHR.")
        return link

    @allow("admin")
    @blp.arguments(EhrLinkInputSchema)
    @blp.response(200, EhrLinkSchema)
    @blp.alt_response(409, description="That EHR record is already another patient's")
    @blp.alt_response(422, description="Names each bad field")
    def put(self, data, mrn):
        """Link the patient to their EHR record (admins)

        `organization_id`, `ehr_patient_id` (the patient's identifier in that EHR) and
        optionally `provider` (the primary care physician). One EHR record is one patient.
        """
        patient = visible_or_404(mrn)
        try:
            organizations.link_patient(
                patient.mrn,
                data["organization_id"],
                data["ehr_patient_id"],
                data["provider"],
                user=current_user(),
            )
        except organizations.OrganizationError as error:
            _refuse(error.errors, error.status)
        return organizations.link_of(patient.mrn)


# Questions ------------------------------------------------------------------------------


@blp.route("/ehr/questions")
class Questions(MethodView):
    @allow(*ROLES)
    @blp.arguments(EhrQuestionQuerySchema, location="query")
    @blp.response(200, EhrQuestionSchema(many=True))
    @blp.paginate()
    def get(self, args, pagination_parameters):
        """The questionnaire's questions, in order

        Active questions; staff may ask for `all=true` to include inactive ones.
        """
        everything = args["all"] and current_user().role in STAFF
        return _page(questionnaire.questions(active_only=not everything), pagination_parameters)

    @allow(*STAFF)
    @blp.arguments(EhrQuestionInputSchema)
    @blp.response(201, EhrQuestionSchema)
    @blp.alt_response(422, description="Names each bad field")
    def post(self, data):
        """Add a question (staff)

        `field` (one of our fields: the answer fills it), `text_en`, `text_es`; optional
        `position`, `required`, `active`. One active question per field.
        """
        try:
            return questionnaire.create_question(data, current_user()), 201
        except questionnaire.QuestionError as error:
            _refuse(error.errors)


@blp.route(f"/ehr/questions/<{ID}:question_id>")
class QuestionById(MethodView):
    @allow(*STAFF)
    @blp.arguments(EhrQuestionInputSchema)
    @blp.response(200, EhrQuestionSchema)
    @blp.alt_response(422, description="Names each bad field")
    def patch(self, data, question_id):
        """Change a question (staff); `active: false` retires it"""
        question = Question.get_or_none(Question.id == question_id)
        if question is None:
            abort(404, message=f"There is no question {question_id}.")
        try:
            return questionnaire.update_question(question, data, current_user())
        except questionnaire.QuestionError as error:
            _refuse(error.errors)


# Questionnaire responses and deliveries -------------------------------------------------


@blp.route("/patients/<mrn>/questionnaire-responses", parameters=[MRN])
class QuestionnaireResponses(MethodView):
    @allow(*ROLES)
    @blp.response(200, EhrSubmissionSchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters, mrn):
        """The patient's submissions, newest first, each with its deliveries

        Staff, and the patient their own.
        """
        patient = visible_or_404(mrn)
        page = _page(questionnaire.submissions_of(patient.mrn), pagination_parameters)
        return _submissions_out(page)

    @allow(*ROLES)
    @blp.arguments(
        EhrSubmissionInputSchema,
        example={"answers": {"symptoms": "Cough for a week", "family_history": "Asthma (mother)"}},
    )
    @blp.response(202, EhrSubmissionSchema)
    @blp.alt_response(409, description="The patient is not linked to an EHR")
    @blp.alt_response(422, description="Names each bad answer (answers.dob, ...)")
    def post(self, data, mrn):
        """Submit the questionnaire (staff, or the patient for themself)

        `answers`: our field -> the answer (`dob` as YYYY-MM-DD); `language` `en` or `es`.
        The answers and their deliveries are stored together and the deliveries queued:
        `202`, with each delivery's state (`pending` until the job sends it).
        """
        patient = visible_or_404(mrn)
        try:
            submission = questionnaire.submit(
                patient.mrn, data["answers"], user=current_user(), language=data["language"]
            )
        except questionnaire.SubmissionError as error:
            _refuse(error.errors, error.status)
        return _submissions_out([submission])[0], 202


@blp.route("/patients/<mrn>/ehr-deliveries", parameters=[MRN])
class PatientDeliveries(MethodView):
    @allow(*STAFF)
    @blp.response(200, EhrDeliverySchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters, mrn):
        """The patient's deliveries, newest first (staff)

        Each with its state (`pending`, `sent`, `failed`), attempts, last error, the mapping
        version it was built with, and `waiting_for`: the earlier delivery it waits behind.
        """
        patient = visible_or_404(mrn)
        return _page(_deliveries(delivery.deliveries_of(patient.mrn)), pagination_parameters)


@blp.route(f"/ehr/deliveries/<{ID}:delivery_id>/retry")
class DeliveryRetry(MethodView):
    @allow(*STAFF)
    @audited("retry ehr delivery")
    @blp.response(200, EhrDeliverySchema)
    @blp.alt_response(409, description="The delivery has not failed")
    def post(self, delivery_id):
        """Retry a failed delivery (staff)

        It goes back to `pending` with its attempts starting over, keeping its payload,
        mapping version and idempotency key. Later deliveries it held follow once it is sent.
        """
        found = Delivery.get_or_none(Delivery.id == delivery_id)
        if found is not None:
            note(patient=found.mrn)
        try:
            return _deliveries([delivery.retry(delivery_id, user=current_user())])[0]
        except delivery.DeliveryError as error:
            abort(error.status, message=error.message)


# Bulk updates ---------------------------------------------------------------------------


def _bulk(call):
    try:
        return call()
    except bulk.BulkError as error:
        _refuse(error.errors, error.status)


@blp.route("/ehr/bulk-updates/preview")
class BulkPreview(MethodView):
    @allow("admin")
    @audited("preview bulk ehr update")
    @blp.arguments(EhrBulkRequestSchema)
    @blp.response(200, EhrBulkRowSchema(many=True))
    @blp.paginate()
    def post(self, data, pagination_parameters):
        """Preview a bulk update (admins)

        The patients the change would change, with before and after; the `X-Pagination`
        header's `total` is the count to send back as `expected` when applying.
        """
        rows = _bulk(lambda: bulk.preview(data["selection"], data["change"]))
        return _page(rows, pagination_parameters)


@blp.route("/ehr/bulk-updates")
class BulkUpdates(MethodView):
    @allow("admin")
    @audited("bulk ehr update")
    @blp.arguments(EhrBulkRequestSchema)
    @blp.response(200, EhrBulkResultSchema)
    @blp.alt_response(409, description="The selection changed since the preview")
    def post(self, data):
        """Apply a bulk update (admins)

        `selection`: `{organization_id, provider}` (provider null: every patient of the
        organization); `change`: `{provider}` or `{organization_id}` (a move, only to an
        organization on the same EHR); `expected`: the preview's count. One transaction.
        """
        return _bulk(
            lambda: bulk.apply(
                data["selection"],
                data["change"],
                user=current_user(),
                expected=data.get("expected"),
            )
        )
