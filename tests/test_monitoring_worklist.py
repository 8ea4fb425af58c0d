"""The worklist rule, replayable at any moment, through the API, the page and the export."""

import csv
import datetime
import io

import pytest

from core.db import database
from plugins.monitoring import ingest, worklist
from plugins.monitoring import plugin as monitoring

UTC = datetime.UTC
AS_OF = datetime.datetime(2024, 6, 10, 12, 0, tzinfo=UTC)


def hours_before(hours: float) -> datetime.datetime:
    return AS_OF - datetime.timedelta(hours=hours)


@pytest.fixture
def caredeck_plugins():
    return {"monitoring": monitoring}


def pms_date(moment):
    return f"{moment.month}/{moment.day}/{moment.year}"


def pms_time(moment):
    return f"{moment.hour % 12 or 12}:{moment.minute:02d}:{moment.second:02d} " + (
        "AM" if moment.hour < 12 else "PM"
    )


class Hospital:
    """Source files in the real PMS/LIS formats (hospital zone: UTC), ingested for real."""

    def __init__(self):
        self.patients, self.admissions, self.tests, self.results = [], [], [], []

    def admit(
        self, mrn, case, admitted_hours_ago, released_hours_ago=None, department="Cardiology"
    ):
        self.patients.append(f"{mrn},First{mrn},Last{mrn},1/2/1960,,,A+,None")
        admitted = hours_before(admitted_hours_ago)
        released = (
            "NULL,NULL"
            if released_hours_ago is None
            else hours_before(released_hours_ago).strftime("%Y-%m-%d,%H:%M")
        )
        self.admissions.append(
            f"{mrn},{case},{pms_date(admitted)},{pms_time(admitted)},{released},{department},101A"
        )

    def order(self, mrn, test_id, hours_ago, name="CBC", performed_hours_ago=None):
        ordered = hours_before(hours_ago)
        self.tests.append(f"{test_id},{mrn},{name},{pms_date(ordered)},{pms_time(ordered)},Dr. Who")
        if performed_hours_ago is not None:
            done = hours_before(performed_hours_ago)
            self.results.append(
                f"r{test_id},{test_id},1.0,mg/dL,NA,Normal,{pms_date(done)},{pms_time(done)},NA"
            )

    def ingest(self, app, folder):
        files = {
            "patients.csv": (
                "patient_id,first_name,last_name,date_of_birth,primary_physician,"
                "insurance_provider,blood_type,allergies",
                self.patients,
            ),
            "admissions.csv": (
                "patient_id,hospitalization_case_number,admission_date,"
                "admission_time,release_date,release_time,department,"
                "room_number",
                self.admissions,
            ),
            "tests.csv": (
                "test_id,patient_id,test_name,order_date,order_time,ordering_physician",
                self.tests,
            ),
            "results.csv": (
                "result_id,test_id,result_value,result_unit,reference_range,"
                "result_status,performed_date,performed_time,reviewing_physician",
                self.results,
            ),
        }
        for name, (header, lines) in files.items():
            (folder / name).write_text("\r\n".join([header, *lines]))
        with app.app_context():
            ingest.ingest_source(str(folder), app=app)


@pytest.fixture
def ward(app, tmp_path):
    """One case per clause of the rule."""
    hospital = Hospital()
    hospital.admit("P-NEVER", "C1", 72)  # open, 72 h, never tested: listed
    hospital.admit("P-YOUNG", "C2", 47)  # admitted less than 48 h ago: not listed
    hospital.admit("P-OLDTEST", "C3", 200)  # open, last test 60 h ago: listed
    hospital.order("P-OLDTEST", "T1", 60, name="Sodium")
    hospital.admit("P-RECENT", "C4", 200)  # ordered 10 h ago: not listed
    hospital.order("P-RECENT", "T2", 10)
    hospital.admit("P-RESULT", "C5", 200)  # ordered 100 h ago, performed 5 h ago: not listed
    hospital.order("P-RESULT", "T3", 100, performed_hours_ago=5)
    hospital.admit("P-GONE", "C6", 200, released_hours_ago=1)  # released before: not listed
    hospital.admit("P-LATER", "C7", 200, released_hours_ago=-5)  # released after: listed
    hospital.admit("P-FUTURE", "C8", 100, department="Oncology")  # tested after as_of: listed
    hospital.order("P-FUTURE", "T4", -3)
    hospital.admit("P-AFTER", "C9", -1)  # admitted after as_of: not listed
    hospital.ingest(app, tmp_path)
    return app


