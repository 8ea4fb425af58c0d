"""Delivering questionnaire answers to EHRs: the external EHR APIs are mocked with
`responses`; the database and the job queue are real (SQLite/PostgreSQL, StubBroker)."""

import datetime
import logging

import pytest
import requests
import responses
from ehr_support import (
    ALL_ANSWERS,
    ALLSCRIPTS,
    ALLSCRIPTS_TOKEN,
    ATHENA,
    ATHENA_TOKEN,
    TEST_SETTINGS,
    add_organization,
    add_patient,
    athena_identity,
    deliveries,
    link,
    posted,
)

from core.db import database, utcnow
from core.testing import run_jobs
from plugins.ehr import delivery, mappings, questionnaire
from plugins.ehr import plugin as ehr
from plugins.ehr.models import Delivery, MappingVersion

MRN = "MRN-000123"


@pytest.fixture
def caredeck_plugins():
    return {"ehr": ehr}


@pytest.fixture
def app(make_app):
    return make_app(**TEST_SETTINGS)


def submit(client_for, answers, role="nurse", mrn=MRN):
    response = client_for(role).post(
        f"/api/patients/{mrn}/questionnaire-responses", json={"answers": answers}
    )
    assert response.status_code == 202, response.json
    return response.json


@pytest.fixture
def athena_patient(app):
    add_patient()
    organization = add_organization(app)
    link(app, MRN, organization, "A-1")
    return organization


def test_athena_gets_each_field_at_its_endpoint(app, client_for, athena_patient):
    with responses.RequestsMock() as rsps:
        athena_identity(rsps)
        for endpoint in ("demographics", "insurance", "history", "family_history", "symptoms"):
            rsps.add(responses.POST, f"{ATHENA}/patients/A-1/{endpoint}", json={"ok": True})
        submitted = submit(client_for, ALL_ANSWERS)
        assert [d["state"] for d in submitted["deliveries"]] == ["pending"] * 5
        run_jobs(app)
        sent = posted(rsps)

    assert [url for url, _, _ in sent] == [
        f"{ATHENA}/patients/A-1/demographics",
        f"{ATHENA}/patients/A-1/insurance",
        f"{ATHENA}/patients/A-1/history",
        f"{ATHENA}/patients/A-1/family_history",
        f"{ATHENA}/patients/A-1/symptoms",
    ]
    bodies = [body for _, body, _ in sent]
    assert bodies[0] == {
        "PATIENT_IDENT_NAME": "Ada Lindqvist",
        "GENDER_OF_PATIENT": "F",
        "DATE_OF_BIRTH_PATIENT": "03/02/1954",
        "PATIENT_LOCATION_ADDRESS": "12 Harbour Road, Portsmouth",
        "TELEPHONE_NUMBER_PATIENT": "+44 20 7946 0018",
        "PATIENT_EMAIL_ID": "ada@example.org",
        "EMERGENCY_CONTACT_PATIENT": "Erik Lindqvist +44 20 7946 0019",
        "PRIMARY_CARE_DOCTOR_PATIENT": "Dr. Amara Osei",
    }
    assert bodies[1] == {
        "INSURANCE_PROVIDER_PATIENT": "Northwind Health",
        "POLICY_NUMBER_INSURANCE_PATIENT": "NW-99812",
    }
    assert bodies[2] == {
        "ALLERGIES_PATIENT": "Penicillin",
        "PATIENT_MEDICATIONS_CURRENT": "Ramipril 5 mg daily",
        "HISTORY_MEDICAL_PATIENT": "Hypertension",
        "HISTORY_SOCIAL_PATIENT": "Non-smoker",
    }
    assert bodies[3] == {"HISTORY_FAMILY_PATIENT": "Asthma (mother)"}
    assert bodies[4] == {"SYMPTOMS_PATIENT": "Cough for a week"}
    stored = deliveries()
    assert [d.state for d in stored] == ["sent"] * 5
    for (_, _, headers), item in zip(sent, stored, strict=True):
        assert headers["Idempotency-Key"] == item.idempotency_key
        assert headers["Authorization"] == f"Bearer {ATHENA_TOKEN}"
    assert len({item.idempotency_key for item in stored}) == 5


