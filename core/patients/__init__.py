"""The patient registry, its API, the patient list at ``/`` and the patient chart.

Plugins use :func:`ensure_patient` and :func:`touch`; the app factory calls
:func:`init_app`.
"""

from core.patients import api as patients_api
from core.patients import views as patients_views
from core.patients.models import Patient, ensure_patient, touch

__all__ = ["Patient", "ensure_patient", "init_app", "register_api", "touch"]


def init_app(app) -> None:
    """Register the patient pages on ``app``."""
    app.register_blueprint(patients_views.pages)


def register_api(api, facts) -> None:
    """Register the patient API, with the facts the plugins add to the list."""
    api.register_blueprint(patients_api.blueprint(facts))
