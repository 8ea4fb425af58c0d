"""Delivering the outbox: the ``ehr.deliver`` job, retries, per-patient order, the identity
check, the sweep and staff retries. ``docs/ehr.md`` states the guarantees; in short:

- **At most one sender.** A job claims its delivery with one conditional UPDATE (pending, due,
  not claimed by a live job, and no earlier delivery of the patient unsent); a duplicate job
  finds nothing to claim and sends nothing. The claim ends after ``CLAIM``; a sender that
  died is presumed dead then, and the sweep enqueues the delivery again.
- **The same key every time.** Each delivery has its own idempotency key, sent as the
  ``Idempotency-Key`` header on every attempt, so an EHR that saw an attempt whose answer was
  lost recognises the next one.
- **In order.** A patient's deliveries carry a sequence (one per patient); one is sent only
  once every earlier one to the same EHR (connector and address: a patient moved between
  two organizations of one EHR is still one record there) has been sent. A *failed*
  earlier delivery holds the later ones (pending, "waiting for" it) until staff retry it
  and it is sent: sending them past it could overwrite newer data with older data in the
  EHR, or leave a gap no one notices.
- **Never the wrong patient.** Before sending, the connector looks the EHR identifier up and
  the EHR's name and date of birth are compared with the registry's; a mismatch fails the
  delivery, logs an error and sends nothing.
- **Retries.** A timeout, a lost connection, 408, 429 or 5xx is retried with exponential
  back-off (``EHR_RETRY_BASE_SECONDS``, doubling) up to ``EHR_MAX_ATTEMPTS`` attempts, then
  failed; any other 4xx fails at once with the EHR's message.
- **Rate limit.** Each organization's deliveries are spaced ``1 / rate_limit_per_second``
  apart (``plugins/ehr/ratelimit.py``, slots in ``REDIS_URL`` shared by every worker); a job
  whose slot is later is put back once to run at it, without counting as an attempt.
"""

from __future__ import annotations

import datetime
import logging
import random
import re
import time
import unicodedata
from typing import Any

from flask import current_app
from peewee import SQL, fn

import jobs
from core.db import utcnow
from core.patients.models import Patient
from plugins.ehr import connectors
from plugins.ehr.models import Delivery, MappingVersion, Organization, PatientLink
from plugins.ehr.organizations import same_ehr, same_ehr_ids

log = logging.getLogger("caredeck.ehr")
TIME_LIMIT = datetime.timedelta(minutes=2)
# Longer than the job's time limit: a live job never loses its claim to another.
CLAIM = datetime.timedelta(minutes=3)
# A pending delivery due this long ago with no live claim lost its message: the sweep
# enqueues it again.
LOST_AFTER = datetime.timedelta(minutes=5)
RETRY_MAX = datetime.timedelta(hours=1)
# A slot this close is now (the queue's own delays are not finer).
SLOT_SLACK = 0.05
ERROR_MAX_LENGTH = 2000


class DeliveryError(Exception):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.message = message
        self.status = status


# Reading --------------------------------------------------------------------------------


def deliveries_of(mrn: str) -> list[Delivery]:
    """The patient's deliveries, newest first (each with its mapping version, in one query)."""
    return list(
        Delivery.select(Delivery, MappingVersion)
        .join(MappingVersion)
        .where(Delivery.mrn == mrn)
        .order_by(Delivery.id.desc())
    )


def waiting_for(deliveries: list[Delivery]) -> dict[int, int]:
    """For each pending delivery held by an earlier unsent one of the same patient and
    EHR: that earlier delivery's id (the earliest). Deliveries of one patient."""
    ids = {item.organization_id for item in deliveries}
    ehr_of = {
        found.id: (found.connector, found.base_url.rstrip("/"))
        for found in Organization.select().where(Organization.id.in_(list(ids)))
    }
    lines: dict[tuple, list[Delivery]] = {}
    for item in deliveries:
        lines.setdefault(ehr_of.get(item.organization_id), []).append(item)
    held = {}
    for line in lines.values():
        line.sort(key=lambda item: item.sequence)
        first_unsent = None
        for item in line:
            if item.state == "pending" and first_unsent is not None:
                held[item.id] = first_unsent.id
            if item.state != "sent" and first_unsent is None:
                first_unsent = item
    return held