def listed(criteria) -> list[str]:
    with database.connection_context():
        return [row.mrn for row in worklist.rows(criteria)]


def test_the_rule_clause_by_clause(ward):
    assert listed(worklist.Criteria(as_of=AS_OF)) == ["P-FUTURE", "P-LATER", "P-NEVER", "P-OLDTEST"]


def test_never_tested_first_then_the_longest_untested(ward):
    with database.connection_context():
        rows = worklist.rows(worklist.Criteria(as_of=AS_OF, descending=True))
    assert [r.mrn for r in rows][:3] == ["P-FUTURE", "P-LATER", "P-NEVER"]
    assert all(r.never_tested for r in rows[:3])
    last = rows[-1]
    assert (last.mrn, last.last_test_name, last.hours_since_last_test) == (
        "P-OLDTEST",
        "Sodium",
        60.0,
    )


@pytest.mark.parametrize("sort", sorted(worklist.SORTS))
def test_pages_are_slices_of_the_whole_list_in_every_order(ward, sort):
    with database.connection_context():
        for descending in (False, True):
            criteria = worklist.Criteria(as_of=AS_OF, sort=sort, descending=descending)
            whole = [r.admission_id for r in worklist.rows(criteria)]
            pages = [
                r.admission_id
                for offset in range(0, len(whole), 3)
                for r in worklist.rows(criteria, limit=3, offset=offset)
            ]
            assert pages == whole and len(whole) == 4


def test_a_result_counts_as_a_new_test(ward):
    assert "P-RESULT" not in listed(worklist.Criteria(as_of=AS_OF))
    assert "P-RESULT" in listed(worklist.Criteria(as_of=AS_OF, hours=4))


def test_replaying_an_earlier_moment_ignores_what_came_after(ward):
    earlier = AS_OF - datetime.timedelta(hours=20)
    # At that moment P-RESULT's result (5 h before AS_OF) had not been performed yet and its
    # order was 80 h old, so it was on the list; P-GONE was still admitted.
    assert {"P-RESULT", "P-GONE"} <= set(listed(worklist.Criteria(as_of=earlier)))


def test_filters_search_and_threshold(ward):
    assert listed(worklist.Criteria(as_of=AS_OF, department="Oncology")) == ["P-FUTURE"]
    assert listed(worklist.Criteria(as_of=AS_OF, q="lastp-old")) == ["P-OLDTEST"]
    assert listed(worklist.Criteria(as_of=AS_OF, q="c7")) == ["P-LATER"]
    assert listed(worklist.Criteria(as_of=AS_OF, q="100%")) == []
    assert "P-NEVER" not in listed(worklist.Criteria(as_of=AS_OF, hours=100))


def test_the_api_answers_the_promised_fields(ward, client_for):
    response = client_for("nurse").get(
        "/api/monitoring/worklist?as_of=2024-06-10T12:00:00%2B00:00&page_size=2"
    )
    assert response.status_code == 200, response.json
    assert response.headers["X-Worklist-As-Of"] == "2024-06-10T12:00:00+00:00"
    assert '"total": 4' in response.headers["X-Pagination"]
    first = response.json[0]
    assert set(first) == {
        "mrn",
        "name",
        "admission_id",
        "department",
        "room",
        "admitted_at",
        "hours_admitted",
        "last_test_at",
        "last_test_name",
        "hours_since_last_test",
        "never_tested",
    }
    assert first["never_tested"] is True and first["hours_since_last_test"] is None


