"""Medication events in (``POST /api/medication-events``) and periods out."""

from __future__ import annotations

import json

import marshmallow as ma
from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from core.audit import audited
from core.auth import STAFF, allow
from core.messaging import PublishError
from core.patients.models import visible_or_404
from plugins.medications import bus
from plugins.medications.events import InvalidEvent, MedicationsEventSchema, parse
from plugins.medications.history import AnswerCache, events_version, medication_history
from plugins.medications.models import MedicationEvent

blp = Blueprint(
    "medications",
    __name__,
    url_prefix="/api",
    description="Medication administration events and the medication periods derived from them.",
)

# A request holds at most this many events; larger loads go through `caredeck publish`.
MAX_EVENTS_PER_REQUEST = 10_000
ANSWERS = "medications_answers"  # the app's AnswerCache, in app.extensions
# Retries of a lost bus connection within one request (about 5 s in all), before a 503.
REQUEST_PUBLISH_RETRIES = 1


class MedicationsAcceptedSchema(ma.Schema):
    accepted = ma.fields.Integer(metadata={"description": "Events the broker confirmed."})


class MedicationsPeriodQuerySchema(ma.Schema):
    medication = ma.fields.String(validate=ma.validate.Length(min=1, max=200))
    from_ = ma.fields.AwareDateTime(
        data_key="from",
        metadata={"description": "Only periods still running at or after this time."},
    )
    to = ma.fields.AwareDateTime(
        metadata={"description": "Only periods that began at or before this time."}
    )

    @ma.validates_schema
    def _ordered(self, data, **kwargs):
        if "from_" in data and "to" in data and data["from_"] > data["to"]:
            raise ma.ValidationError("'from' is after 'to'.", "from")


class MedicationsPeriodSchema(ma.Schema):
    medication = ma.fields.String()
    start = ma.fields.AwareDateTime()
    end = ma.fields.AwareDateTime(
        allow_none=True, metadata={"description": "Null while the medication is still given."}
    )


class MedicationsAnomalySchema(ma.Schema):
    type = ma.fields.String(
        metadata={"description": "unmatched_cancel, duplicate_start or stop_without_start"}
    )
    medication = ma.fields.String()
    event_time = ma.fields.AwareDateTime()
    action = ma.fields.String()
    detail = ma.fields.String()


class MedicationsHistorySchema(ma.Schema):
    patient_id = ma.fields.String()
    periods = ma.fields.List(ma.fields.Nested(MedicationsPeriodSchema))
    anomalies = ma.fields.List(ma.fields.Nested(MedicationsAnomalySchema))


class MedicationsEventQuerySchema(ma.Schema):
    medication = ma.fields.String(validate=ma.validate.Length(min=1, max=200))


class MedicationsStoredEventSchema(ma.Schema):
    id = ma.fields.Integer()
    patient_id = ma.fields.String(attribute="patient_mrn")
    medication = ma.fields.String()
    action = ma.fields.String()
    event_time = ma.fields.AwareDateTime()
    event_id = ma.fields.String(allow_none=True)
    received_at = ma.fields.AwareDateTime(metadata={"description": "When it arrived."})
    received = ma.fields.Function(
        lambda event: json.loads(event.received),
        metadata={"description": "The event exactly as its producer sent it."},
    )


EVENT_OR_LIST = {
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    MedicationsEventSchema,
                    {
                        "type": "array",
                        "items": MedicationsEventSchema,
                        "maxItems": MAX_EVENTS_PER_REQUEST,
                    },
                ]
            },
            "example": {
                "patient_id": "7792223",
                "medication": "Heparin",
                "action": "start",
                "event_time": "2024-11-20T08:00:00+00:00",
            },
        }
    },
    "required": True,
}


