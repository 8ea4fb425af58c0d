"""Sessions and tokens refused when they should be: tampered, forged, replayed, of a disabled
account. (Issue, expiry and revocation of bearer tokens are in test_auth.py; the session's
cookie flags, idle and absolute timeouts and CSRF are in test_accounts.py.)

A bearer token is a random secret looked up by its hash, so "wrong signature" means a token
this server never issued. A session cookie is signed by Flask and holds a session token that
is looked up the same way, so it must pass both: the signature, and the server's record.
"""

import re

import pytest
from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from core.auth.access import SESSION_KEY, hash_token
from core.auth.models import SESSION_LIFETIME, ApiToken, User
from core.db import database
from core.testing import ROLE_PASSWORD

COOKIE = "caredeck_session"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def api_token(client, role: str) -> str:
    answer = client.post(
        "/api/auth/token", json={"email": f"{role}@example.org", "password": ROLE_PASSWORD}
    )
    assert answer.status_code == 200
    return answer.json["access_token"]


def sign_in(client, role: str) -> str:
    """Sign in through the login page; returns the session cookie's value."""
    page = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    form = {"email": f"{role}@example.org", "password": ROLE_PASSWORD, "csrf_token": csrf}
    assert client.post("/login", data=form).status_code == 302
    assert signed_in(client)
    return client.get_cookie(COOKIE).value


def signed_in(client) -> bool:
    """A page answers the browser rather than sending it to the sign-in page."""
    response = client.get("/")
    if response.status_code == 302:
        assert response.headers["Location"].startswith("/login")
        return False
    assert response.status_code == 200
    return True


def with_cookie(app, value: str):
    client = app.test_client()
    client.set_cookie(COOKIE, value)
    return client


def cookie_signed_with(secret_key: str, data: dict) -> str:
    """A session cookie as Flask would sign it with ``secret_key``."""
    signer = Flask("forger")
    signer.secret_key = secret_key
    return SecureCookieSessionInterface().get_signing_serializer(signer).dumps(data)


def flip(text: str, index: int) -> str:
    """``text`` with one character changed."""
    replacement = "A" if text[index] != "A" else "B"
    return text[:index] + replacement + text[index + 1 :]


# Bearer tokens ----------------------------------------------------------------------------


def test_a_tampered_bearer_token_is_refused(client, users):
    token = api_token(client, "doctor")
    assert client.get("/api/auth/me", headers=bearer(token)).status_code == 200
    for tampered in (flip(token, len(token) - 1), flip(token, 5), token[:-1], token + "A"):
        response = client.get("/api/auth/me", headers=bearer(tampered))
        assert response.status_code == 401, tampered
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_token_this_server_never_issued_is_refused(app, client, users):
    """Well-formed tokens that no one issued here: another deployment's, and the JWTs a
    client might try (unsigned, or signed with a guessed key)."""
    forged = [
        "cd_" + "A" * 43,
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbkBleGFtcGxlLm9yZyIsInJvbGUiOiJhZG1pbiJ9.",
        "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYWRtaW4ifQ.c2lnbmVkLXdpdGgtYS1ndWVzc2VkLWtleQ",
        app.config["SECRET_KEY"],
    ]
    for token in forged:
        assert client.get("/api/auth/me", headers=bearer(token)).status_code == 401, token


def test_the_stored_hash_of_a_token_is_not_a_token(client, users):
    """Someone who reads the token table (a backup, a leak) cannot use what is stored."""
    token = api_token(client, "admin")
    assert client.get("/api/auth/me", headers=bearer(hash_token(token))).status_code == 401


def test_a_bearer_token_is_read_only_from_the_authorization_header(client, users):
    token = api_token(client, "admin")
    assert client.get(f"/api/auth/me?access_token={token}").status_code == 401
    assert client.get("/api/auth/me", headers={"X-Access-Token": token}).status_code == 401
    client.set_cookie("access_token", token)
    assert client.get("/api/auth/me").status_code == 401


def test_a_browser_session_token_is_not_a_bearer_token(app, client, users):
    sign_in(client, "nurse")
    with database.connection_context():
        session_tokens = ApiToken.select().where(ApiToken.kind == "session").count()
    assert session_tokens == 1
    # The secret inside the cookie, were it stolen, does not open the API.
    secret = app.session_interface.get_signing_serializer(app).loads(
        client.get_cookie(COOKIE).value
    )[SESSION_KEY]
    assert app.test_client().get("/api/auth/me", headers=bearer(secret)).status_code == 401


def test_a_revoked_service_token_is_refused(client, client_for, users):
    admin = client_for("admin")
    created = admin.post(
        "/api/auth/service-tokens", json={"email": "nurse@example.org", "label": "LIS bridge"}
    ).json
    token = created["access_token"]
    assert client.get("/api/auth/me", headers=bearer(token)).status_code == 200
    assert admin.delete(f"/api/auth/service-tokens/{created['id']}").status_code == 204
    assert client.get("/api/auth/me", headers=bearer(token)).status_code == 401


# Session cookies --------------------------------------------------------------------------