def submission_state(deliveries: list[Delivery]) -> str:
    """``sent`` when every delivery was sent (or there was nothing to send), ``failed`` when
    one failed, ``pending`` otherwise."""
    states = {item.state for item in deliveries}
    if "failed" in states:
        return "failed"
    return "pending" if "pending" in states else "sent"


def last_sequence(mrn: str) -> int:
    """The patient's last sequence number (one line per patient, whichever organization)."""
    found = Delivery.select(fn.MAX(Delivery.sequence)).where(Delivery.mrn == mrn).scalar()
    return found or 0


def _same_ehr_ids(organization_id: int):
    """The organizations on the same EHR as this one (itself included), as a subquery."""
    return same_ehr_ids(Organization.get_by_id(organization_id))


def _earlier_unsent(item: Delivery):
    earlier = Delivery.alias("earlier")
    return earlier.select(SQL("1")).where(
        (earlier.mrn == item.mrn)
        & (earlier.organization.in_(_same_ehr_ids(item.organization_id)))
        & (earlier.sequence < item.sequence)
        & (earlier.state != "sent")
    )


def next_in_line(mrn: str, organization_id: int) -> Delivery | None:
    """The patient's first unsent delivery to the organization's EHR."""
    return (
        Delivery.select()
        .where(
            (Delivery.mrn == mrn)
            & (Delivery.organization.in_(_same_ehr_ids(organization_id)))
            & (Delivery.state != "sent")
        )
        .order_by(Delivery.sequence)
        .first()
    )


# Enqueuing ------------------------------------------------------------------------------


def _enqueue(delivery_id: int, delay_ms: int | None = None, slot: float | None = None) -> bool:
    """Enqueue a job for the delivery (with its rate-limit ``slot`` if it has one); if the
    queue is unavailable the delivery stays pending and the sweep enqueues it later."""
    args = (delivery_id,) if slot is None else (delivery_id, slot)
    try:
        deliver.send_with_options(args=args, delay=delay_ms or None)
        return True
    except Exception:
        log.exception("could not enqueue delivery %s; the sweep will", delivery_id)
        return False


def enqueue_next(mrn: str, organization_id: int) -> Delivery | None:
    """Enqueue the patient's next delivery to the organization, if it is pending (a failed
    one holds the line until staff retry it)."""
    head = next_in_line(mrn, organization_id)
    if head is None or head.state != "pending":
        return None
    delay = (head.next_attempt_at - utcnow()).total_seconds()
    _enqueue(head.id, int(delay * 1000) if delay > 0 else None)
    return head


# The job --------------------------------------------------------------------------------


@jobs.actor("ehr.deliver", time_limit=TIME_LIMIT, max_retries=0)
def deliver(delivery_id: int, slot: float | None = None) -> None:
    """Send one delivery (its retries are scheduled by the job itself, recorded on the row,
    so Dramatiq's own retries are off). ``slot``: the rate-limit slot reserved for it, when
    it was put back to wait for it. Safe to run twice and concurrently."""
    # Nothing returned: Dramatiq warns about every return value without a results backend.
    log.debug("delivery %s: %s", delivery_id, attempt(delivery_id, slot))


def _settings() -> tuple[int, int]:
    config = current_app.config
    return config["EHR_MAX_ATTEMPTS"], config["EHR_RETRY_BASE_SECONDS"]


def _claim(item: Delivery, now: datetime.datetime) -> datetime.datetime | None:
    """Take the delivery for this job, atomically; the claim's end time, or ``None`` when
    another job has it, it is not due, or an earlier delivery of the patient is unsent."""
    until = now + CLAIM
    claimed = (
        Delivery.update(attempts=Delivery.attempts + 1, claimed_until=until, updated_at=now)
        .where(
            (Delivery.id == item.id)
            & (Delivery.state == "pending")
            # Due as attempt() reckons it (a slot this close is now), or a job let through
            # a few milliseconds early would find nothing to claim and enqueue nothing.
            & (Delivery.next_attempt_at <= now + datetime.timedelta(seconds=SLOT_SLACK))
            & (Delivery.claimed_until.is_null() | (Delivery.claimed_until < now))
            & ~fn.EXISTS(_earlier_unsent(item))
        )
        .execute()
    )
    return until if claimed == 1 else None


