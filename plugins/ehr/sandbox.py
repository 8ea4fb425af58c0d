"""The sandbox EHR: a small EHR inside Caredeck that records what it receives, so that
deliveries can be seen working with no external system (the demo organization points at it).

It speaks the ``sandbox`` connector's protocol (``plugins/ehr/connectors/sandbox.py``):

- ``POST /ehr-sandbox/<endpoint>`` ``{"patient_id", "fields"}`` with ``Authorization: Bearer
  <EHR_SANDBOX_TOKEN>`` and an ``Idempotency-Key`` header: records a ``SandboxReceipt``
  (``201``); the same key again records nothing (``200``, ``"duplicate": true``).
- ``GET /ehr-sandbox/patients/<id>``: the patient's identity, for the identity check.

Its patients are those linked to an organization on the sandbox connector; their name and
date of birth are the registry's. Like any read or write of a patient's data, each request
is audited (an anonymous user: the caller is an EHR client, not a signed-in person).
Answers are JSON, errors ``{"message"}`` like an EHR's.
"""

from __future__ import annotations

import hmac

import peewee
from flask import Blueprint, current_app, jsonify, request

from core.audit import audited, note
from core.auth.access import bearer_token, csrf_exempt, public
from core.db import database
from core.patients.models import Patient
from plugins.ehr.connectors.sandbox import ENDPOINTS
from plugins.ehr.models import EHR_ID_MAX_LENGTH, Organization, PatientLink, SandboxReceipt

blueprint = Blueprint("ehr_sandbox", __name__, url_prefix="/ehr-sandbox")
KEY_MAX_LENGTH = 200


def _refuse(status: int, message: str):
    return jsonify({"message": message}), status


def _authorised() -> bool:
    token, expected = bearer_token(), current_app.config["EHR_SANDBOX_TOKEN"]
    return bool(token and expected) and hmac.compare_digest(token.encode(), expected.encode())


def _link(ehr_patient_id: str) -> PatientLink | None:
    return (
        PatientLink.select()
        .join(Organization)
        .where(
            (Organization.connector == "sandbox") & (PatientLink.ehr_patient_id == ehr_patient_id)
        )
        .order_by(PatientLink.id)
        .first()
    )


@blueprint.route("/<endpoint>", methods=["POST"])
@public  # an EHR's own authentication: the bearer token checked below
@csrf_exempt
@audited("ehr sandbox receive")
def receive(endpoint: str):
    if not _authorised():
        return _refuse(401, "Invalid or missing bearer token.")
    if endpoint not in ENDPOINTS:
        return _refuse(404, f"The sandbox EHR has no endpoint {endpoint!r}.")
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key or len(key) > KEY_MAX_LENGTH:
        return _refuse(400, "Send an Idempotency-Key header (1 to 200 characters).")
    body = request.get_json(silent=True)
    if not (
        isinstance(body, dict)
        and isinstance(body.get("patient_id"), str)
        and isinstance(body.get("fields"), dict)
    ):
        return _refuse(400, 'Send JSON {"patient_id": "...", "fields": {...}}.')
    patient_id = body["patient_id"]
    link = _link(patient_id) if len(patient_id) <= EHR_ID_MAX_LENGTH else None
    if link is None:
        return _refuse(404, f"The sandbox EHR has no patient {patient_id!r}.")
    note(patient=link.mrn)
    try:
        with database.atomic():  # a savepoint: a duplicate key must not spoil a transaction
            receipt = SandboxReceipt.create(
                endpoint=endpoint,
                ehr_patient_id=patient_id,
                payload=body["fields"],
                idempotency_key=key,
            )
    except peewee.IntegrityError:
        earlier = SandboxReceipt.get(SandboxReceipt.idempotency_key == key)
        return jsonify({"received": earlier.id, "duplicate": True}), 200
    return jsonify({"received": receipt.id, "duplicate": False}), 201


@blueprint.route("/patients/<ehr_patient_id>")
@public
@audited("ehr sandbox identity")
def patient(ehr_patient_id: str):
    if not _authorised():
        return _refuse(401, "Invalid or missing bearer token.")
    link = _link(ehr_patient_id)
    if link is not None:
        note(patient=link.mrn)
    record = Patient.get_or_none(Patient.mrn == link.mrn) if link else None
    if record is None:
        return _refuse(404, f"The sandbox EHR has no patient {ehr_patient_id!r}.")
    name = " ".join(part for part in (record.first_name, record.last_name) if part) or None
    return jsonify(
        {
            "patient_id": ehr_patient_id,
            "name": name,
            "date_of_birth": record.date_of_birth.isoformat() if record.date_of_birth else None,
        }
    )


def receipts(limit: int = 200) -> list[SandboxReceipt]:
    """What the sandbox EHR received, newest first."""
    return list(SandboxReceipt.select().order_by(SandboxReceipt.id.desc()).limit(limit))