def test_allscripts_gets_each_field_at_its_endpoint(app, client_for):
    add_patient()
    organization = add_organization(
        app, "allscripts", ALLSCRIPTS, ALLSCRIPTS_TOKEN, name="Hillside Hospital"
    )
    link(app, MRN, organization, "AS-9")
    with responses.RequestsMock() as rsps:
        rsps.add(
            responses.GET,
            f"{ALLSCRIPTS}/api/GetPatient",
            match=[responses.matchers.query_param_matcher({"PatientID": "AS-9"})],
            json={
                "PatientID": "AS-9",
                "NAME_OF_PAT": "LINDQVIST, ADA",
                "BIRTHDATE_OF_PAT": "19540302",
            },
        )
        for endpoint in (
            "SavePatientDemographics",
            "SaveInsurance",
            "SaveClinicalHistory",
            "SaveFamilyHistory",
            "SaveChiefComplaint",
        ):
            rsps.add(responses.POST, f"{ALLSCRIPTS}/api/{endpoint}", json={"Status": "OK"})
        submit(client_for, ALL_ANSWERS)
        run_jobs(app)
        sent = posted(rsps)

    by_url = {url.rsplit("/", 1)[1]: body for url, body, _ in sent}
    assert list(by_url) == [
        "SavePatientDemographics",
        "SaveInsurance",
        "SaveClinicalHistory",
        "SaveFamilyHistory",
        "SaveChiefComplaint",
    ]
    assert all(body["PatientID"] == "AS-9" for body in by_url.values())
    assert by_url["SavePatientDemographics"]["Data"] == {
        "NAME_OF_PAT": "ADA LINDQVIST",
        "GENDER_PAT": "F",
        "BIRTHDATE_OF_PAT": "19540302",
        "ADDRESS_PAT": "12 Harbour Road, Portsmouth",
        "PHONE_NUMBER_PAT": "+44 20 7946 0018",
        "EMAIL_ID_PAT": "ada@example.org",
        "EMERGENCY_CONTACT_PAT": "Erik Lindqvist +44 20 7946 0019",
        "PRIMARY_CARE_DOC_PAT": "Dr. Amara Osei",
    }
    assert by_url["SaveInsurance"]["Data"] == {
        "PROVIDER_INSURANCE_PAT": "Northwind Health",
        "POLICY_NUM_INSURANCE_PAT": "NW-99812",
    }
    assert by_url["SaveClinicalHistory"]["Data"] == {
        "ALLERGIES_PAT": "Penicillin",
        "CURRENT_MEDS_PAT": "Ramipril 5 mg daily",
        "HISTORY_MEDICAL_PAT": "Hypertension",
        "SOCIAL_HISTORY_PAT": "Non-smoker",
    }
    assert by_url["SaveFamilyHistory"]["Data"] == {"FAMILY_HISTORY_PAT": "Asthma (mother)"}
    assert by_url["SaveChiefComplaint"]["Data"] == {"CHIEF_COMPLAINT_PAT": "Cough for a week"}
    assert all(h["Authorization"] == f"Bearer {ALLSCRIPTS_TOKEN}" for _, _, h in sent)
    assert [d.state for d in deliveries()] == ["sent"] * 5


