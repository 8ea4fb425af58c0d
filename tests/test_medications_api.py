"""Medication events through the API, the bus and the consumer, and the periods they give."""

import json
import uuid

import pytest
from helpers import consume_everything

from core.auth.models import ApiToken, User
from core.db import database
from core.patients.models import Patient
from plugins.medications import plugin as medications
from plugins.medications.api import ANSWERS
from plugins.medications.history import AnswerCache
from plugins.medications.models import MedicationEvent

MRN = "MRN-2024.000123"  # a realistic identifier: letters, digits, '-' and '.'


def event(action="start", time="2024-11-20T08:00:00+00:00", medication="Heparin", **extra):
    return {"patient_id": MRN, "medication": medication, "action": action, "event_time": time} | (
        extra
    )


@pytest.fixture
def caredeck_plugins():
    return {"medications": medications}


@pytest.fixture
def app(make_app):
    # The memory bus is shared by the whole test process: each test gets queues of its own.
    suffix = uuid.uuid4().hex[:8]
    return make_app(
        MEDICATIONS_EXCHANGE=f"test-{suffix}.medications",
        MEDICATIONS_QUEUE=f"test-{suffix}.medications.events",
    )


@pytest.fixture
def doctor(client_for):
    return client_for("doctor")


def stored():
    with database.connection_context():
        return list(MedicationEvent.select().order_by(MedicationEvent.event_time).dicts())


def test_one_event_is_published_consumed_and_stored_as_received(app, doctor):
    sent = event(event_id="pharmacy-1", ward="3B")  # an extra field is kept, not refused
    response = doctor.post("/api/medication-events", json=sent)
    assert response.status_code == 202, response.json
    assert response.json == {"accepted": 1}
    consume_everything(app)
    (row,) = stored()
    assert (row["patient_mrn"], row["medication"], row["action"]) == (MRN, "Heparin", "start")
    assert row["event_id"] == "pharmacy-1"
    assert json.loads(row["received"]) == sent
    assert row["received_at"] is not None
    with database.connection_context():  # the registry knows the patient now
        assert Patient.get(Patient.mrn == MRN).first_name is None


def test_a_list_with_the_older_spellings_is_accepted(app, doctor):
    older = {
        "p_id": MRN,
        "medication_name": "Insulin",
        "action": "stop",
        "event_time": "2024-11-20T07:00:00+0000",
    }
    response = doctor.post("/api/medication-events", json=[event(), older])
    assert response.json == {"accepted": 2}
    consume_everything(app)
    assert [(row["medication"], row["action"]) for row in stored()] == [
        ("Insulin", "stop"),
        ("Heparin", "start"),
    ]


def test_one_bad_event_refuses_the_whole_request_and_names_it(app, doctor):
    response = doctor.post(
        "/api/medication-events",
        json=[
            event(),
            event(time="2024/11/20 11:15:00"),
            event(action="pause"),
            {},
            event(medication="  "),
            "start",
        ],
    )
    assert response.status_code == 422
    body = response.json
    assert body["message"].startswith("The request is invalid: 1.event_time: Not an ISO 8601")
    errors = body["errors"]["json"]
    assert set(errors) == {"1", "2", "3", "4", "5"}
    assert errors["1"] == {
        "event_time": ["Not an ISO 8601 time: use e.g. 2024-11-20T08:00:00+00:00."]
    }
    assert "Unknown action 'pause'" in errors["2"]["action"][0]
    assert errors["3"] == {
        "_schema": ["The event is empty: it needs patient_id, medication, action and event_time."]
    }
    assert errors["4"] == {"medication": ["Must not be empty."]}
    assert errors["5"] == {"_schema": ["An event is a JSON object, not str."]}
    consume_everything(app)
    assert stored() == []  # not even the valid first one


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (event(time="2024-11-20T08:00:00"), "event_time", "The time has no offset"),
        ({k: v for k, v in event().items() if k != "patient_id"}, "patient_id", "Missing"),
        (event() | {"patient_id": "a b"}, "patient_id", "is not a valid MRN"),
        (event() | {"patient_id": 7792223}, "patient_id", "Not a valid string"),
        (event() | {"p_id": "other"}, "p_id", "p_id and patient_id disagree"),
        (event(time="0001-01-01T00:30:00+01:00"), "event_time", "between the years 1900"),
        (event(time="2100-01-01T00:00:00+00:00"), "event_time", "between the years 1900"),
        (event(medication="Hep\u0000arin"), "medication", "control or invalid characters"),
        (event(medication="\ud800"), "medication", "control or invalid characters"),
    ],
)
def test_a_single_bad_event_names_its_field(app, doctor, body, field, message):
    response = doctor.post("/api/medication-events", json=body)
    assert response.status_code == 422
    assert response.json["message"].startswith(f"The request is invalid: {field}: ")
    assert message in " ".join(response.json["errors"]["json"][field])


