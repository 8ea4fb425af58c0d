"""Interactions through the API: recording, validation, history and filters, amendments,
in-error marks, pagination, the patient list's facts, and who may do what."""

import datetime
import json

import peewee
import pytest

from core.auth.models import ApiToken, User
from core.db import database, is_sqlite, utcnow
from core.testing import ROLE_PASSWORD, assert_migrations_create
from plugins.interactions import plugin as interactions
from plugins.interactions.models import Interaction, InteractionErrorMark, InteractionVersion

MRN = "MRN-2024.000123"
OTHER_MRN = "MRN-2024.000999"
BASE = f"/api/patients/{MRN}/interactions"


def iso(moment: datetime.datetime) -> str:
    return moment.isoformat()


def ago(**delta) -> str:
    return iso(utcnow() - datetime.timedelta(**delta))


def body(**overrides):
    return {
        "occurred_at": "2024-11-20T08:30:00+00:00",
        "kind": "visit",
        "summary": "Follow-up after pneumonia",
        "notes": "Chest clear.",
        "outcome": "healthy",
        "status_note": "SpO2 97% on room air",
    } | overrides


@pytest.fixture
def caredeck_plugins():
    return {"interactions": interactions}


def _client(app, user):
    with database.connection_context():
        token, _ = ApiToken.issue(user)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def _user(email, role, mrn=None, name=None):
    with database.connection_context():
        return User.create_user(
            email, ROLE_PASSWORD, name=name or email, role=role, status="active", patient_mrn=mrn
        )


@pytest.fixture
def patients(app, client_for):
    nurse = client_for("nurse")
    for mrn, first in ((MRN, "Ada"), (OTHER_MRN, "Tomás")):
        answer = nurse.post(
            "/api/patients", json={"mrn": mrn, "first_name": first, "last_name": "X"}
        )
        assert answer.status_code == 201
    return (MRN, OTHER_MRN)


@pytest.fixture
def doctor(client_for, patients):
    return client_for("doctor")


@pytest.fixture
def other_doctor(app, patients):
    return _client(app, _user("house@example.org", "doctor", name="Dr House"))


@pytest.fixture
def own_patient(app, patients):
    """A patient user linked to MRN (the ``users`` fixture's patient has no record)."""
    return _client(app, _user("ada@example.org", "patient", mrn=MRN))


@pytest.fixture
def other_patient(app, patients):
    return _client(app, _user("tomas@example.org", "patient", mrn=OTHER_MRN))


def record(client, mrn=MRN, **overrides):
    answer = client.post(f"/api/patients/{mrn}/interactions", json=body(**overrides))
    assert answer.status_code == 201, answer.json
    return answer.json


def listed(client, query=""):
    answer = client.get(f"{BASE}{query}")
    assert answer.status_code == 200, answer.json
    return answer.json


# The table and its migration ----------------------------------------------------------------


def test_migrations_create_the_models(app):
    assert_migrations_create(app, "interactions")


def test_the_database_refuses_to_change_or_delete_a_record(app, doctor):
    created = record(doctor)
    assert mark(doctor, created["id"]).status_code == 201
    statements = [
        Interaction.update(created_at=utcnow()),
        Interaction.delete(),
        InteractionVersion.update(summary="rewritten"),
        InteractionVersion.delete(),
        InteractionErrorMark.update(reason="rewritten"),
        InteractionErrorMark.delete(),
    ]
    with database.connection_context():
        for statement in statements:
            with pytest.raises(peewee.DatabaseError, match="append-only"):
                with database.atomic():
                    statement.execute()
        if is_sqlite():
            # INSERT OR REPLACE deletes the row it replaces: the DELETE triggers fire too
            # (recursive_triggers), so it cannot rewrite a version or a mark either.
            for replace in (
                "INSERT OR REPLACE INTO interactions_versions SELECT * FROM interactions_versions",
                "INSERT OR REPLACE INTO interactions_error_marks "
                "SELECT * FROM interactions_error_marks",
            ):
                with pytest.raises(peewee.DatabaseError, match="append-only"):
                    with database.atomic():
                        database.execute_sql(replace)
        else:
            for table in ("interactions_versions", "interactions_error_marks"):
                with pytest.raises(peewee.DatabaseError, match="append-only"):
                    with database.atomic():
                        database.execute_sql(f"TRUNCATE {table}")
            with pytest.raises(peewee.DatabaseError):  # the trigger, or the foreign keys
                with database.atomic():
                    database.execute_sql("TRUNCATE interactions_entries")
        assert InteractionVersion.get().summary == created["summary"]
        assert InteractionErrorMark.get().reason == "Written in the wrong patient's record"
        assert Interaction.select().count() == 1