def test_a_mapping_edit_applies_to_new_submissions_only(app, client_for, athena_patient):
    answers = {"family_history": "Asthma (mother)", "symptoms": "Cough"}
    with responses.RequestsMock() as rsps:
        athena_identity(rsps)
        rsps.add(responses.POST, f"{ATHENA}/patients/A-1/family_history", json={})
        rsps.add(responses.POST, f"{ATHENA}/patients/A-1/symptoms", json={})
        rsps.add(responses.POST, f"{ATHENA}/patients/A-1/history", json={})
        submit(client_for, answers)  # built with version 1, not yet sent
        with app.app_context(), database.connection_context():
            changed = mappings.current("athena").fields
            # Family history now goes with the rest of the history, in the medical field
            # (which medical history no longer fills).
            del changed["medical_history"]
            changed["family_history"] = {
                "field": "HISTORY_MEDICAL_PATIENT",
                "endpoint": "history",
                "transform": None,
            }
            version_2 = mappings.save("athena", changed, user="admin@example.org", note="merge")
        assert version_2.version == 2
        submit(client_for, answers)
        run_jobs(app)
        sent = posted(rsps)

    stored = deliveries()
    with database.connection_context():
        versions = [MappingVersion.get_by_id(d.mapping_version_id).version for d in stored]
    assert versions == [1, 1, 2, 2]
    assert [(url.rsplit("/", 1)[1], body) for url, body, _ in sent] == [
        ("family_history", {"HISTORY_FAMILY_PATIENT": "Asthma (mother)"}),
        ("symptoms", {"SYMPTOMS_PATIENT": "Cough"}),
        ("history", {"HISTORY_MEDICAL_PATIENT": "Asthma (mother)"}),
        ("symptoms", {"SYMPTOMS_PATIENT": "Cough"}),
    ]
    listed = client_for("doctor").get(f"/api/patients/{MRN}/ehr-deliveries").json
    assert [item["mapping_version"] for item in listed] == [2, 2, 1, 1]


@pytest.mark.parametrize(
    "failure, recorded",
    [
        (
            {"body": requests.exceptions.ReadTimeout("read timed out")},
            "The EHR did not answer within 20 s.",
        ),
        (
            {"body": requests.exceptions.ConnectionError("connection refused")},
            "Could not connect to the EHR: connection refused",
        ),
        (
            {"status": 503, "json": {"message": "Maintenance window"}},
            "The EHR answered 503: Maintenance window",
        ),
    ],
    ids=["timeout", "connection-error", "503"],
)
def test_timeouts_connection_errors_and_5xx_are_retried_then_recorded(
    app, client_for, athena_patient, failure, recorded
):
    with responses.RequestsMock() as rsps:
        athena_identity(rsps)
        rsps.add(responses.POST, f"{ATHENA}/patients/A-1/symptoms", **failure)
        submit(client_for, {"symptoms": "Cough"})
        run_jobs(app)
        sends = [c for c in rsps.calls if c.request.method == "POST"]
    assert len(sends) == 3  # EHR_MAX_ATTEMPTS
    [item] = deliveries()
    assert (item.state, item.attempts) == ("failed", 3)
    assert item.last_error == f"{recorded} (gave up after 3 attempts)"
    # The same key on every attempt: the EHR can tell a repeat from a new delivery.
    assert {c.request.headers["Idempotency-Key"] for c in sends} == {item.idempotency_key}


def test_a_retry_that_succeeds_is_sent_once(app, client_for, athena_patient):
    with responses.RequestsMock() as rsps:
        athena_identity(rsps)
        url = f"{ATHENA}/patients/A-1/symptoms"
        rsps.add(responses.POST, url, status=502, body="Bad gateway")
        rsps.add(responses.POST, url, json={"id": "obs-1"})
        submit(client_for, {"symptoms": "Cough"})
        run_jobs(app)
        assert len(posted(rsps)) == 2
    [item] = deliveries()
    assert (item.state, item.attempts, item.last_error) == ("sent", 2, None)


def test_4xx_is_recorded_with_the_ehr_message_and_not_retried(app, client_for, athena_patient):
    with responses.RequestsMock() as rsps:
        athena_identity(rsps)
        rsps.add(
            responses.POST,
            f"{ATHENA}/patients/A-1/symptoms",
            status=400,
            json={"message": "SYMPTOMS_PATIENT exceeds 2000 characters"},
        )
        submitted = submit(client_for, {"symptoms": "Cough"})
        run_jobs(app)
        assert len(posted(rsps)) == 1
    [item] = deliveries()
    assert (item.state, item.attempts) == ("failed", 1)
    assert item.last_error == "The EHR answered 400: SYMPTOMS_PATIENT exceeds 2000 characters"
    listed = client_for("nurse").get(f"/api/patients/{MRN}/questionnaire-responses").json
    assert listed[0]["id"] == submitted["id"]
    assert listed[0]["state"] == "failed"
    assert listed[0]["deliveries"][0]["last_error"] == item.last_error