@blp.route("/medication-events")
class MedicationEvents(MethodView):
    @allow(*STAFF)
    @audited("medication events published")
    @blp.doc(requestBody=EVENT_OR_LIST)
    @blp.response(202, MedicationsAcceptedSchema)
    @blp.alt_response(400, description="The body is not JSON")
    @blp.alt_response(422, description="Names each bad event by index and field")
    @blp.alt_response(503, description="The message bus could not be reached")
    def post(self):
        """Validate events and publish them to the bus (one object, or a list).

        The whole request is checked first: if any event is invalid, nothing is published
        and the `422` names each bad event by its index and field.
        """
        body = request.get_json(silent=True)
        if body is None:
            abort(400, message="The body must be JSON: an event object or a list of them.")
        items = body if isinstance(body, list) else [body]
        if not items:
            abort(422, errors={"json": ["The list holds no events."]})
        if len(items) > MAX_EVENTS_PER_REQUEST:
            abort(
                422,
                errors={
                    "json": [
                        f"At most {MAX_EVENTS_PER_REQUEST} events per request; use "
                        "`caredeck publish` for larger loads."
                    ]
                },
            )
        events, errors = [], {}
        for index, item in enumerate(items):
            try:
                events.append(parse(item))
            except InvalidEvent as error:
                errors[index] = error.errors
        if errors:  # the core's 422 message names each one: "1.event_time: ..."
            abort(422, errors={"json": errors if isinstance(body, list) else errors[0]})
        try:
            accepted = bus.publish(events, max_retries=REQUEST_PUBLISH_RETRIES)
        except PublishError as error:
            abort(
                503,
                message=f"The message bus is unavailable: {error}. {error.published} of "
                f"{len(events)} events were published; send the request again (events "
                "already published are stored once).",
            )
        return {"accepted": accepted}


@blp.route("/patients/<mrn>/medication-periods")
class MedicationPeriods(MethodView):
    @allow(*STAFF)
    @blp.arguments(MedicationsPeriodQuerySchema, location="query")
    @blp.response(200, MedicationsHistorySchema)
    @blp.alt_response(404, description="No such patient")
    def get(self, args, mrn):
        """The patient's medication periods and the anomalies found in the events."""
        patient = visible_or_404(mrn)
        key = (patient.mrn, args.get("medication"), args.get("from_"), args.get("to"))
        version = events_version(patient.mrn)
        answers = current_app.extensions[ANSWERS]
        answer = answers.get(key, version)
        if answer is None:
            answer = _history_answer(patient.mrn, *key[1:])
            answers.put(key, version, answer)
        return current_app.response_class(answer, mimetype="application/json")


def keep_answers(app) -> None:
    """Give ``app`` its cache of long histories' answers (64 KiB and up, about 650 periods;
    64 MiB in all): one per app, as each app has a database of its own."""
    app.extensions[ANSWERS] = AnswerCache(max_bytes=64 * 2**20, min_bytes=64 * 2**10)


def _history_answer(mrn, medication, start, end) -> bytes:
    """The answer's JSON, written out rather than dumped by the schema (which documents it):
    the schema took half of the answer's time for a patient with thousands of periods."""
    periods, anomalies = medication_history(mrn, medication, start, end)
    body = {
        "patient_id": mrn,
        "periods": [
            {
                "medication": period.medication,
                "start": period.start.isoformat(),
                "end": period.end and period.end.isoformat(),
            }
            for period in periods
        ],
        "anomalies": [
            {
                "type": anomaly.type,
                "medication": anomaly.medication,
                "event_time": anomaly.event_time.isoformat(),
                "action": anomaly.action,
                "detail": anomaly.detail,
            }
            for anomaly in anomalies
        ],
    }
    return json.dumps(body, separators=(",", ":")).encode()


@blp.route("/patients/<mrn>/medication-events")
class PatientMedicationEvents(MethodView):
    @allow(*STAFF)
    @blp.arguments(MedicationsEventQuerySchema, location="query")
    @blp.response(200, MedicationsStoredEventSchema(many=True))
    @blp.alt_response(404, description="No such patient")
    @blp.paginate()
    def get(self, args, pagination_parameters, mrn):
        """Every event stored for the patient, in event-time order, with its arrival time."""
        patient = visible_or_404(mrn)
        query = MedicationEvent.select().where(MedicationEvent.patient_mrn == patient.mrn)
        if "medication" in args:
            query = query.where(MedicationEvent.medication == args["medication"])
        pagination_parameters.item_count = query.count()
        return query.order_by(MedicationEvent.event_time, MedicationEvent.id).paginate(
            pagination_parameters.page, pagination_parameters.page_size
        )
