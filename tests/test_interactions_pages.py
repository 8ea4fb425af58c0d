"""The chart's "Interactions" section, the history page and the doctors' forms, through a
signed-in browser session (CSRF tokens and all), and the demo data."""

import datetime
import re

import pytest

from core.auth.models import ApiToken, User
from core.db import database, utcnow
from core.patients.demo import load_demo_patients
from core.testing import ROLE_PASSWORD
from plugins.interactions import plugin as interactions
from plugins.interactions.models import Interaction, InteractionErrorMark, InteractionVersion

MRN = "MRN-7"
OTHER_MRN = "MRN-8"
SECTION = f"/patients/{MRN}/sections/interactions"


@pytest.fixture
def caredeck_plugins():
    return {"interactions": interactions}


@pytest.fixture
def patients(app, client_for):
    for mrn in (MRN, OTHER_MRN):
        answer = client_for("nurse").post(
            "/api/patients", json={"mrn": mrn, "first_name": "Ada", "last_name": "Lindqvist"}
        )
        assert answer.status_code == 201


def csrf_from(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def browser(app, email: str):
    """A test client signed in through the sign-in page, as a person at a browser."""
    client = app.test_client()
    token = csrf_from(client.get("/login").text)
    answer = client.post(
        "/login", data={"email": email, "password": ROLE_PASSWORD, "csrf_token": token}
    )
    assert answer.status_code == 302, answer.text
    return client


def make_user(email, role, mrn=None):
    with database.connection_context():
        return User.create_user(
            email,
            ROLE_PASSWORD,
            name=email.split("@")[0].title(),
            role=role,
            status="active",
            patient_mrn=mrn,
        )


def record(client_for_or_client, mrn=MRN, **fields):
    data = {
        "occurred_at": "2024-11-20T08:30:00+00:00",
        "kind": "visit",
        "summary": "Follow-up",
        "outcome": "healthy",
    } | fields
    answer = client_for_or_client.post(f"/api/patients/{mrn}/interactions", json=data)
    assert answer.status_code == 201, answer.json
    return answer.json


@pytest.fixture
def doctor_api(client_for, patients):
    return client_for("doctor")


@pytest.fixture
def doctor(app, users, patients):
    return browser(app, "doctor@example.org")


def form(**fields):
    return {
        "occurred_at": "2024-11-20T08:30",
        "kind": "ward_round",
        "summary": "Day 3 after admission",
        "notes": "Afebrile.\r\nEating.",
        "outcome": "not_healthy",
        "status_note": "SpO2 96%",
    } | fields


def post_form(client, path, page, **fields):
    """Submit a form the way the browser does: with the CSRF token of the page it is on."""
    return client.post(path, data={"csrf_token": csrf_from(page)} | fields)


# The section --------------------------------------------------------------------------------


def test_an_empty_history_says_so_and_offers_a_doctor_the_form(doctor):
    html = doctor.get(SECTION).text
    assert "No interactions have been recorded for this patient yet." in html
    assert "<svg" not in html
    assert "Record an interaction" in html
    assert f'action="/patients/{MRN}/interactions/new"' in html
    assert 'name="csrf_token"' in html


def test_the_section_draws_healthy_and_not_healthy_over_time(doctor, doctor_api):
    record(doctor_api, occurred_at="2024-11-20T08:00:00+00:00", outcome="not_healthy", summary="A")
    record(doctor_api, occurred_at="2024-11-22T08:00:00+00:00", outcome="healthy", summary="B")
    wrong = record(
        doctor_api, occurred_at="2024-11-21T08:00:00+00:00", outcome="healthy", summary="C"
    )
    doctor_api.post(
        f"/api/patients/{MRN}/interactions/{wrong['id']}/entered-in-error", json={"reason": "dup"}
    )
    html = doctor.get(SECTION).text
    assert html.count('class="timeline-row"') == 2  # one lane per outcome
    assert html.count('<circle class="mark not_healthy"') == 1
    assert html.count('<circle class="mark healthy"') == 1
    assert html.count('<circle class="mark healthy in-error"') == 1
    assert 'cx="1.0%"' in html  # the first interaction at the left edge
    assert "3 interactions from 2024-11-20 08:00" in html
    assert "1 healthy, 1 not healthy, 1 entered in error (hollow)" in html
    assert "style=" not in html and "<script" not in html  # the CSP allows neither
    # The entries, newest first, with their flags.
    summaries = re.findall(r'<p class="interaction-summary">([^<]*)</p>', html)
    assert summaries == ["B", "C", "A"]
    assert "Entered in error" in html and "Marked entered in error by Test doctor" in html
    assert "Test doctor &lt;doctor@example.org&gt;" in html


def test_amendments_show_in_the_section_with_the_original(doctor, doctor_api):
    created = record(doctor_api, outcome="healthy")
    doctor_api.post(
        f"/api/patients/{MRN}/interactions/{created['id']}/amendments",
        json={"reason": "Still short of breath", "outcome": "not_healthy"},
    )
    html = doctor.get(SECTION).text
    assert '<span class="badge amended">Amended</span>' in html
    assert "History: the original and 1 amendment" in html
    assert "Reason: Still short of breath (changed: outcome)" in html
    assert "<strong>Original</strong>, recorded" in html


def test_a_nurse_and_an_admin_read_the_section_without_forms(app, users, doctor_api):
    record(doctor_api)
    for email in ("nurse@example.org", "admin@example.org"):
        html = browser(app, email).get(SECTION).text
        assert "Follow-up" in html
        assert "<form" not in html and "Amend" not in html and "Record an interaction" not in html


def test_another_doctor_may_record_but_not_amend_someone_elses_entry(app, doctor_api):
    record(doctor_api)
    make_user("house@example.org", "doctor")
    html = browser(app, "house@example.org").get(SECTION).text
    assert "Record an interaction" in html
    assert "<summary>Amend</summary>" not in html
    assert "Mark as entered in error" not in html


def test_the_author_gets_the_amend_form_prefilled(doctor, doctor_api):
    created = record(doctor_api, notes="line one\nline two")
    html = doctor.get(SECTION).text
    assert "<summary>Amend</summary>" in html
    assert f'action="/patients/{MRN}/interactions/{created["id"]}/amend"' in html
    assert 'value="2024-11-20T08:30"' in html  # hospital time (UTC here), to the minute
    assert ">line one\nline two</textarea>" in html


def test_a_patient_user_reads_only_their_own_section(app, doctor_api):
    record(doctor_api, summary="Ada visit")
    record(doctor_api, mrn=OTHER_MRN, summary="Someone else visit")
    make_user("ada@example.org", "patient", mrn=MRN)
    ada = browser(app, "ada@example.org")
    html = ada.get(SECTION).text
    assert "Ada visit" in html and "Someone else visit" not in html
    assert "<form" not in html
    assert ada.get(f"/patients/{OTHER_MRN}/sections/interactions").status_code == 404
    assert ada.get(f"/patients/{OTHER_MRN}/interactions").status_code == 404
    assert ada.get(f"/patients/{MRN}/interactions").status_code == 200
    assert ada.get(f"/patients/{MRN}/interactions/new").status_code == 403


def test_signed_out_browsers_are_sent_to_sign_in(client, patients):
    for path in (SECTION, f"/patients/{MRN}/interactions", f"/patients/{MRN}/interactions/new"):
        answer = client.get(path)
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/login")


# Recording through the form ---------------------------------------------------------------


def test_a_doctor_records_an_interaction_from_the_chart(doctor, users):
    section = doctor.get(SECTION).text
    answer = post_form(doctor, f"/patients/{MRN}/interactions/new", section, **form())
    assert answer.status_code == 303
    assert answer.headers["Location"] == f"/patients/{MRN}#section-interactions-title"
    assert "The interaction is recorded." in doctor.get(f"/patients/{MRN}").text
    with database.connection_context():
        version = InteractionVersion.get()
        assert version.interaction.author_id == users["doctor"].id
        assert version.occurred_at == datetime.datetime(2024, 11, 20, 8, 30, tzinfo=datetime.UTC)
        assert (version.kind, version.outcome) == ("ward_round", "not_healthy")
        assert version.notes == "Afebrile.\nEating."  # the browser's CRLF, as one line break
    assert "Day 3 after admission" in doctor.get(SECTION).text


def test_an_empty_time_means_now(doctor):
    before = utcnow()
    post_form(
        doctor,
        f"/patients/{MRN}/interactions/new",
        doctor.get(SECTION).text,
        **form(occurred_at=""),
    )
    with database.connection_context():
        assert before <= InteractionVersion.get().occurred_at <= utcnow()


def test_a_form_without_the_csrf_token_is_refused(doctor):
    answer = doctor.post(f"/patients/{MRN}/interactions/new", data=form())
    assert answer.status_code == 400
    assert "CSRF" in answer.text
    with database.connection_context():
        assert Interaction.select().count() == 0


def test_errors_come_back_next_to_their_fields_on_a_page_of_their_own(doctor):
    future = (utcnow() + datetime.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    answer = post_form(
        doctor,
        f"/patients/{MRN}/interactions/new",
        doctor.get(SECTION).text,
        **{
            key: value
            for key, value in form(
                occurred_at=future, summary="", kind="", notes="kept notes"
            ).items()
            if key != "outcome"  # no radio button chosen: the browser sends nothing
        },
    )
    assert answer.status_code == 422
    html = answer.text
    assert "<h1>Record an interaction</h1>" in html
    assert "Please correct 4 fields" in html
    # Each message sits next to its field, and the summary links to it, in the form's order.
    for name, message in [
        ("occurred_at", "The time is in the future"),
        ("kind", "Choose one of: visit"),
        ("summary", "Enter a summary of 1 to 200 characters."),
        ("outcome", "Choose healthy or not healthy."),
    ]:
        assert re.search(rf'<p id="field-{name}-error" class="field-error">{message}', html), name
        assert f'<a href="#field-{name}">' in html
    assert html.index('href="#field-occurred_at"') < html.index('href="#field-outcome"')
    assert 'aria-invalid="true"' in html
    assert ">kept notes</textarea>" in html  # what was typed is kept
    with database.connection_context():
        assert Interaction.select().count() == 0


def test_an_unknown_outcome_is_named(doctor):
    page = doctor.get(SECTION).text
    answer = post_form(doctor, f"/patients/{MRN}/interactions/new", page, **form(outcome="fine"))
    assert answer.status_code == 422
    assert "Choose one of: healthy, not_healthy." in answer.text


def test_form_times_are_hospital_time(make_app, users, patients):
    app = make_app(TIMEZONE="Europe/Berlin")
    doctor = browser(app, "doctor@example.org")
    page = doctor.get(f"/patients/{MRN}/interactions/new").text
    assert "Hospital time (Europe/Berlin)" in page
    answer = post_form(
        doctor, f"/patients/{MRN}/interactions/new", page, **form(occurred_at="2024-11-20T09:30")
    )
    assert answer.status_code == 303
    with database.connection_context():
        assert InteractionVersion.get().occurred_at == datetime.datetime(
            2024, 11, 20, 8, 30, tzinfo=datetime.UTC
        )
    # 02:30 on the last Sunday of March does not exist in Berlin: the clocks jump to 03:00.
    gap = post_form(
        doctor, f"/patients/{MRN}/interactions/new", page, **form(occurred_at="2025-03-30T02:30")
    )
    assert gap.status_code == 422
    assert "does not exist in Europe/Berlin" in gap.text
    # 02:30 on the last Sunday of October happened twice: refused, not guessed.
    twice = post_form(
        doctor, f"/patients/{MRN}/interactions/new", page, **form(occurred_at="2024-10-27T02:30")
    )
    assert twice.status_code == 422
    assert "happened twice in Europe/Berlin" in twice.text
    assert "2024-10-27T02:30+02:00" in twice.text and "2024-10-27T02:30+01:00" in twice.text
    with database.connection_context():
        assert InteractionVersion.select().count() == 1
    bad = post_form(
        doctor, f"/patients/{MRN}/interactions/new", page, **form(occurred_at="20.11.2024")
    )
    assert "Enter the time as YYYY-MM-DD HH:MM" in bad.text
    # Near year 1 and year 9999 the zone's offset overflows: a 422, never a 500.
    for moment, message in [
        ("0001-01-01T00:30", "before 1900-01-01"),
        ("9999-12-31T23:30", "The time"),
    ]:
        far = post_form(
            doctor, f"/patients/{MRN}/interactions/new", page, **form(occurred_at=moment)
        )
        assert far.status_code == 422, moment
        assert message in far.text


def test_only_doctors_get_the_form_pages(app, users, doctor_api):
    created = record(doctor_api)
    paths = [
        f"/patients/{MRN}/interactions/new",
        f"/patients/{MRN}/interactions/{created['id']}/amend",
        f"/patients/{MRN}/interactions/{created['id']}/entered-in-error",
    ]
    for email in ("nurse@example.org", "admin@example.org", "patient@example.org"):
        client = browser(app, email)
        for path in paths:
            assert client.get(path).status_code == 403, (email, path)
        # A bearer token skips the CSRF check, so the role check itself is what refuses.
        with database.connection_context():
            token, _ = ApiToken.issue(User.find(email))
        for path in paths:
            answer = app.test_client().post(
                path, data=form(reason="r"), headers={"Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 403, (email, path)
    with database.connection_context():
        assert Interaction.select().count() == 1


def test_an_unknown_patient_or_entry_is_a_404(doctor):
    assert doctor.get("/patients/NOBODY/interactions/new").status_code == 404
    assert doctor.get(f"/patients/{MRN}/interactions/999/amend").status_code == 404
    huge = 99999999999999999999  # beyond a BIGINT
    for action in ("amend", "entered-in-error"):
        assert doctor.get(f"/patients/{MRN}/interactions/{huge}/{action}").status_code == 404
    assert doctor.get("/patients/NOBODY/interactions").status_code == 404


# Amending and marking in error through the forms -----------------------------------------


def test_the_author_amends_from_the_chart(doctor, doctor_api):
    created = record(doctor_api, occurred_at="2024-11-20T08:30:15+00:00")  # seconds are kept
    section = doctor.get(SECTION).text
    path = f"/patients/{MRN}/interactions/{created['id']}/amend"
    answer = post_form(
        doctor,
        path,
        section,
        reason="Was still short of breath",
        occurred_at="2024-11-20T08:30",  # as the form shows it: unchanged
        kind="visit",
        summary="Follow-up",
        notes="",
        outcome="not_healthy",
        status_note="",
    )
    assert answer.status_code == 303, answer.text
    detail = doctor_api.get(f"/api/patients/{MRN}/interactions/{created['id']}").json
    assert detail["version"] == 2 and detail["outcome"] == "not_healthy"
    assert detail["occurred_at"] == "2024-11-20T08:30:15+00:00"
    assert detail["amendments"][0]["changed"] == ["outcome"]
    assert detail["original"]["outcome"] == "healthy"
    html = doctor.get(SECTION).text
    assert "History: the original and 1 amendment" in html
    assert "Was still short of breath" in html


def test_a_stale_amend_form_does_not_undo_a_newer_amendment(doctor, doctor_api):
    created = record(doctor_api)
    path = f"/patients/{MRN}/interactions/{created['id']}/amend"
    first_tab, second_tab = doctor.get(path).text, doctor.get(SECTION).text
    assert 'name="version" value="1"' in first_tab and 'name="version" value="1"' in second_tab
    fields = form(occurred_at="2024-11-20T08:30", kind="visit", summary="Follow-up", notes="")
    saved = post_form(doctor, path, first_tab, **fields, version="1", reason="Worse")
    assert saved.status_code == 303, saved.text
    stale = post_form(
        doctor, path, second_tab, **(fields | {"outcome": "healthy"}), version="1", reason="Typo"
    )
    assert stale.status_code == 409
    assert "amended meanwhile" in stale.text
    assert f'<a href="{path}">Amend the current version' in stale.text
    assert "As it reads now (version 2)" in stale.text
    detail = doctor_api.get(f"/api/patients/{MRN}/interactions/{created['id']}").json
    assert detail["version"] == 2 and detail["outcome"] == "not_healthy"


def test_an_amendment_needs_a_reason_and_a_change(doctor, doctor_api):
    created = record(doctor_api)
    path = f"/patients/{MRN}/interactions/{created['id']}/amend"
    page = doctor.get(path).text
    assert "As it reads now (version 1)" in page
    unchanged = {
        "occurred_at": "2024-11-20T08:30",
        "kind": "visit",
        "summary": "Follow-up",
        "notes": "",
        "outcome": "healthy",
        "status_note": "",
    }
    no_reason = post_form(doctor, path, page, **unchanged, reason="")
    assert no_reason.status_code == 422
    assert re.search(
        r'<p id="field-reason-error" class="field-error">Give a reason', no_reason.text
    )
    nothing = post_form(doctor, path, page, **unchanged, reason="Just because")
    assert nothing.status_code == 422
    assert "The amendment changes nothing" in nothing.text
    assert "This cannot be saved" in nothing.text


def test_another_doctor_cannot_amend_or_mark(app, doctor_api):
    created = record(doctor_api)
    make_user("house@example.org", "doctor")
    house = browser(app, "house@example.org")
    for action in ("amend", "entered-in-error"):
        path = f"/patients/{MRN}/interactions/{created['id']}/{action}"
        assert house.get(path).status_code == 403
        page = house.get(SECTION).text
        answer = post_form(house, path, page, **form(reason="I disagree"))
        assert answer.status_code == 403
        assert "Only the author (Test doctor)" in answer.text
    with database.connection_context():
        assert InteractionVersion.select().count() == 1
        assert InteractionErrorMark.select().count() == 0


def test_the_author_marks_an_entry_entered_in_error(doctor, doctor_api):
    created = record(doctor_api)
    path = f"/patients/{MRN}/interactions/{created['id']}/entered-in-error"
    page = doctor.get(path).text
    assert "It can no longer be amended, and this cannot be undone." in page
    assert post_form(doctor, path, page, reason="  ").status_code == 422
    answer = post_form(doctor, path, page, reason="Wrong patient")
    assert answer.status_code == 303
    html = doctor.get(SECTION).text
    assert "in-error" in html and "Wrong patient" in html
    assert "<summary>Amend</summary>" not in html  # closed now
    closed = doctor.get(f"/patients/{MRN}/interactions/{created['id']}/amend")
    assert closed.status_code == 409
    assert "it can no longer be changed" in closed.text
    assert '<form class="interaction-form' not in closed.text  # nothing left to submit


# The history page -------------------------------------------------------------------------


def test_the_form_posts_are_audited_as_amend_and_mark_in_error(doctor, doctor_api, client_for):
    created = record(doctor_api)
    base = f"/patients/{MRN}/interactions/{created['id']}"
    page = doctor.get(f"{base}/amend").text
    fields = form(occurred_at="2024-11-20T08:30", kind="visit", summary="Follow-up", notes="")
    assert post_form(doctor, f"{base}/amend", page, **fields, reason="").status_code == 422
    saved = post_form(doctor, f"{base}/amend", page, **fields, reason="Worse")
    assert saved.status_code == 303
    page = doctor.get(f"{base}/entered-in-error").text
    assert post_form(doctor, f"{base}/entered-in-error", page, reason="dup").status_code == 303
    rows = client_for("admin").get(f"/api/audit?patient={MRN}&page_size=100").json
    seen = {(row["user"], row["action"], row["outcome"]) for row in rows}
    assert ("doctor@example.org", "amend", "invalid") in seen
    assert ("doctor@example.org", "amend", "allowed") in seen
    assert ("doctor@example.org", "mark in error", "allowed") in seen


def test_the_section_shows_the_newest_and_links_to_the_whole_history(doctor, doctor_api):
    for day in range(1, 27):
        outcome = "healthy" if day % 2 else "not_healthy"
        record(
            doctor_api,
            occurred_at=f"2024-10-{day:02d}T08:00:00+00:00",
            summary=f"day {day}",
            outcome=outcome,
        )
    html = doctor.get(SECTION).text
    assert len(re.findall(r'<li class="interaction ', html)) == 20
    assert html.count("<circle") == 26  # the picture shows them all (from a slim query)
    assert re.search(r"<title>[^<]*: day 1</title>", html)  # the oldest, drawn but not listed
    assert "13 healthy, 13 not healthy." in html
    assert "All 26 interactions" in html
    first = doctor.get(f"/patients/{MRN}/interactions").text
    assert "26 interactions, newest first." in first
    assert re.findall(r'class="interaction-summary">day (\d+)<', first)[:2] == ["26", "25"]
    assert "Page 1 of 2" in first
    second = doctor.get(f"/patients/{MRN}/interactions?page=2").text
    assert re.findall(r'class="interaction-summary">day (\d+)<', second) == ["1"]
    healthy = doctor.get(f"/patients/{MRN}/interactions?outcome=healthy").text
    assert "13 interactions" in healthy


# The demo -------------------------------------------------------------------------------------


def test_the_demo_gives_every_sample_patient_interactions_once(app):
    with app.app_context(), database.connection_context():
        load_demo_patients()
        interactions.caredeck_demo()  # no demo doctor yet: nothing, and no error
        assert Interaction.select().count() == 0
        User.create_user(
            "doctor@caredeck.local",
            ROLE_PASSWORD,
            name="Demo doctor",
            role="doctor",
            status="active",
        )
        interactions.caredeck_demo()
        interactions.caredeck_demo()  # loading twice changes nothing
        by_patient = {
            mrn: Interaction.select().where(Interaction.patient_mrn == mrn).count()
            for mrn in ("DEMO-0001", "DEMO-0002", "DEMO-0003", "DEMO-0004")
        }
        assert by_patient == {"DEMO-0001": 6, "DEMO-0002": 2, "DEMO-0003": 1, "DEMO-0004": 1}
        assert InteractionVersion.select().where(InteractionVersion.number > 1).count() == 1
        assert InteractionErrorMark.select().count() == 1
        assert max(v.occurred_at for v in InteractionVersion.select()) <= utcnow()
