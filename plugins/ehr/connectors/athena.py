"""Athena: one URL per patient and endpoint, the payload's fields at the top level.

``POST {base_url}/patients/{id}/{endpoint}`` with ``{"PATIENT_IDENT_NAME": ..., ...}``;
``GET {base_url}/patients/{id}`` answers ``{"PATIENT_ID", "PATIENT_IDENT_NAME",
"DATE_OF_BIRTH_PATIENT" (MM/DD/YYYY)}``.
"""

from __future__ import annotations

from plugins.ehr.connectors import Connector, PatientIdentity, parse_date

DATE_FORMAT = "%m/%d/%Y"
GENDER_CODES = {"female": "F", "male": "M", "other": "O", "unknown": "U"}


class AthenaConnector(Connector):
    name = "athena"
    title = "Athena"
    endpoints = ("demographics", "insurance", "history", "family_history", "symptoms")
    ehr_fields = (
        "PATIENT_IDENT_NAME",
        "GENDER_OF_PATIENT",
        "DATE_OF_BIRTH_PATIENT",
        "PATIENT_LOCATION_ADDRESS",
        "TELEPHONE_NUMBER_PATIENT",
        "PATIENT_EMAIL_ID",
        "EMERGENCY_CONTACT_PATIENT",
        "INSURANCE_PROVIDER_PATIENT",
        "POLICY_NUMBER_INSURANCE_PATIENT",
        "PRIMARY_CARE_DOCTOR_PATIENT",
        "ALLERGIES_PATIENT",
        "PATIENT_MEDICATIONS_CURRENT",
        "HISTORY_MEDICAL_PATIENT",
        "HISTORY_SOCIAL_PATIENT",
        "HISTORY_FAMILY_PATIENT",
        # Not in the list (it has no field for symptoms): the visit reason.
        "SYMPTOMS_PATIENT",
    )

    def default_mapping(self) -> dict:
        def to(field, endpoint, transform=None):
            return {"field": field, "endpoint": endpoint, "transform": transform}

        return {
            "name": to("PATIENT_IDENT_NAME", "demographics"),
            "gender": to(
                "GENDER_OF_PATIENT", "demographics", {"kind": "codes", "codes": GENDER_CODES}
            ),
            "dob": to(
                "DATE_OF_BIRTH_PATIENT", "demographics", {"kind": "date", "format": DATE_FORMAT}
            ),
            "address": to("PATIENT_LOCATION_ADDRESS", "demographics"),
            "phone": to("TELEPHONE_NUMBER_PATIENT", "demographics"),
            "email": to("PATIENT_EMAIL_ID", "demographics"),
            "emergency_contact": to("EMERGENCY_CONTACT_PATIENT", "demographics"),
            "insurance_provider": to("INSURANCE_PROVIDER_PATIENT", "insurance"),
            "insurance_policy_number": to("POLICY_NUMBER_INSURANCE_PATIENT", "insurance"),
            "primary_care_physician": to("PRIMARY_CARE_DOCTOR_PATIENT", "demographics"),
            "allergies": to("ALLERGIES_PATIENT", "history"),
            "current_medications": to("PATIENT_MEDICATIONS_CURRENT", "history"),
            "medical_history": to("HISTORY_MEDICAL_PATIENT", "history"),
            "social_history": to("HISTORY_SOCIAL_PATIENT", "history"),
            "family_history": to("HISTORY_FAMILY_PATIENT", "family_history"),
            "symptoms": to("SYMPTOMS_PATIENT", "symptoms"),
        }

    def send(self, organization, endpoint, payload, *, ehr_patient_id, idempotency_key):
        url = self.url(organization, "patients", ehr_patient_id, endpoint)
        return self.post_json(organization, url, payload, idempotency_key=idempotency_key)

    def identify(self, organization, ehr_patient_id):
        body = self.lookup(organization, self.url(organization, "patients", ehr_patient_id))
        return PatientIdentity(
            ehr_patient_id=str(body.get("PATIENT_ID", "")),
            name=body.get("PATIENT_IDENT_NAME"),
            date_of_birth=parse_date(body.get("DATE_OF_BIRTH_PATIENT"), DATE_FORMAT),
        )
