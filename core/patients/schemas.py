"""Validation of patient data: the API and the browser forms load through these schemas, so
a rule and its wording exist once."""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Mapping

import marshmallow as ma
from flask import current_app, has_app_context
from marshmallow import fields, validate

from core.patients.models import MRN_RULE, SEXES, is_valid_mrn

EARLIEST_BIRTH_DATE = datetime.date(1900, 1, 1)
# Fields a form may leave empty: an empty string there means "no value", never an error.
OPTIONAL_FIELDS = (
    "date_of_birth",
    "phone",
    "email",
    "address",
    "insurance_provider",
    "insurance_policy_number",
    "primary_physician",
)


def hospital_today() -> datetime.date:
    """Today in the hospital's zone: a baby born this morning in Berlin is not 'in the
    future' because UTC has not reached midnight yet."""
    zone = current_app.config.get("TIMEZONE", "UTC") if has_app_context() else "UTC"
    return datetime.datetime.now(zoneinfo.ZoneInfo(zone)).date()


def check_birth_date(value: datetime.date) -> None:
    if value > hospital_today():
        raise ma.ValidationError("The date of birth cannot be in the future.")
    if value < EARLIEST_BIRTH_DATE:
        raise ma.ValidationError("The date of birth cannot be before 1900-01-01.")


def check_mrn(value: str) -> None:
    if not is_valid_mrn(value):
        raise ma.ValidationError(f"{value!r} is not a valid MRN. {MRN_RULE}")


MRN_IS_FIXED = (
    "The MRN cannot be changed: it identifies the patient in other systems. "
    "Leave it out of the update."
)


def refuse_mrn_change(value: object) -> None:
    raise ma.ValidationError(MRN_IS_FIXED)


def name_field(label: str, **options) -> fields.String:
    return fields.String(
        validate=validate.Length(min=1, max=100, error=f"Enter the {label} (1 to 100 characters)."),
        metadata={"description": f"The patient's {label}."},
        **options,
    )


def text_field(max_length: int, description: str, label: str) -> fields.String:
    return fields.String(
        allow_none=True,
        validate=validate.Length(
            max=max_length, error=f"The {label} can be at most {max_length} characters."
        ),
        metadata={"description": description},
    )


class _PatientFields(ma.Schema):
    """What a patient record holds besides its MRN and names."""

    date_of_birth = fields.Date(
        allow_none=True,
        validate=check_birth_date,
        error_messages={"invalid": "Enter the date of birth as YYYY-MM-DD, e.g. 1984-03-07."},
        metadata={"description": "YYYY-MM-DD; not in the future, not before 1900-01-01."},
    )
    phone = fields.String(
        allow_none=True,
        validate=validate.Regexp(
            r"\+?[0-9 ()./-]{3,50}\Z",
            error="Enter a phone number of 3 to 50 digits, spaces and + ( ) . / - only.",
        ),
        metadata={"description": "Phone number, e.g. +49 30 1234-567."},
    )
    email = fields.Email(
        allow_none=True,
        validate=validate.Length(max=254, error="The email address is too long."),
        error_messages={"invalid": "Enter a valid email address, like name@example.org."},
        metadata={"description": "Email address."},
    )
    address = text_field(500, "Postal address.", "address")
    insurance_provider = text_field(200, "Health insurer.", "insurance provider")
    insurance_policy_number = text_field(
        100, "Policy or member number at the insurer.", "insurance policy number"
    )
    primary_physician = text_field(200, "The patient's primary physician.", "primary physician")

    @ma.pre_load
    def _tidy_form_input(self, data, **kwargs):
        """Trim whitespace; an empty optional field means "no value" (null) and an empty
        sex means "not given", which is what an untouched form field says."""
        if not isinstance(data, Mapping):
            return data  # marshmallow reports the wrong type itself
        tidy = {}
        for key, value in data.items():
            if isinstance(value, str):
                value = value.strip()
                if value == "" and key in OPTIONAL_FIELDS:
                    value = None
                elif value == "" and key == "sex":
                    continue
            tidy[key] = value
        return tidy


SEX_FIELD_OPTIONS = {
    "validate": validate.OneOf(SEXES, error="Choose one of: " + ", ".join(SEXES) + "."),
    "metadata": {"description": "One of " + ", ".join(SEXES) + "."},
}


class CorePatientSchema(_PatientFields):
    """A patient as the API shows it, and what creating one takes."""

    mrn = fields.String(
        required=True,
        validate=check_mrn,
        metadata={
            "description": "The hospital's identifier for the patient (medical record "
            "number), e.g. MRN-000123 or 4711/22. " + MRN_RULE,
            "example": "MRN-000123",
        },
    )
    first_name = name_field("first name", required=True)
    last_name = name_field("last name", required=True)
    sex = fields.String(load_default="unknown", **SEX_FIELD_OPTIONS)
    created_at = fields.AwareDateTime(dump_only=True)
    updated_at = fields.AwareDateTime(dump_only=True)
    last_activity_at = fields.AwareDateTime(
        dump_only=True,
        metadata={"description": "When something last happened to the patient."},
    )


class CorePatientUpdateSchema(_PatientFields):
    """The fields to change; those left out stay as they are. Null clears an optional
    field."""

    mrn = fields.Raw(
        load_only=True,
        validate=refuse_mrn_change,
        error_messages={"null": MRN_IS_FIXED},
        metadata={"description": "Not accepted: the MRN cannot be changed."},
    )
    first_name = name_field("first name")
    last_name = name_field("last name")
    sex = fields.String(**SEX_FIELD_OPTIONS)


class CorePatientQuerySchema(ma.Schema):
    q = fields.String(
        validate=validate.Length(max=100, error="Search for at most 100 characters."),
        metadata={
            "description": "Words that must each occur in the first name, last name or MRN "
            "(case-insensitive)."
        },
    )
    sex = fields.String(**SEX_FIELD_OPTIONS)
