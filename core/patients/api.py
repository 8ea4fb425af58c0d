"""``/api/patients``: the patient registry over HTTP."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint
from flask_smorest import abort as abort_with_errors

from core.audit import audited, note
from core.auth import ROLES, STAFF, allow, current_user
from core.patients.models import (
    DuplicateMrnError,
    create_patient,
    search,
    update_patient,
    visible_or_404,
    visible_patients,
)
from core.patients.schemas import (
    CorePatientQuerySchema,
    CorePatientSchema,
    CorePatientUpdateSchema,
)

blp = Blueprint(
    "patients",
    __name__,
    url_prefix="/api/patients",
    description="The patient registry. A patient user sees only their own record.",
)


@blp.route("")
class Patients(MethodView):
    @allow(*ROLES)
    @audited("search patients")  # patient data without an MRN in the URL
    @blp.arguments(CorePatientQuerySchema, location="query")
    @blp.response(200, CorePatientSchema(many=True))
    @blp.paginate()
    def get(self, args, pagination_parameters):
        """List and search patients, by last name, first name, then MRN."""
        query = search(visible_patients(current_user()), args.get("q"), args.get("sex"))
        pagination_parameters.item_count = query.count()
        return list(query.paginate(pagination_parameters.page, pagination_parameters.page_size))

    @allow(*STAFF)
    @blp.arguments(CorePatientSchema)
    @blp.response(201, CorePatientSchema)
    @blp.alt_response(409, description="A patient with this MRN already exists")
    def post(self, data):
        """Register a patient."""
        note(patient=data["mrn"])
        try:
            return create_patient(data)
        except DuplicateMrnError as error:
            abort_with_errors(409, message=str(error), errors={"json": {"mrn": [str(error)]}})


@blp.route("/<mrn>")
class PatientRecord(MethodView):
    @allow(*ROLES)
    @blp.response(200, CorePatientSchema)
    @blp.alt_response(404, description="No such patient (or not yours, for a patient user)")
    def get(self, mrn):
        """One patient."""
        return visible_or_404(mrn)

    @allow(*STAFF)
    @blp.arguments(CorePatientUpdateSchema)
    @blp.response(200, CorePatientSchema)
    @blp.alt_response(404, description="No such patient")
    def patch(self, changes, mrn):
        """Change some of a patient's fields; the MRN cannot change."""
        return update_patient(visible_or_404(mrn), changes)
