"""The sandbox EHR: the endpoint inside Caredeck (``plugins/ehr/sandbox.py``) that records
what it receives, so that deliveries can be seen working with no external system.

``POST {base_url}/{endpoint}`` with ``{"patient_id": id, "fields": {...}}``;
``GET {base_url}/patients/{id}`` answers ``{"patient_id", "name", "date_of_birth"}`` (ISO).
"""

from __future__ import annotations

from plugins.ehr.connectors import Connector, PatientIdentity, parse_date

ENDPOINTS = ("demographics", "insurance", "history", "family_history", "symptoms")
# Our field -> (the sandbox's field, endpoint).
FIELDS = {
    "name": ("patient_name", "demographics"),
    "gender": ("sex", "demographics"),
    "dob": ("birth_date", "demographics"),
    "address": ("address", "demographics"),
    "phone": ("phone", "demographics"),
    "email": ("email", "demographics"),
    "emergency_contact": ("emergency_contact", "demographics"),
    "insurance_provider": ("insurer", "insurance"),
    "insurance_policy_number": ("policy_number", "insurance"),
    "primary_care_physician": ("primary_care_physician", "demographics"),
    "allergies": ("allergies", "history"),
    "current_medications": ("medications", "history"),
    "medical_history": ("medical_history", "history"),
    "social_history": ("social_history", "history"),
    "family_history": ("family_history", "family_history"),
    "symptoms": ("symptoms", "symptoms"),
}


class SandboxConnector(Connector):
    name = "sandbox"
    title = "Sandbox EHR (inside Caredeck)"
    endpoints = ENDPOINTS
    ehr_fields = tuple(field for field, _ in FIELDS.values())

    def default_mapping(self) -> dict:
        return {
            ours: {"field": field, "endpoint": endpoint, "transform": None}
            for ours, (field, endpoint) in FIELDS.items()
        }

    def send(self, organization, endpoint, payload, *, ehr_patient_id, idempotency_key):
        body = {"patient_id": ehr_patient_id, "fields": payload}
        url = self.url(organization, endpoint)
        return self.post_json(organization, url, body, idempotency_key=idempotency_key)

    def identify(self, organization, ehr_patient_id):
        body = self.lookup(organization, self.url(organization, "patients", ehr_patient_id))
        return PatientIdentity(
            ehr_patient_id=str(body.get("patient_id", "")),
            name=body.get("name"),
            date_of_birth=parse_date(body.get("date_of_birth"), "%Y-%m-%d"),
        )
