"""Accounts end to end: sign-up, approval, sign-in pages, sessions, lockout, limits, admin."""

import datetime
import re

import pytest

from core.auth import passwords
from core.auth.models import LOCKOUT_THRESHOLD, SESSION_IDLE_TIMEOUT, ApiToken, User
from core.db import database, utcnow
from core.testing import ROLE_PASSWORD

STRONG = "mango tide parcel lamp"


def csrf_from(page) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def signed_out(client) -> bool:
    """A page sends a signed-out browser to the sign-in page."""
    response = client.get("/")
    return response.status_code == 302 and response.headers["Location"].startswith("/login")


def sign_in_page(client, email, password=ROLE_PASSWORD):
    token = csrf_from(client.get("/login"))
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


# Password rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password, reason",
    [
        ("short", "Use at least 12 characters."),
        ("qwerty123456", "This password is on a list of common passwords; choose another."),
        ("aaaaaaaaaaaaaaa", "Try a longer phrase of unrelated words."),
        ("x" * 257, "Use at most 256 characters."),
    ],
)
def test_weak_passwords_are_refused_with_the_reason(password, reason):
    [problem] = passwords.problems(password, email="ana@example.org", name="Ana Silva")
    assert problem.endswith(reason)


def test_a_password_made_of_the_users_own_email_is_refused():
    assert passwords.problems("ana.silva@example.org", email="ana.silva@example.org")


def test_a_long_passphrase_is_accepted():
    assert passwords.problems(STRONG, email="ana@example.org", name="Ana Silva") == []


# Sign-up and approval -------------------------------------------------------------------


def test_signup_page_creates_a_pending_account_that_cannot_sign_in(client):
    token = csrf_from(client.get("/signup"))
    page = client.post(
        "/signup",
        data={
            "name": "Ana Silva",
            "email": "Ana@Example.org",
            "password": STRONG,
            "password_confirm": STRONG,
            "csrf_token": token,
        },
    )
    assert page.status_code == 200
    assert "waiting for an administrator" in page.text
    with database.connection_context():
        user = User.find("ana@example.org")
        assert (user.status, user.role) == ("pending", None)
    refused = sign_in_page(client, "ana@example.org", STRONG)
    assert refused.status_code == 403
    assert "waiting for an administrator&#39;s approval" in refused.text


def test_signup_errors_are_shown_next_to_each_field(client):
    token = csrf_from(client.get("/signup"))
    page = client.post(
        "/signup",
        data={
            "name": "",
            "email": "not-an-email",
            "password": "short",
            "password_confirm": "different",
            "csrf_token": token,
        },
    )
    assert page.status_code == 422
    assert 'id="name-error"' in page.text and 'id="email-error"' in page.text
    assert "Use at least 12 characters." in page.text
    assert "The two passwords differ." in page.text
    assert 'value="not-an-email"' in page.text  # what was typed is kept


def test_signup_for_an_existing_email_looks_the_same_and_changes_nothing(client, users):
    answer = client.post(
        "/api/auth/signup",
        json={"name": "Impostor", "email": "doctor@example.org", "password": STRONG},
    )
    assert answer.status_code == 202 and answer.json["status"] == "pending"
    with database.connection_context():
        assert User.find("doctor@example.org").name == "Test doctor"
    assert sign_in_page(client, "doctor@example.org").status_code == 302


def test_an_admin_approves_an_account_through_the_api(client, client_for):
    client.post(
        "/api/auth/signup",
        json={"name": "Ana Silva", "email": "ana@example.org", "password": STRONG},
    )
    admin = client_for("admin")
    [pending] = admin.get("/api/users?status=pending").json
    no_role = admin.patch(f"/api/users/{pending['id']}", json={"status": "active"})
    assert no_role.status_code == 422
    assert no_role.json["message"] == "Give the account a role before activating it."
    approved = admin.patch(
        f"/api/users/{pending['id']}", json={"status": "active", "role": "nurse"}
    )
    assert approved.status_code == 200 and approved.json["role"] == "nurse"
    token = client.post("/api/auth/token", json={"email": "ana@example.org", "password": STRONG})
    assert token.status_code == 200


def test_users_api_is_for_admins_only(client_for):
    for role in ("doctor", "nurse", "patient"):
        assert client_for(role).get("/api/users").status_code == 403


def test_an_admin_cannot_lock_themselves_out(client_for, users):
    response = client_for("admin").patch(
        f"/api/users/{users['admin'].id}", json={"status": "disabled"}
    )
    assert response.status_code == 422


def test_disabling_an_account_ends_its_tokens_at_once(client, client_for, users):
    nurse = client_for("nurse")
    assert nurse.get("/api/auth/me").status_code == 200
    client_for("admin").patch(f"/api/users/{users['nurse'].id}", json={"status": "disabled"})
    assert nurse.get("/api/auth/me").status_code == 401


def test_a_password_reset_gives_a_temporary_password_and_ends_sessions(client, client_for, users):
    doctor = client_for("doctor")
    reset = client_for("admin").post(f"/api/users/{users['doctor'].id}/password-reset")
    temporary = reset.json["temporary_password"]
    assert doctor.get("/api/auth/me").status_code == 401
    fresh = client.post(
        "/api/auth/token", json={"email": "doctor@example.org", "password": temporary}
    )
    assert fresh.status_code == 200


