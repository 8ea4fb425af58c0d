"""Fuzz every operation of the API from its own OpenAPI document (schemathesis).

Every operation is sent generated valid and invalid parameters, headers and bodies, each
request as every role and anonymously, against the app on the real PostgreSQL, Redis and
RabbitMQ. Checked for every answer: no 5xx; the status code is one the operation documents
(the catch-all ``default`` response is removed, so "documented" means listed); the body and
headers match what is documented for that status; and no 2xx for an identity the view's
``allow()`` declaration does not let in (anonymous callers get 401, other roles 403, a
patient user reading another patient's record 404).

Bounded and reproducible: a fixed number of examples per operation and generation mode
(plus a pass with the seeded patient's MRN for routes under a patient), derandomized, no
shrinking (a failure is reported with the request that caused it). About a minute on the
2-core machine.
"""

from __future__ import annotations

import importlib.metadata
import uuid
from collections import Counter

import hypothesis
import kombu
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.exceptions import HTTPException

from core.auth.access import PUBLIC, ROLES, declared_access
from core.auth.models import ApiToken, User
from core.db import database
from core.patients.models import Patient
from core.testing import fresh_postgresql_url, service_url
from plugins.medications import bus

pytestmark = pytest.mark.integration

EXAMPLES = 12  # per operation and generation mode; each example is sent as five identities
ANONYMOUS = None
IDENTITIES = (*ROLES, ANONYMOUS)
OWN_MRN = "MRN-FUZZ-0001"  # the patient user's own record
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def caredeck_plugins():
    """Every installed plugin: the whole API is fuzzed."""
    return {
        entry.name: entry.load()
        for entry in importlib.metadata.entry_points(group="caredeck.plugins")
    }


@pytest.fixture
def caredeck_database_url():
    return fresh_postgresql_url()


@pytest.fixture
def app(make_app):
    redis_url = service_url("redis")
    redis.Redis.from_url(redis_url).flushdb()
    suffix = uuid.uuid4().hex[:8]
    amqp_url = service_url("amqp")
    app = make_app(
        AMQP_URL=amqp_url,
        DRAMATIQ_URL=redis_url,
        REDIS_URL=redis_url,
        MEDICATIONS_EXCHANGE=f"fuzz-{suffix}.medications",
        MEDICATIONS_QUEUE=f"fuzz-{suffix}.medications.events",
    )
    yield app
    topology = bus.topology(app)
    with kombu.Connection(amqp_url) as conn:
        channel = conn.default_channel
        for queue in (topology.queue, topology.dead_letter_queue):
            queue.bind(channel).delete()
        for exchange in (topology.exchange, topology.dead_letter_queue.exchange):
            exchange.bind(channel).delete()


class Identities:
    """The fuzzing identities' bearer tokens, by role. A request that succeeds in changing
    something may have disabled one of them, changed its role, reset its password or
    revoked its token: then every identity is restored and given a fresh token, so that the
    fuzzer never loses its own access for the rest of the run."""

    def __init__(self, users) -> None:
        self.users = users
        self.tokens: dict[str, str] = {}
        self.restore()

    def restore(self) -> None:
        with database.connection_context():
            for role, user in self.users.items():
                User.update(
                    status="active",
                    role=role,
                    name=user.name,
                    patient_mrn=OWN_MRN if role == "patient" else None,
                    failed_logins=0,
                    locked_until=None,
                ).where(User.id == user.id).execute()
                self.tokens[role], _ = ApiToken.issue(User.get_by_id(user.id))

    def headers(self, role: str | None) -> dict[str, str]:
        return {} if role is ANONYMOUS else {"Authorization": f"Bearer {self.tokens[role]}"}

    def after(self, method: str, status: int) -> None:
        if method != "GET" and 200 <= status < 300:
            self.restore()


@pytest.fixture
def identities(app, users):
    with database.connection_context():
        Patient.create(mrn=OWN_MRN, first_name="Fuzz", last_name="Patient")
    return Identities(users)


def without_default_responses(document: dict) -> dict:
    """The document with each operation's catch-all ``default`` response removed, so that
    every status code the app answers must be listed for the operation."""
    for item in document["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].pop("default", None)
    return document


def load_schema(app):
    document = app.test_client().get("/api/openapi.json").json
    schema = schemathesis.openapi.from_dict(
        without_default_responses(document), config=schemathesis.Config()
    )
    schema.app = app
    return schema


def access_failure(app, case, identity, status: int) -> str | None:
    """Why this status is wrong for this identity under the view's declared access."""
    adapter = app.url_map.bind("localhost")
    try:
        endpoint, arguments = adapter.match(case.formatted_path, case.method)
    except HTTPException:
        return None  # no route: the app answers 404 or 405 to everyone
    declared = declared_access(app.view_functions[endpoint], case.method)
    if declared == PUBLIC:
        return None
    if identity is ANONYMOUS:
        expected = 401
    elif identity not in declared:
        expected = 403
    elif identity == "patient" and arguments.get("mrn", OWN_MRN) != OWN_MRN:
        expected = 404
    else:
        return None
    if status == expected:
        return None
    who = identity or "an anonymous caller"
    return f"{who} got {status}, expected {expected} (the view allows {sorted(declared)})"


def describe(case, identity) -> str:
    return f"{case.method} {case.formatted_path} as {identity or 'anonymous'}"


def fuzz(app, strategy, identities, failures: dict[str, str], successes: Counter) -> None:
    """Send ``EXAMPLES`` cases drawn from ``strategy`` as every identity; note the first
    failure of each kind (operation, identity, check) in ``failures``."""

    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case):
        for identity in IDENTITIES:
            headers = identities.headers(identity)
            response = case.call(headers=headers)
            identities.after(case.method, response.status_code)
            if response.request.headers.get("Authorization") != headers.get("Authorization"):
                # A negative case that drops or garbles the Authorization header is sent
                # without the identity's token: no one is signed in.
                identity = ANONYMOUS
            key = f"{case.operation.label} as {identity or 'anonymous'}"
            if 200 <= response.status_code < 300:
                successes[identity] += 1
            wrong_access = access_failure(app, case, identity, response.status_code)
            if wrong_access and f"{key}: access" not in failures:
                failures[f"{key}: access"] = f"{describe(case, identity)}: {wrong_access}"
            try:
                case.validate_response(response, checks=CHECKS)
            except schemathesis.errors.FailureGroup as group:
                for failure in group.exceptions:
                    name = f"{key}: {failure.title}"
                    if name not in failures:
                        failures[name] = (
                            f"{describe(case, identity)} -> {response.status_code}: "
                            f"{failure.title}: {failure.message[:600]}\n"
                            f"    body sent: {str(case.body)[:300]}\n"
                            f"    answer: {response.text[:300]}"
                        )

    run()


def test_no_request_breaks_the_api_or_its_documentation(app, identities):
    schema = load_schema(app)
    failures: dict[str, str] = {}
    successes: Counter = Counter()  # 2xx answers by identity
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(app, operation.as_strategy(generation_mode=mode), identities, failures, successes)
        if "{mrn}" in operation.path:
            # Generated MRNs name no one: also reach the views behind a real record.
            own_record = operation.as_strategy(path_parameters={"mrn": OWN_MRN})
            fuzz(app, own_record, identities, failures, successes)
    assert operations >= 60, f"only {operations} operations in the OpenAPI document"
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures.values())
    # The run reached the views as every role, not only refusals and input errors (about
    # 300 admin, 200 doctor and nurse, 90 patient answers are 2xx).
    assert all(successes[role] >= 50 for role in ROLES), successes
