"""The example plugin's own tests, written as a plugin author would, with core.testing."""

import pytest
from hello_plugin import plugin
from hello_plugin.models import HelloGreeting

from core.db import database
from core.testing import assert_migrations_create, run_jobs


@pytest.fixture
def caredeck_plugins():
    return {"hello": plugin}


def test_migrations_create_the_model(app):
    assert_migrations_create(app, "hello")


def test_a_nurse_leaves_a_greeting_and_the_job_delivers_it(app, client_for):
    nurse = client_for("nurse")
    created = nurse.post("/api/hello/greetings", json={"message": "Get well soon"})
    assert created.status_code == 201, created.json
    assert created.json["message"] == "Get well soon — the ward"
    assert created.json["delivered_at"] is None

    run_jobs(app)

    listed = nurse.get("/api/hello/greetings").json
    assert listed[0]["delivered_at"] is not None
    with database.connection_context():
        assert HelloGreeting.select().count() == 1


def test_an_admin_reads_but_may_not_write(client_for):
    admin = client_for("admin")
    assert admin.get("/api/hello/greetings").status_code == 200
    refused = admin.post("/api/hello/greetings", json={"message": "Hi"})
    assert refused.status_code == 403


def test_a_patient_user_may_not_read(client_for):
    assert client_for("patient").get("/api/hello/greetings").status_code == 403


def test_an_empty_message_is_refused_naming_the_field(client_for):
    response = client_for("doctor").post("/api/hello/greetings", json={"message": ""})
    assert response.status_code == 422
    assert "message" in response.json["errors"]["json"]
    assert response.json["message"].startswith("The request is invalid: message:")


def test_the_page_and_the_chart_section_render(app, client_for):
    doctor = client_for("doctor")
    doctor.post("/api/hello/greetings", json={"message": "Morning"})
    page = doctor.get("/hello/")
    assert page.status_code == 200
    assert "Morning — the ward" in page.text
    section = doctor.get("/patients/MRN-000123/sections/hello")
    assert section.status_code == 200
    assert "Hello, patient MRN-000123" in section.text
    assert "1 greeting(s)" in section.text


def test_the_signature_setting_is_read_from_the_environment(make_app, monkeypatch):
    monkeypatch.setenv("CAREDECK_HELLO_SIGNATURE", "(night shift)")
    app = make_app()
    assert app.config["HELLO_SIGNATURE"] == "(night shift)"
