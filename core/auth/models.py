"""Users and API tokens. Secrets are stored only as hashes."""

from __future__ import annotations

import datetime
import secrets

import peewee
from werkzeug.security import check_password_hash, generate_password_hash

from core.auth.access import ROLES, hash_token
from core.db import Model, UTCDateTimeField, utcnow

STATUSES = ("pending", "active", "disabled")
USER_TOKEN_LIFETIME = datetime.timedelta(hours=8)
# Checked against when the email is unknown, so that a wrong email takes as long as a
# wrong password and does not reveal which accounts exist.
_DUMMY_HASH = generate_password_hash("caredeck-timing-equaliser")


class User(Model):
    email = peewee.CharField(max_length=254, unique=True)  # stored lower-cased
    name = peewee.CharField(max_length=200)
    role = peewee.CharField(max_length=16, null=True)  # None until an admin gives one
    status = peewee.CharField(max_length=16, default="pending")
    password_hash = peewee.CharField(max_length=255)
    created_at = UTCDateTimeField(default=utcnow)
    last_login_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "core_users"

    @classmethod
    def create_user(
        cls, email: str, password: str, *, name: str = "", role=None, status: str = "pending"
    ) -> User:
        if role is not None and role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        return cls.create(
            email=email.strip().lower(),
            name=name or email.split("@")[0],
            role=role,
            status=status,
            password_hash=generate_password_hash(password),
        )

    @classmethod
    def find(cls, email: str) -> User | None:
        return cls.get_or_none(cls.email == email.strip().lower())

    @classmethod
    def authenticate(cls, email: str, password: str) -> User | None:
        """The user with this email and password, whatever their status, or ``None``."""
        user = cls.find(email)
        if user is None:
            check_password_hash(_DUMMY_HASH, password)
            return None
        return user if check_password_hash(user.password_hash, password) else None

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    @property
    def is_active(self) -> bool:
        return self.status == "active" and self.role in ROLES


class ApiToken(Model):
    user = peewee.ForeignKeyField(User, backref="tokens", on_delete="CASCADE")
    token_hash = peewee.CharField(max_length=64, unique=True)
    kind = peewee.CharField(max_length=16, default="user")  # "user" or "service"
    label = peewee.CharField(max_length=200, default="")
    created_at = UTCDateTimeField(default=utcnow)
    expires_at = UTCDateTimeField(null=True)  # None: until revoked (service tokens)
    revoked_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "core_api_tokens"

    @classmethod
    def issue(
        cls,
        user: User,
        *,
        lifetime: datetime.timedelta | None = USER_TOKEN_LIFETIME,
        kind: str = "user",
        label: str = "",
    ) -> tuple[str, ApiToken]:
        """Create a token; returns the secret (shown once, never stored) and the record."""
        secret = "cd_" + secrets.token_urlsafe(32)
        record = cls.create(
            user=user,
            token_hash=hash_token(secret),
            kind=kind,
            label=label,
            expires_at=utcnow() + lifetime if lifetime else None,
        )
        return secret, record

    @classmethod
    def user_for(cls, token_hash: str) -> User | None:
        """The active user owning a valid (unexpired, unrevoked) token with this hash."""
        record = (
            cls.select(cls, User)
            .join(User)
            .where(cls.token_hash == token_hash, cls.revoked_at.is_null())
            .first()
        )
        if record is None or not record.user.is_active:
            return None
        if record.expires_at is not None and record.expires_at <= utcnow():
            return None
        return record.user

    def revoke(self) -> None:
        self.revoked_at = utcnow()
        self.save()
