"""Signed, expiring tokens: one-click unsubscribe, and links to a report's PDF.

Each kind has its own salt, so a link to a PDF can never be used to unsubscribe someone
(and the other way round). Tokens are signed with the app's ``SECRET_KEY``; rotating the
key invalidates every link sent before.
"""

from __future__ import annotations

import datetime

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

UNSUBSCRIBE = "caredeck.reporting.unsubscribe"
REPORT_LINK = "caredeck.reporting.report-link"


class TokenError(Exception):
    """The token is not valid; the message says why, for the person who followed it."""


def _serializer(salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=salt)


def make(salt: str, value: int) -> str:
    return _serializer(salt).dumps(value)


def read(salt: str, token: str, max_age: datetime.timedelta) -> int:
    try:
        value = _serializer(salt).loads(token, max_age=int(max_age.total_seconds()))
    except SignatureExpired:
        raise TokenError("This link has expired.") from None
    except BadSignature:
        raise TokenError("This link is not valid: it may have been cut short or altered.") from None
    if not isinstance(value, int):
        raise TokenError("This link is not valid.")
    return value


def unsubscribe_token(subscription_id: int) -> str:
    return make(UNSUBSCRIBE, subscription_id)


def read_unsubscribe(token: str) -> int:
    days = current_app.config["REPORTING_UNSUBSCRIBE_DAYS"]
    return read(UNSUBSCRIBE, token, datetime.timedelta(days=days))


def report_link_token(run_id: int) -> str:
    return make(REPORT_LINK, run_id)


def read_report_link(token: str) -> int:
    days = current_app.config["REPORTING_LINK_DAYS"]
    return read(REPORT_LINK, token, datetime.timedelta(days=days))
