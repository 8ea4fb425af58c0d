"""Ingestion of the PMS and LIS files: formats, schema changes, the ledger, S3 and the CLI."""

import datetime
import hashlib
import json
import os
import shutil
import threading
import time
import zoneinfo
from pathlib import Path

import pytest
import requests
import responses
from responses import matchers

from core.config import ConfigError
from core.db import database
from core.patients.models import MRN_RULE, Patient
from plugins.monitoring import cli, formats, ingest, plugin, sources
from plugins.monitoring.models import (
    Admission,
    Finding,
    IngestFile,
    LabResult,
    LabTest,
    LastTest,
    PmsPatient,
    RejectedRow,
)

UTC = datetime.UTC
DEMO = Path(plugin.__file__).parent / "demo_data"
REAL_FILES = ("patient_information.csv", "admissions.csv", "lab_tests.csv", "lab_results.csv")
BUCKET = "https://hospital-files.s3.eu-west-1.amazonaws.com/"
S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"

ADMISSIONS_HEADER = (
    "patient_id,hospitalization_case_number,admission_date,admission_time,release_date,"
    "release_time,department,room_number"
)
TESTS_HEADER = "test_id,patient_id,test_name,order_date,order_time,ordering_physician"
RESULTS_HEADER = (
    "result_id,test_id,result_value,result_unit,reference_range,result_status,performed_date,"
    "performed_time,reviewing_physician"
)


@pytest.fixture
def caredeck_plugins():
    return {"monitoring": plugin}


def at(*args) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


def write(path: Path, lines, mtime: float | None = None, bom: bool = False) -> Path:
    """A CSV file as the source systems write it: CRLF, no final newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\r\n".join(lines) if not isinstance(lines, str) else lines
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def run(app, source, **options) -> tuple[list[IngestFile], list[str]]:
    lines: list[str] = []
    with app.app_context():
        files = ingest.ingest_source(str(source), app=app, echo=lines.append, **options)
    return files, lines


def counts() -> dict[str, int]:
    with database.connection_context():
        return {
            "patients": PmsPatient.select().count(),
            "admissions": Admission.select().count(),
            "lab_tests": LabTest.select().count(),
            "lab_results": LabResult.select().count(),
            "core_patients": Patient.select().count(),
            "findings": Finding.select().count(),
            "last_tests": LastTest.select().count(),
        }


def expected_last_tests() -> dict[str, tuple[datetime.datetime, str | None]]:
    """Each patient's latest test ordered or performed, computed the slow way."""
    with database.connection_context():
        tests = list(LabTest.select())
        results = list(LabResult.select())
    events: dict[str, list] = {}
    by_test: dict[str, list[LabTest]] = {}
    for test in tests:
        by_test.setdefault(test.test_id, []).append(test)
        if test.ordered_at:
            events.setdefault(test.patient_id, []).append((test.ordered_at, test.test_name))
    for result in results:
        for test in by_test.get(result.test_id, []):
            if result.performed_at:
                events.setdefault(test.patient_id, []).append((result.performed_at, test.test_name))
    latest = {}
    for patient, moments in events.items():
        top = max(moment for moment, _ in moments)
        names = [name for moment, name in moments if moment == top and name is not None]
        latest[patient] = (top, min(names) if names else None)
    return latest


def stored_last_tests() -> dict[str, tuple[datetime.datetime, str | None]]:
    with database.connection_context():
        return {row.patient_id: (row.last_test_at, row.last_test_name) for row in LastTest.select()}


# The real files -------------------------------------------------------------------------------


def test_the_real_files_load_as_they_are(app, tmp_path):
    files, lines = run(app, DEMO)
    assert [f.table for f in files] == ["admissions", "lab_results", "lab_tests", "patients"]
    assert all(f.status == "applied" and f.rejected == 0 for f in files)
    assert counts() | {"findings": 0} == {
        "patients": 100,
        "admissions": 100,
        "lab_tests": 652,
        "lab_results": 652,
        "core_patients": 100,
        "findings": 0,
        "last_tests": 100,
    }
    assert "admissions.csv: admissions, 100 read, 100 inserted, 0 updated, 0 rejected" in lines
    with database.connection_context():
        duplicates = Finding.select().where(Finding.kind == "duplicate_id")
        assert sorted(f.record_key for f in duplicates) == ["18861", "27687"]
        detail = Finding.get(Finding.record_key == "18861").detail
        assert "5788496" in detail and "8563805" in detail
        # Both rows of a reused test_id are kept.
        assert LabTest.select().where(LabTest.test_id == "27687").count() == 2
        assert Finding.select().where(Finding.kind == "performed_before_order").count() > 0
        assert not Finding.select().where(Finding.kind == "release_before_admission").exists()
        # Values as the files hold them.
        open_case = Admission.get(Admission.case_number == "727851")
        assert open_case.patient_id == "7792223"
        assert open_case.admitted_at == at(2022, 3, 20, 5, 20)
        assert open_case.released_at is None and open_case.room == "305A"
        released = Admission.get(Admission.case_number == "134007")
        assert released.released_at == at(2018, 10, 21, 16, 8)
        result = LabResult.get(LabResult.result_id == "188750")
        assert result.unit == "K/uL, M/uL, g/dL, %, K/uL"  # a quoted field with commas
        assert result.reference_range is None and result.reviewing_physician is None  # NA
        assert result.performed_at == at(2024, 9, 10, 4, 6, 23)
        assert LabResult.get(LabResult.result_id == "829904").unit is None  # N/A
        last = Admission.get(Admission.case_number == "242375")  # the line without CRLF
        assert last.room == "517C" and last.department == "Internal Medicine"
        john = Patient.get(Patient.mrn == "7549164")
        assert (john.first_name, john.last_name) == ("John", "Doe")
        assert john.date_of_birth == datetime.date(1983, 7, 29)
        assert (john.primary_physician, john.insurance_provider) == (
            "Dr. Sarah Johnson",
            "BlueCross",
        )
        assert PmsPatient.get(PmsPatient.patient_id == "7549164").allergies == "Penicillin"
        assert Patient.get(Patient.mrn == "7792223").primary_physician is None  # empty cell
        ledger = IngestFile.get(IngestFile.key == "admissions.csv")
        md5 = hashlib.md5((DEMO / "admissions.csv").read_bytes()).hexdigest()  # noqa: S324
        assert (ledger.etag, ledger.rows_read, ledger.inserted) == (md5, 100, 100)
    assert stored_last_tests() == expected_last_tests()


