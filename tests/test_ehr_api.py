"""The EHR plugin's JSON API: roles, write-only credentials, 422s naming each field,
mappings (versions, diff, validation), questions, links and bulk updates."""

import datetime
import logging

import pytest
from ehr_support import (
    ALLSCRIPTS,
    ATHENA,
    TEST_SETTINGS,
    add_organization,
    add_patient,
    link,
)

from core.db import database
from core.testing import assert_migrations_create
from plugins.ehr import chart
from plugins.ehr import plugin as ehr
from plugins.ehr.models import Organization, PatientLink

MRN = "MRN-000123"
SECRET = "athena-client-secret-0b5e7d1c9a"


@pytest.fixture
def caredeck_plugins():
    return {"ehr": ehr}


@pytest.fixture
def app(make_app):
    return make_app(**TEST_SETTINGS)


def test_the_migrations_create_the_models(app):
    assert_migrations_create(app, "ehr")


def test_the_installed_connectors_are_listed(client_for):
    listed = client_for("nurse").get("/api/ehr/connectors")
    assert listed.status_code == 200
    by_name = {item["name"]: item for item in listed.json}
    assert list(by_name) == ["allscripts", "athena", "sandbox"]
    assert "HISTORY_FAMILY_PATIENT" in by_name["athena"]["fields"]
    assert by_name["allscripts"]["endpoints"][0] == "SavePatientDemographics"
    assert by_name["athena"]["mapping_version"] == 1
    assert client_for("patient").get("/api/ehr/connectors").status_code == 403


def test_credentials_never_appear_in_answers_logs_or_audit(app, client_for, caplog):
    admin = client_for("admin")
    with caplog.at_level(logging.DEBUG):
        created = admin.post(
            "/api/ehr/organizations",
            json={
                "name": "Riverside Clinic",
                "connector": "athena",
                "base_url": ATHENA,
                "credentials": SECRET,
            },
        )
        assert created.status_code == 201, created.json
        org = created.json
        assert org["has_credentials"] is True and "credentials" not in org
        answers = [
            created,
            admin.get("/api/ehr/organizations"),
            admin.get(f"/api/ehr/organizations/{org['id']}"),
            admin.patch(f"/api/ehr/organizations/{org['id']}", json={"name": "Riverside"}),
            # Empty on an update keeps the stored secret (a form's blank secret field).
            admin.patch(f"/api/ehr/organizations/{org['id']}", json={"credentials": ""}),
            admin.patch(
                f"/api/ehr/organizations/{org['id']}",
                json={"credentials": SECRET + "-2", "rate_limit_per_second": 0},
            ),
            admin.get("/api/audit?user=admin@example.org"),
            admin.get("/api/openapi.json"),
        ]
    for answer in answers:
        assert SECRET not in answer.get_data(as_text=True)
    assert answers[-3].status_code == 422  # the secret in a refused request is not echoed
    # Not even peewee's DEBUG log of each statement's parameters: stored encrypted.
    assert [r.getMessage() for r in caplog.records if SECRET in r.getMessage()] == []
    with app.app_context(), database.connection_context():
        stored = Organization.get_by_id(org["id"])
        assert SECRET not in stored.credentials
        assert stored.credential() == SECRET  # the refused change changed nothing
    assert admin.get(f"/api/ehr/organizations/{org['id']}").json["has_credentials"] is True
    cleared = admin.patch(f"/api/ehr/organizations/{org['id']}", json={"credentials": None})
    assert cleared.json["has_credentials"] is False
    schema = admin.get("/api/openapi.json").json["components"]["schemas"]
    assert schema["EhrOrganizationInput"]["properties"]["credentials"]["writeOnly"] is True
    assert "credentials" not in schema["EhrOrganization"]["properties"]


