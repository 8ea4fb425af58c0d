"""``caredeck publish``: every invalid line reported and kept aside, the valid ones published."""

import json
import uuid

import pytest
from click.testing import CliRunner
from helpers import consume_everything

from core.cli import cli
from core.db import database
from plugins.medications import plugin as medications
from plugins.medications.models import MedicationEvent

pytestmark = pytest.mark.parametrize("caredeck_database_url", ["sqlite"], indirect=True)


@pytest.fixture
def caredeck_plugins():
    return {"medications": medications}


@pytest.fixture
def settings(caredeck_config):
    suffix = uuid.uuid4().hex[:8]
    return {
        **caredeck_config,
        "MEDICATIONS_EXCHANGE": f"test-{suffix}.medications",
        "MEDICATIONS_QUEUE": f"test-{suffix}.medications.events",
    }


@pytest.fixture
def app(make_app, settings):
    return make_app(**settings)


@pytest.fixture
def publish(app, settings, monkeypatch):
    """``publish(args..., input=...)``: the command as an operator runs it (memory bus)."""
    for name, value in settings.items():
        monkeypatch.setenv(f"CAREDECK_{name}", value)
    monkeypatch.setenv("CAREDECK_PLUGINS", "medications")

    def run(*args, input=None):
        return CliRunner().invoke(cli, ["publish", *args], input=input, catch_exceptions=False)

    return run


def stored():
    with database.connection_context():
        return list(
            MedicationEvent.select(MedicationEvent.patient_mrn, MedicationEvent.action).tuples()
        )


def test_the_sample_file_publishes_eleven_and_reports_three(app, publish, tmp_path):
    source = tmp_path / "events.jsonl"
    source.write_bytes(medications.SAMPLE_EVENTS.read_bytes())
    result = publish(str(source))
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "line 12: event_time: Not an ISO 8601 time: use e.g. 2024-11-20T08:00:00+00:00.",
        "line 13: action: Unknown action 'pause': use one of start, stop, cancel_start, "
        "cancel_stop.",
        "line 14: The event is empty: it needs patient_id, medication, action and event_time.",
        f"Published 11 events; rejected 3 (written to {source}.rejects.jsonl).",
    ]
    rejects = [json.loads(line) for line in (tmp_path / "events.jsonl.rejects.jsonl").open()]
    assert [(r["line"], r["input"]) for r in rejects] == [
        (12, source.read_text().splitlines()[11]),
        (13, source.read_text().splitlines()[12]),
        (14, "{}"),
    ]
    consume_everything(app)
    assert len(stored()) == 11


def test_a_clean_file_exits_zero_and_writes_no_rejects(app, publish, tmp_path):
    source = tmp_path / "clean.jsonl"
    source.write_text(
        '{"patient_id": "A-1", "medication": "Heparin", "action": "start", '
        '"event_time": "2024-11-20T08:00:00+00:00"}\r\n\r\n'
    )
    result = publish(str(source))
    assert (result.exit_code, result.output) == (0, "Published 1 event; none rejected.\n")
    assert not (tmp_path / "clean.jsonl.rejects.jsonl").exists()


def test_a_json_array_from_standard_input(app, publish, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = [
        {"p_id": "A-1", "medication_name": "Insulin", "action": "start", "event_time": t}
        for t in ("2024-11-20T07:00:00+0000", "yesterday")
    ]
    result = publish("-", input=json.dumps(events, indent=2))
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        "line 2: event_time: Not an ISO 8601 time: use e.g. 2024-11-20T08:00:00+00:00."
    )
    assert (tmp_path / "medication-events.rejects.jsonl").exists()
    consume_everything(app)
    assert stored() == [("A-1", "start")]


def test_csv_with_a_header_row(app, publish, tmp_path):
    source = tmp_path / "events.csv"
    source.write_text(
        "\ufeffevent_time,action,medication,patient_id,event_id\n"
        "2024-11-20T08:00:00+00:00,start,Heparin,A-1,\n"
        "2024-11-20T09:00:00+00:00,stop,Heparin,A-1,x-2\n"
        "2024-11-20T10:00:00+00:00,stop,,A-1,\n"
        "2024-11-20T10:00:00+00:00,stop,Heparin,A-1,x-3,surplus\n"
    )
    result = publish(str(source), "--rejects", str(tmp_path / "bad.jsonl"))
    assert result.exit_code == 1
    assert result.output.splitlines()[:2] == [
        "line 4: medication: Missing: the medication (medication, or medication_name).",
        "line 5: The row has more cells than the header.",
    ]
    consume_everything(app)
    assert sorted(stored()) == [("A-1", "start"), ("A-1", "stop")]


def test_lines_that_are_not_json(app, publish, tmp_path):
    source = tmp_path / "events.jsonl"
    source.write_text(
        '{"patient_id": "A-1", "medication": "X", "action": "stop", '
        '"event_time": "2024-11-20T08:00:00Z"}\n'
        "{not json\n"
        "[1, 2]\n"
    )
    result = publish(str(source))
    assert result.output.splitlines()[:2] == [
        "line 2: Not JSON: Expecting property name enclosed in double quotes (column 2).",
        "line 3: An event is a JSON object, not list.",
    ]


def test_an_unreachable_bus_is_a_clear_error(app, publish, monkeypatch, tmp_path):
    monkeypatch.setenv("CAREDECK_AMQP_URL", "amqp://guest:guest@127.0.0.1:9//")
    monkeypatch.setattr("core.messaging.PUBLISH_RETRIES", 0)
    source = tmp_path / "events.jsonl"
    source.write_bytes(medications.SAMPLE_EVENTS.read_bytes())
    result = publish(str(source))
    assert result.exit_code == 1
    assert "The message bus is unavailable" in result.output
    assert "run the command again" in result.output


def test_a_line_that_is_not_utf8_is_rejected_and_the_rest_published(app, publish, tmp_path):
    source = tmp_path / "export.jsonl"
    latin = (
        '{"patient_id": "A-1", "medication": "Ibuprof\u00e8ne", "action": "start", '
        '"event_time": "2024-11-20T08:00:00Z"}\n'
    )
    clean = latin.replace("\u00e8", "e").replace("start", "stop")
    source.write_bytes(latin.encode("cp1252") + clean.encode())
    result = publish(str(source))
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        "line 1: Not utf-8 text (byte 0xe8 at column 45); give the file's encoding with --encoding."
    )
    (reject,) = [json.loads(line) for line in (tmp_path / "export.jsonl.rejects.jsonl").open()]
    assert reject["input"].startswith('{"patient_id": "A-1", "medication": "Ibuprof\\xe8ne"')
    again = publish(str(source), "--encoding", "cp1252", "--rejects", str(tmp_path / "r"))
    assert again.exit_code == 0
    consume_everything(app)
    with database.connection_context():
        names = sorted(row.medication for row in MedicationEvent.select())
    assert names == ["Ibuprofene", "Ibuprofène"]  # the clean line stored once, not twice
