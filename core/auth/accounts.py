"""Signing in and asking for an account: one implementation for the pages and the API."""

from __future__ import annotations

import logging

import marshmallow as ma
from werkzeug.security import generate_password_hash

from core.auth import passwords
from core.auth.limits import sign_in_limits
from core.auth.models import LOCKOUT_DURATION, AccountLocked, User

log = logging.getLogger("caredeck.auth")
LOCKOUT_MINUTES = int(LOCKOUT_DURATION.total_seconds() // 60)


class SignInRefused(Exception):
    """Why a sign-in was refused: an HTTP status and a sentence for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _locked(minutes: int) -> SignInRefused:
    return SignInRefused(
        403,
        "This account is locked after repeated failed sign-ins; try again in "
        f"{minutes} minute(s) or ask an administrator.",
    )


def sign_in(email: str, password: str) -> User:
    """The active user with these credentials, or :class:`SignInRefused`."""
    limits = sign_in_limits()
    limits.check(email)
    if limits.unknown_account_locked(email):
        raise _locked(LOCKOUT_MINUTES)
    try:
        user = User.authenticate(email, password)
    except AccountLocked as locked:
        log.warning("sign-in refused for locked account %r", email.strip().lower())
        raise _locked(locked.minutes_left) from None
    if user is None:
        log.warning("failed sign-in for %r", email.strip().lower())
        if User.find(email) is None:
            limits.unknown_account_failed(email)
        raise SignInRefused(401, "The email or password is wrong.")
    if user.status == "pending" or user.role is None:
        raise SignInRefused(
            403,
            "This account is waiting for an administrator's approval; you will be able "
            "to sign in once it is approved.",
        )
    if not user.is_active:
        raise SignInRefused(403, "This account is disabled; ask an administrator.")
    return user


class CoreSignupSchema(ma.Schema):
    name = ma.fields.String(
        required=True,
        validate=ma.validate.Length(
            min=1, max=200, error="Enter your name (up to 200 characters)."
        ),
    )
    email = ma.fields.Email(
        required=True, error_messages={"invalid": "Enter a valid email address."}
    )
    password = ma.fields.String(
        required=True, load_only=True, metadata={"description": "At least 12 characters."}
    )

    @ma.validates_schema(skip_on_field_errors=False)  # report every field's problem at once
    def _password_rules(self, data, **kwargs):
        reasons = passwords.problems(
            data.get("password", ""), email=data.get("email", ""), name=data.get("name", "")
        )
        if reasons:
            raise ma.ValidationError(reasons, field_name="password")


def request_account(name: str, email: str, password: str) -> None:
    """Create a pending account (no role, no access until an admin approves it).

    An email that already has an account is answered exactly like a new one, so the form
    cannot be used to find out who has an account; nothing about the existing one changes.
    """
    sign_in_limits().check_sign_up()
    if User.find(email) is not None:
        generate_password_hash(password)  # take as long as creating an account would
        log.info("sign-up for an existing account %r ignored", email.strip().lower())
        return
    User.create_user(email, password, name=name.strip(), role=None, status="pending")
    log.info("account requested by %r", email.strip().lower())


PENDING_MESSAGE = (
    "Thank you. Your account request was received and is waiting for an administrator's "
    "approval; you will be able to sign in once it is approved."
)
