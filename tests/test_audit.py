"""Every access to a patient's record is audited by the core, for plugins too; patient users
see only their own record."""

import csv
import io

import pytest
from hello_plugin import plugin as hello

from core import audit
from core.auth.models import User
from core.db import database
from core.exports import cell
from core.patients.models import Patient

ADA = {
    "mrn": "MRN-1001",
    "first_name": "Ada",
    "last_name": "Lind",
    "sex": "female",
    "date_of_birth": "1950-02-03",
}
BOB = {
    "mrn": "MRN-2002",
    "first_name": "Bob",
    "last_name": "Berg",
    "sex": "male",
    "date_of_birth": "1960-04-05",
}


@pytest.fixture
def caredeck_plugins():
    return {"hello": hello}


@pytest.fixture
def registry(app, users):
    with database.connection_context():
        for record in (ADA, BOB):
            Patient.create(**record)
        User.update(patient_mrn=ADA["mrn"]).where(User.id == users["patient"].id).execute()
        audit.AuditEvent.delete().execute()


def events(**filters):
    with database.connection_context():
        return [event.as_dict() for event in audit.query(**filters)]


def test_a_chart_view_is_audited(client_for, registry):
    client_for("doctor").get(f"/patients/{ADA['mrn']}", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    [event] = events(patient=ADA["mrn"])
    assert event["user"] == "doctor@example.org"
    assert event["role"] == "doctor"
    assert event["action"] == "view"
    assert event["path"] == f"/patients/{ADA['mrn']}"
    assert event["outcome"] == "allowed"
    assert event["address"] == "10.1.2.3"


def test_an_api_read_and_write_are_audited(client_for, registry):
    nurse = client_for("nurse")
    nurse.get(f"/api/patients/{ADA['mrn']}")
    nurse.patch(f"/api/patients/{ADA['mrn']}", json={"phone": "+46 8 123 456"})
    assert [e["action"] for e in events(patient=ADA["mrn"])] == ["update", "view"]


def test_a_plugin_route_is_audited_without_the_plugin_doing_anything(client_for, registry):
    client_for("nurse").get(f"/patients/{ADA['mrn']}/sections/hello")
    [event] = events(patient=ADA["mrn"])
    assert event["path"] == f"/patients/{ADA['mrn']}/sections/hello"


def test_a_search_is_audited_with_its_query(client_for, registry):
    client_for("doctor").get("/api/patients?q=Lind")
    [event] = events(user="doctor@example.org")
    assert event["action"] == "search patients"
    assert event["path"] == "/api/patients?q=Lind"


def test_denied_attempts_are_audited(client, client_for, registry):
    client.get(f"/api/patients/{BOB['mrn']}")
    client_for("patient").get(f"/api/patients/{BOB['mrn']}")
    outcomes = {(e["user"], e["outcome"]) for e in events(patient=BOB["mrn"])}
    assert outcomes == {(None, "denied"), ("patient@example.org", "not_found")}


def test_a_patient_user_sees_only_their_own_record(client_for, registry):
    patient = client_for("patient")
    assert patient.get(f"/api/patients/{ADA['mrn']}").status_code == 200
    assert patient.get(f"/api/patients/{BOB['mrn']}").status_code == 404
    assert patient.get(f"/patients/{BOB['mrn']}").status_code == 404
    assert patient.get(f"/patients/{BOB['mrn']}/sections/hello").status_code == 404
    assert [p["mrn"] for p in patient.get("/api/patients").json] == [ADA["mrn"]]
    assert patient.post("/api/patients", json=BOB | {"mrn": "MRN-3"}).status_code == 403
    assert patient.get("/api/audit").status_code == 403


def test_an_unlinked_patient_user_sees_nobody(client_for, registry, users):
    with database.connection_context():
        User.update(patient_mrn=None).where(User.id == users["patient"].id).execute()
    patient = client_for("patient")
    assert patient.get("/api/patients").json == []
    assert patient.get(f"/api/patients/{ADA['mrn']}").status_code == 404


def test_admins_search_the_audit_log_by_patient_and_user(client_for, registry):
    client_for("doctor").get(f"/api/patients/{ADA['mrn']}")
    client_for("nurse").get(f"/api/patients/{BOB['mrn']}")
    admin = client_for("admin")
    by_patient = admin.get(f"/api/audit?patient={ADA['mrn']}").json
    assert [(e["user"], e["patient"]) for e in by_patient] == [("doctor@example.org", ADA["mrn"])]
    assert set(by_patient[0]) == {
        "at",
        "user",
        "role",
        "action",
        "patient",
        "path",
        "outcome",
        "address",
    }
    by_user = admin.get("/api/audit?user=NURSE@example.org").json
    assert [e["patient"] for e in by_user] == [BOB["mrn"]]
    assert client_for("doctor").get("/api/audit").status_code == 403


def test_the_audit_export_is_csv_safe_for_spreadsheets(client_for, registry):
    doctor = client_for("doctor")
    doctor.get('/api/patients?q==HYPERLINK("http://evil")')
    export = client_for("admin").get("/admin/audit.csv")
    assert export.status_code == 200 and export.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(export.text)))
    assert rows[0] == ["at", "user", "role", "action", "patient", "path", "outcome", "address"]
    assert any("HYPERLINK" in row[5] for row in rows[1:])
    assert cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert cell("-2+3") == "'-2+3"
    assert cell("plain") == "plain"