# Recording ------------------------------------------------------------------------------------


def test_a_doctor_records_an_interaction(app, doctor, users):
    answer = doctor.post(BASE, json=body())
    assert answer.status_code == 201, answer.json
    created = answer.json
    assert answer.headers["Location"] == f"{BASE}/{created['id']}"
    assert {k: created[k] for k in body()} == body()
    assert created["mrn"] == MRN
    doctor_user = users["doctor"]
    assert created["author"] == {
        "id": doctor_user.id,
        "name": "Test doctor",
        "email": "doctor@example.org",
    }
    assert created["version"] == 1 and created["amended_at"] is None
    assert created["entered_in_error"] is False and created["error_mark"] is None
    assert created["original"]["change"] == "original" and created["amendments"] == []
    assert doctor.get(f"{BASE}/{created['id']}").json == created


def test_the_time_defaults_to_now_and_optional_fields_to_null(doctor):
    before = utcnow()
    answer = doctor.post(
        BASE, json={"kind": "phone_call", "summary": "Called", "outcome": "healthy"}
    )
    assert answer.status_code == 201
    created = answer.json
    assert before <= datetime.datetime.fromisoformat(created["occurred_at"]) <= utcnow()
    assert created["notes"] is None and created["status_note"] is None
    assert created["created_at"] == created["occurred_at"]


def test_text_is_trimmed_and_an_empty_optional_field_is_null(doctor):
    created = record(doctor, summary="  Ward round  ", notes="   ", status_note="")
    assert created["summary"] == "Ward round"
    assert created["notes"] is None and created["status_note"] is None


def test_a_few_seconds_of_clock_skew_are_accepted(doctor):
    record(doctor, occurred_at=iso(utcnow() + datetime.timedelta(seconds=90)))


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"occurred_at": "tomorrow"}, "occurred_at", "Not an ISO 8601 time"),
        ({"occurred_at": "2024-11-20T08:30:00"}, "occurred_at", "The time has no offset"),
        ({"occurred_at": None}, "occurred_at", "Leave the time out for now"),
        ({"occurred_at": "1899-12-31T23:00:00+00:00"}, "occurred_at", "before 1900-01-01"),
        ({"occurred_at": "0001-01-01T00:30:00+01:00"}, "occurred_at", "before 1900-01-01"),
        ({"kind": "house_call"}, "kind", "Choose one of: visit, ward_round"),
        ({"kind": None}, "kind", "Field may not be null"),
        ({"outcome": "better"}, "outcome", "Choose one of: healthy, not_healthy"),
        ({"outcome": "HEALTHY"}, "outcome", "Choose one of"),
        ({"summary": ""}, "summary", "Enter a summary of 1 to 200 characters"),
        ({"summary": "   "}, "summary", "Enter a summary"),
        ({"summary": "x" * 201}, "summary", "Enter a summary of 1 to 200"),
        ({"summary": "two\nlines"}, "summary", "control or invalid characters"),
        ({"notes": "nul \u0000 byte"}, "notes", "control or invalid characters"),
        ({"notes": "\ud800"}, "notes", "control or invalid characters"),
        ({"notes": "x" * 10_001}, "notes", "at most 10000 characters"),
        ({"status_note": "x" * 501}, "status_note", "at most 500 characters"),
        ({"author": "someone@else.org"}, "author", "Unknown field"),
    ],
)
def test_invalid_fields_are_named(doctor, overrides, field, message):
    answer = doctor.post(BASE, json=body(**overrides))
    assert answer.status_code == 422, answer.json
    assert message in " ".join(answer.json["errors"]["json"][field])
    assert answer.json["message"].startswith(f"The request is invalid: {field}: ")


