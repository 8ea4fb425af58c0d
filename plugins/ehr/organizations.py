"""Organizations (hospitals, clinics), their EHR connection, and which EHR record each
patient is.

Credentials are write-only: they are accepted here, stored, sent to the EHR by the
connector, and never returned, logged or audited (the schemas have no field for them on the
way out; ``Organization.__repr__`` leaves them out), and stored encrypted
(``plugins/ehr/credentials.py``). An update that leaves ``credentials``
out, or sends it empty, keeps the stored value; ``null`` clears it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import marshmallow as ma
import peewee

from core.db import database, utcnow
from core.patients.models import Patient
from plugins.ehr import connectors
from plugins.ehr.credentials import seal
from plugins.ehr.errors import InputError
from plugins.ehr.models import (
    EHR_ID_MAX_LENGTH,
    NAME_MAX_LENGTH,
    URL_MAX_LENGTH,
    Organization,
    PatientLink,
)

log = logging.getLogger("caredeck.ehr")
CREDENTIALS_MAX_LENGTH = 4000
RATE_LIMIT_MAX = 1000
# An identifier goes into the EHR's URLs (quoted, but still): letters, digits and . _ : -
EHR_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
WRITABLE = ("name", "connector", "base_url", "credentials", "rate_limit_per_second")


class OrganizationError(InputError):
    """An organization or patient link that cannot be saved."""


def _single_line(text: str) -> None:
    if any(ord(character) < 32 or ord(character) == 127 for character in text):
        raise ma.ValidationError("Must not contain control characters or line breaks.")


def _installed(name: str) -> None:
    if name not in connectors.installed():
        raise ma.ValidationError(
            "Choose an installed connector: " + ", ".join(connectors.installed()) + "."
        )


def _base_url(text: str) -> None:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ma.ValidationError("Give the EHR's http:// or https:// address.")
    if parts.username or parts.password:
        # It would be shown to every admin: credentials belong in the credentials field.
        raise ma.ValidationError("Put the credentials in the credentials field, not the URL.")
    if parts.query or parts.fragment:
        raise ma.ValidationError("Give the address without a query or fragment.")


class EhrOrganizationInputSchema(ma.Schema):
    """An organization as written: credentials go in and never come out."""

    name = ma.fields.String(
        validate=[ma.validate.Length(min=1, max=NAME_MAX_LENGTH), _single_line],
        metadata={"example": "Riverside Clinic"},
    )
    connector = ma.fields.String(validate=_installed, metadata={"example": "athena"})
    base_url = ma.fields.String(
        validate=[ma.validate.Length(max=URL_MAX_LENGTH), _base_url],
        metadata={"example": "https://ehr.riverside.example/v1"},
    )
    credentials = ma.fields.String(
        load_only=True,
        allow_none=True,
        validate=ma.validate.Length(max=CREDENTIALS_MAX_LENGTH),
        metadata={
            "description": "The EHR's API credential (sent as a bearer token). Write-only: "
            "never returned. Left out or empty on an update: kept; null: removed."
        },
    )
    rate_limit_per_second = ma.fields.Integer(
        validate=ma.validate.Range(min=1, max=RATE_LIMIT_MAX),
        metadata={"description": "Most requests a second Caredeck sends this EHR."},
    )

    @ma.pre_load
    def _trim(self, data, **kwargs):
        if not isinstance(data, Mapping):
            return data
        return {
            key: value.strip() if isinstance(value, str) and key != "credentials" else value
            for key, value in data.items()
        }


def _load(data: Any, *, partial: bool) -> dict:
    schema = EhrOrganizationInputSchema(partial=partial)
    try:
        loaded = schema.load(data)
    except ma.ValidationError as error:
        raise OrganizationError(_flat(error.messages)) from None
    if not partial:
        missing = [name for name in ("name", "connector", "base_url") if name not in loaded]
        if missing:
            raise OrganizationError({name: "Missing data for required field." for name in missing})
    if loaded.get("credentials") == "":
        del loaded["credentials"]  # an empty secret field on a form means "keep it"
    if loaded.get("credentials") is not None:
        loaded["credentials"] = seal(loaded["credentials"])
    return loaded


def _flat(messages: Any) -> dict[str, str]:
    if isinstance(messages, Mapping):
        return {
            str(key): " ".join(value) if isinstance(value, list) else str(value)
            for key, value in messages.items()
        }
    return {"organization": str(messages)}


def all() -> list[Organization]:  # noqa: A001 (the contract's name)
    return list(Organization.select().order_by(Organization.name))


def get(organization_id: int) -> Organization | None:
    return Organization.get_or_none(Organization.id == organization_id)


def _name_taken(name: str, but: int | None = None) -> bool:
    query = Organization.select().where(peewee.fn.LOWER(Organization.name) == name.lower())
    if but is not None:
        query = query.where(Organization.id != but)
    return query.exists()


def create(data: Any, user: Any) -> Organization:
    """A new organization; raises :class:`OrganizationError`."""
    loaded = _load(data, partial=False)
    if _name_taken(loaded["name"]):
        raise OrganizationError({"name": f"An organization named {loaded['name']!r} exists."})
    try:
        with database.atomic():
            organization = Organization.create(**loaded)
    except peewee.IntegrityError:
        raise OrganizationError(
            {"name": f"An organization named {loaded['name']!r} exists."}
        ) from None
    log.info(
        "organization %s (%s, %s) created by %s",
        organization.id,
        organization.name,
        organization.connector,
        getattr(user, "email", user),
    )
    return organization


def update(organization: Organization, data: Any, user: Any) -> Organization:
    """Apply the fields given; raises :class:`OrganizationError`."""
    loaded = _load(data, partial=True)
    if "name" in loaded and _name_taken(loaded["name"], but=organization.id):
        raise OrganizationError({"name": f"An organization named {loaded['name']!r} exists."})
    changed = sorted(name for name, value in loaded.items() if getattr(organization, name) != value)
    if not changed:
        return organization
    linked = PatientLink.select().where(PatientLink.organization == organization.id).count()
    if "connector" in changed and linked:
        # The linked patients' identifiers are records in the current EHR: another EHR's
        # record with the same identifier is another person.
        raise OrganizationError(
            {
                "connector": f"{organization.name} has {linked} linked patient(s) whose EHR "
                f"identifiers are records in its {organization.connector} EHR; move or "
                "unlink them before changing the EHR system."
            },
            409,
        )
    for name in changed:
        setattr(organization, name, loaded[name])
    organization.updated_at = utcnow()
    try:
        with database.atomic():
            organization.save()
    except peewee.IntegrityError:
        raise OrganizationError(
            {"name": f"An organization named {loaded['name']!r} exists."}
        ) from None
    # The names of what changed, never the values (one of them may be the credentials).
    log.info(
        "organization %s changed by %s: %s",
        organization.id,
        getattr(user, "email", user),
        ", ".join(changed),
    )
    return organization


def same_ehr(one: Organization, other: Organization) -> bool:
    """Whether two organizations use one EHR (connector and address): a patient identifier
    of one is the same patient in the other."""
    return (one.connector, one.base_url.rstrip("/")) == (
        other.connector,
        other.base_url.rstrip("/"),
    )


def same_ehr_ids(organization: Organization) -> peewee.ModelSelect:
    """The ids of the organizations on the same EHR as this one (itself included), as a
    subquery: one patient identifier there is one person."""
    return Organization.select(Organization.id).where(
        (Organization.connector == organization.connector)
        & (peewee.fn.RTRIM(Organization.base_url, "/") == organization.base_url.rstrip("/"))
    )


# Patient links --------------------------------------------------------------------------


def link_of(mrn: str) -> PatientLink | None:
    return (
        PatientLink.select(PatientLink, Organization)
        .join(Organization)
        .where(PatientLink.mrn == mrn)
        .first()
    )


def link_patient(
    mrn: str,
    organization_id: Any,
    ehr_patient_id: Any,
    provider: Any = None,
    *,
    user: Any,
) -> PatientLink:
    """Say which EHR record the patient is (creating or replacing the patient's link);
    raises :class:`OrganizationError`."""
    errors: dict[str, str] = {}
    organization = get(organization_id) if isinstance(organization_id, int) else None
    if organization is None:
        errors["organization_id"] = f"There is no organization {organization_id!r}."
    if not (
        isinstance(ehr_patient_id, str)
        and len(ehr_patient_id) <= EHR_ID_MAX_LENGTH
        and EHR_ID_PATTERN.fullmatch(ehr_patient_id)
    ):
        errors["ehr_patient_id"] = (
            f"Give the patient's identifier in the EHR: 1 to {EHR_ID_MAX_LENGTH} letters, "
            "digits, '.', '_', ':' or '-'."
        )
    if isinstance(provider, str):
        provider = provider.strip() or None
    if provider is not None and not (
        isinstance(provider, str) and len(provider) <= NAME_MAX_LENGTH
    ):
        errors["provider"] = (
            f"Give the primary care physician in at most {NAME_MAX_LENGTH} characters."
        )
    if not Patient.select().where(Patient.mrn == mrn).exists():
        errors["mrn"] = f"There is no patient with MRN {mrn!r}."
    if errors:
        raise OrganizationError(errors)
    taken = (
        PatientLink.select()
        .where(
            # Two organizations of one EHR share its records.
            (PatientLink.organization.in_(same_ehr_ids(organization)))
            & (PatientLink.ehr_patient_id == ehr_patient_id)
            & (PatientLink.mrn != mrn)
        )
        .first()
    )
    if taken is not None:
        raise OrganizationError(
            {
                "ehr_patient_id": f"{ehr_patient_id} is already the EHR record of patient "
                f"{taken.mrn} at {taken.organization.name}; one EHR record is one patient."
            },
            status=409,
        )
    try:
        with database.atomic():
            link = PatientLink.get_or_none(PatientLink.mrn == mrn)
            if link is None:
                link = PatientLink(mrn=mrn)
            link.organization = organization
            link.ehr_patient_id = ehr_patient_id
            link.provider = provider
            link.updated_at = utcnow()
            link.save()
    except peewee.IntegrityError:
        raise OrganizationError(
            {"ehr_patient_id": f"{ehr_patient_id} was just linked to another patient."}, status=409
        ) from None
    log.info(
        "patient %s linked to %s record %s by %s",
        mrn,
        organization.name,
        ehr_patient_id,
        getattr(user, "email", user),
    )
    return link