def test_a_duplicate_job_does_not_send_twice(app, client_for, athena_patient):
    with responses.RequestsMock() as rsps:
        athena_identity(rsps)
        rsps.add(responses.POST, f"{ATHENA}/patients/A-1/symptoms", json={})
        submit(client_for, {"symptoms": "Cough"})
        [item] = deliveries()
        with app.app_context():
            delivery.deliver.send(item.id)  # the broker delivered the message twice
            delivery.deliver.send(item.id)
        run_jobs(app)
        assert len(posted(rsps)) == 1


def test_a_job_finds_a_delivery_claimed_by_another_and_sends_nothing(
    app, client_for, athena_patient
):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        athena_identity(rsps)
        rsps.add(responses.POST, f"{ATHENA}/patients/A-1/symptoms", json={})
        with app.app_context(), database.connection_context():
            questionnaire.submit(MRN, {"symptoms": "Cough"}, user="nurse@example.org")
            [item] = deliveries()
            # Another worker is sending it right now (its claim is live).
            claimed = delivery._claim(item, utcnow())
            assert claimed is not None
            assert delivery.attempt(item.id) == "claimed elsewhere"
        assert posted(rsps) == []


def test_each_patients_deliveries_go_in_order(app, client_for, athena_patient):
    with responses.RequestsMock() as rsps:
        athena_identity(rsps)
        url = f"{ATHENA}/patients/A-1/symptoms"
        rsps.add(responses.POST, url, status=500, json={"message": "busy"})
        rsps.add(responses.POST, url, json={})
        rsps.add(responses.POST, url, json={})
        rsps.add(responses.POST, url, json={})
        submit(client_for, {"symptoms": "first"})
        submit(client_for, {"symptoms": "second"})
        submit(client_for, {"symptoms": "third"})
        first, second, third = deliveries()
        with app.app_context(), database.connection_context():
            # A job for the third arriving first sends nothing: the first is unsent.
            assert delivery.attempt(third.id) == f"waiting for delivery {first.id}"
            assert delivery.attempt(second.id) == f"waiting for delivery {first.id}"
        run_jobs(app)
        sent = [body["SYMPTOMS_PATIENT"] for _, body, _ in posted(rsps)]
    # The first failed once, was retried, and the others followed it, in order.
    assert sent == ["first", "first", "second", "third"]
    assert [d.state for d in deliveries()] == ["sent"] * 3


def test_a_failed_delivery_holds_later_ones_until_staff_retry_it(app, client_for, athena_patient):
    with responses.RequestsMock() as rsps:
        athena_identity(rsps)
        url = f"{ATHENA}/patients/A-1/symptoms"
        rsps.add(responses.POST, url, status=422, json={"message": "Unknown encounter"})
        submit(client_for, {"symptoms": "first"})
        submit(client_for, {"symptoms": "second"})
        run_jobs(app)
        assert len(posted(rsps)) == 1
        first, second = deliveries()
        assert (first.state, second.state) == ("failed", "pending")
        listed = client_for("doctor").get(f"/api/patients/{MRN}/ehr-deliveries").json
        assert listed[0]["id"] == second.id and listed[0]["waiting_for"] == first.id

        assert (
            client_for("patient").post(f"/api/ehr/deliveries/{first.id}/retry").status_code == 403
        )
        again = client_for("nurse").post(f"/api/ehr/deliveries/{second.id}/retry")
        assert again.status_code == 409
        assert (
            again.json["message"]
            == f"Delivery {second.id} is pending; only a failed delivery can be retried."
        )

        rsps.replace(responses.POST, url, json={})
        retried = client_for("nurse").post(f"/api/ehr/deliveries/{first.id}/retry")
        assert retried.status_code == 200, retried.json
        assert (retried.json["state"], retried.json["attempts"]) == ("pending", 0)
        assert "Retried by nurse@example.org" in retried.json["last_error"]
        run_jobs(app)
        sent = [body["SYMPTOMS_PATIENT"] for _, body, _ in posted(rsps)]
    assert sent == ["first", "first", "second"]
    assert [d.state for d in deliveries()] == ["sent", "sent"]
    audit = client_for("admin").get(f"/api/audit?patient={MRN}").json
    assert any(row["action"] == "retry ehr delivery" for row in audit)