@pytest.mark.parametrize("field", ["kind", "summary", "outcome"])
def test_required_fields(doctor, field):
    answer = doctor.post(BASE, json={k: v for k, v in body().items() if k != field})
    assert answer.status_code == 422
    assert field in answer.json["errors"]["json"]


def test_a_time_in_the_future_is_refused(doctor):
    for later in (datetime.timedelta(minutes=3), datetime.timedelta(days=1)):
        answer = doctor.post(BASE, json=body(occurred_at=iso(utcnow() + later)))
        assert answer.status_code == 422
        assert "in the future" in answer.json["errors"]["json"]["occurred_at"][0]
    # Far ahead in another zone is still the future.
    answer = doctor.post(BASE, json=body(occurred_at="2099-01-01T00:00:00-11:00"))
    assert answer.status_code == 422


def test_an_unknown_patient_is_a_404(doctor):
    answer = doctor.post("/api/patients/NOBODY/interactions", json=body())
    assert answer.status_code == 404
    assert doctor.get("/api/patients/NOBODY/interactions").status_code == 404
    assert doctor.get("/api/patients/NOBODY/interactions/1").status_code == 404


def test_recording_counts_as_activity_on_the_patient(doctor):
    before = doctor.get(f"/api/patients/{MRN}").json["last_activity_at"]
    record(doctor)
    assert doctor.get(f"/api/patients/{MRN}").json["last_activity_at"] > before


# History, filters, pagination ---------------------------------------------------------------


def test_the_history_is_newest_first_by_when_it_happened(doctor):
    # Recorded out of order: the list follows occurred_at, not the order of recording.
    second = record(doctor, occurred_at="2024-11-21T08:00:00+00:00", summary="second")
    first = record(doctor, occurred_at="2024-11-20T08:00:00+00:00", summary="first")
    third = record(doctor, occurred_at="2024-11-22T08:00:00+00:00", summary="third")
    same_time = record(doctor, occurred_at="2024-11-22T08:00:00+00:00", summary="third, later")
    order = [entry["id"] for entry in listed(doctor)]
    assert order == [same_time["id"], third["id"], second["id"], first["id"]]


def test_another_patients_interactions_are_not_listed(doctor):
    record(doctor)
    record(doctor, mrn=OTHER_MRN, summary="someone else")
    assert [entry["summary"] for entry in listed(doctor)] == [body()["summary"]]
    mine = listed(doctor)[0]["id"]
    # An id of another patient's entry does not reach across records.
    other = record(doctor, mrn=OTHER_MRN)["id"]
    assert doctor.get(f"{BASE}/{other}").status_code == 404
    assert doctor.get(f"/api/patients/{OTHER_MRN}/interactions/{mine}").status_code == 404


