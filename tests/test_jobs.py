"""Dramatiq actors declared by plugins, bound to the app's broker, run with a DB connection."""

import datetime
import threading
import uuid

import dramatiq
import pytest
from helpers import make_plugin

import jobs
from core.auth.models import User
from core.testing import ROLE_PASSWORD, run_jobs, service_url

seen = []


@jobs.actor("labs.count_users", time_limit=datetime.timedelta(seconds=5), max_retries=0)
def count_users(label: str) -> None:
    seen.append((label, User.select().count()))  # needs the app's database connection


def labs():
    return make_plugin("labs", caredeck_actors=lambda: [count_users])


@pytest.fixture
def caredeck_plugins():
    return {"labs": labs()}


@pytest.fixture(autouse=True)
def _clear():
    seen.clear()


def test_an_actor_runs_with_the_app_and_a_database_connection(app, users):
    with app.app_context():
        count_users.send("first")
    run_jobs(app)
    assert seen == [("first", 4)]


def test_an_actor_is_bound_with_its_declared_limits(app):
    bound = app.extensions["caredeck"].jobs.actors["labs.count_users"]
    assert bound.options["time_limit"] == 5000
    assert bound.options["max_retries"] == 0
    assert bound.broker is app.extensions["caredeck"].jobs.broker
    assert dramatiq.get_broker() is bound.broker  # never a default RabbitMQ broker


def test_declaring_an_actor_binds_nothing():
    assert isinstance(count_users, jobs.Job)
    count_users("direct")  # a job can be called directly too, e.g. from a command
    assert seen[0][0] == "direct"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"time_limit": datetime.timedelta(0), "max_retries": 1}, "time_limit must be positive"),
        ({"time_limit": datetime.timedelta(seconds=1), "max_retries": -1}, "max_retries"),
    ],
)
def test_an_actor_needs_sensible_limits(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jobs.actor("labs.x", **kwargs)


@pytest.mark.integration
def test_a_worker_runs_jobs_from_a_real_redis_broker(make_app):
    url = service_url("redis")
    namespace = f"caredeck-test-{uuid.uuid4().hex[:8]}"
    app = make_app(DRAMATIQ_URL=url)
    state = app.extensions["caredeck"].jobs
    state.broker.namespace = namespace  # keep this run's queues apart from anything else
    with app.app_context():
        User.create_user("a@example.org", ROLE_PASSWORD, role="admin", status="active")
        count_users.send("via redis")
    done = threading.Event()
    worker = state.worker(threads=1)
    worker.start()
    try:
        for _ in range(100):
            if seen:
                done.set()
                break
            threading.Event().wait(0.1)
    finally:
        worker.stop()
        state.broker.client.delete(*state.broker.client.keys(f"{namespace}*") or ["-"])
    assert done.is_set(), "the job was not run within 10 s"
    assert seen == [("via redis", 1)]
