"""Our side of every EHR mapping: the questionnaire's answer keys (INTERFACES.md), in order."""

OUR_FIELDS = (
    "name",
    "gender",
    "dob",
    "address",
    "phone",
    "email",
    "emergency_contact",
    "insurance_provider",
    "insurance_policy_number",
    "primary_care_physician",
    "allergies",
    "current_medications",
    "medical_history",
    "social_history",
    "family_history",
    "symptoms",
)

FIELD_LABELS = {
    "name": {"en": "Name", "es": "Nombre"},
    "gender": {"en": "Gender", "es": "Género"},
    "dob": {"en": "Date of birth", "es": "Fecha de nacimiento"},
    "address": {"en": "Address", "es": "Dirección"},
    "phone": {"en": "Phone", "es": "Teléfono"},
    "email": {"en": "Email", "es": "Correo electrónico"},
    "emergency_contact": {"en": "Emergency contact", "es": "Contacto de emergencia"},
    "insurance_provider": {"en": "Insurance provider", "es": "Aseguradora"},
    "insurance_policy_number": {"en": "Insurance policy number", "es": "Número de póliza"},
    "primary_care_physician": {
        "en": "Primary care physician",
        "es": "Médico de atención primaria",
    },
    "allergies": {"en": "Allergies", "es": "Alergias"},
    "current_medications": {"en": "Current medications", "es": "Medicamentos actuales"},
    "medical_history": {"en": "Medical history", "es": "Antecedentes médicos"},
    "social_history": {"en": "Social history", "es": "Antecedentes sociales"},
    "family_history": {"en": "Family history", "es": "Antecedentes familiares"},
    "symptoms": {"en": "Symptoms", "es": "Síntomas"},
}
# An answer is text; the date of birth is an ISO date (YYYY-MM-DD), so that a mapping's date
# transform can write it in the EHR's format.
DATE_FIELDS = ("dob",)
LANGUAGES = ("en", "es")