def test_a_naive_as_of_is_read_in_the_hospitals_zone(make_app, client_for, ward):
    berlin = make_app(TIMEZONE="Europe/Berlin")
    from core.auth.models import ApiToken, User

    with database.connection_context():
        token, _ = ApiToken.issue(User.find("nurse@example.org"))
    response = berlin.test_client().get(
        "/api/monitoring/worklist?as_of=2024-06-10T14:00:00",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.headers["X-Worklist-As-Of"] == "2024-06-10T12:00:00+00:00"


def test_bad_parameters_are_named(ward, client_for):
    response = client_for("nurse").get("/api/monitoring/worklist?hours=0&as_of=yesterday&sort=x")
    assert response.status_code == 422
    assert set(response.json["errors"]["query"]) == {"hours", "as_of", "sort"}


def test_only_staff_see_the_worklist(ward, client, client_for):
    assert client.get("/api/monitoring/worklist").status_code == 401
    assert client_for("patient").get("/api/monitoring/worklist").status_code == 403
    assert client_for("patient").get("/monitoring/").status_code == 403


def test_the_page_shows_the_list_sorted_and_links_to_charts(ward, client_for):
    page = client_for("doctor").get("/monitoring/?as_of=2024-06-10T12:00&sort=-hours_admitted")
    assert page.status_code == 200
    assert '<a href="/patients/P-OLDTEST">P-OLDTEST</a>' in page.text
    assert page.text.index("P-OLDTEST") < page.text.index("P-FUTURE")  # longest admitted first
    assert 'aria-sort="descending"' in page.text
    assert "data-auto-refresh" not in page.text  # a replay does not refresh itself


def test_a_live_page_refreshes_and_offers_the_latest_data(ward, client_for):
    page = client_for("doctor").get("/monitoring/")
    assert 'data-auto-refresh="60"' in page.text
    assert "See the worklist as of the latest data" in page.text  # the data is from 2024


def test_the_export_is_the_same_list_as_csv(ward, client_for):
    export = client_for("doctor").get("/monitoring/worklist.csv?as_of=2024-06-10T12:00")
    rows = list(csv.reader(io.StringIO(export.text)))
    assert rows[0][:3] == ["mrn", "name", "admission_id"]
    assert sorted(r[0] for r in rows[1:]) == ["P-FUTURE", "P-LATER", "P-NEVER", "P-OLDTEST"]


def test_the_chart_section_shows_admissions_and_labs(ward, client_for):
    section = client_for("doctor").get("/patients/P-RESULT/sections/monitoring")
    assert section.status_code == 200
    assert "C5" in section.text and "CBC" in section.text and "Normal" in section.text


def test_admins_see_the_ledger_and_the_findings(app, client_for):
    from pathlib import Path

    demo = Path(monitoring.__file__).parent / "demo_data"
    with app.app_context():
        ingest.ingest_source(str(demo), app=app)
    admin = client_for("admin")
    files = admin.get("/api/monitoring/ingest-files").json
    assert sorted(f["table"] for f in files) == [
        "admissions",
        "lab_results",
        "lab_tests",
        "patients",
    ]
    duplicates = admin.get("/api/monitoring/findings?kind=duplicate_id").json
    assert sorted(f["record_key"] for f in duplicates) == ["18861", "27687"]
    page = admin.get("/monitoring/data?kind=duplicate_id")
    assert page.status_code == 200 and "18861" in page.text
    assert client_for("nurse").get("/monitoring/data").status_code == 403
    assert client_for("nurse").get("/api/monitoring/findings").status_code == 403


def test_the_total_is_right_on_every_page_and_past_the_last(ward, client_for):
    nurse = client_for("nurse")
    base = "/api/monitoring/worklist?as_of=2024-06-10T12:00:00%2B00:00&page_size=3"
    second = nurse.get(base + "&page=2")
    assert [len(second.json), '"total": 4' in second.headers["X-Pagination"]] == [1, True]
    beyond = nurse.get(base + "&page=5")
    assert beyond.json == [] and '"total": 4' in beyond.headers["X-Pagination"]
    by_name = nurse.get(base.replace("page_size=3", "page_size=10") + "&sort=name")
    assert [r["name"] for r in by_name.json] == sorted(r["name"] for r in by_name.json)
