"""Organizations' EHR credentials, encrypted at rest.

Stored sealed (Fernet: AES-128-CBC with HMAC-SHA256) under a key derived from the app's
``SECRET_KEY``, so that neither a database dump, a backup nor a SQL debug log (peewee logs
every statement's parameters at DEBUG) shows them. Unsealed only when a connector sends a
request. Changing ``SECRET_KEY`` makes the stored credentials unreadable: deliveries to
those organizations fail saying so, until an admin enters the credentials again.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from flask import current_app

LABEL = b"caredeck-ehr-credentials-v1"


class CredentialsUnreadable(Exception):  # noqa: N818
    """The stored credentials were sealed under another secret key."""


def _fernet() -> Fernet:
    secret = str(current_app.config["SECRET_KEY"]).encode()
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(LABEL + secret).digest()))


def seal(plain: str | None) -> str | None:
    return None if plain is None else _fernet().encrypt(plain.encode()).decode()


def unseal(sealed: str | None) -> str | None:
    if sealed is None:
        return None
    try:
        return _fernet().decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise CredentialsUnreadable(
            "The stored credentials cannot be read (the secret key changed since they were "
            "entered); an administrator enters them again."
        ) from None