@pytest.mark.parametrize("role", ["doctor", "nurse", "patient"])
def test_admin_routes_refuse_other_roles(app, client_for, role):
    add_patient()
    organization = add_organization(app)
    client = client_for(role)
    body = {"selection": {"organization_id": organization.id}, "change": {"provider": "Dr. X"}}
    for method, path, json in [
        ("get", "/api/ehr/organizations", None),
        (
            "post",
            "/api/ehr/organizations",
            {"name": "X", "connector": "athena", "base_url": ATHENA},
        ),
        ("get", f"/api/ehr/organizations/{organization.id}", None),
        ("patch", f"/api/ehr/organizations/{organization.id}", {"name": "Y"}),
        ("get", "/api/ehr/mappings/athena", None),
        ("put", "/api/ehr/mappings/athena", {"fields": {}}),
        ("get", "/api/ehr/mappings/athena/versions", None),
        ("get", "/api/ehr/mappings/athena/versions/1", None),
        ("get", "/api/ehr/mappings/athena/diff?from=1", None),
        ("post", "/api/ehr/mappings/athena/validate", {"fields": {}}),
        ("put", f"/api/patients/{MRN}/ehr-link", {"organization_id": 1, "ehr_patient_id": "A"}),
        ("post", "/api/ehr/bulk-updates/preview", body),
        ("post", "/api/ehr/bulk-updates", body),
    ]:
        answer = getattr(client, method)(path, json=json)
        assert answer.status_code == 403, (method, path, answer.json)
    with database.connection_context():
        assert not PatientLink.select().exists()


def test_a_patient_submits_for_themself_only(app, client_for, users):
    add_patient()
    add_patient("MRN-000124", "Bo", "Svensson", datetime.date(1960, 1, 1))
    organization = add_organization(app)
    link(app, MRN, organization, "A-1")
    link(app, "MRN-000124", organization, "A-2")
    with database.connection_context():
        users["patient"].patient_mrn = MRN
        users["patient"].save()
    patient = client_for("patient")
    own = patient.post(
        f"/api/patients/{MRN}/questionnaire-responses",
        json={"answers": {"symptoms": "Tos desde hace una semana"}, "language": "es"},
    )
    assert own.status_code == 202, own.json
    assert own.json["submitted_by"] == "patient@example.org"
    assert own.json["language"] == "es"
    assert [d["endpoint"] for d in own.json["deliveries"]] == ["symptoms"]
    other = patient.post(
        "/api/patients/MRN-000124/questionnaire-responses", json={"answers": {"symptoms": "x"}}
    )
    assert other.status_code == 404
    assert len(patient.get(f"/api/patients/{MRN}/questionnaire-responses").json) == 1
    assert patient.get("/api/patients/MRN-000124/questionnaire-responses").status_code == 404
    assert patient.get(f"/api/patients/{MRN}/ehr-deliveries").status_code == 403
    assert patient.get(f"/api/patients/{MRN}/ehr-link").status_code == 403


def test_invalid_input_is_422_naming_each_field(app, client_for):
    add_patient()
    organization = add_organization(app)
    link(app, MRN, organization, "A-1")
    admin = client_for("admin")

    created = admin.post(
        "/api/ehr/organizations",
        json={"name": "X", "connector": "epic", "base_url": "ftp://x", "rate_limit_per_second": 0},
    )
    assert created.status_code == 422
    assert set(created.json["errors"]["json"]) == {"connector", "base_url", "rate_limit_per_second"}
    assert (
        "connector: Choose an installed connector: allscripts, athena, sandbox."
        in (created.json["message"])
    )
    missing = admin.post("/api/ehr/organizations", json={"name": "X"})
    assert set(missing.json["errors"]["json"]) == {"connector", "base_url"}
    in_url = admin.post(
        "/api/ehr/organizations",
        json={"name": "X", "connector": "athena", "base_url": "https://u:p@ehr.test/"},
    )
    assert "credentials field" in in_url.json["errors"]["json"]["base_url"][0]

    submitted = client_for("nurse").post(
        f"/api/patients/{MRN}/questionnaire-responses",
        json={"answers": {"dob": "02/03/1954", "shoe_size": "42", "symptoms": 7}, "language": "fr"},
    )
    assert submitted.status_code == 422
    assert set(submitted.json["errors"]["json"]) == {
        "answers.dob",
        "answers.shoe_size",
        "answers.symptoms",
        "language",
    }
    submitted = client_for("nurse").post(
        f"/api/patients/{MRN}/questionnaire-responses",
        json={"answers": {"dob": "02/03/1954", "shoe_size": "42", "symptoms": 7}},
    )
    assert set(submitted.json["errors"]["json"]) == {
        "answers.dob",
        "answers.shoe_size",
        "answers.symptoms",
    }
    assert "answers.dob: Give the date as YYYY-MM-DD" in submitted.json["message"]

    mapping = admin.put(
        "/api/ehr/mappings/athena",
        json={
            "fields": {
                "dob": {
                    "field": "DATE_OF_BIRTH_PATIENT",
                    "endpoint": "vitals",
                    "transform": {"kind": "date", "format": "%H:%M"},
                },
                "gender": {"field": "SEX", "endpoint": "demographics", "transform": None},
            }
        },
    )
    assert mapping.status_code == 422
    assert set(mapping.json["errors"]["json"]) == {
        "fields.dob.endpoint",
        "fields.dob.transform.format",
        "fields.gender.field",
    }

    linked = admin.put(
        f"/api/patients/{MRN}/ehr-link", json={"organization_id": 99, "ehr_patient_id": "a/b"}
    )
    assert set(linked.json["errors"]["json"]) == {"organization_id", "ehr_patient_id"}


