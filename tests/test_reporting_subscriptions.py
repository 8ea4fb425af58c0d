"""Report subscriptions: the API, validation, the page, and due times across DST."""

import datetime
import re

import pytest

from core.db import database
from core.testing import ROLE_PASSWORD
from plugins.reporting import plugin as reporting
from plugins.reporting.reports import timing
from plugins.reporting.reports.models import Subscription

UTC = datetime.UTC


@pytest.fixture
def caredeck_plugins():
    return {"reporting": reporting}


BERLIN = {"weekday": "monday", "time": "08:00", "timezone": "Europe/Berlin", "study": None}


def test_subscribe_list_and_unsubscribe(client_for):
    nurse = client_for("nurse")
    created = nurse.post("/api/report-subscriptions", json=BERLIN)
    assert created.status_code == 201, created.json
    body = created.json
    assert {k: body[k] for k in BERLIN} == BERLIN
    assert created.headers["Location"].endswith(f"/api/report-subscriptions/{body['id']}")
    due = datetime.datetime.fromisoformat(body["next_due_at"])
    local = due.astimezone(timing.zone("Europe/Berlin"))
    assert (local.weekday(), local.hour, local.minute) == (0, 8, 0)

    study = nurse.post(
        "/api/report-subscriptions",
        json={"weekday": "Friday", "time": "17:30", "timezone": "UTC", "study": "ONCO-7"},
    )
    assert study.status_code == 201 and study.json["study"] == "ONCO-7"
    assert study.json["weekday"] == "friday"
    assert [s["id"] for s in nurse.get("/api/report-subscriptions").json] == [
        body["id"],
        study.json["id"],
    ]
    # Another user sees none of them, and cannot delete them.
    doctor = client_for("doctor")
    assert doctor.get("/api/report-subscriptions").json == []
    assert doctor.delete(f"/api/report-subscriptions/{body['id']}").status_code == 404
    assert nurse.delete(f"/api/report-subscriptions/{body['id']}").status_code == 204
    assert nurse.delete(f"/api/report-subscriptions/{body['id']}").status_code == 404
    assert [s["id"] for s in nurse.get("/api/report-subscriptions").json] == [study.json["id"]]
    with database.connection_context():  # kept for the ledger, cancelled
        assert Subscription.get_by_id(body["id"]).cancelled_at is not None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"weekday": "mon"}, "weekday"),
        ({"time": "8:00"}, "time"),
        ({"time": "24:00"}, "time"),
        ({"time": "08:60"}, "time"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "CEST+2"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"study": "x" * 201}, "study"),
        ({"time": "08:00\n"}, "time"),
        ({"time": "\uff10\uff18:\uff10\uff10"}, "time"),  # full-width digits
        ({"study": "a\x00b"}, "study"),
        ({"study": "a\nBcc: x@example.org"}, "study"),
        ({"study": "a\u2028b"}, "study"),
    ],
)
def test_invalid_fields_are_named(client_for, change, field):
    answer = client_for("doctor").post("/api/report-subscriptions", json={**BERLIN, **change})
    assert answer.status_code == 422
    assert list(answer.json["errors"]["json"]) == [field]


def test_missing_fields_and_duplicates(client_for):
    nurse = client_for("nurse")
    answer = nurse.post("/api/report-subscriptions", json={})
    assert answer.status_code == 422
    assert set(answer.json["errors"]["json"]) == {"weekday", "time", "timezone"}
    assert nurse.post("/api/report-subscriptions", json=BERLIN).status_code == 201
    again = nurse.post("/api/report-subscriptions", json=BERLIN)
    assert again.status_code == 409 and "already" in again.json["message"]


def test_who_may_subscribe(client, client_for):
    assert client.get("/api/report-subscriptions").status_code == 401
    assert client.post("/api/report-subscriptions", json=BERLIN).status_code == 401
    assert client_for("patient").post("/api/report-subscriptions", json=BERLIN).status_code == 403
    assert client_for("admin").post("/api/report-subscriptions", json=BERLIN).status_code == 201


# Due times: computed in the subscriber's zone --------------------------------------------


def berlin(*args):
    return datetime.datetime(*args, tzinfo=timing.zone("Europe/Berlin"))


