"""Facts plugins add to each patient in the registry list, and filters on them.

A plugin returns :class:`PatientFacts` from the ``caredeck_patient_facts`` hook; the core
adds its fields to every patient in ``GET /api/patients`` (and, where it names a column, to
the patient list page), and its filters to the query parameters. The values of one page are
loaded in one call, so a plugin answers with one query per page rather than one per patient.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import marshmallow as ma
import peewee


@dataclass(frozen=True)
class PatientFilter:
    """A query parameter of ``GET /api/patients``: ``field`` reads it, ``apply`` narrows
    the query of :class:`core.patients.models.Patient` to the patients that match."""

    field: ma.fields.Field
    apply: Callable[[peewee.ModelSelect, Any], peewee.ModelSelect]


@dataclass(frozen=True)
class PatientFacts:
    """Fields a plugin adds to each patient in the list.

    ``fields`` names each one and says how it looks in JSON (and in the OpenAPI document);
    ``values(mrns)`` returns ``{mrn: {name: value}}`` for the patients of one page (a patient
    left out gets nulls); ``filters`` adds query parameters; ``columns`` maps some field
    names to a column heading on the patient list page.
    """

    fields: Mapping[str, ma.fields.Field]
    values: Callable[[Sequence[str]], Mapping[str, Mapping[str, Any]]]
    filters: Mapping[str, PatientFilter] = field(default_factory=dict)
    columns: Mapping[str, str] = field(default_factory=dict)


def extended(base: type[ma.Schema], name: str, fields: Mapping[str, ma.fields.Field]):
    """``base`` with ``fields`` added, as a new schema class called ``name``.

    Each app builds its own (plugins differ between apps); the fields are copied because
    marshmallow binds a field to the schema that holds it.
    """
    return type(name, (base,), {key: copy.deepcopy(value) for key, value in fields.items()})


def attach(patients: Sequence[Any], facts: Sequence[PatientFacts]) -> None:
    """Set every plugin field on each patient of a page (``None`` where a plugin has none)."""
    mrns = [patient.mrn for patient in patients]
    for fact in facts:
        values = fact.values(mrns) if mrns else {}
        for patient in patients:
            found = values.get(patient.mrn, {})
            for name in fact.fields:
                setattr(patient, name, found.get(name))


def page_text(value: Any, local_time: Callable[[datetime.datetime], str]) -> str:
    """A fact as the list page shows it."""
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return local_time(value)
    return str(value).replace("_", " ")
