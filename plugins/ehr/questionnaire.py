"""The questionnaire: questions the clinical team sets up (each tied to one of our fields, in
English and Spanish), and patients' submissions.

A submission and its deliveries are stored in one transaction (the outbox): the answers are
never stored without what must be sent, nor a delivery without its answers. The first
delivery in the patient's line is enqueued only after the commit, so a job never looks for a
row that is not there yet; if enqueuing fails (the queue is down) the delivery stays pending
and the sweep (``ehr.sweep_deliveries``) enqueues it.
"""

from __future__ import annotations

import datetime
import logging
import uuid
import zoneinfo
from collections.abc import Mapping
from typing import Any

import marshmallow as ma
from flask import current_app

from core.db import database, is_sqlite, utcnow
from core.patients.models import touch
from plugins.ehr import connectors, delivery, mappings
from plugins.ehr.errors import InputError
from plugins.ehr.fields import DATE_FIELDS, LANGUAGES, OUR_FIELDS
from plugins.ehr.models import QUESTION_MAX_LENGTH, Delivery, PatientLink, Question, Submission

log = logging.getLogger("caredeck.ehr")
ANSWER_MAX_LENGTH = 5000
EARLIEST_BIRTH = datetime.date(1900, 1, 1)
ALLOWED_WHITESPACE = {"\n", "\r", "\t"}


class QuestionError(InputError):
    """A question that cannot be saved."""


class SubmissionError(InputError):
    """The answers cannot be accepted; ``errors`` names each field (``answers.dob``)."""


# Questions ------------------------------------------------------------------------------


def _text(text: str) -> None:
    if any(ord(character) < 32 for character in text):
        raise ma.ValidationError("Must not contain control characters or line breaks.")


class EhrQuestionInputSchema(ma.Schema):
    field = ma.fields.String(
        validate=ma.validate.OneOf(
            OUR_FIELDS, error="Choose one of: " + ", ".join(OUR_FIELDS) + "."
        ),
        metadata={"description": "The field of ours the answer fills.", "example": "symptoms"},
    )
    text_en = ma.fields.String(
        validate=[ma.validate.Length(min=1, max=QUESTION_MAX_LENGTH), _text],
        metadata={"example": "What symptoms bring you in today?"},
    )
    text_es = ma.fields.String(
        validate=[ma.validate.Length(min=1, max=QUESTION_MAX_LENGTH), _text],
        metadata={"example": "¿Qué síntomas le traen hoy?"},
    )
    position = ma.fields.Integer(validate=ma.validate.Range(min=0, max=10_000))
    required = ma.fields.Boolean()
    active = ma.fields.Boolean()

    @ma.pre_load
    def _trim(self, data, **kwargs):
        if not isinstance(data, Mapping):
            return data
        return {k: v.strip() if isinstance(v, str) else v for k, v in data.items()}


def _load_question(data: Any, partial: bool) -> dict:
    try:
        loaded = EhrQuestionInputSchema(partial=partial).load(data)
    except ma.ValidationError as error:
        messages = (
            error.messages if isinstance(error.messages, Mapping) else {"question": error.messages}
        )
        raise QuestionError(
            {k: " ".join(v) if isinstance(v, list) else str(v) for k, v in messages.items()}
        ) from None
    if not partial:
        missing = [name for name in ("field", "text_en", "text_es") if name not in loaded]
        if missing:
            raise QuestionError({name: "Missing data for required field." for name in missing})
    return loaded


def _check_one_per_field(field: str, active: bool, but: int | None = None) -> None:
    # Answers are keyed by field: two active questions on one field would overwrite each other.
    if not active:
        return
    query = Question.select().where((Question.field == field) & Question.active)
    if but is not None:
        query = query.where(Question.id != but)
    if query.exists():
        raise QuestionError({"field": f"An active question already asks for {field}."})


def questions(active_only: bool = True) -> list[Question]:
    query = Question.select().order_by(Question.position, Question.id)
    if active_only:
        query = query.where(Question.active)
    return list(query)


def create_question(data: Any, user: Any) -> Question:
    loaded = _load_question(data, partial=False)
    _check_one_per_field(loaded["field"], loaded.get("active", True))
    question = Question.create(**loaded)
    log.info(
        "question %s (%s) created by %s", question.id, question.field, getattr(user, "email", user)
    )
    return question


def update_question(question: Question, data: Any, user: Any) -> Question:
    loaded = _load_question(data, partial=True)
    _check_one_per_field(
        loaded.get("field", question.field), loaded.get("active", question.active), but=question.id
    )
    for name, value in loaded.items():
        setattr(question, name, value)
    question.save()
    log.info("question %s changed by %s", question.id, getattr(user, "email", user))
    return question