def test_filters_by_outcome_author_and_time(doctor, other_doctor, users):
    a = record(doctor, occurred_at="2024-11-20T08:00:00+00:00", outcome="healthy")
    b = record(doctor, occurred_at="2024-11-21T08:00:00+00:00", outcome="not_healthy")
    c = record(other_doctor, occurred_at="2024-11-22T08:00:00+00:00", outcome="healthy")

    def ids(query):
        return [entry["id"] for entry in listed(doctor, query)]

    assert ids("?outcome=healthy") == [c["id"], a["id"]]
    assert ids("?outcome=not_healthy") == [b["id"]]
    assert ids("?author=doctor@example.org") == [b["id"], a["id"]]
    assert ids("?author=HOUSE@example.org") == [c["id"]]  # emails are case-insensitive
    assert ids(f"?author={users['doctor'].id}") == [b["id"], a["id"]]
    assert ids("?author=nobody@example.org") == []
    assert ids("?from=2024-11-21T00:00:00Z") == [c["id"], b["id"]]
    assert ids("?to=2024-11-21T08:00:00%2B00:00") == [b["id"], a["id"]]  # inclusive
    assert ids("?from=2024-11-21T00:00:00Z&to=2024-11-21T23:59:59Z") == [b["id"]]
    assert ids("?from=2024-11-21T09:00:00%2B01:00&to=2024-11-21T09:00:00%2B01:00") == [b["id"]]
    assert ids("?outcome=healthy&author=doctor@example.org") == [a["id"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?outcome=fine", "outcome"),
        ("?from=yesterday", "from"),
        ("?from=2024-11-21T00:00:00", "from"),
        ("?from=2024-11-22T00:00:00Z&to=2024-11-21T00:00:00Z", "from"),
        ("?page_size=101", "page_size"),
        ("?page=0", "page"),
        ("?from=0001-01-01T00:00:00%2B01:00", "from"),  # overflows in UTC
        ("?to=9999-12-31T23:59:59-01:00", "to"),  # overflows in UTC
        ("?from=1899-12-31T00:00:00Z", "from"),
    ],
)
def test_bad_filters_are_named(doctor, query, field):
    answer = doctor.get(f"{BASE}{query}")
    assert answer.status_code == 422
    assert field in answer.json["errors"]["query"]


@pytest.mark.parametrize("author", ["²", "٣", "99999999999999999999999", "9223372036854775808"])
def test_an_author_that_is_no_user_id_matches_nothing(doctor, author):
    record(doctor)
    answer = doctor.get(BASE, query_string={"author": author})
    assert answer.status_code == 200, answer.json
    assert answer.json == []


def test_an_id_beyond_a_bigint_is_a_404(doctor):
    huge = f"{BASE}/99999999999999999999"
    assert doctor.get(huge).status_code == 404
    assert amend(doctor, "99999999999999999999", reason="r", summary="x").status_code == 404
    assert doctor.post(f"{huge}/entered-in-error", json={"reason": "r"}).status_code == 404


def test_the_history_is_paginated(doctor):
    for day in range(1, 26):
        record(doctor, occurred_at=f"2024-10-{day:02d}T08:00:00+00:00", summary=f"day {day}")
    answer = doctor.get(f"{BASE}?page_size=10&page=2")
    assert json.loads(answer.headers["X-Pagination"]) == {
        "total": 25,
        "total_pages": 3,
        "first_page": 1,
        "last_page": 3,
        "page": 2,
        "previous_page": 1,
        "next_page": 3,
    }
    assert [entry["summary"] for entry in answer.json] == [f"day {d}" for d in range(15, 5, -1)]
    last = doctor.get(f"{BASE}?page_size=10&page=3").json
    assert [entry["summary"] for entry in last] == [f"day {d}" for d in range(5, 0, -1)]
    assert len(listed(doctor)) == 10  # the default page size


# Amendments ---------------------------------------------------------------------------------


def amend(client, entry_id, **changes):
    return client.post(f"{BASE}/{entry_id}/amendments", json=changes)