def test_reingesting_the_real_files_changes_nothing(app, tmp_path):
    run(app, DEMO)
    before = counts()
    with database.connection_context():
        findings = Finding.select().count()
    files, lines = run(app, DEMO)
    assert files == []
    assert lines == [
        "4 file(s) already ingested (unchanged): admissions.csv, lab_results.csv, "
        "lab_tests.csv, patient_information.csv"
    ]
    # The same bytes from another folder, touched: the ledger knows them by key and MD5.
    copy = tmp_path / "copy"
    shutil.copytree(DEMO, copy)
    for name in REAL_FILES:
        os.utime(copy / name)
    files, _ = run(app, copy)
    assert files == []
    assert counts() == before
    with database.connection_context():
        assert Finding.select().count() == findings
        assert IngestFile.select().count() == 4


def test_the_same_rows_under_new_names_count_as_unchanged(app, tmp_path):
    run(app, DEMO)
    before = counts()
    renamed = tmp_path / "renamed"
    for name in REAL_FILES:
        # Different bytes (LF instead of CRLF), the same rows, a newer file.
        write(renamed / f"new_{name}", (DEMO / name).read_text().replace("\r\n", "\n"))
    files, lines = run(app, renamed)
    assert [(f.inserted, f.updated, f.rejected) for f in files] == [(0, 0, 0)] * 4
    assert (
        "new_admissions.csv: admissions, 100 read, 0 inserted, 0 updated, 0 rejected, "
        "100 unchanged" in lines
    )
    assert counts() == before
    assert stored_last_tests() == expected_last_tests()


@pytest.mark.parametrize(("first", "most"), [(7, 7), (3, 50)])
def test_small_batches_give_the_same_result(app, monkeypatch, first, most):
    monkeypatch.setattr(ingest, "FIRST_BATCH_ROWS", first)  # 3, 4, 6, 9, ... 50, 50
    monkeypatch.setattr(ingest, "BATCH_ROWS", most)
    run(app, DEMO)
    assert counts()["lab_tests"] == 652
    assert counts()["core_patients"] == 100
    with database.connection_context():
        assert Finding.select().where(Finding.kind == "duplicate_id").count() == 2
    assert stored_last_tests() == expected_last_tests()


def test_results_before_their_tests_and_tests_before_results_agree(app, tmp_path):
    for name in REAL_FILES:  # results first, then tests: the opposite of the key order
        shutil.copy(DEMO / name, tmp_path / name)
    os.utime(tmp_path / "lab_results.csv", (1_000, 1_000))
    os.utime(tmp_path / "lab_tests.csv", (2_000, 2_000))
    files, _ = run(app, tmp_path)
    assert [f.key for f in files][:2] == ["lab_results.csv", "lab_tests.csv"]
    assert stored_last_tests() == expected_last_tests()
    with database.connection_context():
        assert Finding.select().where(Finding.kind == "duplicate_id").count() == 2


def test_the_demo_hook_is_idempotent(app):
    with app.app_context(), database.connection_context():
        plugin.caredeck_demo(app)
        plugin.caredeck_demo(app)
    assert counts()["lab_results"] == 652


# Formats ------------------------------------------------------------------------------------


def test_local_times_become_utc_with_dst_handled_deterministically(make_app, tmp_path):
    app = make_app(TIMEZONE="Europe/Berlin")
    write(
        tmp_path / "a.csv",
        [
            ADMISSIONS_HEADER,
            "P1,C1,3/20/2022,5:20:00 AM,2022-03-21,16:08,Cardiology,1A",  # winter: +1
            "P2,C2,7/1/2022,12:00:00 PM,NULL,NULL,Cardiology,1B",  # summer: +2
            "P3,C3,3/27/2022,2:30:00 AM,NULL,NULL,Cardiology,1C",  # in the spring gap
            "P4,C4,10/30/2022,2:30:00 AM,NULL,NULL,Cardiology,1D",  # twice in the autumn
            "P5,C5,07/04/2022,12:05:00 am,NULL,NULL,Cardiology,1E",  # zero-padded, lower case
            "P6,C6,2022-07-04,00:05,NULL,NULL,Cardiology,1F",  # ISO date, 24-hour time
        ],
    )
    run(app, tmp_path)
    with database.connection_context():
        admitted = {a.case_number: a.admitted_at for a in Admission.select()}
        released = Admission.get(Admission.case_number == "C1").released_at
    assert admitted == {
        "C1": at(2022, 3, 20, 4, 20),
        "C2": at(2022, 7, 1, 10, 0),
        "C3": at(2022, 3, 27, 1, 30),  # fold=0: read with the offset before the change
        "C4": at(2022, 10, 30, 0, 30),  # fold=0: the first 2:30
        "C5": at(2022, 7, 3, 22, 5),
        "C6": at(2022, 7, 3, 22, 5),
    }
    assert released == at(2022, 3, 21, 15, 8)


