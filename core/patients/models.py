"""The patient registry: one row per patient, identified by the hospital's MRN.

Plugins reference patients by MRN. When a source system mentions an MRN the registry has not
seen yet, a plugin calls :func:`ensure_patient` to get (or create) a minimal record, and
:func:`touch` whenever something happens to the patient.
"""

from __future__ import annotations

import re

import peewee
from flask import abort

from core.auth.access import STAFF, current_user
from core.db import Model, UTCDateTimeField, database, utcnow

SEXES = ("female", "male", "other", "unknown")
MRN_MAX_LENGTH = 64
# An MRN is one URL path segment (/patients/<mrn>/...): a '/' would make an MRN such as
# "12/sections" indistinguishable from a sub-page, so it is not allowed. "new" is the add
# form's address.
MRN_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RESERVED_MRNS = frozenset({"new"})
MRN_RULE = (
    f"An MRN is 1 to {MRN_MAX_LENGTH} characters: letters, digits, '.', '_' or '-', starting "
    "with a letter or digit (and not the word 'new')."
)


def is_valid_mrn(mrn: object) -> bool:
    return (
        isinstance(mrn, str)
        and len(mrn) <= MRN_MAX_LENGTH
        and MRN_PATTERN.fullmatch(mrn) is not None
        and mrn.lower() not in RESERVED_MRNS
    )


class DuplicateMrnError(ValueError):
    def __init__(self, mrn: str):
        super().__init__(f"A patient with MRN {mrn!r} already exists.")
        self.mrn = mrn


class Patient(Model):
    mrn = peewee.CharField(max_length=MRN_MAX_LENGTH, unique=True)
    # Names may be unknown: other systems create a minimal record knowing only the MRN.
    first_name = peewee.CharField(max_length=100, null=True)
    last_name = peewee.CharField(max_length=100, null=True, index=True)
    date_of_birth = peewee.DateField(null=True)
    sex = peewee.CharField(max_length=16, default="unknown")
    phone = peewee.CharField(max_length=50, null=True)
    email = peewee.CharField(max_length=254, null=True)
    address = peewee.CharField(max_length=500, null=True)
    insurance_provider = peewee.CharField(max_length=200, null=True)
    insurance_policy_number = peewee.CharField(max_length=100, null=True)
    primary_physician = peewee.CharField(max_length=200, null=True)
    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)
    last_activity_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "core_patients"

    @property
    def display_name(self) -> str:
        """ "Last, First" as staff search for it; a minimal record says so."""
        parts = [part for part in (self.last_name, self.first_name) if part]
        return ", ".join(parts) if parts else "(name not recorded)"


def ensure_patient(mrn: str) -> Patient:
    """The patient with this MRN, created as a minimal record if the registry lacks it.

    Safe when two workers see a new MRN at once: the loser of the insert race reads the
    winner's row. Raises ``ValueError`` for an MRN the registry cannot hold, so that a
    consumer rejects the message instead of creating a record no URL can reach.
    """
    if not is_valid_mrn(mrn):
        raise ValueError(f"{mrn!r} is not a valid MRN. {MRN_RULE}")
    patient = Patient.get_or_none(Patient.mrn == mrn)
    if patient is not None:
        return patient
    try:
        # A savepoint inside a caller's transaction, so that a lost race does not abort it
        # (PostgreSQL refuses every statement after an error until the rollback).
        with database.atomic():
            return Patient.create(mrn=mrn)
    except peewee.IntegrityError:
        return Patient.get(Patient.mrn == mrn)


def touch(mrn: str) -> bool:
    """Record that something happened to the patient now; ``False`` if the MRN is unknown."""
    updated = Patient.update(last_activity_at=utcnow()).where(Patient.mrn == mrn).execute()
    return updated > 0


def create_patient(data: dict) -> Patient:
    """Create a patient from validated data; :class:`DuplicateMrnError` if the MRN is taken."""
    if Patient.select().where(Patient.mrn == data["mrn"]).exists():
        raise DuplicateMrnError(data["mrn"])
    try:
        with database.atomic():
            return Patient.create(**data)
    except peewee.IntegrityError:
        # Another request created the same MRN between the check and the insert.
        if Patient.select().where(Patient.mrn == data["mrn"]).exists():
            raise DuplicateMrnError(data["mrn"]) from None
        raise


def update_patient(patient: Patient, changes: dict) -> Patient:
    """Apply validated changes (the MRN never changes)."""
    if not changes:
        return patient
    for name, value in changes.items():
        setattr(patient, name, value)
    patient.updated_at = utcnow()
    patient.save()
    return patient


def visible_patients(user) -> peewee.ModelSelect:
    """The patients ``user`` may see: all for staff; a patient user only their own record.

    Fails closed: a user who is not staff and has no linked record sees nobody.
    """
    query = Patient.select()
    if user is not None and user.role in STAFF:
        return query
    own_mrn = getattr(user, "patient_mrn", None)
    return query.where(Patient.mrn.in_([own_mrn] if own_mrn else []))


def find_visible(user, mrn: str) -> Patient | None:
    """The patient with this MRN if ``user`` may see it; ``None`` otherwise, so that a
    patient user cannot tell someone else's record from a missing one."""
    return visible_patients(user).where(Patient.mrn == mrn).first()


def visible_or_404(mrn: str) -> Patient:
    """The patient the signed-in user may see with this MRN, or a 404."""
    patient = find_visible(current_user(), mrn)
    if patient is None:
        abort(404, f"There is no patient with MRN {mrn!r}.")
    return patient


def search(query: peewee.ModelSelect, text: str | None = None, sex: str | None = None):
    """Filter by free text and sex, ordered as staff read a list: by name, then MRN.

    Every word of ``text`` must occur (case-insensitively) in the first name, last name or
    MRN, so "anna schm" finds Anna Schmidt. Words are bound parameters and their ``%`` and
    ``_`` are matched literally (peewee escapes them).
    """
    for word in (text or "").split():
        query = query.where(
            Patient.first_name.contains(word)
            | Patient.last_name.contains(word)
            | Patient.mrn.contains(word)
        )
    if sex:
        query = query.where(Patient.sex == sex)
    # Minimal records (no names yet) go last on SQLite as they do on PostgreSQL.
    return query.order_by(
        Patient.last_name.asc(nulls="LAST"),
        Patient.first_name.asc(nulls="LAST"),
        Patient.mrn.asc(),
    )