def test_an_amendment_is_a_new_version_and_the_original_stays(doctor):
    created = record(doctor)
    answer = amend(
        doctor,
        created["id"],
        reason="The patient was still short of breath",
        outcome="not_healthy",
        notes=None,
    )
    assert answer.status_code == 201, answer.json
    amended = answer.json
    assert amended["outcome"] == "not_healthy" and amended["notes"] is None
    assert amended["summary"] == created["summary"]  # the fields not sent stay
    assert amended["version"] == 2 and amended["amended_at"] is not None
    assert amended["created_at"] == created["created_at"]
    assert amended["original"] == created["original"]
    (amendment,) = amended["amendments"]
    assert amendment["change"] == "amendment"
    assert amendment["reason"] == "The patient was still short of breath"
    assert amendment["changed"] == ["notes", "outcome"]
    assert amendment["author"]["email"] == "doctor@example.org"
    assert amendment["recorded_at"] == amended["amended_at"]

    again = amend(
        doctor, created["id"], reason="Time was wrong", occurred_at="2024-11-20T09:30:00Z"
    )
    assert again.status_code == 201
    detail = doctor.get(f"{BASE}/{created['id']}").json
    assert [v["version"] for v in [detail["original"], *detail["amendments"]]] == [1, 2, 3]
    assert [v["outcome"] for v in [detail["original"], *detail["amendments"]]] == [
        "healthy",
        "not_healthy",
        "not_healthy",
    ]
    assert detail["amendments"][1]["changed"] == ["occurred_at"]
    assert detail["occurred_at"] == "2024-11-20T09:30:00+00:00"
    # The list shows the entry as it reads now.
    (listed_entry,) = listed(doctor)
    assert listed_entry["version"] == 3 and listed_entry["outcome"] == "not_healthy"


def test_filters_apply_to_the_amended_version(doctor):
    created = record(doctor, outcome="healthy", occurred_at="2024-11-20T08:00:00Z")
    amend(
        doctor, created["id"], reason="r", outcome="not_healthy", occurred_at="2024-11-25T08:00:00Z"
    )
    assert listed(doctor, "?outcome=healthy") == []
    assert len(listed(doctor, "?outcome=not_healthy")) == 1
    assert listed(doctor, "?to=2024-11-21T00:00:00Z") == []
    assert len(listed(doctor, "?from=2024-11-24T00:00:00Z")) == 1


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"outcome": "not_healthy"}, "reason", "Give a reason"),
        ({"reason": "  ", "outcome": "not_healthy"}, "reason", "Give a reason of 1 to 500"),
        ({"reason": "r"}, "_schema", "changes nothing"),
        (
            {"reason": "r", "outcome": "healthy", "summary": body()["summary"]},
            "_schema",
            "changes nothing",
        ),
        ({"reason": "r", "occurred_at": "2099-01-01T00:00:00Z"}, "occurred_at", "in the future"),
        ({"reason": "r", "summary": ""}, "summary", "Enter a summary"),
        ({"reason": "r", "kind": "telepathy"}, "kind", "Choose one of"),
        ({"reason": "r", "author": 3}, "author", "Unknown field"),
    ],
)
def test_an_amendment_is_validated(doctor, changes, field, message):
    created = record(doctor)
    answer = amend(doctor, created["id"], **changes)
    assert answer.status_code == 422, answer.json
    assert message in " ".join(answer.json["errors"]["json"][field])
    assert doctor.get(f"{BASE}/{created['id']}").json["version"] == 1


def test_an_amendment_from_a_stale_version_is_refused(doctor):
    """Two tabs read version 1; the second tab's amendment must not undo the first's."""
    created = record(doctor)
    first = amend(doctor, created["id"], base_version=1, reason="Worse", outcome="not_healthy")
    assert first.status_code == 201, first.json
    stale = amend(doctor, created["id"], base_version=1, reason="Typo", summary="Follow-up visit")
    assert stale.status_code == 409
    assert "amended meanwhile" in stale.json["message"]
    detail = doctor.get(f"{BASE}/{created['id']}").json
    assert detail["version"] == 2 and detail["outcome"] == "not_healthy"
    current = amend(doctor, created["id"], base_version=2, reason="Typo", summary="Visit")
    assert current.status_code == 201, current.json
    assert current.json["version"] == 3 and current.json["outcome"] == "not_healthy"
    bad = amend(doctor, created["id"], base_version="3", reason="r", summary="x")
    assert bad.status_code == 422 and "base_version" in bad.json["errors"]["json"]