def test_the_fast_path_for_times_agrees_with_zoneinfo_every_day():
    zone = zoneinfo.ZoneInfo("America/New_York")
    clock = formats.LocalClock("America/New_York")
    day = datetime.date(2019, 1, 1)
    times = ["12:00:00 AM", "1:30:00 AM", "2:30:00 AM", "3:00:00 AM", "11:59:59 PM"]
    while day < datetime.date(2026, 1, 1):
        text = f"{day.month}/{day.day}/{day.year}"
        for time_text in times:
            local = datetime.datetime.combine(day, datetime.time(0)) + formats.parse_time(time_text)
            expected = local.replace(tzinfo=zone, fold=0).astimezone(UTC).replace(tzinfo=None)
            date, base = clock.day(text)
            got = (
                str(base + clock.time(time_text))
                if base
                else clock.exact(date, clock.time(time_text))
            )
            assert got == str(expected), (text, time_text)
        day += datetime.timedelta(days=1)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("3/5/2020", datetime.date(2020, 3, 5)),
        ("03/05/2020", datetime.date(2020, 3, 5)),
        ("2020-03-05", datetime.date(2020, 3, 5)),
        ("2/30/2020", None),
        ("13/1/2020", None),
        ("5/3/20", None),
        ("1/1/0001", None),
        ("yesterday", None),
    ],
)
def test_dates(text, parsed):
    assert formats.parse_date(text) == parsed


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12:04:00 PM", 12 * 3600 + 240),
        ("12:04:00 AM", 240),
        ("4:06:23 am", 4 * 3600 + 383),
        ("11:59 PM", 23 * 3600 + 59 * 60),
        ("16:08", 16 * 3600 + 480),
        ("00:00:00", 0),
        ("13:00:00 PM", None),
        ("24:00", None),
        ("9:60", None),
        ("noon", None),
    ],
)
def test_times(text, seconds):
    parsed = formats.parse_time(text)
    assert (parsed.total_seconds() if parsed is not None else None) == seconds


def test_aliases_setting():
    assert formats.parse_aliases("") == {}
    assert formats.parse_aliases(
        " admissions.Ward = department , lab_tests.by=ordering_physician,"
    ) == {
        "admissions": {"ward": "department"},
        "lab_tests": {"by": "ordering_physician"},
    }
    for bad, reason in [
        ("ward=department", "table.new_name=known_name"),
        ("admissions.ward", "has no '='"),
        ("wards.ward=department", "names table 'wards'"),
        ("admissions.ward=wing", "not a admissions column"),
        ("admissions.room_number=department", "itself a known admissions column"),
        ("admissions.ward=department,admissions.ward=room_number", "twice"),
    ]:
        with pytest.raises(ValueError, match=reason):
            formats.parse_aliases(bad)


def test_a_bad_aliases_setting_stops_start_up(make_app):
    with pytest.raises(ConfigError, match="MONITORING_COLUMN_ALIASES"):
        make_app(MONITORING_COLUMN_ALIASES="admissions.ward")


# Schema changes -----------------------------------------------------------------------------


def test_reordered_columns_are_matched_by_name(app, tmp_path):
    write(
        tmp_path / "lis_export_0001.csv",
        [
            " Order_Time ,TEST_ID,ordering_physician,order_date,Patient_ID,test_name",
            "10:30:00 AM,T1,Dr. A,10/11/2017,P1,Cortisol",
        ],
    )
    files, _ = run(app, tmp_path)
    assert (files[0].table, files[0].inserted, files[0].unknown_columns) == ("lab_tests", 1, None)
    with database.connection_context():
        test = LabTest.get()
    assert (test.test_id, test.patient_id, test.test_name, test.ordering_physician) == (
        "T1",
        "P1",
        "Cortisol",
        "Dr. A",
    )
    assert test.ordered_at == at(2017, 10, 11, 10, 30)


def test_a_renamed_column_needs_an_alias(make_app, tmp_path):
    lines = [
        "patient_id,hospitalization_case_number,admission_date,admission_time,release_date,"
        "release_time,ward,room_number",
        "P1,C1,3/20/2022,5:20:00 AM,NULL,NULL,Cardiology,1A",
    ]
    app = make_app(MONITORING_COLUMN_ALIASES="admissions.ward=department")
    files, summary = run(app, write(tmp_path / "a.csv", lines))
    assert files[0].unknown_columns is None
    assert "renamed columns: ward as department" in summary[0]
    with database.connection_context():
        assert Admission.get().department == "Cardiology"


def test_without_the_alias_a_renamed_column_is_kept_as_unknown(app, tmp_path):
    lines = [
        "patient_id,hospitalization_case_number,admission_date,admission_time,release_date,"
        "release_time,ward,room_number",
        "P1,C1,3/20/2022,5:20:00 AM,NULL,NULL,Cardiology,1A",
    ]
    files, _ = run(app, write(tmp_path / "a.csv", lines))
    with database.connection_context():
        admission = Admission.get()
    assert admission.department is None
    assert json.loads(admission.extra) == {"ward": "Cardiology"}
    assert json.loads(files[0].unknown_columns) == ["ward"]


