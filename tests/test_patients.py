"""The patient registry: model, API, list page, forms and chart."""

import datetime
import json
import re
import types

import pytest
from hello_plugin import plugin as hello

from core.db import database, utcnow
from core.patients import ensure_patient, touch
from core.patients.models import Patient, search, visible_patients

ERROR_KEYS = {"code", "status", "message", "errors"}
ANNA = {
    "mrn": "MRN-000123",
    "first_name": "Anna",
    "last_name": "Schmidt",
    "date_of_birth": "1984-03-07",
    "sex": "female",
}


@pytest.fixture
def caredeck_plugins():
    return {"hello": hello}  # contributes a chart section (staff only)


def register(client, **fields):
    response = client.post("/api/patients", json=fields)
    assert response.status_code == 201, response.json
    return response.json


@pytest.fixture
def nurse(client_for):
    return client_for("nurse")


# --- the model -------------------------------------------------------------------------


def test_the_migration_creates_every_column(app):
    with database.connection_context():
        columns = {column.name for column in database.get_columns("core_patients")}
        indexes = database.get_indexes("core_patients")
    assert {field.column_name for field in Patient._meta.sorted_fields} <= columns
    assert any(index.columns == ["last_name"] for index in indexes)
    assert any(index.columns == ["mrn"] and index.unique for index in indexes)


def test_ensure_patient_creates_a_minimal_record_once(app):
    with database.connection_context():
        first = ensure_patient("4711.22")
        again = ensure_patient("4711.22")
        assert first.id == again.id
        assert Patient.select().count() == 1
        assert (again.first_name, again.last_name, again.sex) == (None, None, "unknown")


def test_ensure_patient_reads_the_winners_row_after_losing_a_race(app, monkeypatch):
    with database.connection_context():
        winner = Patient.create(mrn="MRN-7", last_name="Early")
        # As if another worker inserted the row between our read and our insert.
        monkeypatch.setattr(Patient, "get_or_none", classmethod(lambda cls, *a: None))
        with database.atomic():  # a caller's transaction survives the lost race
            assert ensure_patient("MRN-7").id == winner.id
            assert Patient.select().count() == 1


def test_ensure_patient_refuses_an_mrn_no_url_could_reach(app):
    with database.connection_context():
        for bad in ("", " MRN-1", "a//b", "../etc", "x" * 65):
            with pytest.raises(ValueError, match="not a valid MRN"):
                ensure_patient(bad)


def test_touch_bumps_last_activity(app):
    with database.connection_context():
        patient = ensure_patient("MRN-1")
        old = utcnow() - datetime.timedelta(days=3)
        Patient.update(last_activity_at=old).where(Patient.id == patient.id).execute()
        assert touch("MRN-1") is True
        assert Patient.get_by_id(patient.id).last_activity_at > old
        assert touch("MRN-unknown") is False


def test_a_patient_user_sees_only_their_own_record(app):
    with database.connection_context():
        for mrn in ("MRN-1", "MRN-2"):
            ensure_patient(mrn)
        linked = types.SimpleNamespace(role="patient", patient_mrn="MRN-2")
        unlinked = types.SimpleNamespace(role="patient", patient_mrn=None)
        legacy = types.SimpleNamespace(role="patient")  # a User without patient_mrn yet
        doctor = types.SimpleNamespace(role="doctor")
        assert [p.mrn for p in search(visible_patients(linked))] == ["MRN-2"]
        assert list(search(visible_patients(unlinked))) == []
        assert list(search(visible_patients(legacy))) == []
        assert list(search(visible_patients(None))) == []
        assert [p.mrn for p in search(visible_patients(doctor))] == ["MRN-1", "MRN-2"]


# --- the API ---------------------------------------------------------------------------


def test_a_nurse_registers_a_patient(nurse):
    created = register(nurse, **ANNA, email="anna@example.org", phone="+49 30 1234-567")
    assert created["mrn"] == "MRN-000123"
    assert created["date_of_birth"] == "1984-03-07"
    assert created["created_at"].endswith("+00:00")
    fetched = nurse.get("/api/patients/MRN-000123")
    assert fetched.status_code == 200
    assert fetched.json == created


def test_sex_defaults_to_unknown_and_empty_optional_fields_are_no_value(nurse):
    created = register(
        nurse, mrn="M-2", first_name="Ben", last_name="Okafor", email="", date_of_birth=""
    )
    assert created["sex"] == "unknown"
    assert created["email"] is None and created["date_of_birth"] is None