def test_a_patient_without_an_ehr_link_cannot_submit(app, client_for):
    add_patient()
    answer = client_for("nurse").post(
        f"/api/patients/{MRN}/questionnaire-responses", json={"answers": {"symptoms": "Cough"}}
    )
    assert answer.status_code == 409
    assert answer.json["message"].startswith(f"Patient {MRN} is not linked to an EHR yet")


def test_mappings_are_versioned_diffed_and_validated(app, client_for):
    admin = client_for("admin")
    current = admin.get("/api/ehr/mappings/athena").json
    assert current["version"] == 1
    assert current["fields"]["dob"]["transform"] == {"kind": "date", "format": "%m/%d/%Y"}
    changed = dict(current["fields"])
    del changed["email"]
    changed["gender"] = {
        "field": "GENDER_OF_PATIENT",
        "endpoint": "demographics",
        "transform": {"kind": "codes", "codes": {"female": "2", "male": "1"}},
    }
    changed["allergies"] = {"field": "ALLERGIES_PATIENT", "endpoint": "symptoms", "transform": None}
    validated = admin.post("/api/ehr/mappings/athena/validate", json={"fields": changed}).json
    assert validated == {"valid": True, "errors": {}}
    saved = admin.put(
        "/api/ehr/mappings/athena",
        json={"fields": changed, "note": "Codes 1/2", "base_version": 1},
    )
    assert saved.status_code == 200, saved.json
    assert (saved.json["version"], saved.json["note"], saved.json["created_by"]) == (
        2,
        "Codes 1/2",
        "admin@example.org",
    )
    again = admin.put("/api/ehr/mappings/athena", json={"fields": changed})
    assert again.json["version"] == 2  # nothing changed: no new version
    stale = admin.put(
        "/api/ehr/mappings/athena", json={"fields": current["fields"], "base_version": 1}
    )
    assert stale.status_code == 409  # version 2 was saved since the edit began at 1
    assert stale.json["message"].startswith("Version 2 was saved by admin@example.org since")
    versions = admin.get("/api/ehr/mappings/athena/versions")
    assert [v["version"] for v in versions.json] == [2, 1]
    assert admin.get("/api/ehr/mappings/athena/versions/1").json["fields"] == current["fields"]
    assert admin.get("/api/ehr/mappings/athena/versions/3").status_code == 404
    diff = admin.get("/api/ehr/mappings/athena/diff?from=1").json
    assert (diff["from"], diff["to"]) == (1, 2)
    assert [(row["field"], row["change"]) for row in diff["changes"]] == [
        ("gender", "changed"),
        ("email", "removed"),
        ("allergies", "changed"),
    ]
    assert diff["changes"][1]["after"] is None
    assert diff["changes"][2]["after"]["endpoint"] == "symptoms"
    invalid = admin.post(
        "/api/ehr/mappings/athena/validate",
        json={
            "fields": {
                "gender": {
                    "field": "GENDER_OF_PATIENT",
                    "endpoint": "demographics",
                    "transform": {"kind": "codes", "codes": {}},
                }
            }
        },
    ).json
    assert invalid["valid"] is False
    assert list(invalid["errors"]) == ["gender.transform.codes"]
    assert admin.get("/api/ehr/mappings/epic").status_code == 404
    assert admin.get("/api/ehr/mappings/athena/diff").status_code == 422