def test_unknown_columns_are_kept_and_reported(app, tmp_path):
    write(
        tmp_path / "results.csv",
        [
            RESULTS_HEADER + ",Analyzer,flag",
            "R1,T1,0.5,mg/dL,NA,Normal,9/10/2024,4:06:23 AM,NA,XN-1000,NULL",
        ],
    )
    files, lines = run(app, tmp_path)
    assert json.loads(files[0].unknown_columns) == ["Analyzer", "flag"]
    assert "unknown columns kept in extra: Analyzer, flag" in lines[0]
    assert "2 new findings" in lines[0]
    with database.connection_context():
        assert json.loads(LabResult.get().extra) == {"Analyzer": "XN-1000", "flag": None}
        unknown = Finding.select().where(Finding.kind == "unknown_column")
        assert sorted(f.record_key for f in unknown) == ["Analyzer", "flag"]
    # The next file with the same column adds no finding.
    write(
        tmp_path / "results2.csv",
        [RESULTS_HEADER + ",Analyzer", "R2,T1,0.5,mg/dL,NA,Normal,9/10/2024,4:06:23 AM,NA,X"],
    )
    run(app, tmp_path)
    with database.connection_context():
        assert Finding.select().where(Finding.kind == "unknown_column").count() == 2


def test_a_missing_optional_column_is_null(app, tmp_path):
    header = ADMISSIONS_HEADER.replace(",room_number", "")
    files, lines = run(
        app, write(tmp_path / "a.csv", [header, "P1,C1,3/20/2022,5:20:00 AM,NULL,NULL,Cardiology"])
    )
    assert files[0].status == "applied"
    assert "missing optional columns (null): room_number" in lines[0]
    with database.connection_context():
        assert Admission.get().room is None


def test_a_missing_required_column_quarantines_the_file(app, tmp_path):
    header = "hospitalization_case_number,admission_time,release_date,release_time,department"
    files, lines = run(app, write(tmp_path / "a.csv", [header, "C1,5:20:00 AM,NULL,NULL,X"]))
    assert lines == [
        "a.csv: quarantined: missing required columns admission_date, patient_id (the header "
        "looks like admissions: 5 of its 8 columns)"
    ]
    assert (files[0].status, files[0].table) == ("quarantined", "admissions")
    assert counts()["admissions"] == 0
    # Quarantine is final for that content...
    assert run(app, tmp_path)[0] == []
    # ...unless asked to retry (after fixing the aliases, say).
    files, _ = run(app, tmp_path, retry_quarantined=True)
    assert [f.status for f in files] == ["quarantined"]
    with database.connection_context():
        assert IngestFile.select().count() == 1


def test_a_date_needs_its_time_column(app, tmp_path):
    header = ADMISSIONS_HEADER.replace(",release_time", "")
    files, _ = run(app, write(tmp_path / "a.csv", [header, "P1,C1,3/20/2022,5:20:00 AM,NULL,X,1"]))
    assert files[0].status == "quarantined"
    assert files[0].message.startswith("missing required columns release_time")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("name,ward,bed", "the header has none of the known columns of patients, admissions"),
        ("patient_id,ward", "the header resembles patients, admissions, lab_tests equally"),
        ("", "the file has no header"),
    ],
)
def test_an_unrecognised_header_is_quarantined(app, tmp_path, header, message):
    files, lines = run(app, write(tmp_path / "x.csv", [header, "1,2"]))
    assert files[0].status == "quarantined" and files[0].table is None
    assert message in files[0].message
    assert lines[0].startswith("x.csv: quarantined: ")


def test_an_empty_file_is_quarantined(app, tmp_path):
    files, _ = run(app, write(tmp_path / "empty.csv", ""))
    assert files[0].message == "the file is empty: it has no header"


def test_a_header_only_file_is_applied_with_no_rows(app, tmp_path):
    files, lines = run(app, write(tmp_path / "t.csv", [TESTS_HEADER]))
    assert (files[0].status, files[0].rows_read) == ("applied", 0)
    assert lines == ["t.csv: lab_tests, 0 read, 0 inserted, 0 updated, 0 rejected"]


def test_a_bom_crlf_quotes_and_no_final_newline(app, tmp_path):
    path = write(
        tmp_path / "p.csv",
        [
            "patient_id,first_name,last_name,date_of_birth,primary_physician,insurance_provider,"
            "blood_type,allergies",
            'P1,"Anna, Maria",Schmidt,7/29/1983,"Dr. ""Doc"" Who",Aetna,A+,None',
            "P2,Bob,Brown,1/2/1950,,,O-,NULL",
        ],
        bom=True,
    )
    files, _ = run(app, path)
    assert (files[0].table, files[0].inserted) == ("patients", 2)
    with database.connection_context():
        anna = PmsPatient.get(PmsPatient.patient_id == "P1")
        assert (anna.first_name, anna.primary_physician) == ("Anna, Maria", 'Dr. "Doc" Who')
        assert anna.allergies == "None"  # a value, not a missing marker
        assert PmsPatient.get(PmsPatient.patient_id == "P2").allergies is None
        assert Patient.get(Patient.mrn == "P1").first_name == "Anna, Maria"


