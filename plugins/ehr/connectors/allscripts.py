"""Allscripts: one URL per endpoint (an action name), the patient in the body.

``POST {base_url}/api/{endpoint}`` with ``{"PatientID": id, "Data": {"NAME_OF_PAT": ...}}``;
``GET {base_url}/api/GetPatient?PatientID=id`` answers ``{"PatientID", "NAME_OF_PAT",
"BIRTHDATE_OF_PAT" (YYYYMMDD)}``.
"""

from __future__ import annotations

from plugins.ehr.connectors import Connector, PatientIdentity, parse_date

DATE_FORMAT = "%Y%m%d"
GENDER_CODES = {"female": "F", "male": "M", "other": "X", "unknown": "U"}


class AllscriptsConnector(Connector):
    name = "allscripts"
    title = "Allscripts"
    endpoints = (
        "SavePatientDemographics",
        "SaveInsurance",
        "SaveClinicalHistory",
        "SaveFamilyHistory",
        "SaveChiefComplaint",
    )
    ehr_fields = (
        "NAME_OF_PAT",
        "GENDER_PAT",
        "BIRTHDATE_OF_PAT",
        "ADDRESS_PAT",
        "PHONE_NUMBER_PAT",
        "EMAIL_ID_PAT",
        "EMERGENCY_CONTACT_PAT",
        "PROVIDER_INSURANCE_PAT",
        "POLICY_NUM_INSURANCE_PAT",
        "PRIMARY_CARE_DOC_PAT",
        "HISTORY_MEDICAL_PAT",
        "ALLERGIES_PAT",
        "CURRENT_MEDS_PAT",
        "SOCIAL_HISTORY_PAT",
        "FAMILY_HISTORY_PAT",
        # Not in the list (it has no field for symptoms): the chief complaint.
        "CHIEF_COMPLAINT_PAT",
    )

    def default_mapping(self) -> dict:
        def to(field, endpoint, transform=None):
            return {"field": field, "endpoint": endpoint, "transform": transform}

        demographics = "SavePatientDemographics"
        history = "SaveClinicalHistory"
        return {
            "name": to("NAME_OF_PAT", demographics, {"kind": "upper"}),
            "gender": to("GENDER_PAT", demographics, {"kind": "codes", "codes": GENDER_CODES}),
            "dob": to("BIRTHDATE_OF_PAT", demographics, {"kind": "date", "format": DATE_FORMAT}),
            "address": to("ADDRESS_PAT", demographics),
            "phone": to("PHONE_NUMBER_PAT", demographics),
            "email": to("EMAIL_ID_PAT", demographics),
            "emergency_contact": to("EMERGENCY_CONTACT_PAT", demographics),
            "insurance_provider": to("PROVIDER_INSURANCE_PAT", "SaveInsurance"),
            "insurance_policy_number": to("POLICY_NUM_INSURANCE_PAT", "SaveInsurance"),
            "primary_care_physician": to("PRIMARY_CARE_DOC_PAT", demographics),
            "allergies": to("ALLERGIES_PAT", history),
            "current_medications": to("CURRENT_MEDS_PAT", history),
            "medical_history": to("HISTORY_MEDICAL_PAT", history),
            "social_history": to("SOCIAL_HISTORY_PAT", history),
            "family_history": to("FAMILY_HISTORY_PAT", "SaveFamilyHistory"),
            "symptoms": to("CHIEF_COMPLAINT_PAT", "SaveChiefComplaint"),
        }

    def send(self, organization, endpoint, payload, *, ehr_patient_id, idempotency_key):
        body = {"PatientID": ehr_patient_id, "Data": payload}
        url = self.url(organization, "api", endpoint)
        return self.post_json(organization, url, body, idempotency_key=idempotency_key)

    def identify(self, organization, ehr_patient_id):
        url = self.url(organization, "api", "GetPatient")
        body = self.lookup(organization, url, params={"PatientID": ehr_patient_id})
        return PatientIdentity(
            ehr_patient_id=str(body.get("PatientID", "")),
            name=body.get("NAME_OF_PAT"),
            date_of_birth=parse_date(body.get("BIRTHDATE_OF_PAT"), DATE_FORMAT),
        )