def test_nan_anywhere_in_an_event_is_refused(app, doctor):
    body = json.dumps(event(dose=[1, {"mg": float("nan")}]))  # Python writes NaN; JSON has none
    response = doctor.post("/api/medication-events", data=body, content_type="application/json")
    assert response.status_code == 422
    assert "NaN and Infinity are not JSON numbers." in response.json["message"]


def test_two_producers_reusing_an_event_id_lose_nothing(app, doctor):
    first = event(event_id="1")
    second = event(event_id="1") | {"patient_id": "OTHER-7"}
    assert doctor.post("/api/medication-events", json=[first, second]).json == {"accepted": 2}
    consume_everything(app)
    assert sorted(row["patient_mrn"] for row in stored()) == sorted([MRN, "OTHER-7"])


def test_a_body_that_is_not_json_or_holds_nothing(app, doctor):
    response = doctor.post(
        "/api/medication-events", data="{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert "must be JSON" in response.json["message"]
    assert doctor.post("/api/medication-events", json=[]).status_code == 422


def test_who_may_publish_and_read(app, client, client_for):
    path = f"/api/patients/{MRN}/medication-periods"
    assert client.post("/api/medication-events", json=event()).status_code == 401
    assert client.get(path).status_code == 401
    patient = client_for("patient")
    assert patient.post("/api/medication-events", json=event()).status_code == 403
    assert patient.get(path).status_code in (403, 404)
    for role in ("admin", "doctor", "nurse"):
        staff = client_for(role)
        assert staff.post("/api/medication-events", json=event()).status_code == 202
    consume_everything(app)
    for role in ("admin", "doctor", "nurse"):
        assert client_for(role).get(path).status_code == 200


def test_a_redelivered_event_is_stored_once(app, doctor):
    # Without an event id: the same patient, medication, action and moment (+0000 or +00:00).
    doctor.post("/api/medication-events", json=[event(), event(time="2024-11-20T08:00:00+0000")])
    # With an id: the id decides.
    doctor.post("/api/medication-events", json=[event("stop", event_id="x-1")] * 3)
    consume_everything(app)
    assert [row["action"] for row in stored()] == ["start", "stop"]


def test_periods_and_anomalies_for_a_patient(app, doctor):
    doctor.post(
        "/api/medication-events",
        json=[
            event("stop", "2024-11-22T09:30:00+00:00", "Ceftriaxone"),  # arrives first
            event("start", "2024-11-20T09:30:00+00:00", "Ceftriaxone"),
            event("start", "2024-11-20T10:00:00+00:00", "Morphine"),
            event("cancel_start", "2024-11-20T10:05:00+00:00", "Morphine"),
            event("start", "2024-11-20T11:00:00+00:00", "Morphine"),
            event("stop", "2024-11-20T15:00:00+00:00", "Morphine"),
            event("cancel_stop", "2024-11-20T15:10:00+00:00", "Morphine"),
            event("cancel_stop", "2024-11-21T00:00:00+00:00", "Heparin"),
        ],
    )
    consume_everything(app)
    body = doctor.get(f"/api/patients/{MRN}/medication-periods").json
    assert body["patient_id"] == MRN
    assert body["periods"] == [
        {
            "medication": "Ceftriaxone",
            "start": "2024-11-20T09:30:00+00:00",
            "end": "2024-11-22T09:30:00+00:00",
        },
        {"medication": "Morphine", "start": "2024-11-20T11:00:00+00:00", "end": None},
    ]
    assert [(a["type"], a["medication"], a["event_time"]) for a in body["anomalies"]] == [
        ("unmatched_cancel", "Heparin", "2024-11-21T00:00:00+00:00")
    ]

    only = doctor.get(f"/api/patients/{MRN}/medication-periods?medication=Morphine").json
    assert [p["medication"] for p in only["periods"]] == ["Morphine"]
    assert only["anomalies"] == []

    window = "from=2024-11-21T00:00:00%2B00:00&to=2024-11-21T12:00:00%2B00:00"
    during = doctor.get(f"/api/patients/{MRN}/medication-periods?{window}").json
    assert [p["medication"] for p in during["periods"]] == ["Ceftriaxone", "Morphine"]
    before = doctor.get(f"/api/patients/{MRN}/medication-periods?to=2024-11-20T10:00:00Z").json
    assert [p["medication"] for p in before["periods"]] == ["Ceftriaxone"]
    bad = doctor.get(
        f"/api/patients/{MRN}/medication-periods?from=2024-11-22T00:00:00Z&to=2024-11-21T00:00:00Z"
    )
    assert bad.status_code == 422 and "from" in bad.json["errors"]["query"]


def test_a_kept_answer_is_given_only_while_the_events_are_unchanged(app, doctor):
    app.extensions[ANSWERS] = answers = AnswerCache(max_bytes=2**20, min_bytes=0)
    url = f"/api/patients/{MRN}/medication-periods"
    doctor.post("/api/medication-events", json=[event("start", "2024-11-20T08:00:00+00:00")])
    consume_everything(app)
    first = doctor.get(url)
    assert first.json["periods"][0]["end"] is None and len(answers._answers) == 1
    assert doctor.get(url).data == first.data  # kept

    # A stop that happened earlier than the newest stored event still changes the answer.
    doctor.post("/api/medication-events", json=[event("stop", "2024-11-20T09:00:00+00:00")])
    consume_everything(app)
    assert doctor.get(url).json["periods"][0]["end"] == "2024-11-20T09:00:00+00:00"
    filtered = doctor.get(url + "?medication=Morphine").json  # a request of its own
    assert filtered["periods"] == [] and len(answers._answers) == 2


def test_kept_answers_stay_within_their_bytes():
    answers = AnswerCache(max_bytes=10, min_bytes=2)
    answers.put(("a",), (1, 1), b"x")  # too small to be worth keeping
    answers.put(("b",), (1, 1), b"bbbb")
    answers.put(("c",), (1, 1), b"cccc")
    assert answers.get(("b",), (1, 1)) == b"bbbb"  # now the most recently used
    answers.put(("d",), (1, 1), b"dddd")  # over 10 bytes: the least recently used goes
    assert [answers.get((key,), (1, 1)) for key in "abcd"] == [None, b"bbbb", None, b"dddd"]
    assert answers.get(("b",), (2, 5)) is None  # another version of the events


def test_a_patient_without_medication_gets_empty_lists(app, doctor):
    assert (
        doctor.post(
            "/api/patients", json={"mrn": "P-1", "first_name": "Ada", "last_name": "Lovelace"}
        ).status_code
        == 201
    )
    body = doctor.get("/api/patients/P-1/medication-periods").json
    assert body == {"patient_id": "P-1", "periods": [], "anomalies": []}
    assert doctor.get("/api/patients/NOBODY/medication-periods").status_code == 404


def test_raw_events_are_listed_with_their_arrival_times(app, doctor):
    doctor.post(
        "/api/medication-events",
        json=[event("stop", "2024-11-20T09:00:00+00:00"), event("start")],
    )
    consume_everything(app)
    response = doctor.get(f"/api/patients/{MRN}/medication-events?page_size=1")
    assert json.loads(response.headers["X-Pagination"])["total"] == 2
    (first,) = response.json
    assert first["action"] == "start"  # in event-time order, not arrival order
    assert first["received"] == event("start")
    assert first["received_at"].endswith("+00:00")


def test_reading_a_patients_medications_is_audited(app, doctor, client_for):
    doctor.post("/api/medication-events", json=event())
    consume_everything(app)
    doctor.get(f"/api/patients/{MRN}/medication-periods")
    audit = client_for("admin").get(f"/api/audit?patient={MRN}").json
    assert [(row["user"], row["outcome"]) for row in audit][:1] == [
        ("doctor@example.org", "allowed")
    ]


def test_the_chart_draws_a_timeline(app, doctor):
    doctor.post(
        "/api/medication-events",
        json=[
            event("start", "2024-11-20T08:00:00+00:00", "Heparin"),
            event("stop", "2024-11-21T08:00:00+00:00", "Heparin"),
            event("start", "2024-11-20T11:00:00+00:00", "Morphine"),
        ],
    )
    consume_everything(app)
    html = doctor.get(f"/patients/{MRN}/sections/medications").get_data(as_text=True)
    assert html.count('class="timeline-row"') == 2
    assert html.count('class="bar"') == 1 and html.count('class="bar open"') == 1
    assert "still given" in html


def test_the_demo_loads_the_sample_events(app):
    with app.app_context(), database.connection_context():
        medications.caredeck_demo()
        medications.caredeck_demo()  # loading twice changes nothing
        assert MedicationEvent.select().count() == 11


def test_an_unreachable_bus_is_a_503_and_nothing_is_claimed(make_app, client_for, monkeypatch):
    app = make_app(AMQP_URL="amqp://guest:guest@127.0.0.1:9//")
    monkeypatch.setattr("plugins.medications.api.REQUEST_PUBLISH_RETRIES", 0)
    client = app.test_client()
    with app.app_context(), database.connection_context():
        token, _ = ApiToken.issue(User.get(User.email == "doctor@example.org"))
    response = client.post(
        "/api/medication-events", json=event(), headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 503
    assert "message bus is unavailable" in response.json["message"]