def test_a_tampered_session_cookie_is_refused(app, client, users):
    cookie = sign_in(client, "nurse")
    payload, _, signature = cookie.rpartition(".")
    tampered = [
        flip(cookie, 3),  # the payload
        f"{payload}.{flip(signature, 0)}",  # the signature
        payload + ".",  # no signature
        cookie[:-4],  # cut short
    ]
    for value in tampered:
        assert not signed_in(with_cookie(app, value)), value
    assert signed_in(with_cookie(app, cookie))  # the genuine cookie still works


def test_a_session_cookie_signed_with_another_key_is_refused(app, client, users):
    """Even holding a real session token, a cookie not signed with this server's key is
    ignored: e.g. one minted with a default or leaked key of another installation."""
    cookie = sign_in(client, "admin")
    secret = app.session_interface.get_signing_serializer(app).loads(cookie)[SESSION_KEY]
    forged = cookie_signed_with("another-installation-secret-key-0123456789", {SESSION_KEY: secret})
    assert not signed_in(with_cookie(app, forged))


def test_a_correctly_signed_cookie_needs_a_session_the_server_issued(app, users):
    """The signature alone is not enough: the token inside must be a live session of ours,
    not a made-up one, nor an API token moved into a cookie."""
    key = app.config["SECRET_KEY"]
    with database.connection_context():
        api_secret, _ = ApiToken.issue(users["admin"])
        service_secret, _ = ApiToken.issue(
            users["admin"], lifetime=None, kind="service", label="bridge"
        )
    for secret in ("cd_" + "A" * 43, api_secret, service_secret):
        assert not signed_in(with_cookie(app, cookie_signed_with(key, {SESSION_KEY: secret})))
    with database.connection_context():
        session_secret, _ = ApiToken.issue(
            users["admin"], lifetime=SESSION_LIFETIME, kind="session"
        )
    assert signed_in(with_cookie(app, cookie_signed_with(key, {SESSION_KEY: session_secret})))


def test_a_cookie_replayed_after_sign_out_is_refused_and_the_session_is_revoked(app, client, users):
    cookie = sign_in(client, "doctor")
    page = client.get("/logout")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 200
    with database.connection_context():
        sessions = list(ApiToken.select().where(ApiToken.kind == "session"))
    assert len(sessions) == 1 and sessions[0].revoked_at is not None
    assert not signed_in(with_cookie(app, cookie))
    # Whoever holds the old cookie also holds its CSRF token; still they cannot act (the
    # dead session is cleared before the CSRF check, which then finds no token: a 400).
    change = {
        "current": ROLE_PASSWORD,
        "password": "mango tide parcel lamp",
        "password_confirm": "mango tide parcel lamp",
        "csrf_token": csrf,
    }
    refused = with_cookie(app, cookie).post("/account/password", data=change)
    assert refused.status_code in (400, 401)
    assert api_token(app.test_client(), "doctor")  # the password is unchanged


def test_signing_in_again_gives_a_new_session_not_the_old_one(app, client, users):
    """No session fixation: a cookie planted before sign-in is not the one signed in."""
    planted = client.get_cookie(COOKIE)
    first = sign_in(client, "nurse")
    second = sign_in(app.test_client(), "nurse")
    assert first != second and (planted is None or planted.value not in (first, second))


# Disabled accounts -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["api", "page"])
def test_a_disabled_users_sessions_and_tokens_stop_working(app, client, client_for, users, how):
    browser = app.test_client()
    cookie = sign_in(browser, "nurse")
    token = api_token(client, "nurse")
    with database.connection_context():
        service, _ = ApiToken.issue(users["nurse"], lifetime=None, kind="service", label="x")
    for secret in (token, service):
        assert client.get("/api/auth/me", headers=bearer(secret)).status_code == 200

    nurse_id = users["nurse"].id
    if how == "api":
        answer = client_for("admin").patch(f"/api/users/{nurse_id}", json={"status": "disabled"})
        assert answer.status_code == 200
    else:
        admin = app.test_client()
        sign_in(admin, "admin")
        page = admin.get("/admin/users")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        answer = admin.post(
            f"/admin/users/{nurse_id}", data={"action": "disable", "csrf_token": csrf}
        )
        assert answer.status_code in (200, 302), answer.text
    with database.connection_context():
        assert User.get_by_id(nurse_id).status == "disabled"

    assert not signed_in(browser)
    assert not signed_in(with_cookie(app, cookie))
    for secret in (token, service):
        assert client.get("/api/auth/me", headers=bearer(secret)).status_code == 401
    assert (
        client.post(
            "/api/auth/token", json={"email": "nurse@example.org", "password": ROLE_PASSWORD}
        ).status_code
        == 403
    )

    # Enabling the account again does not bring the old sessions and tokens back.
    client_for("admin").patch(f"/api/users/{nurse_id}", json={"status": "active"})
    assert not signed_in(with_cookie(app, cookie))
    for secret in (token, service):
        assert client.get("/api/auth/me", headers=bearer(secret)).status_code == 401
