"""The API's promises: one error shape, JSON 404s, 401 by default, offline docs."""

import logging
import re

import pytest
from flask.views import MethodView
from flask_smorest import Blueprint
from hello_plugin import plugin as hello
from helpers import make_plugin, sqlite_url

from core.auth import STAFF, allow

ERROR_KEYS = {"code", "status", "message", "errors"}
PUBLIC_API = {
    "/api/auth/token",
    "/api/auth/signup",
    "/api/openapi.json",
    "/api/docs/",
    "/api/docs/assets/<path:filename>",
}


@pytest.fixture
def caredeck_database_url(tmp_path):
    return sqlite_url(tmp_path)  # the HTTP surface does not depend on the database


def faulty_plugin():
    blp = Blueprint("faulty", __name__, url_prefix="/api/faulty")

    @blp.route("/boom")
    class Boom(MethodView):
        @allow(*STAFF)
        def get(self):
            raise RuntimeError("secret internal detail")

    return make_plugin("faulty", caredeck_api_blueprints=lambda: [blp])


@pytest.fixture
def caredeck_plugins():
    return {"hello": hello, "faulty": faulty_plugin()}


def test_every_api_route_but_auth_and_docs_answers_401_without_credentials(app, client):
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/") or rule.rule in PUBLIC_API:
            continue
        path = re.sub(r"<int:[^>]+>", "1", rule.rule)
        path = re.sub(r"<(?:[^:>]+:)?[^>]+>", "x", path)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            response = client.open(path, method=method)
            assert response.status_code == 401, f"{method} {rule.rule}"
            assert set(response.json) == ERROR_KEYS
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            checked += 1
    assert checked >= 4


def test_the_public_routes_answer_without_credentials(client):
    assert client.get("/api/openapi.json").status_code == 200
    assert client.get("/api/docs/").status_code == 200
    assert client.get("/healthz").status_code == 200


def test_an_unknown_api_route_is_a_json_404(client):
    response = client.get("/api/no-such-thing")
    assert response.status_code == 404
    assert response.json == {
        "code": 404,
        "status": "Not Found",
        "message": response.json["message"],
        "errors": {},
    }


def test_an_unknown_page_is_an_html_404(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "404" in response.text


def test_a_wrong_method_is_a_json_405_with_allow(client):
    response = client.put("/api/auth/token")
    assert response.status_code == 405
    assert set(response.json) == ERROR_KEYS
    assert "POST" in response.headers["Allow"]


def test_a_422_names_each_bad_field(client):
    response = client.post("/api/auth/token", json={"email": "not-an-email"})
    assert response.status_code == 422
    body = response.json
    assert set(body) == ERROR_KEYS
    assert set(body["errors"]["json"]) == {"email", "password"}
    assert "email: Not a valid email address." in body["message"]
    assert "password: Missing data for required field." in body["message"]


def test_a_body_that_is_not_json_is_refused_clearly(client):
    response = client.post("/api/auth/token", data="{", content_type="application/json")
    assert response.status_code in (400, 422)
    assert set(response.json) == ERROR_KEYS


def test_an_unexpected_error_is_a_json_500_without_details(client_for, caplog):
    response = client_for("doctor").get("/api/faulty/boom", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 500
    assert set(response.json) == ERROR_KEYS
    assert "secret internal detail" not in response.text
    assert "req-42" in response.json["message"]
    assert "secret internal detail" in caplog.text  # logged for the operators


def test_every_request_is_logged_on_one_line_with_its_id(client, caplog):
    caplog.set_level(logging.INFO, logger="caredeck.request")
    response = client.get("/healthz")
    request_id = response.headers["X-Request-ID"]
    [line] = [r.getMessage() for r in caplog.records if r.name == "caredeck.request"]
    assert re.fullmatch(
        rf"request_id={request_id} method=GET path=/healthz status=200 duration_ms=\d+\.\d",
        line,
    )


def test_a_hostile_request_id_is_replaced(client):
    response = client.get("/healthz", headers={"X-Request-ID": "x status=200 forged=1"})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_the_openapi_document_describes_plugins_and_bearer_auth(client):
    spec = client.get("/api/openapi.json").json
    assert spec["openapi"].startswith("3.")
    assert "/api/hello/greetings" in spec["paths"]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearerAuth": []}]
    assert spec["paths"]["/api/auth/token"]["post"]["security"] == []
    assert "HelloGreeting" in spec["components"]["schemas"]


def test_the_docs_ui_loads_only_local_assets(client):
    page = client.get("/api/docs/").text
    sources = re.findall(r'<(?:script src|link rel="stylesheet" href)="([^"]+)"', page)
    assert sources, "the docs page references its assets"
    assert all(source.startswith("/") for source in sources), sources
    for source in sources:
        assert client.get(source).status_code == 200, source
    assert "<script>" not in page  # no inline script (Content-Security-Policy friendly)


def test_a_newline_in_the_path_cannot_forge_a_log_line(client, caplog):
    caplog.set_level(logging.INFO, logger="caredeck.request")
    client.get("/healthz%0A2026-01-01 INFO caredeck.request forged")
    [line] = [r.getMessage() for r in caplog.records if r.name == "caredeck.request"]
    assert "\n" not in line and "\\n2026-01-01" in line
