"""The sandbox EHR inside the app, and the demo: a demo delivery reaches the sandbox end to
end, through the real actor, over real HTTP (the app served on a local port)."""

import socket
import threading

import pytest
from ehr_support import TEST_SETTINGS
from werkzeug.serving import make_server

from core.db import database
from core.patients.demo import load_demo_patients
from core.testing import run_jobs
from plugins.ehr import demo, sandbox
from plugins.ehr import plugin as ehr
from plugins.ehr.models import Delivery, Organization, PatientLink, Question, SandboxReceipt


@pytest.fixture
def caredeck_plugins():
    return {"ehr": ehr}


@pytest.fixture
def app(make_app):
    """The app, served on a free local port, with the demo loaded; its sandbox at that port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = make_app(EHR_SANDBOX_URL=f"http://127.0.0.1:{port}/ehr-sandbox", **TEST_SETTINGS)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with app.app_context(), database.connection_context():
        load_demo_patients()
        demo.load(app)
    try:
        yield app
    finally:
        server.shutdown()
        thread.join(10)


def test_a_demo_delivery_reaches_the_sandbox_end_to_end(app, client_for):
    submitted = client_for("nurse").post(
        "/api/patients/DEMO-0001/questionnaire-responses",
        json={
            "answers": {"symptoms": "Tos y fiebre", "family_history": "Diabetes (padre)"},
            "language": "es",
        },
    )
    assert submitted.status_code == 202, submitted.json
    run_jobs(app)
    with app.app_context(), database.connection_context():
        received = sandbox.receipts()
        states = [d.state for d in Delivery.select().order_by(Delivery.sequence)]
    assert states == ["sent", "sent"]
    assert [(r.endpoint, r.ehr_patient_id, r.payload) for r in reversed(received)] == [
        ("family_history", "SBX-1001", {"family_history": "Diabetes (padre)"}),
        ("symptoms", "SBX-1001", {"symptoms": "Tos y fiebre"}),
    ]
    listed = client_for("doctor").get("/api/patients/DEMO-0001/questionnaire-responses").json
    assert listed[0]["state"] == "sent"


def test_the_sandbox_checks_its_token_patient_and_idempotency_key(app):
    client = app.test_client()
    token = app.config["EHR_SANDBOX_TOKEN"]
    body = {"patient_id": "SBX-1002", "fields": {"symptoms": "Cough"}}
    auth = {"Authorization": f"Bearer {token}", "Idempotency-Key": "k-1"}
    assert client.post("/ehr-sandbox/symptoms", json=body).status_code == 401
    wrong = {**auth, "Authorization": "Bearer nope"}
    assert client.post("/ehr-sandbox/symptoms", json=body, headers=wrong).status_code == 401
    unknown = client.post(
        "/ehr-sandbox/symptoms", json={**body, "patient_id": "SBX-9"}, headers=auth
    )
    assert unknown.status_code == 404
    assert unknown.json == {"message": "The sandbox EHR has no patient 'SBX-9'."}
    assert client.post("/ehr-sandbox/vitals", json=body, headers=auth).status_code == 404
    no_key = {"Authorization": f"Bearer {token}"}
    assert client.post("/ehr-sandbox/symptoms", json=body, headers=no_key).status_code == 400
    first = client.post("/ehr-sandbox/symptoms", json=body, headers=auth)
    again = client.post("/ehr-sandbox/symptoms", json=body, headers=auth)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json == {"received": first.json["received"], "duplicate": True}
    with database.connection_context():
        assert SandboxReceipt.select().count() == 1
    identity = client.get("/ehr-sandbox/patients/SBX-1002", headers=auth)
    assert identity.json == {
        "patient_id": "SBX-1002",
        "name": "Tomás Ferreira",
        "date_of_birth": "1988-11-17",
    }
    with database.connection_context():
        from core.audit import AuditEvent

        audited = [
            (e.action, e.patient, e.outcome) for e in AuditEvent.select().order_by(AuditEvent.id)
        ]
    assert ("ehr sandbox receive", "DEMO-0002", "allowed") in audited
    assert ("ehr sandbox identity", "DEMO-0002", "allowed") in audited
    assert ("ehr sandbox receive", None, "denied") in audited  # the wrong token


def test_the_demo_is_idempotent_and_follows_the_settings(app):
    with app.app_context(), database.connection_context():
        demo.load(app)
        demo.load(app)
        [organization] = Organization.select()
        assert organization.connector == "sandbox"
        assert organization.base_url == app.config["EHR_SANDBOX_URL"]
        assert organization.credential() == app.config["EHR_SANDBOX_TOKEN"]
        assert PatientLink.select().count() == 3
        questions = list(Question.select().order_by(Question.position))
    assert len(questions) == 6
    assert questions[0].field == "symptoms" and questions[0].required
    assert all(q.text_en and q.text_es for q in questions)
