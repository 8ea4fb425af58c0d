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
SIGN_UPS_PER_ADDRESS = parse("10/hour")
# Failed sign-ins for an email that has no account: answered like an account's lockout
# (User.authenticate), so that "locked" does not reveal that an account exists.
UNKNOWN_ACCOUNT_FAILURES = parse("5/15 minutes")


class SignInLimits:
    def __init__(self, storage_url: str) -> None:
        self.window = strategies.MovingWindowRateLimiter(storage.storage_from_string(storage_url))

    def check(self, email: str) -> None:
        """Count one sign-in attempt; answer 429 when the address or account is over."""
        for limit, scope, key in (
            (PER_ADDRESS, "address", request.remote_addr or "unknown"),
            (PER_ACCOUNT, "account", email.strip().lower()),
        ):
            if not self.window.hit(limit, "caredeck-sign-in", scope, key):
                log.warning("sign-in rate limit reached for %s %r", scope, key)
                abort(
                    429,
                    f"Too many sign-in attempts from this {scope}; wait a minute and try again.",
                )

    def check_sign_up(self) -> None:
        address = request.remote_addr or "unknown"
        if not self.window.hit(SIGN_UPS_PER_ADDRESS, "caredeck-sign-up", address):
            log.warning("sign-up rate limit reached for %r", address)
            abort(429, "Too many account requests from this address; try again later.")

    def unknown_account_locked(self, email: str) -> bool:
        key = email.strip().lower()
        return not self.window.test(UNKNOWN_ACCOUNT_FAILURES, "caredeck-unknown", key)

    def unknown_account_failed(self, email: str) -> None:
        self.window.hit(UNKNOWN_ACCOUNT_FAILURES, "caredeck-unknown", email.strip().lower())


def init_app(app) -> None:
    url = app.config["REDIS_URL"]
    app.extensions["caredeck_sign_in_limits"] = SignInLimits(
        "memory://" if url.startswith("memory:") else url
    )


def sign_in_limits() -> SignInLimits:
    return current_app.extensions["caredeck_sign_in_limits"]
