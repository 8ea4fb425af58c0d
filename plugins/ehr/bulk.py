"""Bulk updates of patient links: one change applied to many patients of one organization
(optionally only one provider's), previewed first.

The selection is ``{"organization_id": int, "provider": str | None}`` (``None``: every
patient of the organization). The change is one of:

- ``{"provider": "Dr. Rivera"}``: a new primary care physician (``None`` clears it);
- ``{"organization_id": 7}``: move the patients to another organization. Only to one on the
  same EHR (same connector and base URL: two clinics of one EHR tenant), because a
  patient's identifier belongs to its EHR; moving it to another EHR would point deliveries
  at whoever has that identifier there. Patients moving to a different EHR are re-linked one
  by one (``PUT /api/patients/<mrn>/ehr-link``).

``preview`` lists the patients that would change (patients the change leaves as they are
are not listed). ``apply`` takes the count the preview showed as ``expected`` and refuses
(409) when the selection changed meanwhile; it changes every row in one transaction.
Deliveries already submitted keep the organization they were submitted for (its
credentials and rate limit), and reach the same EHR record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import peewee

from core.db import database, utcnow
from core.patients.models import Patient
from plugins.ehr.errors import InputError
from plugins.ehr.models import NAME_MAX_LENGTH, Organization, PatientLink
from plugins.ehr.organizations import same_ehr

log = logging.getLogger("caredeck.ehr")


class BulkError(InputError):
    """A selection or change that cannot be applied."""


def _organization(value: Any, where: str, errors: dict) -> Organization | None:
    found = Organization.get_or_none(Organization.id == value) if isinstance(value, int) else None
    if found is None:
        errors[where] = f"There is no organization {value!r}."
    return found


def _check(selection: Any, change: Any) -> tuple[Organization, str | None, str, Any]:
    """The source organization, the provider filter, the changed field and its new value."""
    errors: dict[str, str] = {}
    if not isinstance(selection, Mapping):
        raise BulkError({"selection": "Give {organization_id, provider}."})
    if (
        not isinstance(change, Mapping)
        or len(change) != 1
        or not set(change)
        <= {
            "provider",
            "organization_id",
        }
    ):
        raise BulkError({"change": "Give exactly one of provider or organization_id."})
    source = _organization(selection.get("organization_id"), "selection.organization_id", errors)
    provider = selection.get("provider")
    if provider is not None and not isinstance(provider, str):
        errors["selection.provider"] = "Give a provider's name, or null for every patient."
    [(field, value)] = change.items()
    if field == "provider":
        if isinstance(value, str):
            value = value.strip() or None
        if value is not None and not (isinstance(value, str) and len(value) <= NAME_MAX_LENGTH):
            errors["change.provider"] = (
                f"Give a name of at most {NAME_MAX_LENGTH} characters, or null."
            )
    else:
        target = _organization(value, "change.organization_id", errors)
        if source is not None and target is not None:
            if target.id == source.id:
                errors["change.organization_id"] = "The patients already belong to it."
            elif not same_ehr(source, target):
                errors["change.organization_id"] = (
                    f"{target.name} uses another EHR ({target.connector} at {target.base_url}); "
                    "a patient's identifier belongs to its EHR, so re-link each patient to it "
                    "one by one."
                )
        value = target
    if errors:
        raise BulkError(errors)
    return source, provider, field, value


def _matched(source: Organization, provider: str | None):
    query = PatientLink.select().where(PatientLink.organization == source)
    if provider is not None:
        query = query.where(PatientLink.provider == provider)
    return query


def _selected(source: Organization, provider: str | None, field: str, value: Any):
    query = _matched(source, provider)
    if field == "provider":
        # Only the rows that change (SQL's NULL never equals anything, so spell it out).
        differs = (
            PatientLink.provider.is_null(False)
            if value is None
            else (PatientLink.provider.is_null() | (PatientLink.provider != value))
        )
        query = query.where(differs)
    return query


def preview(selection: Any, change: Any) -> list[dict]:
    """The patients the change would change: rows ``{"mrn", "name", "field", "before",
    "after"}``, by MRN; raises :class:`BulkError`."""
    source, provider, field, value = _check(selection, change)
    links = list(_selected(source, provider, field, value).order_by(PatientLink.mrn))
    names = {
        patient.mrn: patient.display_name
        for patient in Patient.select().where(Patient.mrn.in_([link.mrn for link in links]))
    }
    if field == "provider":
        return [
            {
                "mrn": link.mrn,
                "name": names.get(link.mrn),
                "field": "provider",
                "before": link.provider,
                "after": value,
            }
            for link in links
        ]
    return [
        {
            "mrn": link.mrn,
            "name": names.get(link.mrn),
            "field": "organization",
            "before": source.name,
            "after": value.name,
        }
        for link in links
    ]


def apply(selection: Any, change: Any, *, user: Any, expected: int | None = None) -> dict:
    """Apply the change to every selected patient in one transaction: ``{"matched",
    "changed"}``; raises :class:`BulkError` (409 when ``expected``, the preview's count,
    no longer holds, or a moved identifier is taken in the target organization)."""
    source, provider, field, value = _check(selection, change)
    try:
        with database.atomic():
            matched = _matched(source, provider).count()
            ids = [
                link.id for link in _selected(source, provider, field, value).select(PatientLink.id)
            ]
            if expected is not None and expected != len(ids):
                raise BulkError(
                    {
                        "expected": f"The selection changed since the preview: {len(ids)} patients "
                        f"would change now, {expected} were previewed. Preview again."
                    },
                    status=409,
                )
            new = {"provider": value} if field == "provider" else {"organization": value}
            changed = 0
            for start in range(0, len(ids), 500):  # bounded statements for large selections
                batch = ids[start : start + 500]
                changed += (
                    PatientLink.update(updated_at=utcnow(), **new)
                    .where(PatientLink.id.in_(batch))
                    .execute()
                )
    except peewee.IntegrityError:
        raise BulkError(
            {
                "change.organization_id": "Some of these patients' EHR identifiers are already "
                "linked to other patients there; nothing was changed."
            },
            status=409,
        ) from None
    log.info(
        "bulk update by %s: %s of %d patients of organization %s set to %s",
        getattr(user, "email", user),
        field,
        changed,
        source.id,
        value.id if field == "organization_id" else "a new provider",
    )
    return {"matched": matched, "changed": changed}