def test_a_patient_user_is_linked_to_an_existing_record_only(client_for, users):
    admin = client_for("admin")
    missing = admin.patch(f"/api/users/{users['patient'].id}", json={"patient_mrn": "NOPE-1"})
    assert missing.status_code == 422
    assert missing.json["message"] == "There is no patient with MRN NOPE-1."
    admin.post(
        "/api/patients",
        json={
            "mrn": "MRN-7",
            "first_name": "Eva",
            "last_name": "Lund",
            "date_of_birth": "1980-01-01",
            "sex": "female",
        },
    )
    linked = admin.patch(f"/api/users/{users['patient'].id}", json={"patient_mrn": "MRN-7"})
    assert linked.status_code == 200 and linked.json["patient_mrn"] == "MRN-7"


# Sessions -------------------------------------------------------------------------------


def test_sign_in_sets_a_hardened_session_cookie_and_sign_out_ends_it_on_the_server(client, users):
    response = sign_in_page(client, "nurse@example.org")
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie
    assert client.get("/").status_code == 200
    stolen = client.get_cookie("caredeck_session").value

    token = csrf_from(client.get("/logout"))
    assert client.post("/logout", data={"csrf_token": token}).status_code == 200
    assert signed_out(client)
    # The cookie from before sign-out is dead on the server, not only in this browser.
    client.set_cookie("caredeck_session", stolen)
    assert signed_out(client)


def test_a_session_ends_after_being_idle(client, users):
    sign_in_page(client, "nurse@example.org")
    with database.connection_context():
        idle = utcnow() - SESSION_IDLE_TIMEOUT - datetime.timedelta(seconds=1)
        ApiToken.update(last_used_at=idle).where(ApiToken.kind == "session").execute()
    assert signed_out(client)


def test_a_session_ends_at_its_absolute_lifetime(client, users):
    sign_in_page(client, "nurse@example.org")
    with database.connection_context():
        ApiToken.update(expires_at=utcnow() - datetime.timedelta(seconds=1)).where(
            ApiToken.kind == "session"
        ).execute()
    assert signed_out(client)


def test_the_session_cookie_does_not_authenticate_the_api(client, users):
    sign_in_page(client, "nurse@example.org")
    assert client.get("/").status_code == 200
    assert client.get("/api/auth/me").status_code == 401


def test_a_form_post_without_csrf_token_is_refused(client, users):
    sign_in_page(client, "nurse@example.org")
    response = client.post("/logout")
    assert response.status_code == 400
    assert "CSRF" in response.text
    assert client.get("/").status_code == 200  # still signed in


def test_the_login_form_itself_needs_the_csrf_token(client, users):
    response = client.post("/login", data={"email": "nurse@example.org", "password": ROLE_PASSWORD})
    assert response.status_code == 400


def test_next_only_redirects_within_the_site(client, users):
    token = csrf_from(client.get("/login"))
    response = client.post(
        "/login?next=https://evil.example/",
        data={"email": "nurse@example.org", "password": ROLE_PASSWORD, "csrf_token": token},
    )
    assert response.headers["Location"] == "/"


# Lockout and rate limits ------------------------------------------------------------------


def test_repeated_failures_lock_the_account_even_for_the_right_password(client, users, caplog):
    for _ in range(LOCKOUT_THRESHOLD):
        wrong = client.post(
            "/api/auth/token", json={"email": "nurse@example.org", "password": "wrong password!"}
        )
        assert wrong.status_code == 401
    right = client.post(
        "/api/auth/token", json={"email": "nurse@example.org", "password": ROLE_PASSWORD}
    )
    assert right.status_code == 403
    assert "locked after repeated failed sign-ins" in right.json["message"]
    assert "account 'nurse@example.org' locked" in caplog.text


def test_an_unknown_email_is_answered_like_a_locked_account(client):
    answers = [
        client.post("/api/auth/token", json={"email": "ghost@example.org", "password": "guess"})
        for _ in range(LOCKOUT_THRESHOLD + 1)
    ]
    assert [a.status_code for a in answers] == [401] * LOCKOUT_THRESHOLD + [403]
    assert "locked after repeated failed sign-ins" in answers[-1].json["message"]


def test_parallel_failures_all_count_towards_the_lockout(app, users):
    from concurrent.futures import ThreadPoolExecutor

    def fail(_):
        with database.connection_context():
            return User.authenticate("nurse@example.org", "wrong password!")

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(fail, range(LOCKOUT_THRESHOLD)))
    with database.connection_context():
        assert User.find("nurse@example.org").locked_until is not None


def test_a_failed_sign_in_does_not_undo_an_admins_change(app, users):
    with database.connection_context():
        stale = User.find("nurse@example.org")
        User.update(status="disabled").where(User.id == stale.id).execute()
        User.authenticate("nurse@example.org", "wrong password!")
        assert User.find("nurse@example.org").status == "disabled"