def _finish(item: Delivery, claim: datetime.datetime, **changes: Any) -> bool:
    """Record an attempt's outcome, only while this job's claim holds (fenced)."""
    changes.setdefault("updated_at", utcnow())
    done = (
        Delivery.update(claimed_until=None, **changes)
        .where((Delivery.id == item.id) & (Delivery.claimed_until == claim))
        .execute()
    )
    if done != 1:
        log.warning("delivery %s: the claim expired before the outcome was recorded", item.id)
    return done == 1


def _fail(item: Delivery, claim, message: str) -> str:
    _finish(item, claim, state="failed", last_error=message[:ERROR_MAX_LENGTH])
    log.warning("delivery %s to %s failed: %s", item.id, item.endpoint, message)
    return "failed"


def _retry_or_fail(item: Delivery, claim, message: str) -> str:
    max_attempts, base = _settings()
    attempts = item.attempts  # this attempt included (the claim counted it)
    if attempts >= max_attempts:
        return _fail(item, claim, f"{message} (gave up after {attempts} attempts)")
    delay = min(datetime.timedelta(seconds=base * 2 ** (attempts - 1)), RETRY_MAX)
    delay *= random.uniform(0.8, 1.2)  # noqa: S311 (jitter, not a secret)
    when = utcnow() + delay
    if _finish(item, claim, next_attempt_at=when, last_error=message[:ERROR_MAX_LENGTH]):
        _enqueue(item.id, int(delay.total_seconds() * 1000) or None)
    log.info(
        "delivery %s: attempt %d failed (%s); retrying in %s", item.id, attempts, message, delay
    )
    return "retrying"


def _words(text: str) -> set[str]:
    plain = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in plain if not unicodedata.combining(c)).casefold()
    return set(re.findall(r"\w+", plain))


def identity_problem(patient: Patient, ehr_patient_id: str, identity) -> str | None:
    """Why the EHR's record is not this patient, or ``None`` when it is. Fails closed: with
    nothing to compare, it is not taken to be the patient."""
    if identity.ehr_patient_id != ehr_patient_id:
        return f"the EHR answered for patient {identity.ehr_patient_id!r}, not {ehr_patient_id!r}"
    # Read from the EHR's JSON: anything else than text (a date) cannot be compared.
    if identity.name is not None and not isinstance(identity.name, str):
        return f"the EHR's name is not text: {identity.name!r}"[:500]
    if identity.date_of_birth is not None and not isinstance(identity.date_of_birth, datetime.date):
        return f"the EHR's date of birth is not a date: {identity.date_of_birth!r}"[:500]
    compared = 0
    if patient.date_of_birth and identity.date_of_birth:
        compared += 1
        if patient.date_of_birth != identity.date_of_birth:
            return (
                f"the date of birth differs (ours {patient.date_of_birth.isoformat()}, "
                f"the EHR's {identity.date_of_birth.isoformat()})"
            )
    if patient.last_name and identity.name:
        compared += 1
        # The first name too: twins share a last name and a date of birth.
        ours = _words(patient.last_name) | _words(patient.first_name or "")
        if not ours <= _words(identity.name):
            return f"the name differs (ours {patient.display_name!r}, the EHR's {identity.name!r})"
    if not compared:
        return (
            "there is nothing to compare: the registry or the EHR has neither a last name nor "
            "a date of birth for this patient"
        )
    return None


