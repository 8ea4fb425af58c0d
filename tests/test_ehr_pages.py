"""The EHR plugin's pages through a signed-in browser session (CSRF tokens and all): who may
open each, form errors next to their fields, the questionnaire's deliveries, bulk updates
only after a preview, and secrets that never reach a page."""

from __future__ import annotations

import re

import pytest
import responses
from ehr_support import add_organization, add_patient, link

from core.auth.models import User
from core.db import database
from core.testing import ROLE_PASSWORD, run_jobs
from plugins.ehr import mappings, organizations, questionnaire
from plugins.ehr import plugin as ehr
from plugins.ehr.models import Delivery, MappingVersion, PatientLink, Submission

MRN = "MRN-000123"
OTHER_MRN = "MRN-000456"
SANDBOX = "http://sandbox.test/ehr-sandbox"
SECRET = "s3cret-ehr-token-5f1d9a"
STAFF_AND_ADMIN = ("admin", "doctor", "nurse")


@pytest.fixture
def caredeck_plugins():
    return {"ehr": ehr}


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


def post_form(client, path: str, page: str, **fields):
    """Submit a form the way the browser does: with the CSRF token of the page it is on."""
    return client.post(path, data={"csrf_token": csrf_from(page)} | fields)


def patient_user(mrn=MRN, email="ada@example.org"):
    with database.connection_context():
        User.create_user(
            email, ROLE_PASSWORD, name="Ada", role="patient", status="active", patient_mrn=mrn
        )
    return email


@pytest.fixture
def clinic(app, users):
    """Two registered patients, the first linked to a clinic on the sandbox EHR, and a
    questionnaire of three questions."""
    add_patient(MRN)
    add_patient(OTHER_MRN, first="Bo", last="Berg")
    organization = add_organization(
        app, connector="sandbox", base_url=SANDBOX, credentials=SECRET, name="Riverside Clinic"
    )
    link(app, MRN, organization, "SBX-1", provider="Dr. Amara Osei")
    with app.app_context(), database.connection_context():
        for position, (field, en, es, required) in enumerate(
            [
                ("symptoms", "What symptoms bring you in?", "¿Qué síntomas le traen?", True),
                ("dob", "Your date of birth", "Su fecha de nacimiento", False),
                ("gender", "Your gender", "Su género", False),
            ]
        ):
            questionnaire.create_question(
                {
                    "field": field,
                    "text_en": en,
                    "text_es": es,
                    "required": required,
                    "position": position,
                },
                "admin@example.org",
            )
    return organization


@pytest.fixture
def admin(app, clinic):
    return browser(app, "admin@example.org")


# Who may open what --------------------------------------------------------------------------


def test_each_page_answers_its_roles_and_refuses_the_others(app, clinic):
    ada = patient_user()
    pages = {
        "/ehr/mappings": ("admin",),
        "/ehr/mappings/sandbox": ("admin",),
        "/ehr/mappings/sandbox/versions/1": ("admin",),
        "/ehr/mappings/sandbox/diff?from=1&to=1": ("admin",),
        "/ehr/organizations": ("admin",),
        f"/ehr/organizations/{clinic.id}": ("admin",),
        "/ehr/bulk": ("admin",),
        "/ehr/sandbox": STAFF_AND_ADMIN,
        "/ehr/questions": STAFF_AND_ADMIN,
        "/ehr/questions/1": STAFF_AND_ADMIN,
        f"/patients/{MRN}/questionnaire": (*STAFF_AND_ADMIN, "ada"),
        f"/patients/{MRN}/sections/ehr": (*STAFF_AND_ADMIN, "ada"),
    }
    clients = {role: browser(app, f"{role}@example.org") for role in STAFF_AND_ADMIN}
    clients["ada"] = browser(app, ada)
    for path, allowed in pages.items():
        for who, client in clients.items():
            status = client.get(path).status_code
            assert status == (200 if who in allowed else 403), (path, who, status)
        answer = app.test_client().get(path)
        assert answer.status_code == 302 and "/login" in answer.location, path
    # A patient sees only their own questionnaire, and cannot tell another patient exists.
    assert clients["ada"].get(f"/patients/{OTHER_MRN}/questionnaire").status_code == 404
    assert clients["ada"].get("/questionnaire").location.endswith(f"/patients/{MRN}/questionnaire")


