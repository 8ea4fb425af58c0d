"""The example third-party plugin, installed into a fresh virtualenv as a user would."""

import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello_plugin"


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A new virtualenv that sees this environment's packages (caredeck, its dependencies)
    but not its installed plugins, with the example plugin installed from its folder."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
    Path(purelib, "caredeck-parent.pth").write_text(lines)
    source = root / "src"  # a copy: building writes egg-info next to the sources
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    subprocess.run(
        # No dependencies to fetch: caredeck comes from the parent environment. The build
        # backend (setuptools) is fetched into pip's isolated build environment.
        [python, "-m", "pip", "install", "--quiet", "--no-deps", str(source)],
        check=True,
    )
    return python


def caredeck(python, instance, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDECK_")}
    env["CAREDECK_INSTANCE_PATH"] = str(instance)
    return subprocess.run(
        [python, "-m", "core", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_entry_point_loads_the_plugin(venv, tmp_path):
    listed = caredeck(venv, tmp_path, "plugins")
    assert listed.returncode == 0, listed.stderr
    assert "hello 1.0.0 (caredeck-hello)" in listed.stdout
    assert "actor: hello.deliver" in listed.stdout
    assert "chart section: hello" in listed.stdout


def test_its_table_is_migrated_its_route_documented_and_its_actor_run(venv, tmp_path):
    upgraded = caredeck(venv, tmp_path, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "hello: applied 0001_greetings" in upgraded.stdout

    script = textwrap.dedent("""
        from core.app import create_app
        from core.auth.models import ApiToken, User
        from core.db import database
        from core.testing import run_jobs

        app = create_app()
        client = app.test_client()
        assert "/api/hello/greetings" in client.get("/api/openapi.json").json["paths"]
        with database.connection_context():
            user = User.create_user("n@example.org", "x" * 12, role="nurse", status="active")
            token, _ = ApiToken.issue(user)
        auth = {"Authorization": "Bearer " + token}
        created = client.post("/api/hello/greetings", json={"message": "Hi"}, headers=auth)
        assert created.status_code == 201, created.json
        run_jobs(app)
        [greeting] = client.get("/api/hello/greetings", headers=auth).json
        assert greeting["delivered_at"], greeting
        assert client.get("/hello/", headers=auth).status_code == 200
        print("end to end: ok")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDECK_")}
    env["CAREDECK_INSTANCE_PATH"] = str(tmp_path)
    result = subprocess.run(
        [venv, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "end to end: ok" in result.stdout


def test_disabling_it_with_caredeck_plugins(venv, tmp_path):
    env_result = subprocess.run(
        [venv, "-m", "core", "plugins"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("CAREDECK_")},
            "CAREDECK_INSTANCE_PATH": str(tmp_path),
            "CAREDECK_PLUGINS": "",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert env_result.stdout.strip() == "No plugins enabled."