def test_the_list_is_ordered_by_name_then_mrn(nurse):
    register(nurse, mrn="M-3", first_name="Carla", last_name="Zimmer")
    register(nurse, mrn="M-2", first_name="Anna", last_name="Adams")
    register(nurse, mrn="M-1", first_name="Anna", last_name="Adams")
    with database.connection_context():
        ensure_patient("M-0")  # no name yet: last
    listed = nurse.get("/api/patients").json
    assert [p["mrn"] for p in listed] == ["M-1", "M-2", "M-3", "M-0"]


def test_search_matches_names_and_mrns_case_insensitively(nurse):
    register(nurse, **ANNA)
    register(nurse, mrn="4711.22", first_name="Jonas", last_name="Weber")
    register(nurse, mrn="M-9", first_name="Per", last_name="Cent%sson")

    def found(q, **params):
        response = nurse.get("/api/patients", query_string={"q": q, **params})
        assert response.status_code == 200, response.json
        return sorted(p["mrn"] for p in response.json)

    assert found("schmidt") == ["MRN-000123"]
    assert found("ANNA schm") == ["MRN-000123"]  # every word must match somewhere
    assert found("mrn-000") == ["MRN-000123"]
    assert found("4711.2") == ["4711.22"]
    assert found(".22") == ["4711.22"]
    # LIKE wildcards in the search are plain characters, not "anything".
    assert found("%") == ["M-9"]
    assert found("t%s") == ["M-9"]
    assert found("_") == []
    assert found("' OR 1=1 --") == []
    assert found("") == ["4711.22", "M-9", "MRN-000123"]
    assert found("a", sex="female") == ["MRN-000123"]


def test_the_list_is_paginated_with_a_header(nurse):
    for number in range(5):
        register(nurse, mrn=f"M-{number}", first_name="Test", last_name=f"Patient {number}")
    response = nurse.get("/api/patients?page=2&page_size=2")
    assert [p["mrn"] for p in response.json] == ["M-2", "M-3"]
    pagination = json.loads(response.headers["X-Pagination"])
    assert pagination["total"] == 5
    assert pagination["total_pages"] == 3
    assert pagination["page"] == 2


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("date_of_birth", "2999-01-01", "cannot be in the future"),
        ("date_of_birth", "1899-12-31", "cannot be before 1900-01-01"),
        ("date_of_birth", "07.03.1984", "YYYY-MM-DD"),
        ("sex", "f", "Choose one of: female, male, other, unknown."),
        ("mrn", "MRN 1", "is not a valid MRN"),
        ("mrn", "-1", "starting with a letter or digit"),
        ("first_name", "", "Enter the first name"),
        ("last_name", "x" * 101, "1 to 100 characters"),
        ("email", "anna-at-example", "Enter a valid email address"),
        ("phone", "call me", "Enter a phone number"),
    ],
)
def test_invalid_input_is_a_422_naming_the_field(nurse, field, value, reason):
    response = nurse.post("/api/patients", json={**ANNA, field: value})
    assert response.status_code == 422
    assert set(response.json) == ERROR_KEYS
    assert list(response.json["errors"]["json"]) == [field]
    assert f"{field}: " in response.json["message"]
    assert reason in response.json["message"]


def test_a_new_patient_needs_an_mrn_and_names(nurse):
    response = nurse.post("/api/patients", json={"sex": "male"})
    assert response.status_code == 422
    assert set(response.json["errors"]["json"]) == {"mrn", "first_name", "last_name"}


def test_a_duplicate_mrn_is_a_409_naming_it(nurse):
    register(nurse, **ANNA)
    response = nurse.post("/api/patients", json={**ANNA, "first_name": "Other"})
    assert response.status_code == 409
    assert set(response.json) == ERROR_KEYS
    assert "MRN-000123" in response.json["message"]
    assert "already exists" in response.json["message"]


def test_a_patch_changes_only_what_it_names(nurse):
    register(nurse, **ANNA, phone="+49 30 1234")
    response = nurse.patch("/api/patients/MRN-000123", json={"last_name": "Meyer"})
    assert response.status_code == 200, response.json
    assert response.json["last_name"] == "Meyer"
    assert response.json["first_name"] == "Anna"
    assert response.json["phone"] == "+49 30 1234"
    assert response.json["updated_at"] >= response.json["created_at"]
    cleared = nurse.patch("/api/patients/MRN-000123", json={"phone": None})
    assert cleared.json["phone"] is None


def test_the_mrn_cannot_be_changed(nurse):
    register(nurse, **ANNA)
    response = nurse.patch("/api/patients/MRN-000123", json={"mrn": "MRN-999", "sex": "banana"})
    assert response.status_code == 422
    assert set(response.json["errors"]["json"]) == {"mrn", "sex"}
    assert "mrn: The MRN cannot be changed" in response.json["message"]
    cleared = nurse.patch("/api/patients/MRN-000123", json={"mrn": None})
    assert cleared.status_code == 422
    assert "The MRN cannot be changed" in cleared.json["message"]
    assert nurse.get("/api/patients/MRN-000123").status_code == 200