def test_the_navigation_offers_each_role_its_pages(app, clinic):
    def labels(client) -> set[str]:
        html = client.get(f"/patients/{MRN}/questionnaire").text
        nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', html, re.S).group(1)
        return set(re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', nav))

    admin = labels(browser(app, "admin@example.org"))
    assert {("/ehr/mappings", "EHR"), ("/ehr/sandbox", "EHR sandbox")} <= admin
    nurse = labels(browser(app, "nurse@example.org"))
    assert ("/ehr/sandbox", "EHR sandbox") in nurse and ("/ehr/mappings", "EHR") not in nurse
    assert ("/ehr/questions", "Questionnaire") in nurse
    patient = labels(browser(app, patient_user()))
    assert ("/questionnaire", "Questionnaire") in patient
    assert not {href for href, _ in patient if href.startswith("/ehr")}
    # The administrators' pages link to each other.
    subnav = browser(app, "admin@example.org").get("/ehr/bulk").text
    for path in ("/ehr/mappings", "/ehr/organizations", "/ehr/bulk", "/ehr/sandbox"):
        assert f'href="{path}"' in subnav


# The mapping editor ---------------------------------------------------------------------------


def editor_form(page: str, **changes) -> dict:
    """The editor's inputs as the page shows them (the browser sends them all back)."""
    fields = dict(
        re.findall(
            r'<input id="map-[^"]+" name="([a-z_]+\.(?:field|option))" value="([^"]*)"', page
        )
    )
    for name, endpoint in re.findall(
        r'name="([a-z_]+\.endpoint)">.*?<option value="([^"]*)" selected', page, re.S
    ):
        fields[name] = endpoint
    fields["base"] = re.search(r'name="base" value="(\d+)"', page).group(1)
    for name, kind in re.findall(
        r'name="([a-z_]+\.kind)">.*?<option value="([^"]*)" selected', page, re.S
    ):
        fields[name] = kind
    return fields | changes


def versions_of(app, connector="sandbox") -> list[int]:
    with app.app_context(), database.connection_context():
        return [found.version for found in mappings.versions(connector)]


def test_the_editor_shows_one_row_per_field_with_the_current_mapping(admin):
    page = admin.get("/ehr/mappings/sandbox").text
    assert len(re.findall(r'<tr id="row-', page)) == 16
    assert 'name="symptoms.field" value="symptoms"' in page
    form = editor_form(page)
    assert form["symptoms.endpoint"] == "symptoms" and form["dob.kind"] == ""
    index = admin.get("/ehr/mappings").text
    assert "Sandbox EHR" in index and 'href="/ehr/mappings/athena"' in index


def test_validate_shows_each_error_next_to_its_row_and_saves_nothing(app, admin):
    page = admin.get("/ehr/mappings/sandbox").text
    form = editor_form(
        page,
        **{
            "symptoms.field": "NO_SUCH_FIELD",
            "gender.kind": "codes",
            "gender.option": "female F",
            "name.kind": "date",
            "name.option": "%m/%d/%Y",
        },
    )
    answer = post_form(admin, "/ehr/mappings/sandbox", page, action="validate", **form)
    assert answer.status_code == 422
    html = answer.text
    assert re.search(r'id="row-symptoms-error" class="field-error">[^<]*no field', html)
    assert re.search(r'id="row-gender-error" class="field-error">Write the codes as', html)
    assert re.search(r'id="row-name-error" class="field-error">A date transform applies', html)
    assert 'href="#row-symptoms"' in html  # the summary links to the row
    assert 'value="NO_SUCH_FIELD"' in html  # what was typed stays
    assert versions_of(app) == [1]

    fine = editor_form(page, **{"gender.kind": "codes", "gender.option": "female=F; male=M"})
    answer = post_form(admin, "/ehr/mappings/sandbox", page, action="validate", **fine)
    assert answer.status_code == 200
    assert "The mapping is valid. It is not saved yet." in answer.text
    assert 'value="female=F; male=M"' in answer.text
    assert versions_of(app) == [1]


def test_save_makes_a_new_version_with_its_note_and_the_diff_reads_as_a_table(app, admin):
    page = admin.get("/ehr/mappings/sandbox").text
    form = editor_form(
        page,
        **{
            "gender.kind": "codes",
            "gender.option": "female=F; male=M",
            "name.kind": "upper",
            "email.field": "",  # no longer sent
            "email.endpoint": "",
        },
    )
    answer = post_form(
        admin, "/ehr/mappings/sandbox", page, action="save", note="Codes for <gender>", **form
    )
    assert answer.status_code == 303
    page = admin.get(answer.location).text
    assert "Saved as version 2 of the Sandbox EHR" in page
    assert versions_of(app) == [2, 1]
    assert "Codes for &lt;gender&gt;" in page and "<gender>" not in page
    with app.app_context(), database.connection_context():
        saved = mappings.version("sandbox", 2)
    assert saved.fields["gender"]["transform"] == {
        "kind": "codes",
        "codes": {"female": "F", "male": "M"},
    }
    assert saved.fields["name"]["transform"] == {"kind": "upper"}
    assert "email" not in saved.fields
    assert saved.created_by == "admin@example.org"

    diff = admin.get("/ehr/mappings/sandbox/diff?from=1&to=2").text
    rows = re.findall(
        r'<tr class="ehr-diff-(\w+)">\s*<th scope="row">([^<]+)<code>(\w+)</code>', diff
    )
    assert [(change, field) for change, _, field in rows] == [
        ("changed", "name"),
        ("changed", "gender"),
        ("removed", "email"),
    ]
    assert "patient_name at demographics, upper case" in diff
    assert "sex at demographics, codes: female → F, male → M" in diff
    assert "not sent" in diff
    same = admin.get("/ehr/mappings/sandbox/diff?from=2&to=2").text
    assert "map every field the same way" in same

    old = admin.get("/ehr/mappings/sandbox/versions/1").text
    assert "version 1" in old and "Edit, starting from version 1" in old
    restart = admin.get("/ehr/mappings/sandbox?version=1").text
    assert editor_form(restart)["name.kind"] == ""


def test_a_save_never_silently_undoes_one_made_meanwhile(app, admin):
    page = admin.get("/ehr/mappings/sandbox").text
    with app.app_context(), database.connection_context():  # a colleague, in another tab
        fields = dict(mappings.current("sandbox").fields)
        fields["name"] = {**fields["name"], "transform": {"kind": "upper"}}
        mappings.save("sandbox", fields, user="colleague@example.org", note="theirs")
    mine = editor_form(page, **{"gender.kind": "codes", "gender.option": "female=F"})
    answer = post_form(admin, "/ehr/mappings/sandbox", page, action="save", note="mine", **mine)
    assert answer.status_code == 409
    assert "Version 2 was saved by colleague@example.org since version 1" in answer.text
    assert 'value="female=F"' in answer.text and 'value="mine"' in answer.text
    assert versions_of(app) == [2, 1]
    # Saved again from that page (which now builds on version 2), it replaces version 2.
    again = editor_form(answer.text)
    answer = post_form(admin, "/ehr/mappings/sandbox", answer.text, action="save", **again)
    assert answer.status_code == 303 and versions_of(app) == [3, 2, 1]
    # The same mapping again is no new version.
    page = admin.get(answer.location).text
    answer = post_form(admin, "/ehr/mappings/sandbox", page, action="save", **editor_form(page))
    assert (
        "Nothing changed: version 3 is still the current mapping."
        in admin.get(answer.location).text
    )
    assert versions_of(app) == [3, 2, 1]


def test_the_editor_refuses_unknown_connectors_versions_and_forms_without_a_token(app, admin):
    assert admin.get("/ehr/mappings/nope").status_code == 404
    assert admin.get("/ehr/mappings/sandbox/versions/9").status_code == 404
    assert admin.get("/ehr/mappings/sandbox/diff?from=1&to=9").status_code == 404
    assert admin.get("/ehr/mappings/sandbox?version=9").status_code == 404
    answer = admin.post("/ehr/mappings/sandbox", data={"action": "save", "name.field": "x"})
    assert answer.status_code == 400
    assert versions_of(app) == [1]


# The questionnaire -------------------------------------------------------------------------------


def test_the_questionnaire_asks_in_english_or_spanish(app, clinic):
    nurse = browser(app, "nurse@example.org")
    english = nurse.get(f"/patients/{MRN}/questionnaire").text
    assert "What symptoms bring you in?" in english and "¿Qué síntomas" not in english
    assert '<div lang="en"' in english
    assert 'value="1954-03-02"' in english  # the registry's date of birth, to confirm
    spanish = nurse.get(f"/patients/{MRN}/questionnaire?lang=es").text
    assert "¿Qué síntomas le traen?" in spanish and "What symptoms" not in spanish
    assert '<div lang="es"' in spanish and 'name="language" value="es"' in spanish
    assert "Enviar mis respuestas" in spanish and "Femenino" in spanish
    assert 'aria-current="true">Español' in spanish
    # Without a choice, the browser's language preference decides.
    preferred = nurse.get(
        f"/patients/{MRN}/questionnaire", headers={"Accept-Language": "es-MX,es;q=0.9,en;q=0.5"}
    ).text
    assert '<div lang="es"' in preferred
    chosen = nurse.get(
        f"/patients/{MRN}/questionnaire?lang=en", headers={"Accept-Language": "es"}
    ).text
    assert '<div lang="en"' in chosen


def test_errors_come_back_next_to_their_answers_with_what_was_typed(app, clinic):
    nurse = browser(app, "nurse@example.org")
    page = nurse.get(f"/patients/{MRN}/questionnaire?lang=es").text
    answer = post_form(
        nurse,
        f"/patients/{MRN}/questionnaire",
        page,
        language="es",
        dob="1850-01-01",
        gender="female",
        symptoms="",
    )
    assert answer.status_code == 422
    html = answer.text
    assert re.search(r'id="answer-symptoms-error" class="field-error">Responda esta pregunta', html)
    assert re.search(r'id="answer-dob-error" class="field-error">La fecha debe estar entre', html)
    assert 'aria-invalid="true"' in html and 'value="1850-01-01"' in html
    assert "Corrija estas respuestas" in html  # still in Spanish
    english = post_form(
        nurse, f"/patients/{MRN}/questionnaire", page, language="en", dob="1954-03-02"
    )
    assert re.search(
        r'id="answer-symptoms-error" class="field-error">This question must', english.text
    )
    assert 'value="1954-03-02"' in english.text
    with database.connection_context():
        assert Submission.select().count() == 0


def test_a_submission_queues_its_deliveries_and_confirms_them(app, clinic):
    nurse = browser(app, "nurse@example.org")
    page = nurse.get(f"/patients/{MRN}/questionnaire?lang=es").text
    answer = post_form(
        nurse,
        f"/patients/{MRN}/questionnaire",
        page,
        language="es",
        symptoms="Tos <desde> hace una semana",
        dob="1954-03-02",
        gender="female",
    )
    assert answer.status_code == 303
    with database.connection_context():
        submission = Submission.get()
        queued = list(Delivery.select().order_by(Delivery.sequence))
    assert submission.language == "es" and submission.submitted_by == "nurse@example.org"
    assert submission.answers["symptoms"] == "Tos <desde> hace una semana"
    assert {item.endpoint for item in queued} == {"demographics", "symptoms"}
    assert {item.state for item in queued} == {"pending"}
    assert answer.location.endswith(f"/patients/{MRN}/questionnaire/submissions/{submission.id}")
    confirmation = nurse.get(answer.location).text
    assert "Gracias, sus respuestas están guardadas" in confirmation
    for item in queued:
        assert f'id="delivery-{item.id}"' in confirmation
    assert confirmation.count("En cola") == len(queued)
    assert 'data-auto-refresh="10"' in confirmation  # until every delivery is sent


def test_a_patient_answers_their_own_questionnaire_only(app, clinic):
    ada = browser(app, patient_user())
    page = ada.get(f"/patients/{MRN}/questionnaire").text
    answer = post_form(ada, f"/patients/{MRN}/questionnaire", page, symptoms="Headache")
    assert answer.status_code == 303
    assert ada.get(answer.location).status_code == 200
    answer = post_form(ada, f"/patients/{OTHER_MRN}/questionnaire", page, symptoms="x")
    assert answer.status_code == 404
    with database.connection_context():
        assert [found.mrn for found in Submission.select()] == [MRN]
        submission_id = Submission.get().id
    # Someone else's confirmation, or one that does not exist, is not found.
    nurse = browser(app, "nurse@example.org")
    other = f"/patients/{OTHER_MRN}/questionnaire/submissions/{submission_id}"
    assert nurse.get(other).status_code == 404
    assert nurse.get(f"/patients/{MRN}/questionnaire/submissions/999").status_code == 404


def test_a_patient_without_an_ehr_link_is_told_so(app, clinic):
    nurse = browser(app, "nurse@example.org")
    page = nurse.get(f"/patients/{OTHER_MRN}/questionnaire").text
    assert 'id="questionnaire-unlinked"' in page and "not linked" in page
    assert 'name="symptoms"' not in page  # no form that could not be sent
    spanish = nurse.get(f"/patients/{OTHER_MRN}/questionnaire?lang=es").text
    assert "no está vinculada" in spanish
    # A form sent anyway (an old tab) is refused with the reason; nothing is stored.
    answer = post_form(nurse, f"/patients/{OTHER_MRN}/questionnaire", page, symptoms="Cough")
    assert answer.status_code == 409
    assert "is not linked to an EHR yet" in answer.text
    with database.connection_context():
        assert Submission.select().count() == 0


def test_the_clinical_team_adds_edits_and_retires_questions(app, clinic):
    doctor = browser(app, "doctor@example.org")
    page = doctor.get("/ehr/questions").text
    assert "What symptoms bring you in?" in page and "¿Qué síntomas le traen?" in page
    question = dict(field="symptoms", text_en="Anything else?", text_es="", position="4")
    answer = post_form(doctor, "/ehr/questions", page, **question, active="yes")
    assert answer.status_code == 422
    assert re.search(r'id="question-text_es-error" class="field-error">', answer.text)
    assert 'value="Anything else?"' in answer.text
    question["text_es"] = "¿Algo más?"
    answer = post_form(doctor, "/ehr/questions", page, **question, active="yes")
    assert answer.status_code == 422
    error = r'id="question-field-error" class="field-error">An active question already asks'
    assert re.search(error, answer.text)
    question |= {"field": "allergies", "text_en": "Any <allergies>?", "text_es": "¿Alergias?"}
    answer = post_form(doctor, "/ehr/questions", page, **question, required="yes", active="yes")
    assert answer.status_code == 303
    listing = doctor.get("/ehr/questions").text
    assert "The question on allergies is added." in listing
    assert "Any &lt;allergies&gt;?" in listing
    asked = browser(app, "nurse@example.org").get(f"/patients/{MRN}/questionnaire").text
    assert 'name="allergies"' in asked

    with database.connection_context():
        allergies = questionnaire.Question.get(questionnaire.Question.field == "allergies")
    path = f"/ehr/questions/{allergies.id}"
    edit = doctor.get(path).text
    assert 'id="question-active" name="active" value="yes" checked' in edit
    retired = dict(field="allergies", text_en="Any allergies?", text_es="¿Alergias?")
    answer = post_form(doctor, path, edit, **retired, position="4")  # boxes unticked
    assert answer.status_code == 303
    with database.connection_context():
        again = questionnaire.Question.get_by_id(allergies.id)
    assert (again.active, again.required, again.text_en) == (False, False, "Any allergies?")
    asked = browser(app, "nurse@example.org").get(f"/patients/{MRN}/questionnaire").text
    assert 'name="allergies"' not in asked
    assert doctor.get("/ehr/questions/999").status_code == 404


# Organizations ------------------------------------------------------------------------------


def stored(app, organization_id: int):
    """The organization as stored, and its credentials in clear."""
    with app.app_context(), database.connection_context():
        found = organizations.get(organization_id)
        return found, found.credential()


def test_organizations_are_created_with_errors_next_to_fields_and_secrets_never_shown(app, admin):
    page = admin.get("/ehr/organizations").text
    answer = post_form(
        admin,
        "/ehr/organizations",
        page,
        name="",
        connector="athena",
        base_url="ftp://nowhere",
        credentials="typed-secret-991",
    )
    assert answer.status_code == 422
    html = answer.text
    assert re.search(r'id="org-name-error" class="field-error">', html)
    assert re.search(r'id="org-base_url-error" class="field-error">Give the EHR', html)
    assert "typed-secret-991" not in html

    answer = post_form(
        admin,
        "/ehr/organizations",
        page,
        name="<b>Northside</b> Clinic",
        connector="athena",
        base_url="https://athena.test/v1",
        credentials="typed-secret-991",
        rate_limit_per_second="7",
    )
    assert answer.status_code == 303
    listing = admin.get("/ehr/organizations").text
    assert "&lt;b&gt;Northside&lt;/b&gt; Clinic" in listing and "<b>Northside" not in listing
    with database.connection_context():
        created = organizations.Organization.get(organizations.Organization.connector == "athena")
    created, secret = stored(app, created.id)
    assert secret == "typed-secret-991" and created.rate_limit_per_second == 7
    edit = admin.get(f"/ehr/organizations/{created.id}").text
    for html in (listing, edit):
        for shown_never in ("typed-secret-991", SECRET, created.credentials):  # nor sealed
            assert shown_never not in html
    assert 'type="password"' in edit and "Leave empty to keep them" in edit


def test_an_empty_secret_field_keeps_the_stored_credentials(app, admin, clinic):
    path = f"/ehr/organizations/{clinic.id}"
    page = admin.get(path).text
    kept = dict(name="Riverside Clinic", connector="sandbox", base_url=SANDBOX, credentials="")
    answer = post_form(admin, path, page, **kept, rate_limit_per_second="9")
    assert answer.status_code == 303
    again, secret = stored(app, clinic.id)
    assert secret == SECRET and again.rate_limit_per_second == 9
    answer = post_form(admin, path, page, **(kept | {"credentials": "new-secret-77"}))
    assert answer.status_code == 303
    assert stored(app, clinic.id)[1] == "new-secret-77"
    answer = post_form(admin, path, page, **(kept | {"base_url": "", "credentials": "t-1"}))
    assert answer.status_code == 422 and "t-1" not in answer.text
    assert "new-secret-77" not in answer.text
    assert 'name="clear_credentials"' in admin.get(path).text
    answer = post_form(admin, path, page, **kept, clear_credentials="yes")
    assert answer.status_code == 303
    assert stored(app, clinic.id)[0].credentials is None
    assert 'name="clear_credentials"' not in admin.get(path).text  # nothing left to remove
    assert admin.get("/ehr/organizations/999").status_code == 404


def test_a_patient_is_linked_to_an_ehr_record_from_the_page(admin, clinic):
    page = admin.get("/ehr/organizations").text
    answer = post_form(
        admin,
        "/ehr/patient-links",
        page,
        mrn=OTHER_MRN,
        organization_id=str(clinic.id),
        ehr_patient_id="bad id!",
        provider="",
    )
    assert answer.status_code == 422
    assert re.search(
        r'id="link-ehr_patient_id-error" class="field-error">Give the patient', answer.text
    )
    assert f'value="{OTHER_MRN}"' in answer.text
    answer = post_form(
        admin,
        "/ehr/patient-links",
        page,
        mrn=OTHER_MRN,
        organization_id=str(clinic.id),
        ehr_patient_id="SBX-2",
        provider="Dr. Lena Park",
    )
    assert answer.status_code == 303
    with database.connection_context():
        linked = organizations.link_of(OTHER_MRN)
    assert (linked.ehr_patient_id, linked.provider) == ("SBX-2", "Dr. Lena Park")
    answer = post_form(
        admin,
        "/ehr/patient-links",
        page,
        mrn=MRN,
        organization_id=str(clinic.id),
        ehr_patient_id="SBX-2",
    )
    assert answer.status_code == 409 and "one EHR record is one patient" in answer.text


# Bulk updates -------------------------------------------------------------------------------


def providers() -> dict[str, str | None]:
    with database.connection_context():
        return {found.mrn: found.provider for found in PatientLink.select()}


def test_a_bulk_update_is_previewed_then_confirmed(app, admin, clinic):
    add_patient("MRN-000789", first="Cy", last="Dahl")
    link(app, "MRN-000789", clinic, "SBX-3", provider="Dr. Lena Park")
    link(app, OTHER_MRN, clinic, "SBX-2", provider="Dr. Amara Osei")
    before = providers()
    page = admin.get("/ehr/bulk").text
    choice = dict(
        organization_id=str(clinic.id),
        provider="Dr. Amara Osei",
        change="provider",
        new_provider="Dr. Rivera",
    )
    preview = post_form(admin, "/ehr/bulk/preview", page, **choice)
    assert preview.status_code == 200
    rows = re.findall(
        r"<tr><td>([^<]+)</td><td>([^<]+)</td><td>Primary care physician</td>\s*"
        r'<td class="before">([^<]+)</td><td class="after">([^<]+)</td>',
        preview.text,
    )
    assert rows == [
        (MRN, "Lindqvist, Ada", "Dr. Amara Osei", "Dr. Rivera"),
        (OTHER_MRN, "Berg, Bo", "Dr. Amara Osei", "Dr. Rivera"),
    ]
    assert providers() == before  # a preview changes nothing
    token = re.search(r'name="token" value="([^"]+)"', preview.text).group(1)
    answer = post_form(admin, "/ehr/bulk/confirm", preview.text, token=token)
    assert answer.status_code == 303
    assert "2 of 2 patients changed" in admin.get(answer.location).text
    assert providers() == before | {MRN: "Dr. Rivera", OTHER_MRN: "Dr. Rivera"}


def test_a_long_preview_lists_the_first_rows_and_counts_them_all(app, admin, clinic, monkeypatch):
    monkeypatch.setattr("plugins.ehr.views.BULK_PREVIEW_ROWS", 1)
    link(app, OTHER_MRN, clinic, "SBX-2", provider="Dr. Amara Osei")
    page = admin.get("/ehr/bulk").text
    choice = dict(organization_id=str(clinic.id), change="provider", new_provider="Dr. Rivera")
    preview = post_form(admin, "/ehr/bulk/preview", page, **choice).text
    assert len(re.findall(r'<td class="after">', preview)) == 1
    assert "The first 1 are listed; the other 1 change the same way." in preview
    assert "Confirm and apply 2 changes" in preview
    token = re.search(r'name="token" value="([^"]+)"', preview).group(1)
    assert post_form(admin, "/ehr/bulk/confirm", preview, token=token).status_code == 303
    assert set(providers().values()) == {"Dr. Rivera"}


def test_nothing_changes_without_the_preview_that_showed_it(app, admin, clinic):
    page = admin.get("/ehr/bulk").text
    before = providers()
    forged = post_form(admin, "/ehr/bulk/confirm", page, token="not-a-preview")
    assert forged.status_code == 400
    choice = dict(organization_id=str(clinic.id), change="provider", new_provider="Dr. Rivera")
    preview = post_form(admin, "/ehr/bulk/preview", page, **choice)
    token = re.search(r'name="token" value="([^"]+)"', preview.text).group(1)
    # Meanwhile another patient joins the selection: confirming shows the new preview.
    link(app, OTHER_MRN, clinic, "SBX-2", provider="Dr. Amara Osei")
    answer = post_form(admin, "/ehr/bulk/confirm", preview.text, token=token)
    assert answer.status_code == 409
    assert "The patients changed since your preview" in answer.text
    assert OTHER_MRN in answer.text
    assert providers() == before | {OTHER_MRN: "Dr. Amara Osei"}


def test_bulk_form_errors_are_named(admin, clinic):
    page = admin.get("/ehr/bulk").text
    answer = post_form(admin, "/ehr/bulk/preview", page, organization_id="", change="")
    assert answer.status_code == 422
    assert re.search(r'id="bulk-organization_id-error" class="field-error">Choose', answer.text)
    assert re.search(r'id="bulk-change-error" class="field-error">Choose what', answer.text)
    answer = post_form(
        admin,
        "/ehr/bulk/preview",
        page,
        organization_id=str(clinic.id),
        change="organization",
        new_organization_id=str(clinic.id),
    )
    assert answer.status_code == 422
    assert re.search(r'id="bulk-new_organization_id-error" class="field-error">', answer.text)


# The sandbox EHR and the chart section --------------------------------------------------------


def test_the_sandbox_page_shows_payloads_as_text(app, clinic):
    sandbox = add_organization(
        app, connector="sandbox", base_url=SANDBOX, credentials="x", name="Sandbox Two"
    )
    link(app, OTHER_MRN, sandbox, "SBX-9")
    received = app.test_client().post(
        "/ehr-sandbox/symptoms",
        json={"patient_id": "SBX-9", "fields": {"symptoms": "<script>alert(1)</script>"}},
        headers={
            "Authorization": f"Bearer {app.config['EHR_SANDBOX_TOKEN']}",
            "Idempotency-Key": "k-1",
        },
    )
    assert received.status_code == 201, received.text
    html = browser(app, "doctor@example.org").get("/ehr/sandbox").text
    payload = re.search(r'<pre class="ehr-payload"[^>]*>(.*?)</pre>', html, re.S).group(1)
    assert payload == "{\n  &#34;symptoms&#34;: &#34;&lt;script&gt;alert(1)&lt;/script&gt;&#34;\n}"
    assert "<script>alert" not in html
    assert "<code>symptoms</code>" in html and "<code>SBX-9</code>" in html


def submit(app, answers, mrn=MRN):
    with app.app_context(), database.connection_context():
        return questionnaire.submit(mrn, answers, user="nurse@example.org", language="en")


def test_the_chart_lists_deliveries_and_staff_retry_the_failed_ones(app, clinic):
    submission = submit(app, {"symptoms": "Cough"})
    nurse = browser(app, "nurse@example.org")
    section = nurse.get(f"/patients/{MRN}/sections/ehr").text
    assert "EHR record <code>SBX-1</code> at Riverside Clinic" in section
    assert f'href="/patients/{MRN}/questionnaire"' in section
    assert "sandbox · symptoms" in section and "ehr-state-pending" in section
    assert "version 1" in section and "Retry" not in section

    with responses.RequestsMock() as rsps:
        rsps.add(
            responses.GET,
            f"{SANDBOX}/patients/SBX-1",
            json={"patient_id": "SBX-1", "name": "Ada Lindqvist", "date_of_birth": "1954-03-02"},
        )
        rsps.add(responses.POST, f"{SANDBOX}/symptoms", status=400, json={"message": "No <b>"})
        run_jobs(app)
    with database.connection_context():
        failed = Delivery.get()
    assert failed.state == "failed"
    section = nurse.get(f"/patients/{MRN}/sections/ehr").text
    assert "ehr-state-failed" in section and "No &lt;b&gt;" in section
    confirmation = nurse.get(f"/patients/{MRN}/questionnaire/submissions/{submission.id}").text
    assert "ehr-state-failed" in confirmation and "data-auto-refresh" not in confirmation
    assert f'action="/patients/{MRN}/ehr-deliveries/{failed.id}/retry"' in section
    ada = browser(app, patient_user())
    own = ada.get(f"/patients/{MRN}/sections/ehr").text
    assert "ehr-state-failed" in own and "Retry" not in own and "No &lt;b&gt;" not in own
    chart = ada.get(f"/patients/{MRN}").text  # a page with a form (sign out), for its token
    assert (
        post_form(ada, f"/patients/{MRN}/ehr-deliveries/{failed.id}/retry", chart).status_code
        == 403
    )

    answer = post_form(nurse, f"/patients/{MRN}/ehr-deliveries/{failed.id}/retry", section)
    assert answer.status_code == 303 and answer.location.endswith("#section-ehr-title")
    with database.connection_context():
        again = Delivery.get_by_id(failed.id)
    assert (again.state, again.attempts) == ("pending", 0)
    chart = nurse.get(f"/patients/{MRN}").text
    assert f"Delivery {failed.id} is queued again." in chart
    answer = post_form(nurse, f"/patients/{MRN}/ehr-deliveries/{failed.id}/retry", section)
    assert "only a failed delivery can be retried" in nurse.get(answer.location).text
    # A delivery of another patient is not found through this one's chart.
    wrong = post_form(nurse, f"/patients/{OTHER_MRN}/ehr-deliveries/{failed.id}/retry", section)
    assert wrong.status_code == 404


def test_the_section_says_when_a_patient_is_not_linked(app, clinic):
    section = browser(app, "doctor@example.org").get(f"/patients/{OTHER_MRN}/sections/ehr").text
    assert "not linked to an EHR record" in section
    assert "No questionnaire answers have been delivered" in section


def test_mapping_versions_shown_on_the_chart_are_the_ones_used(app, clinic):
    submit(app, {"symptoms": "Cough"})
    with app.app_context(), database.connection_context():
        fields = dict(mappings.current("sandbox").fields)
        fields["symptoms"] = {**fields["symptoms"], "transform": {"kind": "upper"}}
        mappings.save("sandbox", fields, user="admin@example.org", note="louder")
    submit(app, {"symptoms": "Fever"})
    section = browser(app, "nurse@example.org").get(f"/patients/{MRN}/sections/ehr").text
    assert re.findall(r"<td>version (\d+)</td>", section) == ["2", "1"]  # newest first
    with database.connection_context():
        assert MappingVersion.select().count() == 2