@pytest.mark.parametrize(
    "identity",
    [
        {"name": "Ada Lindqvist", "dob": "07/14/1990"},  # another birth date
        {"name": "Bo Svensson", "dob": "03/02/1954"},  # another name
        {"name": "Eva Lindqvist", "dob": "03/02/1954"},  # her twin sister
    ],
    ids=["birth-date", "name", "twin"],
)
def test_an_identity_mismatch_fails_loudly_and_sends_nothing(
    app, client_for, users, athena_patient, identity, caplog
):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        athena_identity(rsps, **identity)
        rsps.add(responses.POST, f"{ATHENA}/patients/A-1/symptoms", json={})
        submit(client_for, {"symptoms": "Cough"})
        with caplog.at_level(logging.ERROR, logger="caredeck.ehr"):
            run_jobs(app)
        assert posted(rsps) == []
    [item] = deliveries()
    assert item.state == "failed"
    assert item.last_error.startswith(
        f"Identity check failed: EHR record A-1 at Athena Clinic is not patient {MRN}"
    )
    assert "Nothing was sent" in item.last_error
    assert any("IDENTITY MISMATCH" in record.message for record in caplog.records)
    # The patient's own view does not quote the EHR's record (it may be someone else's).
    with database.connection_context():
        users["patient"].patient_mrn = MRN
        users["patient"].save()
    [mine] = client_for("patient").get(f"/api/patients/{MRN}/questionnaire-responses").json
    assert mine["state"] == "failed"
    assert (
        mine["deliveries"][0]["last_error"]
        == "Not delivered; the clinic staff see why and can retry it."
    )


def test_a_patient_unknown_to_the_ehr_is_not_sent(app, client_for, athena_patient):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(
            responses.GET, f"{ATHENA}/patients/A-1", status=404, json={"message": "No such patient"}
        )
        rsps.add(responses.POST, f"{ATHENA}/patients/A-1/symptoms", json={})
        submit(client_for, {"symptoms": "Cough"})
        run_jobs(app)
        assert posted(rsps) == []
    [item] = deliveries()
    assert item.state == "failed"
    assert "The EHR answered 404: No such patient" in item.last_error


def test_the_sweep_enqueues_a_delivery_whose_message_was_lost(app, athena_patient):
    with app.app_context(), database.connection_context():
        questionnaire.submit(MRN, {"symptoms": "Cough"}, user="nurse@example.org")
        app.extensions["caredeck"].jobs.broker.flush_all()  # the message is lost
        assert delivery.sweep() == 0  # not yet: a message may still be on its way
        long_ago = utcnow() - delivery.LOST_AFTER - datetime.timedelta(seconds=1)
        Delivery.update(next_attempt_at=long_ago).execute()
        assert delivery.sweep() == 1
        assert delivery.sweep() == 0  # marked: a second scheduler adds nothing
    with responses.RequestsMock() as rsps:
        athena_identity(rsps)
        rsps.add(responses.POST, f"{ATHENA}/patients/A-1/symptoms", json={})
        run_jobs(app)
        assert len(posted(rsps)) == 1
    assert deliveries()[0].state == "sent"


def test_the_sweep_is_scheduled(app):
    from core.scheduler import collect

    assert [s.name for s in collect(app)] == ["ehr.sweep_deliveries"]