def test_an_unknown_patient_is_a_json_404(nurse):
    for response in (
        nurse.get("/api/patients/MRN-404"),
        nurse.patch("/api/patients/MRN-404", json={"sex": "male"}),
    ):
        assert response.status_code == 404
        assert set(response.json) == ERROR_KEYS
        assert "MRN-404" in response.json["message"]


def test_an_mrn_with_dots_is_one_record(nurse):
    register(nurse, mrn="4711.22", first_name="Jonas", last_name="Weber")
    assert nurse.get("/api/patients/4711.22").json["last_name"] == "Weber"
    updated = nurse.patch("/api/patients/4711.22", json={"first_name": "Jo"})
    assert updated.status_code == 200 and updated.json["mrn"] == "4711.22"


def test_only_staff_write_and_a_patient_user_sees_no_one_else(client_for, nurse):
    register(nurse, **ANNA)
    patient = client_for("patient")
    assert patient.post("/api/patients", json={**ANNA, "mrn": "M-new"}).status_code == 403
    assert patient.patch("/api/patients/MRN-000123", json={"sex": "male"}).status_code == 403
    assert patient.get("/api/patients/MRN-000123").status_code == 404
    listed = patient.get("/api/patients")
    assert listed.status_code == 200 and listed.json == []
    for role in ("admin", "doctor"):
        assert client_for(role).get("/api/patients").json[0]["mrn"] == "MRN-000123"


def test_the_api_is_documented(client):
    spec = client.get("/api/openapi.json").json
    assert {"get", "post"} <= set(spec["paths"]["/api/patients"])
    assert {"get", "patch"} <= set(spec["paths"]["/api/patients/{mrn}"])
    schemas = spec["components"]["schemas"]
    assert {"CorePatient", "CorePatientUpdate"} <= set(schemas)
    assert schemas["CorePatient"]["properties"]["sex"]["description"]


# --- the pages -------------------------------------------------------------------------


def test_the_patient_list_searches_and_links_each_chart(nurse):
    register(nurse, **ANNA)
    register(nurse, mrn="4711.22", first_name="Jonas", last_name="Weber")
    page = nurse.get("/?q=weber")
    assert page.status_code == 200
    assert 'name="q"' in page.text and 'value="weber"' in page.text
    assert '<a href="/patients/4711.22">Weber, Jonas</a>' in page.text
    assert "Schmidt" not in page.text
    assert 'href="/patients/new"' in page.text  # "Add patient"
    for heading in ("MRN", "Name", "Date of birth", "Sex", "Last activity"):
        assert f'<th scope="col">{heading}</th>' in page.text


def test_the_patient_list_pages_by_25(app, nurse):
    with database.connection_context():
        for number in range(30):
            Patient.create(mrn=f"M-{number:02}", first_name="Test", last_name="Doe")
    first = nurse.get("/?q=doe")
    assert "Page 1 of 2" in first.text
    assert first.text.count('<a href="/patients/M-') == 2 * 25  # MRN and name link
    assert 'href="/?q=doe&amp;page=2"' in first.text
    second = nurse.get("/?q=doe&page=2")
    assert second.text.count('<a href="/patients/M-') == 2 * 5
    assert 'href="/?q=doe&amp;page=1"' in second.text


def test_a_patient_user_without_a_record_is_told_so(client_for):
    page = client_for("patient").get("/")
    assert page.status_code == 200
    assert "not linked to a patient record" in page.text


def test_the_add_form_shows_errors_next_to_fields_and_keeps_values(nurse):
    form = nurse.get("/patients/new")
    assert form.status_code == 200
    assert 'id="field-mrn"' in form.text and '<label for="field-mrn">' in form.text
    submitted = {**ANNA, "date_of_birth": "2999-01-01", "sex": "female", "phone": ""}
    response = nurse.post("/patients/new", data={**submitted, "mrn": "bad mrn"})
    assert response.status_code == 422
    text = response.text
    assert re.search(r'id="field-mrn-error" class="field-error">[^<]*is not a valid MRN', text)
    assert re.search(r'id="field-date_of_birth-error"[^>]*>The date of birth cannot', text)
    assert re.search(
        r'<input id="field-mrn" name="mrn" type="text" value="bad mrn"\s*'
        r'aria-describedby="field-mrn-hint field-mrn-error" aria-invalid="true"',
        text,
    )
    assert 'value="Schmidt"' in text  # kept, and not marked invalid
    assert 'id="field-last_name-error"' not in text
    assert '<option value="female" selected>' in text