def test_bad_rows_are_rejected_with_line_and_reason(app, tmp_path):
    write(
        tmp_path / "tests.csv",
        [
            TESTS_HEADER,
            "T1,P1,Cortisol,10/11/2017,10:30:00 AM,Dr. A",  # line 2: fine
            "T2,P1,Cortisol,13/45/2017,10:30:00 AM,Dr. A",  # line 3: no such date
            ",P1,Cortisol,10/11/2017,10:30:00 AM,Dr. A",  # line 4: no test_id
            'T3,P1,"Two',  # lines 5-6: a quoted newline, then too few fields
            'lines",10/11/2017',
            "T4,P1,Cortisol,10/11/2017,25:00,Dr. A",  # line 7: no such time
            "T5,P/1,Cortisol,10/11/2017,10:30:00 AM,Dr. A",  # line 8: not an MRN
            "T6,P2,Cortisol,10/11/2017,NULL,Dr. A",  # line 9: a date without its time
            "T7,P2,Ferritin,NULL,NULL,Dr. B",  # line 10: no order time at all: kept
            "T8,P2,Ferritin,10/11/2017,10:30:00 AM,Dr. B,,",  # line 11: empty surplus: kept
        ],
    )
    files, lines = run(app, tmp_path)
    ledger = files[0]
    assert (ledger.rows_read, ledger.inserted, ledger.rejected) == (9, 3, 6)
    assert lines[0].startswith("tests.csv: lab_tests, 9 read, 3 inserted, 0 updated, 6 rejected")
    with database.connection_context():
        rejected = {
            r.line: r.reason for r in RejectedRow.select().where(RejectedRow.file == ledger)
        }
        assert sorted(LabTest.select(LabTest.test_id).tuples()) == [("T1",), ("T7",), ("T8",)]
        raw = RejectedRow.get(RejectedRow.line == 3).raw
    assert rejected == {
        3: "order_date '13/45/2017' is not a date (M/D/YYYY or YYYY-MM-DD)",
        4: "test_id is missing",
        5: "the row has 4 fields; the header has 6",
        7: "order_time '25:00' is not a time (h:MM:SS AM/PM or HH:MM)",
        8: f"patient_id 'P/1' is not a valid MRN: {MRN_RULE}",
        9: "order_time is missing while order_date is '10/11/2017'",
    }
    assert raw == "T2,P1,Cortisol,13/45/2017,10:30:00 AM,Dr. A"
    assert "first at line 3: order_date '13/45/2017'" in ledger.message


def test_a_key_repeated_in_a_file_takes_the_last_line(app, tmp_path):
    write(
        tmp_path / "a.csv",
        [
            ADMISSIONS_HEADER,
            "P1,C1,3/20/2022,5:20:00 AM,NULL,NULL,Cardiology,1A",
            "P1,C1,3/20/2022,5:20:00 AM,NULL,NULL,Oncology,2B",
        ],
    )
    files, _ = run(app, tmp_path)
    assert (files[0].rows_read, files[0].inserted) == (2, 1)
    with database.connection_context():
        assert (Admission.get().department, Admission.get().line) == ("Oncology", 3)


def test_a_release_before_the_admission_is_a_finding(app, tmp_path):
    write(
        tmp_path / "a.csv",
        [ADMISSIONS_HEADER, "P1,C1,3/20/2022,5:20:00 AM,2022-03-19,10:00,Cardiology,1A"],
    )
    files, _ = run(app, tmp_path)
    assert files[0].inserted == 1  # findings never block ingestion
    with database.connection_context():
        finding = Finding.get(Finding.kind == "release_before_admission")
    assert (finding.table, finding.record_key, finding.file_id) == ("admissions", "C1", files[0].id)


def test_a_nul_character_rejects_the_row_on_every_database(app, tmp_path):
    write(tmp_path / "t.csv", [TESTS_HEADER, "T1,P1,Cort\x00isol,,,", "T2,P1,Cortisol,,,"])
    files, _ = run(app, tmp_path)
    assert (files[0].inserted, files[0].rejected) == (1, 1)
    with database.connection_context():
        assert RejectedRow.get().reason == "the row contains a NUL character"