def test_only_the_author_amends(doctor, other_doctor):
    created = record(doctor)
    answer = amend(other_doctor, created["id"], reason="I disagree", outcome="not_healthy")
    assert answer.status_code == 403
    assert "Only the author (Test doctor)" in answer.json["message"]
    assert doctor.get(f"{BASE}/{created['id']}").json["version"] == 1


def test_amending_an_unknown_entry_is_a_404(doctor):
    assert amend(doctor, 999, reason="r", outcome="healthy").status_code == 404


# Entered in error ---------------------------------------------------------------------------


def mark(client, entry_id, reason="Written in the wrong patient's record"):
    return client.post(f"{BASE}/{entry_id}/entered-in-error", json={"reason": reason})


def test_an_entry_made_in_error_stays_flagged(doctor):
    created = record(doctor)
    kept = record(doctor, summary="A real one")
    answer = mark(doctor, created["id"])
    assert answer.status_code == 201, answer.json
    flagged = answer.json
    assert flagged["entered_in_error"] is True
    assert flagged["error_mark"]["reason"] == "Written in the wrong patient's record"
    assert flagged["error_mark"]["by"]["email"] == "doctor@example.org"
    assert flagged["summary"] == created["summary"]  # the content is kept as it was
    # Still listed, flagged; the filter can leave it out or show only those.
    assert {e["id"]: e["entered_in_error"] for e in listed(doctor)} == {
        created["id"]: True,
        kept["id"]: False,
    }
    assert [e["id"] for e in listed(doctor, "?entered_in_error=false")] == [kept["id"]]
    assert [e["id"] for e in listed(doctor, "?entered_in_error=true")] == [created["id"]]
    assert doctor.get(f"{BASE}/{created['id']}").json == flagged


def test_an_entry_in_error_can_no_longer_be_changed(doctor):
    created = record(doctor)
    assert mark(doctor, created["id"]).status_code == 201
    again = mark(doctor, created["id"])
    assert again.status_code == 409
    late = amend(doctor, created["id"], reason="r", outcome="not_healthy")
    assert late.status_code == 409
    assert "marked entered in error" in late.json["message"]


def test_marking_in_error_needs_a_reason_and_the_author(doctor, other_doctor):
    created = record(doctor)
    missing = doctor.post(f"{BASE}/{created['id']}/entered-in-error", json={})
    assert missing.status_code == 422 and "reason" in missing.json["errors"]["json"]
    assert mark(doctor, created["id"], reason="").status_code == 422
    assert mark(other_doctor, created["id"]).status_code == 403
    assert doctor.get(f"{BASE}/{created['id']}").json["entered_in_error"] is False


def test_nothing_is_ever_deleted_through_the_api(doctor):
    created = record(doctor)
    for path in (BASE, f"{BASE}/{created['id']}"):
        for method in ("delete", "put", "patch"):
            assert getattr(doctor, method)(path, json={}).status_code == 405
    assert doctor.get(f"{BASE}/{created['id']}").status_code == 200


# The patient list: latest interaction and its outcome -------------------------------------


def patient_rows(client, query=""):
    answer = client.get(f"/api/patients{query}")
    assert answer.status_code == 200, answer.json
    return {
        row["mrn"]: (row["latest_interaction_at"], row["latest_interaction_outcome"])
        for row in answer.json
    }