def test_questions_in_english_and_spanish(app, client_for):
    nurse = client_for("nurse")
    created = nurse.post(
        "/api/ehr/questions",
        json={
            "field": "symptoms",
            "text_en": "What brings you in?",
            "text_es": "¿Qué le trae por aquí?",
            "required": True,
        },
    )
    assert created.status_code == 201, created.json
    twice = nurse.post(
        "/api/ehr/questions", json={"field": "symptoms", "text_en": "a", "text_es": "b"}
    )
    assert twice.status_code == 422 and list(twice.json["errors"]["json"]) == ["field"]
    bad = nurse.post("/api/ehr/questions", json={"field": "mood", "text_en": ""})
    assert set(bad.json["errors"]["json"]) == {"field", "text_en"}
    listed = client_for("patient").get("/api/ehr/questions").json
    assert [(q["field"], q["text_es"]) for q in listed] == [("symptoms", "¿Qué le trae por aquí?")]
    assert client_for("patient").post("/api/ehr/questions", json={}).status_code == 403

    add_patient()
    link(app, MRN, add_organization(app), "A-1")
    unanswered = nurse.post(
        f"/api/patients/{MRN}/questionnaire-responses", json={"answers": {"allergies": "None"}}
    )
    assert unanswered.status_code == 422
    assert list(unanswered.json["errors"]["json"]) == ["answers.symptoms"]

    retired = nurse.patch(f"/api/ehr/questions/{created.json['id']}", json={"active": False})
    assert retired.json["active"] is False
    assert client_for("patient").get("/api/ehr/questions").json == []
    assert len(nurse.get("/api/ehr/questions?all=true").json) == 1
    assert nurse.patch("/api/ehr/questions/999", json={"active": True}).status_code == 404


def test_links_are_read_and_one_ehr_record_is_one_patient(app, client_for):
    add_patient()
    add_patient("MRN-000124", "Bo", "Svensson", datetime.date(1960, 1, 1))
    organization = add_organization(app)
    admin = client_for("admin")
    linked = admin.put(
        f"/api/patients/{MRN}/ehr-link",
        json={"organization_id": organization.id, "ehr_patient_id": "A-1", "provider": "Dr. Osei"},
    )
    assert linked.status_code == 200, linked.json
    assert linked.json == {
        "mrn": MRN,
        "organization_id": organization.id,
        "organization": "Athena Clinic",
        "connector": "athena",
        "ehr_patient_id": "A-1",
        "provider": "Dr. Osei",
        "updated_at": linked.json["updated_at"],
    }
    assert client_for("doctor").get(f"/api/patients/{MRN}/ehr-link").json["ehr_patient_id"] == "A-1"
    taken = admin.put(
        "/api/patients/MRN-000124/ehr-link",
        json={"organization_id": organization.id, "ehr_patient_id": "A-1"},
    )
    assert taken.status_code == 409
    assert "already the EHR record of patient MRN-000123" in taken.json["message"]
    assert client_for("doctor").get("/api/patients/MRN-000124/ehr-link").status_code == 404
    assert (
        admin.put(
            "/api/patients/NOPE-1/ehr-link",
            json={"organization_id": organization.id, "ehr_patient_id": "A-9"},
        ).status_code
        == 404
    )


def test_bulk_update_previews_then_applies(app, client_for):
    athena = add_organization(app)
    sister = add_organization(app, name="Athena Clinic East")  # the same EHR tenant
    other = add_organization(app, "allscripts", ALLSCRIPTS, "t", name="Hillside")
    for number, provider in ((1, "Dr. Osei"), (2, "Dr. Osei"), (3, "Dr. Park")):
        mrn = f"MRN-00{number}"
        add_patient(mrn, f"P{number}", f"Last{number}")
        link(app, mrn, athena, f"A-{number}", provider)
    admin = client_for("admin")
    request = {
        "selection": {"organization_id": athena.id, "provider": "Dr. Osei"},
        "change": {"provider": "Dr. Rivera"},
    }
    preview = admin.post("/api/ehr/bulk-updates/preview", json=request)
    assert preview.status_code == 200, preview.json
    assert preview.json == [
        {
            "mrn": "MRN-001",
            "name": "Last1, P1",
            "field": "provider",
            "before": "Dr. Osei",
            "after": "Dr. Rivera",
        },
        {
            "mrn": "MRN-002",
            "name": "Last2, P2",
            "field": "provider",
            "before": "Dr. Osei",
            "after": "Dr. Rivera",
        },
    ]
    stale = admin.post("/api/ehr/bulk-updates", json={**request, "expected": 3})
    assert stale.status_code == 409
    assert "The selection changed since the preview" in stale.json["message"]
    applied = admin.post("/api/ehr/bulk-updates", json={**request, "expected": 2})
    assert applied.json == {"matched": 2, "changed": 2}
    with database.connection_context():
        providers = {link.mrn: link.provider for link in PatientLink.select()}
    assert providers == {"MRN-001": "Dr. Rivera", "MRN-002": "Dr. Rivera", "MRN-003": "Dr. Park"}

    elsewhere = admin.post(
        "/api/ehr/bulk-updates/preview",
        json={"selection": {"organization_id": athena.id}, "change": {"organization_id": other.id}},
    )
    assert elsewhere.status_code == 422
    assert "uses another EHR" in elsewhere.json["errors"]["json"]["change.organization_id"][0]
    moved = admin.post(
        "/api/ehr/bulk-updates",
        json={
            "selection": {"organization_id": athena.id, "provider": "Dr. Park"},
            "change": {"organization_id": sister.id},
        },
    )
    assert moved.json == {"matched": 1, "changed": 1}
    with database.connection_context():
        assert PatientLink.get(PatientLink.mrn == "MRN-003").organization_id == sister.id
    both = admin.post(
        "/api/ehr/bulk-updates/preview",
        json={
            "selection": {"organization_id": athena.id},
            "change": {"provider": "A", "organization_id": 1},
        },
    )
    assert both.status_code == 422 and "change" in str(both.json["errors"])
    audit = admin.get("/api/audit?user=admin@example.org").json
    assert {"preview bulk ehr update", "bulk ehr update"} <= {row["action"] for row in audit}


