"""``/api/patients``: the patient registry over HTTP."""

from __future__ import annotations

from collections.abc import Sequence

from flask.views import MethodView
from flask_smorest import Blueprint
from flask_smorest import abort as abort_with_errors

from core.audit import audited, note
from core.auth import ROLES, STAFF, allow, current_user
from core.patients.facts import PatientFacts, attach, extended
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


def blueprint(facts: Sequence[PatientFacts] = ()) -> Blueprint:
    """The patient API of one app, with the fields and filters its plugins add to the list."""
    blp = Blueprint(
        "patients",
        __name__,
        url_prefix="/api/patients",
        description="The patient registry. A patient user sees only their own record.",
    )
    filters = {name: filter_ for fact in facts for name, filter_ in fact.filters.items()}
    list_item = extended(
        CorePatientSchema,
        "CorePatientListItemSchema",
        {name: field for fact in facts for name, field in fact.fields.items()},
    )
    list_query = extended(
        CorePatientQuerySchema,
        "CorePatientListQuerySchema",
        {name: filter_.field for name, filter_ in filters.items()},
    )

    @blp.route("")
    class Patients(MethodView):
        @allow(*ROLES)
        @audited("search patients")  # patient data without an MRN in the URL
        @blp.arguments(list_query, location="query")
        @blp.response(200, list_item(many=True))
        @blp.paginate()
        def get(self, args, pagination_parameters):
            """List and search patients, by last name, first name, then MRN."""
            query = search(visible_patients(current_user()), args.get("q"), args.get("sex"))
            for name, filter_ in filters.items():
                if args.get(name) is not None:
                    query = filter_.apply(query, args[name])
            pagination_parameters.item_count = query.count()
            page = list(query.paginate(pagination_parameters.page, pagination_parameters.page_size))
            attach(page, facts)
            return page

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

    return blp