def test_the_patient_list_shows_the_latest_interaction(doctor):
    assert patient_rows(doctor) == {MRN: (None, None), OTHER_MRN: (None, None)}
    record(doctor, occurred_at="2024-11-22T08:00:00+00:00", outcome="healthy")
    older = record(doctor, occurred_at="2024-11-20T08:00:00+00:00", outcome="not_healthy")
    record(doctor, mrn=OTHER_MRN, occurred_at="2024-11-21T08:00:00+00:00", outcome="not_healthy")
    assert patient_rows(doctor) == {
        MRN: ("2024-11-22T08:00:00+00:00", "healthy"),
        OTHER_MRN: ("2024-11-21T08:00:00+00:00", "not_healthy"),
    }
    assert list(patient_rows(doctor, "?latest_interaction_outcome=healthy")) == [MRN]
    assert list(patient_rows(doctor, "?latest_interaction_outcome=not_healthy")) == [OTHER_MRN]

    # An amendment that moves the older entry past the newer one, with another outcome.
    amend(doctor, older["id"], reason="r", occurred_at="2024-11-23T08:00:00Z")
    assert patient_rows(doctor)[MRN] == ("2024-11-23T08:00:00+00:00", "not_healthy")
    assert set(patient_rows(doctor, "?latest_interaction_outcome=not_healthy")) == {MRN, OTHER_MRN}


def test_the_patient_list_leaves_out_entries_in_error(doctor):
    record(doctor, occurred_at="2024-11-20T08:00:00+00:00", outcome="healthy")
    wrong = record(doctor, occurred_at="2024-11-22T08:00:00+00:00", outcome="not_healthy")
    mark(doctor, wrong["id"])
    assert patient_rows(doctor)[MRN] == ("2024-11-20T08:00:00+00:00", "healthy")
    assert list(patient_rows(doctor, "?latest_interaction_outcome=not_healthy")) == []
    assert list(patient_rows(doctor, "?latest_interaction_outcome=healthy")) == [MRN]


def test_the_latest_outcome_filter_is_validated(doctor):
    answer = doctor.get("/api/patients?latest_interaction_outcome=fine")
    assert answer.status_code == 422
    assert "latest_interaction_outcome" in answer.json["errors"]["query"]


def test_a_patient_user_sees_only_their_own_latest_interaction(doctor, own_patient):
    record(doctor)
    record(doctor, mrn=OTHER_MRN)
    assert list(patient_rows(own_patient)) == [MRN]
    assert list(patient_rows(own_patient, "?latest_interaction_outcome=healthy")) == [MRN]


# Who may do what ------------------------------------------------------------------------------


ROUTES = {
    "list": ("get", ""),
    "create": ("post", ""),
    "read": ("get", "/{id}"),
    "amend": ("post", "/{id}/amendments"),
    "mark in error": ("post", "/{id}/entered-in-error"),
}
PAYLOADS = {
    "create": body(),
    "amend": {"reason": "r", "outcome": "not_healthy"},
    "mark in error": {"reason": "r"},
}
# Expected status per caller and route, on the patient's own record (MRN).
ALLOWED = {
    "anonymous": {"list": 401, "create": 401, "read": 401, "amend": 401, "mark in error": 401},
    "admin": {"list": 200, "create": 403, "read": 200, "amend": 403, "mark in error": 403},
    "nurse": {"list": 200, "create": 403, "read": 200, "amend": 403, "mark in error": 403},
    "author": {"list": 200, "create": 201, "read": 200, "amend": 201, "mark in error": 201},
    "other doctor": {"list": 200, "create": 201, "read": 200, "amend": 403, "mark in error": 403},
    "the patient": {"list": 200, "create": 403, "read": 200, "amend": 403, "mark in error": 403},
    # Another patient's user: the record does not exist for them; writing is refused by role.
    "another patient": {
        "list": 404,
        "create": 403,
        "read": 404,
        "amend": 403,
        "mark in error": 403,
    },
    # A patient user linked to no record sees no record at all.
    "unlinked patient": {
        "list": 404,
        "create": 403,
        "read": 404,
        "amend": 403,
        "mark in error": 403,
    },
}


