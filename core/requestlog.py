"""One log line per request: request id, method, path, status, duration."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, g, request

log = logging.getLogger("caredeck.request")
# A caller's request id is echoed only when it looks like one (no log injection).
VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def init_app(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.request_started = time.perf_counter()

    @app.after_request
    def _log(response):
        started = g.get("request_started")
        duration_ms = (time.perf_counter() - started) * 1000 if started else 0.0
        request_id = g.get("request_id", "-")
        response.headers["X-Request-ID"] = request_id
        log.info(
            "request_id=%s method=%s path=%s status=%d duration_ms=%.1f",
            request_id,
            request.method,
            printable(request.path),
            response.status_code,
            duration_ms,
        )
        return response


def printable(text: str) -> str:
    """``text`` with control characters escaped, so a request cannot forge a log line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def configure(level: str) -> None:
    """Plain one-line logs to stderr, once per process."""
    root = logging.getLogger()
    if not any(getattr(h, "_caredeck", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handler._caredeck = True
        root.addHandler(handler)
    root.setLevel(level)
