"""Bearer tokens: issued for active accounts only, stored hashed, expiring, revocable."""

import datetime

import pytest

from core.auth.access import hash_token
from core.auth.models import ApiToken, User
from core.db import database, utcnow
from core.testing import ROLE_PASSWORD


def token_for(client, email, password=ROLE_PASSWORD):
    return client.post("/api/auth/token", json={"email": email, "password": password})


def test_an_active_user_exchanges_email_and_password_for_a_token(client, users):
    response = token_for(client, "Doctor@Example.org")  # emails are case-insensitive
    assert response.status_code == 200
    body = response.json
    assert body["token_type"] == "Bearer" and body["expires_in"] == 8 * 3600
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json == {
        "email": "doctor@example.org",
        "name": "Test doctor",
        "role": "doctor",
        "status": "active",
        "patient_mrn": None,
    }


def test_the_token_is_stored_only_as_a_hash(client, users):
    token = token_for(client, "nurse@example.org").json["access_token"]
    with database.connection_context():
        stored = [t.token_hash for t in ApiToken.select()]
    assert token not in stored and hash_token(token) in stored


@pytest.mark.parametrize(
    "email, password",
    [
        ("doctor@example.org", "wrong password!"),
        ("nobody@example.org", ROLE_PASSWORD),
    ],
)
def test_wrong_credentials_get_the_same_401(client, users, email, password):
    response = token_for(client, email, password)
    assert response.status_code == 401
    assert response.json["message"] == "The email or password is wrong."


def test_a_pending_account_gets_no_token(client, app):
    with database.connection_context():
        User.create_user("new@example.org", ROLE_PASSWORD, role=None)
    response = token_for(client, "new@example.org")
    assert response.status_code == 403
    assert "waiting for an administrator's approval" in response.json["message"]


def test_an_expired_token_is_refused(client, users):
    with database.connection_context():
        token, record = ApiToken.issue(users["doctor"])
        record.expires_at = utcnow() - datetime.timedelta(seconds=1)
        record.save()
    response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_a_revoked_token_is_refused(client, users):
    with database.connection_context():
        token, record = ApiToken.issue(users["doctor"])
        record.revoke()
    assert (
        client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    )


def test_a_disabled_users_tokens_stop_working(client, users):
    with database.connection_context():
        token, _ = ApiToken.issue(users["nurse"])
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/auth/me", headers=headers).status_code == 200
    with database.connection_context():
        User.update(status="disabled").where(User.id == users["nurse"].id).execute()
    assert client.get("/api/auth/me", headers=headers).status_code == 401


def test_a_service_token_does_not_expire(client, users):
    with database.connection_context():
        token, record = ApiToken.issue(
            users["admin"], lifetime=None, kind="service", label="LIS bridge"
        )
    assert record.expires_at is None
    assert (
        client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    )


def test_a_malformed_authorization_header_is_a_401(client, users):
    for header in ("Bearer", "Basic dXNlcjpwYXNz", "Bearer    ", "cd_nonsense"):
        assert client.get("/api/auth/me", headers={"Authorization": header}).status_code == 401
