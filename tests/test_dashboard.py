"""The dashboard shell: navigation from plugins by role, chart sections isolated."""

import pytest
from hello_plugin import plugin as hello
from helpers import make_plugin, sqlite_url

from core.auth import STAFF
from core.dashboard import ChartSection


@pytest.fixture
def caredeck_database_url(tmp_path):
    return sqlite_url(tmp_path)


def broken_section(mrn):
    raise RuntimeError("lab system unreachable")


@pytest.fixture
def caredeck_plugins():
    flaky = make_plugin(
        "flaky",
        caredeck_chart_sections=lambda: [
            ChartSection("flaky", "Flaky", broken_section, order=1, roles=STAFF)
        ],
    )
    return {"hello": hello, "flaky": flaky}


def test_navigation_is_built_from_the_plugins_entries(client_for):
    page = client_for("nurse").get("/")
    assert page.status_code == 200
    assert '<a href="/hello/">Greetings</a>' in page.text


def test_navigation_hides_entries_a_role_may_not_use(client_for):
    page = client_for("patient").get("/")
    assert page.status_code == 200
    assert "Greetings" not in page.text


def test_a_failing_chart_section_fails_alone(client_for):
    doctor = client_for("doctor")
    failed = doctor.get("/patients/MRN-1/sections/flaky")
    assert failed.status_code == 500
    assert "could not be loaded" in failed.text
    assert "lab system unreachable" not in failed.text
    assert doctor.get("/patients/MRN-1/sections/hello").status_code == 200


def test_sections_are_ordered_and_role_checked(app, client_for):
    assert list(app.extensions["caredeck"].chart_sections) == ["flaky", "hello"]
    assert client_for("patient").get("/patients/MRN-1/sections/hello").status_code == 404


def test_pages_send_a_signed_out_browser_to_sign_in(client):
    response = client.get("/hello/?page=2")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/hello/?page%3D2"


def test_pages_load_no_inline_script(client_for):
    page = client_for("doctor").get("/hello/").text
    assert "<script>" not in page
    assert 'src="/static/caredeck.js"' in page