def test_approving_again_unlocks(client, client_for, users):
    for _ in range(LOCKOUT_THRESHOLD):
        client.post("/api/auth/token", json={"email": "nurse@example.org", "password": "nope"})
    client_for("admin").patch(f"/api/users/{users['nurse'].id}", json={"status": "active"})
    right = client.post(
        "/api/auth/token", json={"email": "nurse@example.org", "password": ROLE_PASSWORD}
    )
    assert right.status_code == 200


def test_sign_in_attempts_are_rate_limited_per_account(client, users):
    def attempt():
        body = {"email": "doctor@example.org", "password": "wrong password!"}
        return client.post("/api/auth/token", json=body)

    statuses = [attempt().status_code for _ in range(12)]
    # Five failures, then the lockout (403), then the rate limit (429) after ten attempts.
    assert statuses == [401] * 5 + [403] * 5 + [429, 429]
    assert "Too many sign-in attempts from this account" in attempt().json["message"]


# Tokens -----------------------------------------------------------------------------------


def test_an_api_client_signs_out_by_revoking_its_token(client, users):
    token = client.post(
        "/api/auth/token", json={"email": "doctor@example.org", "password": ROLE_PASSWORD}
    ).json["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.delete("/api/auth/token", headers=headers).status_code == 204
    assert client.get("/api/auth/me", headers=headers).status_code == 401


def test_admins_create_list_and_revoke_service_tokens(client, client_for):
    admin = client_for("admin")
    created = admin.post(
        "/api/auth/service-tokens", json={"email": "nurse@example.org", "label": "LIS bridge"}
    )
    assert created.status_code == 201
    secret = created.json["access_token"]
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/auth/me", headers=headers).json["role"] == "nurse"
    listed = admin.get("/api/auth/service-tokens").json
    assert [t["label"] for t in listed] == ["LIS bridge"]
    assert all("access_token" not in t for t in listed)
    assert admin.delete(f"/api/auth/service-tokens/{created.json['id']}").status_code == 204
    assert client.get("/api/auth/me", headers=headers).status_code == 401
    assert client_for("doctor").get("/api/auth/service-tokens").status_code == 403


# Headers ----------------------------------------------------------------------------------


def test_every_response_carries_the_security_headers(client):
    for path in ("/login", "/api/openapi.json", "/no-such-page", "/api/docs/"):
        headers = client.get(path).headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "same-origin"
    assert "unsafe-inline" not in client.get("/login").headers["Content-Security-Policy"]


# The administrators' page ---------------------------------------------------------------


def admin_page_post(client, user_id, **form):
    token = csrf_from(client.get("/admin/users"))
    return client.post(f"/admin/users/{user_id}", data={"csrf_token": token, **form})


def test_activating_without_choosing_a_role_is_refused(client, users):
    with database.connection_context():
        pending = User.create_user("eve@example.org", STRONG, role=None)
    sign_in_page(client, "admin@example.org")
    page = admin_page_post(client, pending.id, action="activate", role="")
    assert page.status_code == 422
    assert "Give the account a role before activating it." in page.text
    with database.connection_context():
        assert User.find("eve@example.org").status == "pending"


def test_an_unknown_action_changes_nothing(client, users):
    sign_in_page(client, "admin@example.org")
    with database.connection_context():
        User.update(status="disabled").where(User.id == users["nurse"].id).execute()
    page = admin_page_post(client, users["nurse"].id, action="bogus")
    assert page.status_code == 400
    with database.connection_context():
        assert User.find("nurse@example.org").status == "disabled"


def test_a_reset_password_is_shown_once_and_never_put_in_the_cookie(client, users):
    sign_in_page(client, "admin@example.org")
    page = admin_page_post(client, users["doctor"].id, action="reset-password")
    temporary = re.search(r"doctor@example.org: (\S+) \(shown once", page.text).group(1)
    assert temporary not in (page.headers.get("Set-Cookie") or "")
    fresh = client.post(
        "/api/auth/token", json={"email": "doctor@example.org", "password": temporary}
    )
    assert fresh.status_code == 200


def test_an_admin_cannot_reset_their_own_password(client_for, users):
    response = client_for("admin").post(f"/api/users/{users['admin'].id}/password-reset")
    assert response.status_code == 422


def test_a_user_changes_their_own_password_and_other_sessions_end(client, client_for, users):
    other = client_for("nurse")
    sign_in_page(client, "nurse@example.org")
    form = client.get("/account/password")
    wrong = client.post(
        "/account/password",
        data={
            "csrf_token": csrf_from(form),
            "current": "nope",
            "password": "short",
            "password_confirm": "short",
        },
    )
    assert wrong.status_code == 422
    assert "This is not your current password." in wrong.text
    assert "Use at least 12 characters." in wrong.text
    changed = client.post(
        "/account/password",
        data={
            "csrf_token": csrf_from(form),
            "current": ROLE_PASSWORD,
            "password": STRONG,
            "password_confirm": STRONG,
        },
    )
    assert changed.status_code == 302
    assert client.get("/").status_code == 200  # this browser stays signed in
    assert other.get("/api/auth/me").status_code == 401  # every other session ended