@pytest.mark.parametrize("caredeck_database_url", ["sqlite"], indirect=True)
def test_the_rate_limit_spaces_an_organizations_deliveries_across_workers(make_app):
    import redis

    from core.testing import service_url
    from plugins.ehr import ratelimit

    url = service_url("redis")
    # Two apps on one Redis: two worker processes sharing each organization's slots.
    app, other_worker = make_app(REDIS_URL=url, **TEST_SETTINGS), make_app(REDIS_URL=url)
    limited = add_organization(app, rate_limit_per_second=1, name="Limited")
    unlimited = add_organization(app, rate_limit_per_second=100, name="Another EHR")
    redis.Redis.from_url(url).delete(*(f"{ratelimit.PREFIX}{o.id}" for o in (limited, unlimited)))
    for number, organization in ((1, limited), (2, limited), (3, unlimited)):
        add_patient(f"MRN-00000{number}", "Ada", "Lindqvist")
        link(app, f"MRN-00000{number}", organization, f"A-{number}")
        with app.app_context(), database.connection_context():
            questionnaire.submit(f"MRN-00000{number}", {"symptoms": "x"}, user="n@example.org")
    app.extensions["caredeck"].jobs.broker.flush_all()
    first, second, third = (deliveries(f"MRN-00000{n}")[0] for n in (1, 2, 3))
    with responses.RequestsMock() as rsps:
        for number in (1, 2, 3):
            athena_identity(rsps, f"A-{number}")
            rsps.add(responses.POST, f"{ATHENA}/patients/A-{number}/symptoms", json={})
        with app.app_context(), database.connection_context():
            assert delivery.attempt(first.id) == "sent"
        with other_worker.app_context(), database.connection_context():
            # The same second, the same organization: put back to its slot, not an attempt.
            assert delivery.attempt(second.id) == "rate limited"
            assert delivery.attempt(third.id) == "sent"  # another organization's own limit
        held = deliveries("MRN-000002")[0]
        assert (held.state, held.attempts) == ("pending", 0)
        wait = (held.next_attempt_at - utcnow()).total_seconds()
        assert 0.5 < wait <= 1.0  # due at its slot: the sweep does not take it for lost
        run_jobs(other_worker)  # the message it put back runs at its slot, and sends
        assert [c.request.url for c in rsps.calls if c.request.method == "POST"][-1].endswith(
            "A-2/symptoms"
        )
    assert deliveries("MRN-000002")[0].state == "sent"


