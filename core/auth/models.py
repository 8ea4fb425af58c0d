"""Users and API tokens. Secrets are stored only as hashes."""

from __future__ import annotations

import datetime
import logging
import secrets

import peewee
from werkzeug.security import check_password_hash, generate_password_hash

from core.auth.access import ROLES, hash_token
from core.db import Model, UTCDateTimeField, utcnow

log = logging.getLogger("caredeck.auth")

STATUSES = ("pending", "active", "disabled")
USER_TOKEN_LIFETIME = datetime.timedelta(hours=8)
SESSION_LIFETIME = datetime.timedelta(hours=12)  # absolute: a shift, then sign in again
SESSION_IDLE_TIMEOUT = datetime.timedelta(minutes=30)
# Writing last_used_at on every request would make every page view a write; a minute's
# precision is plenty for an idle timeout of half an hour.
LAST_USED_PRECISION = datetime.timedelta(minutes=1)
LOCKOUT_THRESHOLD = 5  # consecutive failed sign-ins
LOCKOUT_DURATION = datetime.timedelta(minutes=15)
# Checked against when the email is unknown, so that a wrong email takes as long as a
# wrong password and does not reveal which accounts exist.
_DUMMY_HASH = generate_password_hash("caredeck-timing-equaliser")


class AccountLocked(Exception):
    """Too many failed sign-ins; the account is locked until ``until``."""

    def __init__(self, until: datetime.datetime) -> None:
        super().__init__(f"locked until {until.isoformat()}")
        self.until = until

    @property
    def minutes_left(self) -> int:
        return max(1, round((self.until - utcnow()).total_seconds() / 60))


class User(Model):
    email = peewee.CharField(max_length=254, unique=True)  # stored lower-cased
    name = peewee.CharField(max_length=200)
    role = peewee.CharField(max_length=16, null=True)  # None until an admin gives one
    status = peewee.CharField(max_length=16, default="pending")
    password_hash = peewee.CharField(max_length=255)
    created_at = UTCDateTimeField(default=utcnow)
    last_login_at = UTCDateTimeField(null=True)
    patient_mrn = peewee.CharField(max_length=64, null=True)  # a patient user's own record
    failed_logins = peewee.IntegerField(default=0)
    locked_until = UTCDateTimeField(null=True)

    class Meta:
        table_name = "core_users"

    @classmethod
    def create_user(
        cls,
        email: str,
        password: str,
        *,
        name: str = "",
        role=None,
        status: str = "pending",
        patient_mrn: str | None = None,
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
            patient_mrn=patient_mrn,
        )

    @classmethod
    def find(cls, email: str) -> User | None:
        return cls.get_or_none(cls.email == email.strip().lower())

    @classmethod
    def authenticate(cls, email: str, password: str) -> User | None:
        """The user with this email and password, whatever their status, or ``None``.

        Counts consecutive failures; raises :class:`AccountLocked` while the account is
        locked (even for the right password), so guessing stops after a few tries.
        """
        user = cls.find(email)
        if user is None:
            check_password_hash(_DUMMY_HASH, password)
            return None
        if user.locked_until is not None and user.locked_until > utcnow():
            raise AccountLocked(user.locked_until)
        this = cls.id == user.id
        if not check_password_hash(user.password_hash, password):
            # Counted in the database, not in Python, so parallel guesses all count; and
            # only these columns are written, so an admin's change made meanwhile stays.
            cls.update(failed_logins=cls.failed_logins + 1).where(this).execute()
            locked = (
                cls.update(failed_logins=0, locked_until=utcnow() + LOCKOUT_DURATION)
                .where(this, cls.failed_logins >= LOCKOUT_THRESHOLD)
                .execute()
            )
            if locked:
                log.warning(
                    "account %r locked after %d failed sign-ins", user.email, LOCKOUT_THRESHOLD
                )
            return None
        cls.update(failed_logins=0, locked_until=None, last_login_at=utcnow()).where(this).execute()
        return cls.get(this)

    def set_password(self, password: str) -> None:
        """Set a new password; every session and token of the user ends."""
        self.password_hash = generate_password_hash(password)
        self.failed_logins = 0
        self.locked_until = None
        self.save(only=[User.password_hash, User.failed_logins, User.locked_until])
        self.revoke_all()

    def revoke_all(self) -> None:
        ApiToken.update(revoked_at=utcnow()).where(
            ApiToken.user == self, ApiToken.revoked_at.is_null()
        ).execute()

    @property
    def is_active(self) -> bool:
        return self.status == "active" and self.role in ROLES


class ApiToken(Model):
    user = peewee.ForeignKeyField(User, backref="tokens", on_delete="CASCADE")
    token_hash = peewee.CharField(max_length=64, unique=True)
    kind = peewee.CharField(max_length=16, default="user")  # user, service or session
    label = peewee.CharField(max_length=200, default="")
    created_at = UTCDateTimeField(default=utcnow)
    expires_at = UTCDateTimeField(null=True)  # None: until revoked (service tokens)
    revoked_at = UTCDateTimeField(null=True)
    last_used_at = UTCDateTimeField(null=True)

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
    def find_valid(cls, token_hash: str, kinds: tuple[str, ...]) -> ApiToken | None:
        """The token with this hash if it is of one of ``kinds``, unexpired, unrevoked, not
        idle too long (browser sessions), and its user is active; notes its use."""
        record = (
            cls.select(cls, User)
            .join(User)
            .where(cls.token_hash == token_hash, cls.revoked_at.is_null(), cls.kind.in_(kinds))
            .first()
        )
        now = utcnow()
        if record is None or not record.user.is_active:
            return None
        if record.expires_at is not None and record.expires_at <= now:
            return None
        last_used = record.last_used_at or record.created_at
        if record.kind == "session" and now - last_used > SESSION_IDLE_TIMEOUT:
            return None
        if now - last_used > LAST_USED_PRECISION:
            cls.update(last_used_at=now).where(cls.id == record.id).execute()
        return record

    def revoke(self) -> None:
        self.revoked_at = utcnow()
        self.save()