def _wait_for_slot(item: Delivery, organization: Organization, slot: float | None) -> bool:
    """Reserve the organization's next slot unless the job holds one; when the slot is
    later, put the job back to run then (not an attempt) and say so."""
    if slot is None:
        slot = current_app.extensions["ehr"].limiter.reserve(organization)
    wait = slot - time.time()
    if wait <= SLOT_SLACK:
        return False
    # Due then: the sweep must not take a job waiting for its slot for a lost one.
    Delivery.update(next_attempt_at=utcnow() + datetime.timedelta(seconds=wait)).where(
        (Delivery.id == item.id) & (Delivery.state == "pending")
    ).execute()
    _enqueue(item.id, int(wait * 1000), slot)
    return True


def attempt(delivery_id: int, slot: float | None = None) -> str:
    """One attempt at a delivery (the body of ``ehr.deliver``); what happened, in a word or
    a few (``sent``, ``retrying``, ``failed``, ``waiting for delivery 7``, ...)."""
    item = Delivery.get_or_none(Delivery.id == delivery_id)
    if item is None:
        return "missing"
    if item.state != "pending":
        return f"already {item.state}"
    now = utcnow()
    if item.next_attempt_at > now + datetime.timedelta(seconds=SLOT_SLACK):
        # An early copy of a delayed job: again at its time, keeping its slot.
        _enqueue(item.id, int((item.next_attempt_at - now).total_seconds() * 1000), slot)
        return "not due"
    blocker = next_in_line(item.mrn, item.organization_id)
    if blocker is not None and blocker.id != item.id:
        return f"waiting for delivery {blocker.id}"
    organization = Organization.get_by_id(item.organization_id)
    if _wait_for_slot(item, organization, slot):
        return "rate limited"
    claim = _claim(item, utcnow())
    if claim is None:
        return "claimed elsewhere"
    item = Delivery.get_by_id(item.id)
    max_attempts, _ = _settings()
    if item.attempts > max_attempts:
        # Every claim counts an attempt, and an attempt that ends records its outcome; so
        # earlier ones ended with none (the job crashed or was killed each time). Stop
        # rather than sweep it again for ever, holding the patient's later deliveries.
        return _fail(
            item,
            claim,
            f"Gave up after {item.attempts - 1} attempts that ended without an outcome (the "
            "job crashed or was stopped); the EHR may or may not have received it. Retry "
            "once the cause is fixed.",
        )

    # The link as it is now: an admin's correction applies to deliveries not yet sent. A
    # patient moved to another organization on the same EHR keeps their identifier there.
    link = PatientLink.get_or_none(PatientLink.mrn == item.mrn)
    if link is None or not same_ehr(link.organization, organization):
        return _fail(
            item,
            claim,
            f"Patient {item.mrn} is no longer linked to a record in {organization.name}'s EHR; "
            "nothing was sent.",
        )
    try:
        connector = connectors.get(item.connector)
    except connectors.UnknownConnector as error:
        return _fail(item, claim, f"{error} Install it, then retry; nothing was sent.")
    try:
        identity = connector.identify(organization, link.ehr_patient_id)
    except connectors.ConnectorError as error:
        message = f"Looking up EHR patient {link.ehr_patient_id} failed: {error.result.message}"
        if error.result.retryable:
            return _retry_or_fail(item, claim, message)
        return _fail(item, claim, message + "; nothing was sent.")
    except Exception as error:  # a bug in the connector: recorded and retried, then failed
        log.exception("connector %s failed looking up a patient", item.connector)
        return _retry_or_fail(item, claim, f"The {item.connector} connector failed: {error!r}")
    patient = Patient.get_or_none(Patient.mrn == item.mrn)
    problem = (
        f"patient {item.mrn} is not in the registry"
        if patient is None
        else identity_problem(patient, link.ehr_patient_id, identity)
    )
    if problem is not None:
        log.error(
            "IDENTITY MISMATCH: delivery %s for patient %s to %s record %s was not sent: %s",
            item.id,
            item.mrn,
            organization.name,
            link.ehr_patient_id,
            problem,
        )
        return _fail(
            item,
            claim,
            f"Identity check failed: EHR record {link.ehr_patient_id} at {organization.name} "
            f"is not patient {item.mrn}: {problem}. Nothing was sent; correct the patient's "
            "EHR link, then retry.",
        )

    try:
        result = connector.send(
            organization,
            item.endpoint,
            item.payload,
            ehr_patient_id=link.ehr_patient_id,
            idempotency_key=item.idempotency_key,
        )
    except Exception as error:  # a bug in the connector (the key makes a resend safe)
        log.exception("connector %s failed sending delivery %s", item.connector, item.id)
        return _retry_or_fail(item, claim, f"The {item.connector} connector failed: {error!r}")
    if result.ok:
        _finish(
            item,
            claim,
            state="sent",
            sent_at=utcnow(),
            last_error=None,
            ehr_patient_id=link.ehr_patient_id,
        )
        log.info("delivery %s sent to %s %s", item.id, organization.name, item.endpoint)
        enqueue_next(item.mrn, item.organization_id)
        return "sent"
    if result.retryable:
        return _retry_or_fail(item, claim, result.message)
    return _fail(item, claim, result.message)