def test_two_jobs_racing_for_one_delivery_send_it_once(app, athena_patient):
    import threading
    import time

    with app.app_context(), database.connection_context():
        questionnaire.submit(MRN, {"symptoms": "Cough"}, user="nurse@example.org")
    [item] = deliveries()
    start, outcomes = threading.Barrier(2), []

    def slow_ehr(request):
        time.sleep(0.3)  # the winner is still sending while the other job tries
        return (200, {}, "{}")

    def job():
        with app.app_context(), database.connection_context():
            start.wait()
            outcomes.append(delivery.attempt(item.id))

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        athena_identity(rsps)
        rsps.add_callback(responses.POST, f"{ATHENA}/patients/A-1/symptoms", callback=slow_ehr)
        threads = [threading.Thread(target=job) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(posted(rsps)) == 1
    assert sorted(outcomes) in (["claimed elsewhere", "sent"], ["already sent", "sent"])
    assert deliveries()[0].attempts == 1


def test_the_actor_states_its_time_limit_and_retries(app):
    with app.app_context():
        options = delivery.deliver.bound().options
    assert options["time_limit"] == 120_000  # ms: two requests of at most 50 s, and margin
    assert options["max_retries"] == 0  # retries are the job's own, recorded on the row


def test_a_link_changed_before_sending_applies_to_pending_deliveries(app, athena_patient):
    sister = add_organization(app, name="Athena Clinic East")  # the same EHR
    elsewhere = add_organization(app, "allscripts", ALLSCRIPTS, ALLSCRIPTS_TOKEN, name="Hill")
    with app.app_context(), database.connection_context():
        questionnaire.submit(MRN, {"symptoms": "first"}, user="nurse@example.org")
        questionnaire.submit(MRN, {"symptoms": "second"}, user="nurse@example.org")
    app.extensions["caredeck"].jobs.broker.flush_all()
    first, second = deliveries()
    with responses.RequestsMock() as rsps:
        athena_identity(rsps)
        rsps.add(responses.POST, f"{ATHENA}/patients/A-1/symptoms", json={})
        link(app, MRN, sister, "A-1")  # moved within the same EHR: still sent
        with app.app_context(), database.connection_context():
            assert delivery.attempt(first.id) == "sent"
        assert len(posted(rsps)) == 1
    link(app, MRN, elsewhere, "AS-1")  # now in another EHR: never sent to its A-1
    with app.app_context(), database.connection_context():
        assert delivery.attempt(second.id) == "failed"
    [_, second] = deliveries()
    assert second.last_error == (
        f"Patient {MRN} is no longer linked to a record in Athena Clinic's EHR; nothing was sent."
    )


def test_order_holds_across_a_move_to_a_sister_organization_on_the_same_ehr(
    app, client_for, athena_patient
):
    sister = add_organization(app, name="Athena Clinic East")  # the same EHR, same record
    with responses.RequestsMock() as rsps:
        athena_identity(rsps)
        url = f"{ATHENA}/patients/A-1/symptoms"
        rsps.add(responses.POST, url, status=422, json={"message": "Unknown encounter"})
        submit(client_for, {"symptoms": "older"})
        run_jobs(app)
        link(app, MRN, sister, "A-1")  # e.g. a bulk move of the clinic's patients
        rsps.replace(responses.POST, url, json={})
        submit(client_for, {"symptoms": "newer"})
        run_jobs(app)
        older, newer = sorted(deliveries(), key=lambda item: item.id)
        # The newer answers wait behind the failed older ones: the same EHR record.
        assert (older.state, newer.state) == ("failed", "pending")
        assert len(posted(rsps)) == 1
        listed = client_for("doctor").get(f"/api/patients/{MRN}/ehr-deliveries").json
        assert listed[0]["id"] == newer.id and listed[0]["waiting_for"] == older.id
        assert client_for("nurse").post(f"/api/ehr/deliveries/{older.id}/retry").status_code == 200
        run_jobs(app)
        sent = [body["SYMPTOMS_PATIENT"] for _, body, _ in posted(rsps)]
    assert sent == ["older", "older", "newer"]


def test_a_job_a_few_milliseconds_early_still_sends(app, athena_patient):
    # The "not due" check lets a job run up to SLOT_SLACK early (queue delays are not
    # finer, clocks differ between workers); the claim must not then refuse it, or the
    # delivery waits for the sweep with nothing enqueued.
    with responses.RequestsMock() as rsps:
        athena_identity(rsps)
        rsps.add(responses.POST, f"{ATHENA}/patients/A-1/symptoms", json={})
        with app.app_context(), database.connection_context():
            questionnaire.submit(MRN, {"symptoms": "Cough"}, user="nurse@example.org")
            [item] = deliveries()
            soon = utcnow() + datetime.timedelta(seconds=delivery.SLOT_SLACK / 2)
            Delivery.update(next_attempt_at=soon).where(Delivery.id == item.id).execute()
            assert delivery.attempt(item.id) == "sent"
        assert len(posted(rsps)) == 1


def test_an_ehr_name_that_is_not_text_fails_the_delivery_instead_of_crashing_the_job(
    app, athena_patient
):
    # A crash after the claim records nothing: the delivery would stay pending, be swept
    # again and again past its attempts, and hold the patient's line with no error shown.
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(
            responses.GET,
            f"{ATHENA}/patients/A-1",
            json={
                "PATIENT_ID": "A-1",
                "PATIENT_IDENT_NAME": {"first": "Ada", "last": "Lindqvist"},
                "DATE_OF_BIRTH_PATIENT": "03/02/1954",
            },
        )
        rsps.add(responses.POST, f"{ATHENA}/patients/A-1/symptoms", json={})
        with app.app_context(), database.connection_context():
            questionnaire.submit(MRN, {"symptoms": "Cough"}, user="nurse@example.org")
            [item] = deliveries()
            assert delivery.attempt(item.id) == "failed"
        assert posted(rsps) == []
    [item] = deliveries()
    assert item.state == "failed" and "Identity check failed" in item.last_error


def test_a_delivery_whose_attempts_all_ended_without_an_outcome_fails(app, athena_patient):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        athena_identity(rsps)
        rsps.add(responses.POST, f"{ATHENA}/patients/A-1/symptoms", json={})
        with app.app_context(), database.connection_context():
            questionnaire.submit(MRN, {"symptoms": "Cough"}, user="nurse@example.org")
            [item] = deliveries()
            # Three jobs claimed it and died before recording anything (EHR_MAX_ATTEMPTS 3).
            expired = utcnow() - datetime.timedelta(seconds=1)
            Delivery.update(attempts=3, claimed_until=expired).execute()
            delivery.attempt(item.id)
        assert posted(rsps) == []
    [failed] = deliveries()
    assert failed.state == "failed" and failed.claimed_until is None
    assert failed.last_error.startswith("Gave up after 3 attempts that ended without an outcome")
