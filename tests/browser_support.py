"""What the browser tests share: Chromium's launch options, ``caredeck serve --demo`` in a
subprocess, and signing in."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
# Chromium, as root, in a closed network: no sandbox, nothing phoned home at start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_or_skip() -> str:
    if shutil.which(CHROMIUM):
        return CHROMIUM
    message = f"{CHROMIUM} is not installed (apt-get install chromium)"
    if os.environ.get("CAREDECK_REQUIRE_SERVICES") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def demo_server(instance: Path, sandbox_ehr: bool = False) -> Iterator[dict]:
    """``caredeck serve --demo`` on a fresh instance folder, as the README's first line.

    Yields ``{"base", "instance", "credentials"}`` (credentials by email). With
    ``sandbox_ehr`` the demo's sandbox organization points at this very server, so EHR
    deliveries arrive without leaving the machine.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDECK_")}
    env["CAREDECK_INSTANCE_PATH"] = str(instance)
    if sandbox_ehr:
        env["CAREDECK_EHR_SANDBOX_URL"] = f"{base}/ehr-sandbox"
    log = open(instance / "serve.log", "w")  # noqa: SIM115 (closed below)
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "core", "serve", "--demo", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() - started > 60:
                raise AssertionError(
                    "caredeck serve --demo did not serve /healthz within 60 s:\n"
                    + (instance / "serve.log").read_text()
                )
            time.sleep(0.2)
        print(f"/healthz answered {time.monotonic() - started:.1f} s after start")
        credentials = json.loads((instance / "demo-credentials.json").read_text())
        yield {"base": base, "instance": instance, "credentials": credentials}
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()


def sign_in(page, base: str, email: str, password: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")
