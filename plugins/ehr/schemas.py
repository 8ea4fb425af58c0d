"""What the EHR API answers and accepts (schema names prefixed ``Ehr``: one OpenAPI
document). Organizations' and questions' input schemas live next to the functions that
validate with them (``organizations.py``, ``questionnaire.py``), so pages and API share
one set of rules."""

from __future__ import annotations

import marshmallow as ma

from plugins.ehr.fields import LANGUAGES, OUR_FIELDS
from plugins.ehr.models import STATES

MAPPING_DESCRIPTION = (
    "Our field -> {field: the EHR's field, endpoint: one of the connector's endpoints, "
    "transform: null | {kind: date, format} | {kind: codes, codes: {ours: theirs}} | "
    "{kind: upper}}. A field left out is not sent."
)


class EhrConnectorSchema(ma.Schema):
    name = ma.fields.String(metadata={"example": "athena"})
    title = ma.fields.String(metadata={"example": "Athena"})
    endpoints = ma.fields.List(ma.fields.String())
    fields = ma.fields.List(ma.fields.String(), metadata={"description": "The EHR's field names."})
    mapping_version = ma.fields.Integer(metadata={"description": "The current mapping's version."})


class EhrOrganizationSchema(ma.Schema):
    """An organization; its credentials are never shown (``has_credentials`` says whether
    some are stored)."""

    id = ma.fields.Integer()
    name = ma.fields.String()
    connector = ma.fields.String()
    base_url = ma.fields.String()
    rate_limit_per_second = ma.fields.Integer()
    has_credentials = ma.fields.Method("_has_credentials", dump_only=True)
    created_at = ma.fields.AwareDateTime()
    updated_at = ma.fields.AwareDateTime()

    def _has_credentials(self, organization) -> bool:
        return bool(organization.credentials)


class EhrMappingSchema(ma.Schema):
    connector = ma.fields.String()
    version = ma.fields.Integer()
    fields = ma.fields.Dict(metadata={"description": MAPPING_DESCRIPTION})
    note = ma.fields.String()
    created_by = ma.fields.String()
    created_at = ma.fields.AwareDateTime()


class EhrMappingInputSchema(ma.Schema):
    fields = ma.fields.Dict(required=True, metadata={"description": MAPPING_DESCRIPTION})
    note = ma.fields.String(load_default="", metadata={"description": "Why it changed."})
    base_version = ma.fields.Integer(
        strict=True,
        metadata={
            "description": "The version your edit started from: if another was saved since, "
            "the answer is 409 and nothing is saved (recommended)."
        },
    )


class EhrMappingValidationSchema(ma.Schema):
    valid = ma.fields.Boolean()
    errors = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.String(),
        metadata={"description": "Place (e.g. dob.transform.format) -> what is wrong."},
    )


class EhrMappingChangeSchema(ma.Schema):
    field = ma.fields.String(metadata={"enum": list(OUR_FIELDS)})
    change = ma.fields.String(metadata={"enum": ["added", "removed", "changed"]})
    before = ma.fields.Dict(allow_none=True)
    after = ma.fields.Dict(allow_none=True)


class EhrMappingDiffSchema(ma.Schema):
    connector = ma.fields.String()
    from_ = ma.fields.Integer(data_key="from")
    to = ma.fields.Integer()
    changes = ma.fields.List(ma.fields.Nested(EhrMappingChangeSchema))


class EhrMappingDiffQuerySchema(ma.Schema):
    from_ = ma.fields.Integer(
        data_key="from",
        required=True,
        validate=ma.validate.Range(min=1),
        metadata={"description": "The older version."},
    )
    to = ma.fields.Integer(
        validate=ma.validate.Range(min=1),
        metadata={"description": "The newer version (default: the current one)."},
    )


class EhrLinkSchema(ma.Schema):
    mrn = ma.fields.String()
    organization_id = ma.fields.Integer(strict=True)
    organization = ma.fields.Function(lambda link: link.organization.name)
    connector = ma.fields.Function(lambda link: link.organization.connector)
    ehr_patient_id = ma.fields.String()
    provider = ma.fields.String(allow_none=True)
    updated_at = ma.fields.AwareDateTime()