def test_chart_data_groups_deliveries_by_submission(app, client_for):
    add_patient()
    link(app, MRN, add_organization(app), "A-1")
    client_for("nurse").post(
        f"/api/patients/{MRN}/questionnaire-responses",
        json={"answers": {"symptoms": "Cough", "family_history": "Asthma"}},
    )
    with app.app_context(), database.connection_context():
        data = chart.chart_data(MRN)
    assert data["organization"].name == "Athena Clinic"
    [entry] = data["submissions"]
    assert entry["state"] == "pending"
    assert [d.endpoint for d in entry["deliveries"]] == ["family_history", "symptoms"]
    assert data["counts"] == {"pending": 2, "sent": 0, "failed": 0}
    first, second = entry["deliveries"]
    assert data["waiting_for"] == {second.id: first.id}


def test_a_submission_is_stored_with_all_its_deliveries_or_not_at_all(app, client_for):
    from unittest import mock

    from plugins.ehr.models import Delivery, Submission

    add_patient()
    link(app, MRN, add_organization(app), "A-1")
    real_create = Delivery.create
    made = []

    def second_fails(**fields):
        if made:
            raise RuntimeError("the database went away")
        made.append(real_create(**fields))
        return made[-1]

    with mock.patch.object(Delivery, "create", side_effect=second_fails):
        answer = client_for("nurse").post(
            f"/api/patients/{MRN}/questionnaire-responses",
            json={"answers": {"symptoms": "Cough", "family_history": "Asthma"}},
        )
    assert answer.status_code == 500
    assert len(made) == 1  # one delivery was written, then the transaction rolled back
    with database.connection_context():
        assert Submission.select().count() == 0
        assert Delivery.select().count() == 0
    assert app.extensions["caredeck"].jobs.broker.queues["default"].qsize() == 0


@pytest.mark.parametrize("caredeck_database_url", ["sqlite"], indirect=True)
def test_an_http_timeout_longer_than_the_job_allows_stops_start_up(make_app):
    from core.config import ConfigError

    with pytest.raises(ConfigError) as raised:
        make_app(EHR_HTTP_TIMEOUT_SECONDS="90")
    assert "EHR_HTTP_TIMEOUT_SECONDS must be at most 50 seconds; got '90'" in str(raised.value)


@pytest.mark.parametrize("caredeck_database_url", ["sqlite"], indirect=True)
def test_a_short_sandbox_token_stops_start_up(make_app):
    from core.config import ConfigError

    with pytest.raises(ConfigError) as raised:
        make_app(EHR_SANDBOX_TOKEN=" ")
    assert "EHR_SANDBOX_TOKEN must be at least 16 characters" in str(raised.value)


def test_a_submission_to_an_uninstalled_connector_is_refused_saying_so(app, client_for):
    add_patient()
    with database.connection_context():
        retired = Organization.create(name="Old Clinic", connector="medisoft", base_url=ATHENA)
    link(app, MRN, retired, "M-1")
    answer = client_for("nurse").post(
        f"/api/patients/{MRN}/questionnaire-responses", json={"answers": {"symptoms": "Cough"}}
    )
    assert answer.status_code == 409
    assert answer.json["message"] == (
        "Old Clinic's EHR cannot be reached: No EHR connector 'medisoft' is installed."
    )