@pytest.mark.parametrize("caller", list(ALLOWED))
def test_who_may_do_what(
    app, client, client_for, doctor, other_doctor, own_patient, other_patient, caller
):
    callers = {
        "anonymous": client,
        "admin": client_for("admin"),
        "nurse": client_for("nurse"),
        "author": doctor,
        "other doctor": other_doctor,
        "the patient": own_patient,
        "another patient": other_patient,
        "unlinked patient": client_for("patient"),
    }
    for route, expected in ALLOWED[caller].items():
        entry = record(doctor)  # a fresh one each time, so that marking it cannot block amending
        method, suffix = ROUTES[route]
        path = BASE + suffix.format(id=entry["id"])
        answer = getattr(callers[caller], method)(path, json=PAYLOADS.get(route))
        assert answer.status_code == expected, (caller, route, answer.json)


def test_the_patient_reads_their_own_history_with_its_amendments(doctor, own_patient):
    created = record(doctor)
    amend(doctor, created["id"], reason="r", outcome="not_healthy")
    (entry,) = listed(own_patient)
    assert entry["outcome"] == "not_healthy"
    detail = own_patient.get(f"{BASE}/{created['id']}").json
    assert detail["original"]["outcome"] == "healthy"


def test_every_access_is_audited(doctor, other_doctor, own_patient, other_patient, client_for):
    created = record(doctor)
    amend(doctor, created["id"], outcome="not_healthy")  # no reason
    amend(other_doctor, created["id"], reason="r", outcome="not_healthy")
    client_for("nurse").post(f"{BASE}/{created['id']}/entered-in-error", json={"reason": "r"})
    amend(doctor, created["id"], reason="r", outcome="not_healthy")
    mark(doctor, created["id"])
    own_patient.get(BASE)
    other_patient.get(BASE)
    rows = client_for("admin").get(f"/api/audit?patient={MRN}&page_size=100").json
    seen = {(row["user"], row["action"], row["outcome"]) for row in rows}
    assert ("doctor@example.org", "create", "allowed") in seen
    assert ("doctor@example.org", "amend", "allowed") in seen
    assert ("doctor@example.org", "amend", "invalid") in seen
    assert ("house@example.org", "amend", "denied") in seen
    assert ("nurse@example.org", "mark in error", "denied") in seen
    assert ("doctor@example.org", "mark in error", "allowed") in seen
    assert ("ada@example.org", "view", "allowed") in seen
    assert ("tomas@example.org", "view", "not_found") in seen


# The docs UI ----------------------------------------------------------------------------------


def test_every_endpoint_is_documented_with_examples(client):
    spec = client.get("/api/openapi.json").json
    paths = {path: spec["paths"][path] for path in spec["paths"] if "/interactions" in path}
    assert set(paths) == {
        "/api/patients/{mrn}/interactions",
        "/api/patients/{mrn}/interactions/{interaction_id}",
        "/api/patients/{mrn}/interactions/{interaction_id}/amendments",
        "/api/patients/{mrn}/interactions/{interaction_id}/entered-in-error",
    }
    for path, item in paths.items():
        mrn = next(p for p in item["parameters"] if p["name"] == "mrn")
        assert mrn["example"] == "DEMO-0001"
        for method in ("get", "post", "put", "patch", "delete"):
            if method not in item:
                continue
            operation = item[method]
            assert operation["summary"] and operation["description"], (path, method)
            assert operation["tags"] == ["interactions"]
            if method == "post":
                content = operation["requestBody"]["content"]["application/json"]
                assert content["example"], path
    listing = paths["/api/patients/{mrn}/interactions"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {
        "outcome",
        "author",
        "from",
        "to",
        "entered_in_error",
        "page",
        "page_size",
    }
    schemas = spec["components"]["schemas"]
    assert schemas["InteractionsNew"]["required"] == ["kind", "outcome", "summary"]
    assert "latest_interaction_outcome" in schemas["CorePatientListItem"]["properties"]
