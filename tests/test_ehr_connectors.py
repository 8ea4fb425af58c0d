"""A third EHR connector, installed as a real distribution (a ``.dist-info`` with its entry
point in ``caredeck.ehr_connectors``, on ``sys.path``), delivers with no change to the
plugin; a broken one stops start-up naming it."""

import datetime
import json
import textwrap

import pytest
import responses
from ehr_support import TEST_SETTINGS, add_organization, add_patient, deliveries, link

from core.db import database
from core.testing import run_jobs
from plugins.ehr import plugin as ehr

ACME = "https://acme.test/api"
# The worked example of docs/ehr.md ("Adding a connector"), as its author would ship it.
ACME_CONNECTOR = textwrap.dedent("""
    from plugins.ehr.connectors import Connector, PatientIdentity, parse_date


    class AcmeConnector(Connector):
        name = "acme"
        title = "Acme Health Records"
        endpoints = ("profile", "notes")
        ehr_fields = ("fullName", "birthDate", "complaint", "familyHistory")

        def default_mapping(self):
            return {
                "name": {"field": "fullName", "endpoint": "profile", "transform": None},
                "dob": {
                    "field": "birthDate",
                    "endpoint": "profile",
                    "transform": {"kind": "date", "format": "%d.%m.%Y"},
                },
                "symptoms": {"field": "complaint", "endpoint": "notes", "transform": None},
                "family_history": {
                    "field": "familyHistory", "endpoint": "notes", "transform": None
                },
            }

        def send(self, organization, endpoint, payload, *, ehr_patient_id, idempotency_key):
            body = {"patient": ehr_patient_id, "section": endpoint, "values": payload}
            url = self.url(organization, "records")
            return self.post_json(organization, url, body, idempotency_key=idempotency_key)

        def identify(self, organization, ehr_patient_id):
            record = self.lookup(organization, self.url(organization, "people", ehr_patient_id))
            return PatientIdentity(
                ehr_patient_id=record["id"],
                name=record.get("full_name"),
                date_of_birth=parse_date(record.get("birth_date"), "%Y-%m-%d"),
            )
""")


def install(site, package, source, entry_point):
    """Install a distribution the way pip leaves one: the package and its .dist-info."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source)
    info = site / f"{package}-1.0.dist-info"
    info.mkdir()
    name = package.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[caredeck.ehr_connectors]\n{entry_point}\n")


@pytest.fixture
def caredeck_plugins():
    return {"ehr": ehr}


@pytest.fixture
def acme_installed(tmp_path, monkeypatch):
    site = tmp_path / "site"
    install(site, "caredeck_ehr_acme", ACME_CONNECTOR, "acme = caredeck_ehr_acme:AcmeConnector")
    monkeypatch.syspath_prepend(str(site))
    yield
    import sys

    sys.modules.pop("caredeck_ehr_acme", None)


@pytest.fixture
def app(acme_installed, make_app):
    return make_app(**TEST_SETTINGS)


def test_a_third_connector_installed_by_entry_point_delivers(app, client_for):
    client = app.test_client()
    listed = client_for("admin").get("/api/ehr/connectors").json
    assert [item["name"] for item in listed] == ["acme", "allscripts", "athena", "sandbox"]
    assert client.get("/api/openapi.json").status_code == 200

    add_patient("MRN-000777", "Ines", "Moreau", datetime.date(1979, 12, 5))
    organization = add_organization(app, "acme", ACME, "acme-token", name="Acme Clinic")
    link(app, "MRN-000777", organization, "p-77")
    with responses.RequestsMock() as rsps:
        rsps.add(
            responses.GET,
            f"{ACME}/people/p-77",
            json={"id": "p-77", "full_name": "Ines Moreau", "birth_date": "1979-12-05"},
        )
        rsps.add(responses.POST, f"{ACME}/records", json={"stored": True})
        rsps.add(responses.POST, f"{ACME}/records", json={"stored": True})
        submitted = client_for("nurse").post(
            "/api/patients/MRN-000777/questionnaire-responses",
            json={
                "answers": {
                    "name": "Ines Moreau",
                    "dob": "1979-12-05",
                    "symptoms": "Migraine",
                    "allergies": "None",  # not in Acme's mapping: not sent
                }
            },
        )
        assert submitted.status_code == 202, submitted.json
        run_jobs(app)
        bodies = [json.loads(c.request.body) for c in rsps.calls if c.request.method == "POST"]
        keys = [
            c.request.headers["Idempotency-Key"] for c in rsps.calls if c.request.method == "POST"
        ]
    assert bodies == [
        {
            "patient": "p-77",
            "section": "profile",
            "values": {"fullName": "Ines Moreau", "birthDate": "05.12.1979"},
        },
        {"patient": "p-77", "section": "notes", "values": {"complaint": "Migraine"}},
    ]
    stored = deliveries("MRN-000777")
    assert [(d.connector, d.state) for d in stored] == [("acme", "sent"), ("acme", "sent")]
    assert keys == [d.idempotency_key for d in stored]
    with database.connection_context():
        assert stored[0].mapping_version.connector == "acme"


def test_a_broken_connector_stops_start_up_naming_it(tmp_path, monkeypatch, make_app):
    site = tmp_path / "site"
    install(
        site, "caredeck_ehr_broken", "import nonexistent_sdk\n", "broken = caredeck_ehr_broken:X"
    )
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(Exception) as raised:
        make_app()
    assert "EHR connector 'broken' failed to import: ModuleNotFoundError" in str(raised.value)
    assert "Plugin 'ehr'" in str(raised.value)