def test_a_mapping_entry_whose_field_or_endpoint_is_not_text_is_422_naming_it(app, client_for):
    admin = client_for("admin")
    fields = {
        "dob": {"field": ["DATE_OF_BIRTH_PATIENT"], "endpoint": "demographics"},
        "symptoms": {"field": "SYMPTOMS_PATIENT", "endpoint": {"name": "symptoms"}},
    }
    saved = admin.put("/api/ehr/mappings/athena", json={"fields": fields})
    assert saved.status_code == 422, saved.json
    assert set(saved.json["errors"]["json"]) == {"fields.dob.field", "fields.symptoms.endpoint"}
    checked = admin.post("/api/ehr/mappings/athena/validate", json={"fields": fields})
    assert checked.status_code == 200, checked.json
    assert checked.json["valid"] is False
    assert set(checked.json["errors"]) == {"dob.field", "symptoms.endpoint"}


def test_one_ehr_record_is_one_patient_across_organizations_on_that_ehr(app, client_for):
    add_patient()
    add_patient("MRN-000124", "Bo", "Svensson", datetime.date(1960, 1, 1))
    west = add_organization(app, name="Athena Clinic West")
    east = add_organization(app, base_url=ATHENA + "/", name="Athena Clinic East")  # same EHR
    other = add_organization(app, base_url="https://athena.other.test/v1", name="Elsewhere")
    admin = client_for("admin")
    linked = admin.put(
        f"/api/patients/{MRN}/ehr-link", json={"organization_id": west.id, "ehr_patient_id": "A-1"}
    )
    assert linked.status_code == 200, linked.json
    taken = admin.put(
        "/api/patients/MRN-000124/ehr-link",
        json={"organization_id": east.id, "ehr_patient_id": "A-1"},
    )
    assert taken.status_code == 409, taken.json
    assert "already the EHR record of patient MRN-000123" in taken.json["message"]
    # Another EHR's A-1 is another person.
    elsewhere = admin.put(
        "/api/patients/MRN-000124/ehr-link",
        json={"organization_id": other.id, "ehr_patient_id": "A-1"},
    )
    assert elsewhere.status_code == 200, elsewhere.json
    # The patient themself may move to the sister organization, keeping their record.
    moved = admin.put(
        f"/api/patients/{MRN}/ehr-link", json={"organization_id": east.id, "ehr_patient_id": "A-1"}
    )
    assert moved.status_code == 200, moved.json


def test_a_mapping_note_too_long_is_422_naming_the_note(app, client_for):
    admin = client_for("admin")
    fields = admin.get("/api/ehr/mappings/athena").json["fields"]
    del fields["email"]
    answer = admin.put("/api/ehr/mappings/athena", json={"fields": fields, "note": "x" * 501})
    assert answer.status_code == 422, answer.json
    assert list(answer.json["errors"]["json"]) == ["note"]


def test_the_ehr_system_of_an_organization_with_linked_patients_cannot_change(app, client_for):
    add_patient()
    organization = add_organization(app)
    admin = client_for("admin")
    unlinked = admin.patch(
        f"/api/ehr/organizations/{organization.id}", json={"connector": "allscripts"}
    )
    assert unlinked.status_code == 200, unlinked.json
    admin.patch(f"/api/ehr/organizations/{organization.id}", json={"connector": "athena"})
    link(app, MRN, organization, "A-1")
    refused = admin.patch(
        f"/api/ehr/organizations/{organization.id}", json={"connector": "allscripts"}
    )
    assert refused.status_code == 409, refused.json
    (message,) = refused.json["errors"]["json"]["connector"]
    assert "has 1 linked patient(s)" in message and message == refused.json["message"]
    with database.connection_context():
        assert Organization.get_by_id(organization.id).connector == "athena"
    # A new address for the same EHR is still allowed.
    moved = admin.patch(
        f"/api/ehr/organizations/{organization.id}", json={"base_url": ATHENA + "/v2"}
    )
    assert moved.status_code == 200, moved.json


def test_an_organization_id_must_be_a_number_not_a_boolean(app, client_for):
    add_patient()
    add_organization(app)
    answer = client_for("admin").put(
        f"/api/patients/{MRN}/ehr-link", json={"organization_id": True, "ehr_patient_id": "A-1"}
    )
    assert answer.status_code == 422 and "organization_id" in answer.json["errors"]["json"]