def test_text_that_is_not_utf8_quarantines_the_file(app, tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(TESTS_HEADER.encode() + b"\r\nT1,P1,Cort\xe9sol,,,")
    files, _ = run(app, path)
    assert files[0].status == "quarantined"
    assert "not UTF-8" in files[0].message
    assert counts()["lab_tests"] == 0


# Upserts and file order -----------------------------------------------------------------------


def admission_file(folder: Path, name: str, department: str, mtime: float) -> Path:
    return write(
        folder / name,
        [ADMISSIONS_HEADER, f"P1,C1,3/20/2022,5:20:00 AM,NULL,NULL,{department},1A"],
        mtime=mtime,
    )


def department() -> str:
    with database.connection_context():
        return Admission.get(Admission.case_number == "C1").department


def test_a_newer_file_updates_and_an_older_one_does_not(app, tmp_path):
    files, _ = run(app, admission_file(tmp_path / "1", "a.csv", "Cardiology", 2_000))
    assert (files[0].inserted, files[0].updated) == (1, 0)
    files, _ = run(app, admission_file(tmp_path / "2", "b.csv", "Oncology", 3_000))
    assert (files[0].inserted, files[0].updated) == (0, 1)
    assert department() == "Oncology"
    # An older file ingested later does not overwrite newer data.
    files, lines = run(app, admission_file(tmp_path / "3", "c.csv", "Neurology", 1_000))
    assert (files[0].inserted, files[0].updated) == (0, 0)
    assert lines[0].endswith("0 updated, 0 rejected, 1 unchanged")
    assert department() == "Oncology"


def test_an_identical_row_from_a_newer_file_still_counts_as_newer(app, tmp_path):
    run(app, admission_file(tmp_path / "1", "a.csv", "Cardiology", 1_000))
    run(app, admission_file(tmp_path / "2", "b.csv", "Oncology", 3_000))
    files, _ = run(app, admission_file(tmp_path / "3", "c.csv", "Oncology", 4_000))
    assert (files[0].inserted, files[0].updated) == (0, 0)  # identical: neither
    run(app, admission_file(tmp_path / "4", "d.csv", "Neurology", 3_500))  # late, older than c
    assert department() == "Oncology"
    with database.connection_context():
        admission = Admission.get()
    assert admission.source_modified_at == datetime.datetime.fromtimestamp(4_000, UTC)


def test_files_are_taken_oldest_first(app, tmp_path):
    admission_file(tmp_path, "z_first.csv", "Cardiology", 1_000)
    admission_file(tmp_path, "a_second.csv", "Oncology", 2_000)
    files, _ = run(app, tmp_path)
    assert [f.key for f in files] == ["z_first.csv", "a_second.csv"]
    assert department() == "Oncology"


def test_the_registry_is_filled_and_refreshed(app, tmp_path):
    header = (
        "patient_id,first_name,last_name,date_of_birth,primary_physician,insurance_provider,"
        "blood_type,allergies"
    )
    write(tmp_path / "1" / "a.csv", [ADMISSIONS_HEADER, "P9,C9,3/20/2022,5:20:00 AM,NULL,NULL,X,1"])
    run(app, tmp_path / "1")
    with database.connection_context():
        minimal = Patient.get(Patient.mrn == "P9")
        assert minimal.first_name is None and minimal.sex == "unknown"
    write(tmp_path / "2" / "p.csv", [header, "P9,Ann,Lee,1/2/1950,Dr. X,Aetna,A+,None"], 2_000)
    run(app, tmp_path / "2")
    # A later PMS row without a physician does not erase the known one.
    write(tmp_path / "3" / "p.csv", [header, "P9,Anne,Lee,1/2/1950,,Aetna,A+,None"], 3_000)
    run(app, tmp_path / "3")
    with database.connection_context():
        patient = Patient.get(Patient.mrn == "P9")
    assert (patient.first_name, patient.last_name, patient.primary_physician) == (
        "Anne",
        "Lee",
        "Dr. X",
    )
    assert patient.date_of_birth == datetime.date(1950, 1, 2)
    assert counts()["core_patients"] == 1


# The latest lab activity ----------------------------------------------------------------------


def test_last_test_counts_results_performed_after_the_order(app, tmp_path):
    write(
        tmp_path / "1" / "tests.csv",
        [
            TESTS_HEADER,
            "T1,P1,Cortisol,3/1/2024,8:00:00 AM,Dr. A",
            "T2,P1,Ammonia,3/2/2024,9:00:00 AM,Dr. A",
            "T3,P2,Ferritin,3/2/2024,9:00:00 AM,Dr. A",
        ],
    )
    run(app, tmp_path / "1")
    assert stored_last_tests() == {
        "P1": (at(2024, 3, 2, 9), "Ammonia"),
        "P2": (at(2024, 3, 2, 9), "Ferritin"),
    }
    write(
        tmp_path / "2" / "results.csv",
        [
            RESULTS_HEADER,
            "R1,T1,1.0,mg/dL,NA,Normal,3/5/2024,10:15:00 AM,NA",  # the older test, done later
            "R3,T3,1.0,mg/dL,NA,Normal,3/1/2024,10:15:00 AM,NA",  # before its order: a finding
        ],
    )
    files, _ = run(app, tmp_path / "2")
    assert stored_last_tests() == {
        "P1": (at(2024, 3, 5, 10, 15), "Cortisol"),
        "P2": (at(2024, 3, 2, 9), "Ferritin"),
    }
    with database.connection_context():
        finding = Finding.get(Finding.kind == "performed_before_order")
    assert finding.record_key == "R3" and "patient P2" in finding.detail
    assert finding.file_id == files[0].id


def test_last_test_moves_back_when_a_newer_file_corrects_a_date(app, tmp_path):
    write(tmp_path / "1" / "t.csv", [TESTS_HEADER, "T1,P1,CBC,3/9/2024,8:00:00 AM,A"], 1_000)
    write(tmp_path / "1" / "u.csv", [TESTS_HEADER, "T0,P1,Panel,3/1/2024,8:00:00 AM,A"], 1_000)
    run(app, tmp_path / "1")
    assert stored_last_tests() == {"P1": (at(2024, 3, 9, 8), "CBC")}
    write(tmp_path / "2" / "t.csv", [TESTS_HEADER, "T1,P1,CBC,3/8/2024,8:00:00 AM,A"], 2_000)
    files, _ = run(app, tmp_path / "2")
    assert files[0].updated == 1
    assert stored_last_tests() == {"P1": (at(2024, 3, 8, 8), "CBC")}
    write(tmp_path / "3" / "t.csv", [TESTS_HEADER, "T1,P1,CBC,NULL,NULL,A"], 3_000)
    write(tmp_path / "3" / "u.csv", [TESTS_HEADER, "T0,P1,Panel,NULL,NULL,A"], 3_000)
    run(app, tmp_path / "3")
    assert stored_last_tests() == {}


# S3 -----------------------------------------------------------------------------------------


def listing(objects, token: str | None = None) -> str:
    contents = "".join(
        f"<Contents><Key>{key}</Key><LastModified>{modified}</LastModified>"
        f"<ETag>&quot;{etag}&quot;</ETag><Size>{size}</Size>"
        "<StorageClass>STANDARD</StorageClass></Contents>"
        for key, etag, modified, size in objects
    )
    more = (
        f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>"
        if token
        else "<IsTruncated>false</IsTruncated>"
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{S3_XMLNS}">'
        f"<Name>hospital-files</Name><Prefix></Prefix><KeyCount>{len(objects)}</KeyCount>"
        f"<MaxKeys>1000</MaxKeys>{more}{contents}</ListBucketResult>"
    )


def bucket_object(name: str, body: bytes | None = None, modified="2024-11-25T10:00:00.000Z"):
    body = (DEMO / name).read_bytes() if body is None else body
    return name, hashlib.md5(body).hexdigest(), modified, len(body), body  # noqa: S324


def serve(mock, objects, pages=1, base=BUCKET, prefix=""):
    """Mock a ListObjectsV2 listing (in ``pages`` pages) and each object's GET."""
    size = -(-len(objects) // pages)
    chunks = [objects[i : i + size] for i in range(0, len(objects), size)]
    for number, chunk in enumerate(chunks):
        query = {"list-type": "2", "prefix": prefix}
        if number:
            query["continuation-token"] = f"page-{number}"
        token = f"page-{number + 1}" if number + 1 < len(chunks) else None
        mock.get(
            base,
            body=listing([o[:4] for o in chunk], token),
            match=[matchers.query_param_matcher(query)],
        )
    for key, etag, _, _, body in objects:
        mock.get(base + key, body=body, headers={"ETag": f'"{etag}"'})


def test_a_bucket_listed_in_two_pages(app):
    objects = [bucket_object(name) for name in REAL_FILES] + [
        ("README.md", "x", "2024-11-25T10:00:00.000Z", 1, b"x")  # not a data file
    ]
    with responses.RequestsMock() as mock:
        serve(mock, objects[:4], pages=2)
        mock.get(BUCKET + "README.md", body="x")  # never fetched
        mock.assert_all_requests_are_fired = False
        files, _ = run(app, BUCKET)
        fetched = [c.request.url for c in mock.calls]
    assert len(files) == 4
    assert counts()["lab_results"] == 652
    assert sum("list-type=2" in url for url in fetched) == 2
    assert BUCKET + "README.md" not in fetched
    with database.connection_context():
        ledger = IngestFile.get(IngestFile.key == "lab_tests.csv")
    assert ledger.source == BUCKET and ledger.modified_at == at(2024, 11, 25, 10)
    assert ledger.etag == hashlib.md5((DEMO / "lab_tests.csv").read_bytes()).hexdigest()  # noqa: S324


def test_a_changed_etag_is_ingested_again(app):
    objects = [bucket_object(name) for name in REAL_FILES]
    with responses.RequestsMock() as mock:
        serve(mock, objects)
        run(app, BUCKET)
    header, *rows = (DEMO / "admissions.csv").read_bytes().decode().split("\r\n")
    changed = "\r\n".join([header, rows[0].replace("Cardiology", "Oncology"), *rows[1:]]).encode()
    objects[1] = bucket_object("admissions.csv", changed, "2024-11-25T10:05:00.000Z")
    with responses.RequestsMock() as mock:
        serve(mock, objects)
        mock.assert_all_requests_are_fired = False
        files, lines = run(app, BUCKET)
        fetched = [c.request.url for c in mock.calls]
    assert [(f.key, f.inserted, f.updated) for f in files] == [("admissions.csv", 0, 1)]
    assert [url for url in fetched if "list-type" not in url] == [BUCKET + "admissions.csv"]
    assert lines[-1].startswith("3 file(s) already ingested (unchanged)")
    with database.connection_context():
        assert Admission.get(Admission.case_number == "727851").department == "Oncology"


def test_s3_urls_map_to_the_bucket_endpoint():
    source = sources.open_source("s3://hospital-files/pms/2024")
    assert (source.endpoint, source.prefix) == (
        "https://hospital-files.s3.amazonaws.com/",
        "pms/2024",
    )
    source = sources.open_source(BUCKET + "lis/")
    assert (source.endpoint, source.prefix) == (BUCKET, "lis/")
    assert sources.S3Source("x", BUCKET, "").url("a b/c+d.csv") == BUCKET + "a%20b/c%2Bd.csv"


def test_an_s3_url_with_a_prefix_lists_only_the_prefix(app):
    base = "https://hospital-files.s3.amazonaws.com/"
    objects = [bucket_object("admissions.csv")]
    objects = [("lis/admissions.csv", *objects[0][1:])]
    with responses.RequestsMock() as mock:
        serve(mock, objects, base=base, prefix="lis/")
        files, _ = run(app, "s3://hospital-files/lis/")
    assert [f.key for f in files] == ["lis/admissions.csv"]


def test_an_unreachable_bucket_is_one_clear_error(app):
    with responses.RequestsMock() as mock:
        mock.get(BUCKET, body=requests.ConnectionError("no route to host"))
        with pytest.raises(sources.SourceError) as raised:
            run(app, BUCKET)
    assert str(raised.value) == f"cannot reach {BUCKET}: ConnectionError."


def test_a_forbidden_bucket_names_the_status(app):
    denied = (
        '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
        "<Message>Access Denied</Message></Error>"
    )
    with responses.RequestsMock() as mock:
        mock.get(BUCKET, body=denied, status=403)
        with pytest.raises(sources.SourceError) as raised:
            run(app, BUCKET)
    assert str(raised.value) == f"{BUCKET} answered HTTP 403 (AccessDenied: Access Denied)."


def test_an_object_that_cannot_be_read_is_tried_again(app):
    objects = [bucket_object("admissions.csv"), bucket_object("lab_tests.csv")]
    with responses.RequestsMock() as mock:
        mock.get(BUCKET, body=listing([o[:4] for o in objects]))
        mock.get(BUCKET + "admissions.csv", status=500)
        mock.get(BUCKET + "lab_tests.csv", body=objects[1][4])
        with pytest.raises(ingest.IncompleteIngest) as raised:
            run(app, BUCKET)
    assert [f.key for f in raised.value.files] == ["lab_tests.csv"]
    assert "1 file(s) could not be read" in str(raised.value)
    with database.connection_context():
        assert not IngestFile.select().where(IngestFile.key == "admissions.csv").exists()


def test_every_request_has_a_timeout(app, monkeypatch):
    seen = []
    original = requests.Session.get

    def get(self, url, **kwargs):
        seen.append(kwargs.get("timeout"))
        return original(self, url, **kwargs)

    monkeypatch.setattr(requests.Session, "get", get)
    with responses.RequestsMock() as mock:
        serve(mock, [bucket_object("admissions.csv")])
        run(app, BUCKET)
    assert seen == [(5, 60), (5, 60)]


# Watching -------------------------------------------------------------------------------------


def wait_for(condition, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def ledger_keys() -> set[str]:
    with database.connection_context():
        return {f.key for f in IngestFile.select()}


def test_watch_picks_up_a_new_file(app, tmp_path):
    admission_file(tmp_path, "a.csv", "Cardiology", 1_000)
    lines: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=ingest.watch,
        args=(str(tmp_path),),
        kwargs={"app": app, "interval": 0.05, "stop": stop, "echo": lines.append},
    )
    watcher.start()
    try:
        assert wait_for(lambda: ledger_keys() == {"a.csv"})
        write(
            tmp_path / "later" / "tests.csv",
            [TESTS_HEADER, "T1,P1,CBC,3/9/2024,8:00:00 AM,A"],
        )
        assert wait_for(lambda: ledger_keys() == {"a.csv", "later/tests.csv"})
        time.sleep(0.2)  # more polls: nothing is taken twice, nothing more is printed
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert not watcher.is_alive()
    assert [line.split(":")[0] for line in lines] == ["a.csv", "later/tests.csv"]
    assert counts()["lab_tests"] == 1


def test_watch_survives_an_unreachable_bucket(app):
    lines: list[str] = []
    stop = threading.Event()
    with responses.RequestsMock() as mock:
        mock.get(BUCKET, body=requests.ConnectionError("down"))
        watcher = threading.Thread(
            target=ingest.watch,
            args=(BUCKET,),
            kwargs={"app": app, "interval": 0.02, "stop": stop, "echo": lines.append},
        )
        watcher.start()
        assert wait_for(lambda: len(mock.calls) >= 3)
        mock.replace(responses.GET, BUCKET, body=listing([]))
        assert wait_for(lambda: any("reachable again" in line for line in lines))
        stop.set()
        watcher.join(timeout=10)
    assert not watcher.is_alive()
    assert lines == [
        f"{BUCKET}: cannot reach {BUCKET}: ConnectionError. Retrying every 0.02 s.",
        f"{BUCKET}: reachable again.",
    ]


# The command ----------------------------------------------------------------------------------


def invoke(app, *args):
    return app.test_cli_runner().invoke(cli.ingest_command, list(args))


def test_the_command_is_registered(app):
    assert app.cli.commands["ingest"] is cli.ingest_command


def test_the_command_exits_0_when_everything_is_ingested(app):
    result = invoke(app, str(DEMO))
    assert result.exit_code == 0, result.output
    assert "lab_tests.csv: lab_tests, 652 read, 652 inserted" in result.output


def test_the_command_exits_1_for_a_quarantine_or_a_rejected_row(app, tmp_path):
    write(tmp_path / "1" / "x.csv", ["name,ward", "a,b"])
    write(tmp_path / "1" / "y.csv", [TESTS_HEADER, "T1,P1,CBC,3/9/2024,8:00:00 AM,A"])
    result = invoke(app, str(tmp_path / "1"))
    assert result.exit_code == 1, result.output
    assert "x.csv: quarantined" in result.output
    assert counts()["lab_tests"] == 1  # everything else is ingested
    write(tmp_path / "2" / "z.csv", [TESTS_HEADER, "T2,P1,CBC,3/39/2024,8:00:00 AM,A"])
    assert invoke(app, str(tmp_path / "2")).exit_code == 1
    assert invoke(app, str(tmp_path / "2")).exit_code == 0  # nothing new


def test_the_command_exits_2_for_an_unreachable_source(app, tmp_path):
    result = invoke(app, str(tmp_path / "missing"))
    assert result.exit_code == 2
    assert "is neither a file, a folder nor a bucket URL" in result.output
    with responses.RequestsMock() as mock:
        mock.get(BUCKET, body=requests.ConnectionError("down"))
        result = invoke(app, BUCKET)
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: cannot reach {BUCKET}: ConnectionError."


def test_the_command_watches_until_stopped(app, tmp_path, monkeypatch):
    admission_file(tmp_path, "a.csv", "Cardiology", 1_000)

    def watch_briefly(source, *, app, interval, stop):
        assert interval == 0.5
        ingest.ingest_source(source, app=app)  # one poll

    monkeypatch.setattr(ingest, "watch", watch_briefly)
    result = invoke(app, str(tmp_path), "--watch", "--interval", "0.5")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"Watching {tmp_path} every 0.5 s (Ctrl-C to stop)."
    assert "a.csv: admissions, 1 read, 1 inserted" in result.output


def test_a_local_file_that_changes_while_read_is_not_recorded(app, tmp_path):
    path = admission_file(tmp_path, "a.csv", "Cardiology", 1_000)
    source = sources.open_source(str(tmp_path))
    objects = source.list()
    path.write_text(path.read_text().replace("Cardiology", "Oncology!"))  # after the listing
    lines: list[str] = []
    with app.app_context(), database.connection_context():
        files, failures = ingest._Run(source, app, lines.append).ingest(objects, quiet=False)
    assert (files, failures) == ([], ["a.csv"])
    assert lines == [
        "a.csv: not ingested, will be tried again: a.csv changed while it was being read."
    ]
    assert counts()["admissions"] == 0
    files, _ = run(app, tmp_path)  # the next pass takes the new content
    assert files[0].inserted == 1 and department() == "Oncology!"