def test_the_chart_shows_who_accessed_the_record(client_for, registry):
    client_for("nurse").get(f"/api/patients/{ADA['mrn']}")
    chart = client_for("doctor").get(f"/patients/{ADA['mrn']}")
    assert "nurse@example.org" in chart.text


def test_a_read_that_cannot_be_audited_is_not_shown(client_for, registry, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("audit table unavailable")

    monkeypatch.setattr(audit.AuditEvent, "create", broken)
    response = client_for("doctor").get(f"/api/patients/{ADA['mrn']}")
    assert response.status_code == 503
    assert "Ada" not in response.text
    assert "could not be recorded in the audit log" in response.json["message"]


def test_an_options_view_is_access_checked_and_audited(make_app, users):
    from flask import Blueprint
    from helpers import make_plugin

    from core.auth import STAFF, allow

    probe = Blueprint("probe", __name__)

    @probe.route("/probe/<mrn>", methods=["GET", "OPTIONS"])
    @allow(*STAFF)
    def secret(mrn):
        return f"secret of {mrn}"

    app = make_app(
        plugins={"probe": make_plugin("probe", caredeck_page_blueprints=lambda: [probe])}
    )
    assert app.test_client().options("/probe/X").status_code == 401


def test_head_requests_are_audited_like_get(client_for, registry):
    client_for("doctor").head("/api/patients?q=Lind")
    [event] = events(user="doctor@example.org")
    assert event["action"] == "search patients"


def test_an_anonymous_redirect_to_sign_in_is_a_denied_access(client, registry):
    assert client.get(f"/patients/{ADA['mrn']}").status_code == 302
    [event] = events(patient=ADA["mrn"])
    assert (event["user"], event["outcome"]) == (None, "denied")


def test_saving_the_edit_form_is_an_update(client_for, registry):
    from test_accounts import csrf_from

    nurse = client_for("nurse")
    form = nurse.get(f"/patients/{ADA['mrn']}/edit")
    nurse.post(
        f"/patients/{ADA['mrn']}/edit",
        data={
            "csrf_token": csrf_from(form),
            "first_name": "Ada",
            "last_name": "Lind",
            "sex": "female",
            "date_of_birth": "1950-02-03",
        },
    )
    assert [e["action"] for e in events(patient=ADA["mrn"])] == ["update", "view"]


def test_an_admin_reading_a_patients_access_history_is_itself_audited(client_for, registry):
    client_for("admin").get(f"/api/audit?patient={ADA['mrn']}")
    [event] = events(patient=ADA["mrn"])
    assert (event["user"], event["action"]) == ("admin@example.org", "search audit")


def test_an_absurd_page_number_is_a_clear_422(client_for, registry):
    response = client_for("doctor").get("/api/patients?page=100000000000000000000")
    assert response.status_code == 422
    assert response.json["errors"] == {"query": {"page": ["Must be at most 100000."]}}


def test_behind_a_trusted_proxy_the_client_address_is_audited(make_app, users):
    app = make_app(TRUSTED_PROXIES="1")
    with database.connection_context():
        Patient.create(**ADA)
    from core.auth.models import ApiToken

    with database.connection_context():
        token, _ = ApiToken.issue(User.find("doctor@example.org"))
    app.test_client().get(
        f"/api/patients/{ADA['mrn']}",
        headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "10.9.8.7"},
    )
    [event] = events(patient=ADA["mrn"])
    assert event["address"] == "10.9.8.7"