# Submissions ----------------------------------------------------------------------------


def _today() -> datetime.date:
    """Today in the hospital's zone (a birth today is not in the future there)."""
    return utcnow().astimezone(zoneinfo.ZoneInfo(current_app.config["TIMEZONE"])).date()


def _clean_answers(answers: Any) -> tuple[dict[str, str], dict[str, str]]:
    if not isinstance(answers, Mapping):
        return {}, {"answers": "Give an object of field -> answer."}
    cleaned, errors = {}, {}
    for key, value in answers.items():
        where = f"answers.{key}"
        if key not in OUR_FIELDS:
            errors[where] = "Not a questionnaire field: " + ", ".join(OUR_FIELDS) + "."
            continue
        if value is None:
            continue
        if not isinstance(value, str):
            errors[where] = "Give the answer as text."
            continue
        value = value.strip()
        if len(value) > ANSWER_MAX_LENGTH:
            errors[where] = f"An answer can be at most {ANSWER_MAX_LENGTH} characters."
        elif any(ord(c) < 32 and c not in ALLOWED_WHITESPACE for c in value):
            errors[where] = "Must not contain control characters."
        elif value and key in DATE_FIELDS:
            try:
                day = datetime.date.fromisoformat(value)
            except ValueError:
                errors[where] = "Give the date as YYYY-MM-DD, e.g. 1980-04-23."
                continue
            if not EARLIEST_BIRTH <= day <= _today():
                errors[where] = "The date must be between 1900-01-01 and today."
            else:
                cleaned[key] = day.isoformat()
        elif value:
            cleaned[key] = value
    return cleaned, errors


def _locked_link(mrn: str) -> PatientLink | None:
    """The patient's link, locked until the transaction ends, so that two submissions of one
    patient take consecutive sequence numbers (SQLite locks the database instead)."""
    query = PatientLink.select().where(PatientLink.mrn == mrn)
    if not is_sqlite():
        query = query.for_update()
    return query.first()


def _transaction():
    # SQLite: take the write lock at BEGIN, not at the first write (see reporting's records).
    return database.atomic(lock_type="IMMEDIATE") if is_sqlite() else database.atomic()


def submit(mrn: str, answers: Any, *, user: Any, language: str = "en") -> Submission:
    """Store the answers and their deliveries in one transaction, then enqueue; raises
    :class:`SubmissionError` (422 naming each field; 409 when the patient has no EHR link)."""
    cleaned, errors = _clean_answers(answers)
    if language not in LANGUAGES:
        errors["language"] = "Choose one of: " + ", ".join(LANGUAGES) + "."
    for question in questions():
        if (
            question.required
            and question.field not in cleaned
            and f"answers.{question.field}" not in errors
        ):
            errors[f"answers.{question.field}"] = "This question must be answered."
    if not cleaned and not errors:
        errors["answers"] = "Answer at least one question."
    if errors:
        raise SubmissionError(errors)
    with _transaction():
        link = _locked_link(mrn)
        if link is None:
            raise SubmissionError(
                {
                    "mrn": f"Patient {mrn} is not linked to an EHR yet; an administrator links "
                    "the patient to their organization first."
                },
                status=409,
            )
        organization = link.organization
        try:
            version = mappings.current(organization.connector)
        except connectors.UnknownConnector as error:
            raise SubmissionError(
                {"organization": f"{organization.name}'s EHR cannot be reached: {error}"},
                status=409,
            ) from None
        submission = Submission.create(
            mrn=mrn,
            organization=organization,
            answers=cleaned,
            language=language,
            submitted_by=getattr(user, "email", None) or str(user),
        )
        last = delivery.last_sequence(mrn)
        now = utcnow()
        for offset, (endpoint, payload) in enumerate(
            mappings.payloads(version, cleaned).items(), 1
        ):
            Delivery.create(
                submission=submission,
                mrn=mrn,
                organization=organization,
                connector=organization.connector,
                endpoint=endpoint,
                payload=payload,
                mapping_version=version,
                idempotency_key=uuid.uuid4().hex,
                sequence=last + offset,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
    touch(mrn)
    log.info(
        "questionnaire of patient %s submitted by %s: %d answers, mapping %s v%d",
        mrn,
        submission.submitted_by,
        len(cleaned),
        version.connector,
        version.version,
    )
    delivery.enqueue_next(mrn, organization.id)
    return submission


def submissions_of(mrn: str) -> list[Submission]:
    """The patient's submissions, newest first."""
    return list(Submission.select().where(Submission.mrn == mrn).order_by(Submission.id.desc()))