# The sweep and staff retries ------------------------------------------------------------


def sweep(now: datetime.datetime | None = None, limit: int = 500) -> int:
    """Enqueue again each delivery that is first in its patient's line, due for longer than
    ``LOST_AFTER`` and claimed by no live job: its message was lost (the queue was down at
    submit, a worker died). Marks each so the next sweep waits again; safe to run twice and
    concurrently (a duplicate job sends nothing). Returns how many it enqueued."""
    now = now or utcnow()
    cutoff = now - LOST_AFTER
    earlier = Delivery.alias("earlier")
    earlier_organization = Organization.alias("earlier_organization")
    lost = (
        Delivery.select(Delivery.id)
        .join(Organization)
        .where(
            (Delivery.state == "pending")
            & (Delivery.next_attempt_at <= cutoff)
            & (Delivery.claimed_until.is_null() | (Delivery.claimed_until < now))
            & ~fn.EXISTS(
                earlier.select(SQL("1"))
                .join(
                    earlier_organization,
                    on=(earlier.organization == earlier_organization.id),
                )
                .where(
                    (earlier.mrn == Delivery.mrn)
                    & (earlier_organization.connector == Organization.connector)
                    & (
                        fn.RTRIM(earlier_organization.base_url, "/")
                        == fn.RTRIM(Organization.base_url, "/")
                    )
                    & (earlier.sequence < Delivery.sequence)
                    & (earlier.state != "sent")
                )
            )
        )
        .order_by(Delivery.next_attempt_at)
        .limit(limit)
    )
    enqueued = 0
    for (delivery_id,) in lost.tuples():
        taken = (
            Delivery.update(next_attempt_at=now)
            .where((Delivery.id == delivery_id) & (Delivery.next_attempt_at <= cutoff))
            .execute()
        )
        if taken == 1 and _enqueue(delivery_id):
            enqueued += 1
    if enqueued:
        log.warning("sweep: enqueued %d deliveries whose message was lost", enqueued)
    return enqueued


def retry(delivery_id: int, *, user: Any) -> Delivery:
    """Send a failed delivery again (attempts start over); raises :class:`DeliveryError`
    (404 no such delivery, 409 not failed). Later deliveries it held follow once it is sent."""
    item = Delivery.get_or_none(Delivery.id == delivery_id)
    if item is None:
        raise DeliveryError(f"There is no delivery {delivery_id}.", 404)
    who = getattr(user, "email", None) or str(user)
    now = utcnow()
    reopened = (
        Delivery.update(
            state="pending",
            attempts=0,
            next_attempt_at=now,
            claimed_until=None,
            updated_at=now,
            last_error=f"Retried by {who}; before that: {item.last_error or ''}"[:ERROR_MAX_LENGTH],
        )
        .where((Delivery.id == item.id) & (Delivery.state == "failed"))
        .execute()
    )
    if reopened != 1:
        raise DeliveryError(
            f"Delivery {delivery_id} is {Delivery.get_by_id(delivery_id).state}; only a failed "
            "delivery can be retried.",
            409,
        )
    log.info("delivery %s retried by %s", item.id, who)
    enqueue_next(item.mrn, item.organization_id)
    return Delivery.get_by_id(item.id)


ACTORS = [deliver]
