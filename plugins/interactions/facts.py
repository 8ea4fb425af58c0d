"""Each patient's latest interaction in the patient list (``GET /api/patients``), and the
filter ``latest_interaction_outcome``.

"Latest" is by when it happened (``occurred_at`` as amended), among entries not marked
entered in error; the outcome is that entry's latest (amended) outcome. Two entries at the
same moment: the one recorded later wins.
"""

from __future__ import annotations

from collections.abc import Sequence

import marshmallow as ma
import peewee

from core.patients.facts import PatientFacts, PatientFilter
from core.patients.models import Patient
from plugins.interactions.models import (
    OUTCOMES,
    Interaction,
    InteractionErrorMark,
    InteractionVersion,
)
from plugins.interactions.records import with_latest_version


def _ranked(mrns: Sequence[str] | None = None) -> peewee.ModelSelect:
    """Every valid entry's patient, time and outcome, ranked newest first per patient."""
    query = with_latest_version(
        Interaction.patient_mrn.alias("mrn"),
        InteractionVersion.occurred_at.alias("occurred_at"),
        InteractionVersion.outcome.alias("outcome"),
        peewee.fn.ROW_NUMBER()
        .over(
            partition_by=[Interaction.patient_mrn],
            order_by=[InteractionVersion.occurred_at.desc(), Interaction.id.desc()],
        )
        .alias("position"),
    ).where(InteractionErrorMark.id.is_null())
    if mrns is not None:
        query = query.where(Interaction.patient_mrn.in_(list(mrns)))
    return query


def latest(mrns: Sequence[str]) -> dict[str, dict]:
    """``{mrn: {"latest_interaction_at", "latest_interaction_outcome"}}`` for one page."""
    ranked = _ranked(mrns).alias("ranked")
    rows = (
        peewee.Select(
            from_list=[ranked],
            columns=[ranked.c.mrn, ranked.c.occurred_at, ranked.c.outcome],
        )
        .where(ranked.c.position == 1)
        .bind(Interaction._meta.database)
        .tuples()
    )
    field = InteractionVersion.occurred_at  # converts the stored value to an aware datetime
    return {
        mrn: {
            "latest_interaction_at": field.python_value(occurred_at),
            "latest_interaction_outcome": outcome,
        }
        for mrn, occurred_at, outcome in rows
    }


def with_latest_outcome(query: peewee.ModelSelect, outcome: str) -> peewee.ModelSelect:
    """Patients whose latest valid interaction has this outcome."""
    ranked = _ranked().alias("ranked")
    matching = peewee.Select(from_list=[ranked], columns=[ranked.c.mrn]).where(
        (ranked.c.position == 1) & (ranked.c.outcome == outcome)
    )
    return query.where(Patient.mrn.in_(matching))


FACTS = PatientFacts(
    fields={
        "latest_interaction_at": ma.fields.AwareDateTime(
            allow_none=True,
            metadata={
                "description": "When the patient's latest interaction happened (entries "
                "marked entered in error are left out); null: none yet."
            },
        ),
        "latest_interaction_outcome": ma.fields.String(
            allow_none=True,
            metadata={
                "enum": [*OUTCOMES, None],
                "description": "That interaction's (latest amended) outcome.",
            },
        ),
    },
    values=latest,
    filters={
        "latest_interaction_outcome": PatientFilter(
            ma.fields.String(
                validate=ma.validate.OneOf(
                    OUTCOMES, error="Choose one of: " + ", ".join(OUTCOMES) + "."
                ),
                metadata={
                    "description": "Only patients whose latest interaction had this outcome."
                },
            ),
            with_latest_outcome,
        )
    },
    columns={
        "latest_interaction_at": "Latest interaction",
        "latest_interaction_outcome": "Outcome",
    },
)
