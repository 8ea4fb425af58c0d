"""Plugins add facts (fields, filters, columns) to the patient list."""

import marshmallow as ma
import pytest
from helpers import make_plugin

from core.patients.facts import PatientFacts, PatientFilter
from core.patients.models import Patient
from core.plugins import PluginError

FLAGGED = {"P-2": "review"}
calls = []


def flags(mrns):
    calls.append(list(mrns))
    return {mrn: {"ward_flag": FLAGGED[mrn]} for mrn in mrns if mrn in FLAGGED}


def flagged_only(query, wanted):
    return query.where(Patient.mrn.in_([mrn for mrn, flag in FLAGGED.items() if flag == wanted]))


FACTS = PatientFacts(
    fields={"ward_flag": ma.fields.String(allow_none=True, metadata={"description": "A flag."})},
    values=flags,
    filters={"ward_flag": PatientFilter(ma.fields.String(), flagged_only)},
    columns={"ward_flag": "Ward flag"},
)


@pytest.fixture
def caredeck_plugins():
    return {"ward": make_plugin("ward", caredeck_patient_facts=lambda: [FACTS])}


@pytest.fixture(autouse=True)
def _patients(app, client_for):
    calls.clear()
    staff = client_for("doctor")
    for mrn in ("P-1", "P-2", "P-3"):
        body = {"mrn": mrn, "first_name": "Ada", "last_name": f"Test{mrn}"}
        assert staff.post("/api/patients", json=body).status_code == 201


def test_each_patient_of_a_page_gets_the_plugins_fields_in_one_call(client_for):
    response = client_for("nurse").get("/api/patients?page_size=2")
    assert [(p["mrn"], p["ward_flag"]) for p in response.json] == [("P-1", None), ("P-2", "review")]
    assert calls == [["P-1", "P-2"]]  # one call for the page, not one per patient


def test_a_plugin_filter_narrows_the_list(client_for):
    response = client_for("nurse").get("/api/patients?ward_flag=review")
    assert [p["mrn"] for p in response.json] == ["P-2"]
    assert client_for("nurse").get("/api/patients?ward_flag=none").json == []


def test_the_openapi_document_shows_the_field_and_the_filter(client):
    spec = client.get("/api/openapi.json").json
    item = spec["components"]["schemas"]["CorePatientListItem"]["properties"]
    assert item["ward_flag"]["description"] == "A flag."
    parameters = [p["name"] for p in spec["paths"]["/api/patients"]["get"]["parameters"]]
    assert "ward_flag" in parameters


def test_the_patient_list_page_shows_the_column(client_for):
    html = client_for("doctor").get("/").get_data(as_text=True)
    assert '<th scope="col">Ward flag</th>' in html
    assert "<td>review</td>" in html


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        (
            PatientFacts(fields={"mrn": ma.fields.String()}, values=flags),
            "registers patient field 'mrn', which the core already registers",
        ),
        (
            PatientFacts(fields={}, values=flags, filters={"q": FACTS.filters["ward_flag"]}),
            "registers patient filter 'q', which the core already registers",
        ),
        (
            PatientFacts(fields={}, values=flags, columns={"ward_flag": "Ward flag"}),
            "patient list columns ['ward_flag'] are not among its fields",
        ),
    ],
)
def test_facts_that_clash_or_do_not_add_up_stop_start_up(make_app, facts, message):
    plugin = make_plugin("beds", caredeck_patient_facts=lambda: [facts])
    with pytest.raises(PluginError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_app(plugins={"beds": plugin})


def test_two_plugins_cannot_add_the_same_field(make_app, caredeck_plugins):
    beds = make_plugin("beds", caredeck_patient_facts=lambda: [FACTS])
    clash = "patient field 'ward_flag', which plugin '(ward|beds)' already"
    with pytest.raises(PluginError, match=clash):
        make_app(plugins={**caredeck_plugins, "beds": beds})