def test_monday_0800_berlin_stays_0800_local_across_both_changes():
    moment = datetime.datetime(2026, 3, 16, 12, 0, tzinfo=UTC)
    seen = []
    for _ in range(34):  # mid-March to late October 2026: both changes
        moment = timing.next_due(0, "08:00", "Europe/Berlin", moment)
        seen.append(moment)
    for due in seen:
        local = due.astimezone(timing.zone("Europe/Berlin"))
        assert (local.weekday(), local.hour, local.minute) == (0, 8, 0), due
    assert seen[0] == datetime.datetime(2026, 3, 23, 7, 0, tzinfo=UTC)  # CET, +01:00
    assert seen[1] == datetime.datetime(2026, 3, 30, 6, 0, tzinfo=UTC)  # CEST, +02:00
    autumn = seen.index(datetime.datetime(2026, 10, 26, 7, 0, tzinfo=UTC))  # CET again
    assert seen[autumn - 1] == datetime.datetime(2026, 10, 19, 6, 0, tzinfo=UTC)  # CEST
    assert seen[1] - seen[0] == datetime.timedelta(days=7, hours=-1)


def test_a_time_the_clocks_skip_runs_as_late_as_they_jumped():
    # 29 March 2026, Berlin: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
    after = datetime.datetime(2026, 3, 28, 0, 0, tzinfo=UTC)
    due = timing.next_due(6, "02:30", "Europe/Berlin", after)
    assert due == datetime.datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 CEST
    assert due.astimezone(timing.zone("Europe/Berlin")).strftime("%H:%M") == "03:30"
    following = timing.next_due(6, "02:30", "Europe/Berlin", due)
    assert following == datetime.datetime(2026, 4, 5, 0, 30, tzinfo=UTC)  # 02:30 CEST


def test_a_time_that_happens_twice_runs_once_at_the_first():
    # 25 October 2026, Berlin: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    after = datetime.datetime(2026, 10, 24, 0, 0, tzinfo=UTC)
    due = timing.next_due(6, "02:30", "Europe/Berlin", after)
    assert due == datetime.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST, the first
    following = timing.next_due(6, "02:30", "Europe/Berlin", due)
    assert following == datetime.datetime(2026, 11, 1, 1, 30, tzinfo=UTC)  # a week on, not 1 h


def test_which_week_an_occurrence_reports():
    monday = datetime.datetime(2026, 11, 23, 7, 0, tzinfo=UTC)  # 08:00 Berlin
    assert timing.reported_week(monday, "Europe/Berlin") == "2026-W47"
    sunday_late = datetime.datetime(2026, 11, 29, 23, 30, tzinfo=UTC)  # Monday 00:30 in Berlin
    assert timing.reported_week(sunday_late, "Europe/Berlin") == "2026-W48"
    assert timing.reported_week(sunday_late, "UTC") == "2026-W47"
    assert timing.week_monday("2026-W53") == datetime.date(2026, 12, 28)
    with pytest.raises(ValueError, match="is not an ISO week"):
        timing.week_monday("2027-W53")
    latest = timing.latest_due(0, "08:00", "Europe/Berlin", monday + datetime.timedelta(hours=1))
    assert latest == monday


# The page --------------------------------------------------------------------------------


def csrf_from(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def browser(app, email):
    client = app.test_client()
    token = csrf_from(client.get("/login").text)
    client.post("/login", data={"email": email, "password": ROLE_PASSWORD, "csrf_token": token})
    return client


def test_the_page_subscribes_shows_field_errors_and_unsubscribes(app, users):
    client = browser(app, "doctor@example.org")
    page = client.get("/reports/subscriptions")
    assert page.status_code == 200 and "You have no subscriptions yet" in page.text
    token = csrf_from(page.text)
    form = {"weekday": "monday", "time": "25:00", "timezone": "Nowhere/City", "study": ""}
    refused = client.post("/reports/subscriptions", data={**form, "csrf_token": token})
    assert refused.status_code == 422
    assert "Please correct 2 fields" in refused.text
    assert "HH:MM" in refused.text and "not an IANA time zone" in refused.text
    assert 'id="field-time-error"' in refused.text
    no_csrf = client.post("/reports/subscriptions", data={**form, "time": "07:15"})
    assert no_csrf.status_code == 400
    done = client.post(
        "/reports/subscriptions",
        data={**form, "time": "07:15", "timezone": "Europe/Berlin", "csrf_token": token},
        follow_redirects=True,
    )
    assert done.status_code == 200
    assert "Mondays at 07:15 (Europe/Berlin), all studies" in done.text
    with database.connection_context():
        subscription = Subscription.get()
    cancel = client.post(
        f"/reports/subscriptions/{subscription.id}/cancel",
        data={"csrf_token": token},
        follow_redirects=True,
    )
    assert "Unsubscribed." in cancel.text and "You have no subscriptions yet" in cancel.text
    assert browser(app, "patient@example.org").get("/reports/subscriptions").status_code == 403