class EhrLinkInputSchema(ma.Schema):
    organization_id = ma.fields.Integer(required=True, strict=True)
    ehr_patient_id = ma.fields.String(
        required=True, metadata={"description": "The patient's identifier in that EHR."}
    )
    provider = ma.fields.String(
        allow_none=True,
        load_default=None,
        metadata={"description": "The primary care physician (null: none)."},
    )


class EhrQuestionSchema(ma.Schema):
    id = ma.fields.Integer()
    field = ma.fields.String(metadata={"enum": list(OUR_FIELDS)})
    text_en = ma.fields.String()
    text_es = ma.fields.String()
    position = ma.fields.Integer()
    required = ma.fields.Boolean()
    active = ma.fields.Boolean()


class EhrQuestionQuerySchema(ma.Schema):
    all = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "Staff: include inactive questions."},
    )


class EhrDeliverySchema(ma.Schema):
    id = ma.fields.Integer()
    submission_id = ma.fields.Integer()
    mrn = ma.fields.String()
    organization_id = ma.fields.Integer(strict=True)
    connector = ma.fields.String()
    endpoint = ma.fields.String()
    payload = ma.fields.Dict(
        metadata={"description": "What is (or was) sent, as the EHR names it."}
    )
    mapping_version = ma.fields.Function(
        lambda item: item.mapping_version.version,
        metadata={"description": "The version of the connector's mapping it was built with."},
    )
    sequence = ma.fields.Integer(metadata={"description": "Its place in the patient's line."})
    state = ma.fields.String(metadata={"enum": list(STATES)})
    attempts = ma.fields.Integer()
    last_error = ma.fields.String(allow_none=True)
    waiting_for = ma.fields.Integer(
        allow_none=True,
        metadata={"description": "Pending behind this earlier unsent delivery of the patient."},
    )
    idempotency_key = ma.fields.String()
    next_attempt_at = ma.fields.AwareDateTime()
    sent_at = ma.fields.AwareDateTime(allow_none=True)
    created_at = ma.fields.AwareDateTime()
    updated_at = ma.fields.AwareDateTime()


class EhrSubmissionInputSchema(ma.Schema):
    answers = ma.fields.Dict(
        required=True,
        metadata={"description": "Our field -> the answer (text; dob as YYYY-MM-DD)."},
    )
    # Checked with the answers (questionnaire.submit), so one 422 names every bad field.
    language = ma.fields.String(load_default="en", metadata={"enum": list(LANGUAGES)})


class EhrSubmissionSchema(ma.Schema):
    id = ma.fields.Integer()
    mrn = ma.fields.String()
    organization_id = ma.fields.Integer(strict=True)
    answers = ma.fields.Dict()
    language = ma.fields.String()
    submitted_by = ma.fields.String()
    created_at = ma.fields.AwareDateTime()
    state = ma.fields.String(metadata={"enum": list(STATES)})
    deliveries = ma.fields.List(ma.fields.Nested(EhrDeliverySchema))


class EhrBulkSelectionSchema(ma.Schema):
    organization_id = ma.fields.Integer(required=True, strict=True)
    provider = ma.fields.String(
        allow_none=True,
        load_default=None,
        metadata={"description": "Only this provider's patients (null: all of them)."},
    )


class EhrBulkChangeSchema(ma.Schema):
    provider = ma.fields.String(allow_none=True, metadata={"description": "The new provider."})
    organization_id = ma.fields.Integer(
        strict=True, metadata={"description": "Move to this organization (same EHR only)."}
    )

    @ma.validates_schema
    def _one(self, data, **kwargs):
        if len(data) != 1:
            raise ma.ValidationError("Give exactly one of provider or organization_id.")


class EhrBulkRequestSchema(ma.Schema):
    selection = ma.fields.Nested(EhrBulkSelectionSchema, required=True)
    change = ma.fields.Nested(EhrBulkChangeSchema, required=True)
    expected = ma.fields.Integer(
        validate=ma.validate.Range(min=0),
        metadata={"description": "Apply: the preview's count; refused (409) if it changed."},
    )


class EhrBulkRowSchema(ma.Schema):
    mrn = ma.fields.String()
    name = ma.fields.String(allow_none=True)
    field = ma.fields.String()
    before = ma.fields.String(allow_none=True)
    after = ma.fields.String(allow_none=True)


class EhrBulkResultSchema(ma.Schema):
    matched = ma.fields.Integer(metadata={"description": "Patients the selection matched."})
    changed = ma.fields.Integer(metadata={"description": "Patients changed."})
