"""The first README line as a new user runs it, and the API docs in headless Chromium."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

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


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``caredeck serve --demo`` on a fresh instance folder, as the README's first line."""
    instance = tmp_path_factory.mktemp("instance")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDECK_")}
    env["CAREDECK_INSTANCE_PATH"] = str(instance)
    log = open(instance / "serve.log", "w")  # noqa: SIM115 (closed below)
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "core", "serve", "--demo", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
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
        yield {"base": base, "instance": instance}
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()


def test_the_demo_prints_one_user_per_role(demo):
    log = (demo["instance"] / "serve.log").read_text()
    for role in ("admin", "doctor", "nurse", "patient"):
        assert f"{role}@caredeck.local" in log
    credentials = json.loads((demo["instance"] / "demo-credentials.json").read_text())
    assert len(credentials) == 4


def test_the_demo_is_ready(demo):
    with urllib.request.urlopen(f"{demo['base']}/readyz", timeout=10) as response:
        assert json.load(response)["status"] == "ready"


@pytest.mark.browser
def test_api_docs_work_in_chromium_without_leaving_the_machine(demo):
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    credentials = json.loads((demo["instance"] / "demo-credentials.json").read_text())
    request = urllib.request.Request(
        f"{demo['base']}/api/auth/token",
        data=json.dumps(
            {"email": "doctor@caredeck.local", "password": credentials["doctor@caredeck.local"]}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        token = json.load(response)["access_token"]

    hosts, console_errors = set(), []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: hosts.add(urlsplit(r.url).hostname))
            page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
            page.on("response", lambda r: r.status >= 400 and console_errors.append(r.url))
            page.goto(f"{demo['base']}/api/docs/")
            page.wait_for_selector("#operations-auth-get_api_auth_me", timeout=30_000)

            # Authorize with the bearer token, then try GET /api/auth/me from the UI.
            page.click("button.authorize")
            page.fill(".auth-container input", token)
            page.click(".auth-btn-wrapper button.authorize")
            page.click("button.btn-done")
            page.click("#operations-auth-get_api_auth_me")
            page.click("button.execute")
            status_cell = ".live-responses-table tbody .response-col_status"
            page.wait_for_selector(status_cell, timeout=15_000)
            status = page.inner_text(status_cell)
            body = page.inner_text(".live-responses-table tbody .response-col_description")
            page.screenshot(path=str(ARTIFACTS / "api-docs.png"), full_page=False)
        finally:
            browser.close()
    assert status.strip().startswith("200"), status
    assert "doctor@caredeck.local" in body
    assert hosts == {"127.0.0.1"}, f"requests left the machine: {hosts}"
    assert console_errors == []
