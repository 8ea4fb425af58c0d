"""Rate limits on signing in, per address and per account.

Built on ``limits`` (the library under Flask-Limiter) with a moving window, in memory when
embedded and in Redis in production, so that every web process shares one count. The
account lockout in ``User.authenticate`` stops password guessing against one account;
these limits also slow down guessing across many accounts from one address.
"""

from __future__ import annotations

import logging

from flask import abort, current_app, request
from limits import parse, storage, strategies

log = logging.getLogger("caredeck.auth")
PER_ADDRESS = parse("30/minute")
PER_ACCOUNT = parse("10/minute")


class SignInLimits:
    def __init__(self, storage_url: str) -> None:
        self.window = strategies.MovingWindowRateLimiter(storage.storage_from_string(storage_url))

    def check(self, email: str) -> None:
        """Count one sign-in attempt; answer 429 when the address or account is over."""
        address = request.remote_addr or "unknown"
        for limit, scope, key in (
            (PER_ADDRESS, "address", address),
            (PER_ACCOUNT, "account", email.strip().lower()),
        ):
            if not self.window.hit(limit, "caredeck-sign-in", scope, key):
                log.warning("sign-in rate limit reached for %s %s", scope, key)
                abort(
                    429,
                    f"Too many sign-in attempts from this {scope}; wait a minute and try again.",
                )


def init_app(app) -> None:
    url = app.config["REDIS_URL"]
    app.extensions["caredeck_sign_in_limits"] = SignInLimits(
        "memory://" if url.startswith("memory:") else url
    )


def check_sign_in(email: str) -> None:
    current_app.extensions["caredeck_sign_in_limits"].check(email)
