"""The caredeck command, run as an operator would (settings from the environment)."""

import pytest
from click.testing import CliRunner

from core.cli import cli


@pytest.fixture
def run(caredeck_config, monkeypatch):
    """``run("db", "upgrade")``: the command with the test settings in the environment."""
    for name, value in caredeck_config.items():
        monkeypatch.setenv(f"CAREDECK_{name}", value)
    monkeypatch.delenv("CAREDECK_PLUGINS", raising=False)

    def invoke(*args, input=None, env=None):
        return CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=False)

    return invoke


def test_db_upgrade_is_idempotent(run):
    first = run("db", "upgrade")
    assert first.exit_code == 0, first.output
    assert "core: applied 0001_users_and_tokens" in first.output
    second = run("db", "upgrade")
    assert second.output.strip().endswith("Database is up to date (0 migration(s) applied).")
    assert run("db", "status").exit_code == 0


def test_db_status_fails_while_migrations_are_pending(run):
    result = run("db", "status")
    assert result.exit_code == 1
    assert "core: pending 0001_users_and_tokens" in result.output


def test_users_create_makes_an_active_user(run):
    run("db", "upgrade")
    created = run(
        "users",
        "create",
        "Ward.Doctor@Example.org",
        "--role",
        "doctor",
        "--name",
        "Dr Ward",
        "--password-stdin",
        input="a long enough password\n",
    )
    assert created.exit_code == 0, created.output
    assert "Created doctor ward.doctor@example.org" in created.output
    again = run("users", "create", "ward.doctor@example.org", "--role", "nurse")
    assert again.exit_code == 1
    assert "already exists" in again.output


def test_users_create_refuses_a_short_password(run):
    run("db", "upgrade")
    result = run(
        "users", "create", "x@example.org", "--role", "nurse", "--password-stdin", input="short\n"
    )
    assert result.exit_code == 2
    assert "at least 12 characters" in result.output


def test_seed_is_idempotent_and_prints_what_it_set(run):
    run("db", "upgrade")
    first = run("seed")
    assert first.exit_code == 0
    lines = first.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["admin", "doctor", "nurse", "patient"]
    assert all(len(line.split()[2]) >= 12 for line in lines)
    second = run("seed")
    assert second.output.count("(already existed; password unchanged)") == 4


def test_plugins_lists_what_is_loaded(run):
    result = run("plugins")
    assert result.exit_code == 0
    assert "monitoring 0.1.0 (caredeck)" in result.output  # built in, through its entry point
    assert "  command: ingest" in result.output
    assert "monitoring_admissions" in result.output


def test_an_empty_allow_list_enables_no_plugin(run):
    result = run("plugins", env={"CAREDECK_PLUGINS": ""})
    assert result.output.strip() == "No plugins enabled."


def test_a_bad_setting_is_one_line_and_exit_status_2(run):
    result = run("plugins", env={"CAREDECK_TIMEZONE": "Atlantis/Lost"})
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: CAREDECK_TIMEZONE must be an IANA time zone such as UTC or Europe/Berlin; "
        "got 'Atlantis/Lost'."
    )


def test_a_plugin_that_is_not_installed_is_one_line(run):
    result = run("plugins", env={"CAREDECK_PLUGINS": "radiology"})
    assert result.exit_code == 2
    assert result.output.strip().startswith(
        "Error: CAREDECK_PLUGINS names plugin 'radiology', which is not installed (installed: "
    )
    assert "monitoring" in result.output


def test_a_separate_worker_needs_a_real_broker(run):
    result = run("worker")
    assert result.exit_code == 2
    assert "CAREDECK_DRAMATIQ_URL is stub://" in result.output


def test_consume_needs_a_plugin_with_queues(run):
    result = run("consume", env={"CAREDECK_PLUGINS": "monitoring"})
    assert result.exit_code == 2
    assert "No enabled plugin consumes a queue" in result.output
