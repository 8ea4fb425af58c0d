"""Settings: embedded defaults, environment overrides, one sentence for each bad value."""

import multiprocessing
import os
import stat

import pytest

from core.config import CORE_SETTINGS, ConfigError, Setting, read_settings, redact


def read(environ, overrides=None):
    return read_settings(CORE_SETTINGS, overrides, environ)


def test_a_fresh_machine_gets_embedded_backends_under_the_instance_folder(tmp_path):
    settings = read({"CAREDECK_INSTANCE_PATH": str(tmp_path)})
    assert settings["DATABASE_URL"] == f"sqlite:///{tmp_path}/caredeck.db"
    assert settings["AMQP_URL"] == "filesystem://"
    assert settings["DRAMATIQ_URL"] == "stub://"
    assert settings["REDIS_URL"] == "memory://"
    assert settings["SMTP_URL"] == f"file://{tmp_path}/outbox"
    assert settings["STORAGE_URL"] == f"file://{tmp_path}/files"
    assert settings["TIMEZONE"] == "UTC"
    assert settings["PLUGINS"] is None  # every installed plugin


def test_an_embedded_secret_key_is_generated_once_and_kept_private(tmp_path):
    first = read({"CAREDECK_INSTANCE_PATH": str(tmp_path)})["SECRET_KEY"]
    second = read({"CAREDECK_INSTANCE_PATH": str(tmp_path)})["SECRET_KEY"]
    assert first == second and len(first) >= 32
    mode = stat.S_IMODE(os.stat(tmp_path / "secret_key").st_mode)
    assert mode == 0o600


def _secret_key_when_released(folder, barrier, results) -> None:
    barrier.wait()
    try:
        results.put(read({"CAREDECK_INSTANCE_PATH": folder})["SECRET_KEY"])
    except Exception as error:  # noqa: BLE001 (reported to the test)
        results.put(f"{type(error).__name__}: {error}")


def test_processes_starting_at_once_share_one_embedded_secret_key(tmp_path):
    """gunicorn's workers boot together: each must read the one key, none may fail on it
    (one did: it found the file created by another and refused to create it again)."""
    context = multiprocessing.get_context("fork")
    for attempt in range(10):
        folder = str(tmp_path / str(attempt))
        barrier, results = context.Barrier(6), context.Queue()
        workers = [
            context.Process(target=_secret_key_when_released, args=(folder, barrier, results))
            for _ in range(6)
        ]
        for worker in workers:
            worker.start()
        keys = [results.get(timeout=30) for _ in workers]
        for worker in workers:
            worker.join(30)
        assert len(set(keys)) == 1 and len(keys[0]) >= 32, keys
        assert os.listdir(folder) == ["secret_key"]  # no draft left behind


def test_production_values_come_from_the_same_settings(tmp_path):
    settings = read(
        {
            "CAREDECK_INSTANCE_PATH": str(tmp_path),
            "CAREDECK_DATABASE_URL": "postgresql://caredeck:pw@db:5432/caredeck",
            "CAREDECK_AMQP_URL": "amqp://guest:guest@mq:5672//",
            "CAREDECK_DRAMATIQ_URL": "redis://cache:6379/0",
            "CAREDECK_SECRET_KEY": "k" * 40,
            "CAREDECK_TIMEZONE": "Europe/Berlin",
            "CAREDECK_PLUGINS": "monitoring, medications",
        }
    )
    assert settings["DATABASE_URL"].startswith("postgresql://")
    assert settings["PLUGINS"] == ["monitoring", "medications"]
    assert settings["TIMEZONE"] == "Europe/Berlin"


def test_a_server_database_requires_a_secret_key(tmp_path):
    with pytest.raises(ConfigError) as raised:
        read(
            {
                "CAREDECK_INSTANCE_PATH": str(tmp_path),
                "CAREDECK_DATABASE_URL": "postgresql://db/caredeck",
            }
        )
    assert str(raised.value) == (
        "CAREDECK_SECRET_KEY is required but not set: Signs sessions and tokens; "
        "required with a server database."
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "CAREDECK_TIMEZONE",
            "Mars/Olympus",
            "CAREDECK_TIMEZONE must be an IANA time zone such as UTC or Europe/Berlin; "
            "got 'Mars/Olympus'.",
        ),
        (
            "CAREDECK_DRAMATIQ_URL",
            "rabbit://mq",
            "CAREDECK_DRAMATIQ_URL must be a URL starting with stub:// or redis:// or rediss://; "
            "got 'rabbit://mq'.",
        ),
        (
            "CAREDECK_SECRET_KEY",
            "short",
            "CAREDECK_SECRET_KEY must be at least 32 characters long (use a random value); "
            "got '(hidden)'.",
        ),
        (
            "CAREDECK_LOG_LEVEL",
            "loud",
            "CAREDECK_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR; got 'loud'.",
        ),
    ],
)
def test_a_malformed_setting_is_one_sentence_naming_it(tmp_path, variable, value, message):
    with pytest.raises(ConfigError) as raised:
        read({"CAREDECK_INSTANCE_PATH": str(tmp_path), variable: value})
    assert str(raised.value) == message


def test_a_password_in_a_bad_url_is_never_printed(tmp_path):
    with pytest.raises(ConfigError) as raised:
        read(
            {
                "CAREDECK_INSTANCE_PATH": str(tmp_path),
                "CAREDECK_DATABASE_URL": "mysql://admin:hunter2@db/caredeck",
            }
        )
    assert "hunter2" not in str(raised.value)
    assert "mysql://admin:***@db/caredeck" in str(raised.value)


def test_overrides_win_over_the_environment(tmp_path):
    settings = read(
        {"CAREDECK_INSTANCE_PATH": str(tmp_path), "CAREDECK_TIMEZONE": "UTC"},
        {"TIMEZONE": "Europe/Paris"},
    )
    assert settings["TIMEZONE"] == "Europe/Paris"


def test_a_required_plugin_setting_names_its_variable():
    setting = Setting("LABS_ENDPOINT", None, help="The LIS base URL.")
    with pytest.raises(ConfigError) as raised:
        read_settings([setting], environ={})
    assert str(raised.value) == "CAREDECK_LABS_ENDPOINT is required but not set: The LIS base URL."


def test_redact_hides_only_the_password():
    assert redact("amqp://guest:guest@mq:5672//") == "amqp://guest:***@mq:5672//"
    assert redact("redis://cache:6379/0") == "redis://cache:6379/0"