def test_the_add_form_creates_the_patient_and_opens_the_chart(app, nurse):
    response = nurse.post("/patients/new", data={**ANNA, "email": "", "csrf_token": "x"})
    assert response.status_code == 303
    assert response.headers["Location"] == "/patients/MRN-000123"
    duplicate = nurse.post("/patients/new", data=ANNA)
    assert duplicate.status_code == 409
    assert "already exists" in duplicate.text
    with database.connection_context():
        assert Patient.get(Patient.mrn == "MRN-000123").email is None


def test_the_edit_form_changes_and_clears_fields(nurse):
    register(nurse, **ANNA, phone="+49 30 1234")
    form = nurse.get("/patients/MRN-000123/edit")
    assert form.status_code == 200
    assert 'value="+49 30 1234"' in form.text and 'value="1984-03-07"' in form.text
    assert 'name="mrn"' not in form.text  # shown, never editable
    invalid = nurse.post("/patients/MRN-000123/edit", data={**ANNA, "first_name": " "})
    assert invalid.status_code == 422
    assert 'id="field-first_name-error"' in invalid.text
    saved = nurse.post(
        "/patients/MRN-000123/edit", data={**ANNA, "last_name": "Meyer", "phone": ""}
    )
    assert saved.status_code == 303
    record = nurse.get("/api/patients/MRN-000123").json
    assert (record["last_name"], record["phone"]) == ("Meyer", None)


def test_forms_are_staff_only(client_for, nurse):
    register(nurse, **ANNA)
    patient = client_for("patient")
    assert patient.get("/patients/new").status_code == 403
    assert patient.post("/patients/new", data=ANNA).status_code == 403
    assert patient.get("/patients/MRN-000123/edit").status_code == 403


def test_the_chart_shows_demographics_and_a_box_per_section(client_for, nurse):
    register(nurse, **{**ANNA, "mrn": "4711.22"}, insurance_provider="AOK")
    page = nurse.get("/patients/4711.22")
    assert page.status_code == 200
    text = page.text
    assert "<h1>Schmidt, Anna</h1>" in text
    assert "1984-03-07" in text and "AOK" in text
    assert (
        '<section class="section" aria-labelledby="section-hello-title">\n'
        '  <h2 id="section-hello-title">Greetings</h2>\n'
        '  <div data-section-url="/patients/4711.22/sections/hello"'
    ) in text
    assert "Who accessed this record" in text
    assert "<script>" not in text and "style=" not in text
    section = nurse.get("/patients/4711.22/sections/hello")
    assert section.status_code == 200 and "4711.22" in section.text


def test_a_patient_user_opens_only_their_own_chart(app, users, client_for):
    with database.connection_context():
        ensure_patient("MRN-1")
        ensure_patient("MRN-2")
        users["patient"].patient_mrn = "MRN-1"
        users["patient"].save()
    patient = client_for("patient")
    assert patient.get("/").headers["Location"] == "/patients/MRN-1"
    own = patient.get("/patients/MRN-1")
    assert own.status_code == 200
    # The example section and the access panel are for staff only.
    assert "data-section-url" not in own.text
    assert "Who accessed this record" not in own.text
    assert "Edit details" not in own.text
    assert patient.get("/patients/MRN-2").status_code == 404
    assert [p["mrn"] for p in patient.get("/api/patients").json] == ["MRN-1"]


def test_an_unknown_chart_is_an_html_404(nurse):
    page = nurse.get("/patients/MRN-404")
    assert page.status_code == 404
    assert page.mimetype == "text/html"
    assert "MRN-404" in page.text


def test_the_chart_needs_a_signed_in_user(client):
    response = client.get("/patients/MRN-1")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/patients/MRN-1"


def test_the_chart_shows_staff_who_accessed_the_record(client_for, nurse):
    register(nurse, **ANNA)
    first = nurse.get("/patients/MRN-000123").text.split("Who accessed this record", 1)[1]
    # Registering is an earlier access; this view itself is recorded after it is shown.
    assert "Earlier accesses, newest first" in first and "create" in first
    client_for("doctor").get("/patients/MRN-000123")
    page = nurse.get("/patients/MRN-000123")
    panel = page.text.split("Who accessed this record", 1)[1]
    assert "doctor@example.org" in panel
    assert "/patients/MRN-000123" in panel


@pytest.mark.parametrize("mrn", ["4711/22", "new", "NEW", "-1", "a b", "x" * 65])
def test_an_mrn_that_cannot_be_one_url_segment_is_refused(nurse, mrn):
    response = nurse.post("/api/patients", json={"mrn": mrn, "first_name": "A", "last_name": "B"})
    assert response.status_code == 422
    assert "is not a valid MRN" in response.json["errors"]["json"]["mrn"][0]
