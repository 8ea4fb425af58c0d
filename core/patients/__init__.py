"""The patient registry, its API, the patient list at ``/`` and the patient chart.

Plugins use :func:`ensure_patient` and :func:`touch`; the app factory calls
:func:`init_app`.
"""

from core.patients import api as patients_api
from core.patients import views as patients_views
from core.patients.models import Patient, ensure_patient, touch

__all__ = ["Patient", "ensure_patient", "init_app", "touch"]


def init_app(app, api) -> None:
    """Register the patient pages on ``app`` and the patient API on the app's ``api``."""
    app.register_blueprint(patients_views.pages)
    api.register_blueprint(patients_api.blp)
