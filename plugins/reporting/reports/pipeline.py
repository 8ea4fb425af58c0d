"""The weekly report pipeline: runs, rendering once per scope and week, and the sends.

::

    scheduler / admin ──► run (scope, week) ──► reporting.render_run ──► PDF in the store
                             │ ledger rows                              │
                             ▼                                          ▼
                     reporting_deliveries ◄── claim ── reporting.send_batch × N (one SMTP
                                                                       connection each)

Exactly once, and where it is only at most once: a batch first *claims* its ledger rows
(``pending`` to ``claimed``, with its own claim token, in one UPDATE that a second batch
cannot win too), then for each row marks it ``sending`` just before the SMTP transaction and
``sent`` as soon as the server has accepted the message. A retried or duplicated job finds
its rows ``claimed``, ``sending`` or ``sent`` by someone else and sends nothing. A row still
``claimed`` by a batch that died was never attempted: the scheduler gives it back
(``pending``) once the claim is older than the working timeout. A row still ``sending``
after the timeout is the one message whose fate is unknown (the worker died between
handing the message to the server and recording the answer): it is recorded as ``failed``
with that reason and never sent again, so a crash costs at most one email per batch, never
a duplicate. Failures the server reports (4xx) or a lost connection are retried with
back-off (Dramatiq) up to ``MAX_DELIVERY_ATTEMPTS``, then recorded as ``failed``; a refusal
(5xx) is recorded at once.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import io
import json
import logging
import threading
import uuid
from collections.abc import Iterable

import peewee
from flask import current_app

from core.auth.models import User
from core.db import database, is_sqlite, utcnow
from core.mail import MailError, mailer_for
from jobs import actor
from plugins.reporting.reports import emails, timing
from plugins.reporting.reports.models import (
    Delivery,
    ReportRun,
    Subscription,
    scope_of,
)

log = logging.getLogger("caredeck.reporting")

RENDER_TIME_LIMIT = datetime.timedelta(minutes=15)
MAX_RENDER_ATTEMPTS = 3
SEND_TIME_LIMIT = datetime.timedelta(minutes=5)
MAX_DELIVERY_ATTEMPTS = 5
# The scheduler renders a week only once it has ended in the hospital's zone (``TIMEZONE``,
# the zone the report's bounds are taken in), plus this: a subscriber east of the hospital
# reaches Monday first, and the report waits for the week to end where it is counted.
WEEK_END_GRACE = datetime.timedelta(minutes=10)
OPEN_STATES = ("pending", "claimed", "sending")
UNKNOWN_OUTCOME = (
    "outcome unknown: the worker stopped while handing this email to the mail server; "
    "not sent again, to avoid a duplicate"
)


class TemporaryFailure(Exception):
    """Raised by a job so that Dramatiq retries it with back-off."""


class ClaimLost(Exception):
    """A batch's row is no longer held by it (the scheduler gave it back after the claim
    expired, and another batch may hold it now): the batch must not send it, and stops."""


def db_now(offset: datetime.timedelta = datetime.timedelta(0)) -> peewee.Node:
    """The database's clock (UTC, naive like ``UTCDateTimeField``), plus ``offset``: claims
    are stamped and expired on this one clock, so a worker whose clock is behind or ahead of
    the scheduler's cannot have a live claim expired, or a dead one kept."""
    seconds = offset.total_seconds()
    if is_sqlite():
        return peewee.fn.strftime("%Y-%m-%d %H:%M:%f", "now", f"{seconds:+f} seconds")
    return peewee.SQL(
        "((CURRENT_TIMESTAMP AT TIME ZONE 'UTC') + make_interval(secs => %s))", (seconds,)
    )


# Seams to the other parts of the plugin (the renderer, the file store) --------------------


def render_lease() -> datetime.timedelta:
    """How long a rendering run stays its worker's without a sign of life: the worker
    renews it while it renders (``_renewing``), so a run whose worker died is taken over
    this long after its last renewal, however long rendering may take."""
    return datetime.timedelta(seconds=current_app.config["REPORTING_RENDER_LEASE_SECONDS"])


def send_lease() -> datetime.timedelta:
    """How long a batch's claim and a sending run's lease last without a sign of life; each
    email a batch sends renews its claim (``_fence``)."""
    return datetime.timedelta(seconds=current_app.config["REPORTING_SEND_LEASE_SECONDS"])


@contextlib.contextmanager
def _renewing(run_id: int, lease: datetime.timedelta):
    """Renew a rendering run's lease every quarter lease until the block ends, from a
    thread with its own connection: a live worker keeps its run, a dead one stops renewing."""
    stop = threading.Event()
    app = current_app._get_current_object()

    def renew() -> None:
        with app.app_context():
            while not stop.wait(lease.total_seconds() / 4):
                try:
                    with database.connection_context():
                        ReportRun.update(lease_until=utcnow() + lease).where(
                            (ReportRun.id == run_id) & (ReportRun.state == "rendering")
                        ).execute()
                except peewee.DatabaseError:
                    log.warning("report run %s: could not renew its lease", run_id)

    thread = threading.Thread(target=renew, name=f"lease-run-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def render(study: str | None, week: str):
    from plugins.reporting.reports.render import render_report

    return render_report(study, week, app=current_app._get_current_object())


def store():
    from plugins.reporting.documents.storage import store_for

    return store_for(current_app._get_current_object())


def read_pdf(location: str) -> bytes:
    return b"".join(store().open(location))


# Runs ------------------------------------------------------------------------------------


def ensure_run(study: str | None, week: str) -> ReportRun:
    """The run of this scope and week, created if there is none (two callers at once get
    the same row: the unique index decides, the loser reads the winner's row). ``week`` is
    stored normalised (one spelling per week, or the unique index would not hold)."""
    week = timing.normalise_week(week)
    scope = scope_of(study)
    where = (ReportRun.scope == scope) & (ReportRun.week == week) & (ReportRun.dry_run == False)  # noqa: E712
    run = ReportRun.get_or_none(where)
    if run is not None:
        return run
    try:
        with database.atomic():
            return ReportRun.create(scope=scope, study=study, week=week, dry_run=False)
    except peewee.IntegrityError:
        return ReportRun.get(where)


def create_dry_run(study: str | None, week: str) -> ReportRun:
    week = timing.normalise_week(week)
    return ReportRun.create(scope=scope_of(study), study=study, week=week, dry_run=True)


def active_subscriptions(scope: str) -> peewee.ModelSelect:
    return (
        Subscription.select()
        .join(User)
        .where(
            (Subscription.scope == scope)
            & Subscription.cancelled_at.is_null()
            & (User.status == "active")
        )
    )


def insert_recipients(run: ReportRun, subscription_ids: Iterable[int]) -> list[int]:
    """Ledger rows for these subscriptions and the run's week; existing ones stay as they
    are (a subscription gets a week's report once, whoever asks). Returns the subscriptions
    whose row this call added (``INSERT ... ON CONFLICT DO NOTHING RETURNING``)."""
    rows = [
        {"subscription": sid, "week": run.week, "run": run.id, "state": "pending"}
        for sid in subscription_ids
    ]
    added: list[int] = []
    for start in range(0, len(rows), 500):
        query = Delivery.insert_many(rows[start : start + 500]).on_conflict_ignore()
        added += [row[0] for row in query.returning(Delivery.subscription).tuples().execute()]
    return added


def add_recipients(run: ReportRun, subscription_ids: Iterable[int]) -> int:
    """:func:`insert_recipients`; returns how many rows were added."""
    return len(insert_recipients(run, subscription_ids))


def insert_all_recipients(run: ReportRun) -> list[int]:
    """Every active subscriber of the run's scope (an admin's run for a week); returns the
    subscriptions added."""
    ids = [s.id for s in active_subscriptions(run.scope).select(Subscription.id)]
    return insert_recipients(run, ids)


def add_all_recipients(run: ReportRun) -> int:
    return len(insert_all_recipients(run))


def week_end(week: str) -> datetime.datetime:
    """When ``week`` ends in the hospital's zone (an aware UTC datetime)."""
    return timing.week_bounds(week, current_app.config["TIMEZONE"])[1]


def week_complete(week: str, now: datetime.datetime) -> bool:
    """Whether ``week`` has ended in the hospital's zone (plus the grace) by ``now``."""
    return now >= week_end(week) + WEEK_END_GRACE


def kick(run_id: int, now: datetime.datetime | None = None, *, scheduled: bool = False) -> bool:
    """Enqueue what the run needs next, unless someone already did: the job is sent only by
    the caller whose conditional UPDATE wins, so two schedulers enqueue it once. Also
    takes over a stalled run (its working lease has passed), and gives a run whose
    rendering failed for good another chance (queued, its attempts reset): kick is called
    when an admin runs the week again or new ledger rows arrive for it. ``scheduled`` (the
    scheduler's calls): a run not yet rendered whose week has not ended in the hospital's
    zone stays queued; the scheduler kicks it again at each tick (an admin's run of a week
    is rendered when asked). True if a job was sent."""
    now = now or utcnow()
    run = ReportRun.get_by_id(run_id)
    if run.state == "failed" and run.pdf_location is None and not run.dry_run:
        ReportRun.update(
            state="queued", render_attempts=0, lease_until=None, enqueued_at=None, finished_at=None
        ).where(
            (ReportRun.id == run.id)
            & (ReportRun.state == "failed")
            & ReportRun.pdf_location.is_null()
        ).execute()
        run = ReportRun.get_by_id(run_id)
    if run.state == "rendering" and run.lease_until and run.lease_until < now:
        ReportRun.update(state="queued", lease_until=None, enqueued_at=None).where(
            (ReportRun.id == run.id)
            & (ReportRun.state == "rendering")
            & (ReportRun.lease_until < now)
        ).execute()
        run = ReportRun.get_by_id(run_id)
    if run.state == "queued":
        # Only before its rendering ever started: one taken over (or retried) goes on.
        held = scheduled and not run.dry_run and run.render_attempts == 0
        if held and not week_complete(run.week, now):
            return False
        won = (
            ReportRun.update(enqueued_at=now)
            .where(
                (ReportRun.id == run.id)
                & (ReportRun.state == "queued")
                & (ReportRun.enqueued_at.is_null() | (ReportRun.enqueued_at < now - render_lease()))
            )
            .execute()
        )
        if won:
            render_run.send(run.id)
        return bool(won)
    if run.dry_run or run.pdf_location is None:
        return False
    pending = Delivery.select().where((Delivery.run == run.id) & (Delivery.state == "pending"))
    stalled = run.state == "sending" and (run.lease_until is None or run.lease_until < now)
    reopen = run.state in ("succeeded", "failed") and pending.exists()
    if not (stalled or reopen):
        return False
    won = (
        ReportRun.update(
            state="sending", lease_until=now + send_lease(), enqueued_at=now, finished_at=None
        )
        .where((ReportRun.id == run.id) & (ReportRun.state == run.state))
        .where(
            (ReportRun.lease_until.is_null() | (ReportRun.lease_until < now))
            if stalled
            else peewee.SQL("1 = 1")
        )
        .execute()
    )
    if won:
        dispatch(run.id)
        finish_if_done(run.id)
    return bool(won)


def recover_stalled(now: datetime.datetime | None = None) -> None:
    """Give back rows that dead batches claimed, record the unknowns, restart stalled runs."""
    # A claim's time is the database's (stamped at the claim and refreshed at every row the
    # batch sends); ``now`` is for tests that move time forward.
    lease = send_lease()
    cutoff = db_now(-lease) if now is None else now - lease
    now = now or utcnow()
    expired = Delivery.claimed_at < cutoff
    Delivery.update(state="pending", claim=None).where(
        (Delivery.state == "claimed") & expired
    ).execute()
    Delivery.update(state="failed", error=UNKNOWN_OUTCOME).where(
        (Delivery.state == "sending") & expired
    ).execute()
    stalled = ReportRun.select(ReportRun.id).where(
        (ReportRun.state.in_(("queued", "rendering", "sending")))
        & (ReportRun.lease_until.is_null() | (ReportRun.lease_until < now))
    )
    for run in stalled:
        kick(run.id, now, scheduled=True)


# Rendering -------------------------------------------------------------------------------


@actor(
    "reporting.render_run",
    time_limit=RENDER_TIME_LIMIT,
    max_retries=MAX_RENDER_ATTEMPTS - 1,
    min_backoff=10_000,
    max_backoff=300_000,
)
def render_run(run_id: int) -> None:
    """Render the run's PDF once, keep it in the store, then fan the sends out."""
    now = utcnow()
    claimed = (
        ReportRun.update(
            state="rendering",
            lease_until=now + render_lease(),
            started_at=now,
            render_attempts=ReportRun.render_attempts + 1,
        )
        .where(
            (ReportRun.id == run_id)
            & (
                (ReportRun.state == "queued")
                | ((ReportRun.state == "rendering") & (ReportRun.lease_until < now))
            )
        )
        .execute()
    )
    if not claimed:  # a duplicate message, or the run moved on: nothing to do here
        return
    run = ReportRun.get_by_id(run_id)
    if run.pdf_location is None:
        if run.render_attempts > MAX_RENDER_ATTEMPTS:
            _fail(run, f"rendering did not finish in {run.render_attempts - 1} attempts")
            return
        try:
            with _renewing(run.id, render_lease()):
                rendered = render(run.study, run.week)
                stored = store().put(
                    f"reports/{run.week}/run-{run.id}.pdf",
                    io.BytesIO(rendered.pdf),
                    "application/pdf",
                )
        except Exception as error:
            message = f"rendering failed: {type(error).__name__}: {error}"
            if run.render_attempts >= MAX_RENDER_ATTEMPTS:
                log.exception("report run %s: %s; giving up", run.id, message)
                _fail(run, message)
                return
            log.warning("report run %s: %s; will retry", run.id, message)
            # enqueued_at: Dramatiq's retry is the job now; the scheduler leaves it be.
            ReportRun.update(
                state="queued", lease_until=None, enqueued_at=utcnow(), error=message
            ).where((ReportRun.id == run.id) & (ReportRun.state == "rendering")).execute()
            raise TemporaryFailure(message) from error
        run.pdf_location, run.pdf_size = stored.location, stored.size
        run.totals = json.dumps(rendered.totals, default=str)
        ReportRun.update(
            pdf_location=stored.location,
            pdf_size=stored.size,
            totals=run.totals,
            rendered_at=utcnow(),
            error=None,
        ).where(ReportRun.id == run.id).execute()
    if run.dry_run:
        recipients = active_subscriptions(run.scope).count()
        ReportRun.update(
            state="succeeded", recipients=recipients, finished_at=utcnow(), lease_until=None
        ).where((ReportRun.id == run.id) & (ReportRun.state == "rendering")).execute()
        return
    moved = (
        ReportRun.update(state="sending", lease_until=utcnow() + send_lease())
        .where((ReportRun.id == run.id) & (ReportRun.state == "rendering"))
        .execute()
    )
    if moved:
        dispatch(run.id)
        finish_if_done(run.id)


def _fail(run: ReportRun, message: str) -> None:
    ReportRun.update(state="failed", error=message, finished_at=utcnow(), lease_until=None).where(
        ReportRun.id == run.id
    ).execute()


def dispatch(run_id: int, subscription_ids: Iterable[int] | None = None) -> int:
    """Enqueue a batch job per ``REPORTING_BATCH_SIZE`` pending rows (only those of
    ``subscription_ids``, when given: rows just added); returns the batches."""
    size = current_app.config["REPORTING_BATCH_SIZE"]
    where = (Delivery.run == run_id) & (Delivery.state == "pending")
    if subscription_ids is not None:
        where &= Delivery.subscription.in_(list(subscription_ids))
    ids = [row.id for row in Delivery.select(Delivery.id).where(where).order_by(Delivery.id)]
    ReportRun.update(
        recipients=Delivery.select(peewee.fn.COUNT(Delivery.id)).where(Delivery.run == run_id)
    ).where(ReportRun.id == run_id).execute()
    batches = [ids[start : start + size] for start in range(0, len(ids), size)]
    for batch in batches:
        send_batch.send(run_id, batch)
    return len(batches)


def finish_if_done(run_id: int) -> bool:
    """Close the run once no ledger row is open: succeeded, or failed if nothing was sent
    and something failed."""
    if Delivery.select().where((Delivery.run == run_id) & Delivery.state.in_(OPEN_STATES)).exists():
        return False
    counts = delivery_counts([run_id]).get(run_id, {})
    state = "failed" if counts.get("failed") and not counts.get("sent") else "succeeded"
    errors = [
        f"{row.recipient or row.subscription_id}: {row.error}"
        for row in Delivery.select()
        .where((Delivery.run == run_id) & (Delivery.state == "failed"))
        .limit(5)
    ]
    done = (
        ReportRun.update(
            state=state,
            finished_at=utcnow(),
            lease_until=None,
            error="; ".join(errors) or None,
        )
        .where((ReportRun.id == run_id) & (ReportRun.state == "sending"))
        .execute()
    )
    return bool(done)


def delivery_counts(run_ids: list[int]) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = {run_id: {} for run_id in run_ids}
    query = (
        Delivery.select(Delivery.run, Delivery.state, peewee.fn.COUNT(Delivery.id).alias("n"))
        .where(Delivery.run.in_(run_ids))
        .group_by(Delivery.run, Delivery.state)
        .tuples()
    )
    for run_id, state, n in query:
        counts[run_id][state] = n
    return counts


# Sending ---------------------------------------------------------------------------------


@actor(
    "reporting.send_batch",
    time_limit=SEND_TIME_LIMIT,
    max_retries=MAX_DELIVERY_ATTEMPTS,
    min_backoff=5_000,
    max_backoff=300_000,
)
def send_batch(run_id: int, delivery_ids: list[int]) -> None:
    """Send the report to a batch of ledger rows over one SMTP connection."""
    run = ReportRun.get_or_none(ReportRun.id == run_id)
    if run is None or run.state != "sending" or run.pdf_location is None:
        return
    claim = uuid.uuid4().hex
    now = utcnow()
    Delivery.update(
        state="claimed", claim=claim, claimed_at=db_now(), attempts=Delivery.attempts + 1
    ).where(Delivery.id.in_(delivery_ids) & (Delivery.state == "pending")).execute()
    rows = list(
        Delivery.select(Delivery, Subscription, User)
        .join(Subscription)
        .join(User)
        .where((Delivery.claim == claim) & (Delivery.state == "claimed"))
        .order_by(Delivery.id)
    )
    if rows:
        ReportRun.update(lease_until=now + send_lease()).where(
            (ReportRun.id == run_id) & (ReportRun.state == "sending")
        ).execute()
        try:
            _send_rows(run, rows, claim)
        except ClaimLost as error:
            # Not retried: the rows left are someone else's now (or back to pending).
            log.warning("report run %s: batch %s stopped: %s", run_id, claim, error)
        finally:
            finish_if_done(run_id)


def _mark(row: Delivery, token: str, **values) -> int:
    """Update a row only while this batch still holds it; returns the rows updated (0: the
    claim is gone)."""
    return (
        Delivery.update(**values)
        .where((Delivery.id == row.id) & (Delivery.claim == token))
        .execute()
    )


def _fence(row: Delivery, token: str, **values) -> None:
    """Mark ``row`` "sending", only if this batch still holds it *claimed*, and refresh the
    batch's claim (on the database's clock) so that a live batch never expires. Raises
    :class:`ClaimLost` otherwise: the row must not be sent."""
    held = (
        Delivery.update(state="sending", claimed_at=db_now(), **values)
        .where((Delivery.id == row.id) & (Delivery.claim == token) & (Delivery.state == "claimed"))
        .execute()
    )
    if not held:
        raise ClaimLost(f"delivery {row.id} is no longer held by this batch")
    Delivery.update(claimed_at=db_now()).where(
        (Delivery.claim == token) & (Delivery.state == "claimed")
    ).execute()


def _send_rows(run: ReportRun, rows: list[Delivery], claim: str) -> None:
    config = current_app.config
    sender = config["REPORTING_MAIL_FROM"]
    remaining = list(rows)
    # The row the server accepted last: its "sent" is written in the same transaction as
    # the next row's "sending" (one commit per email instead of two).
    accepted: list[Delivery] = []

    def step(row: Delivery | None = None, sending: bool = False, **values) -> None:
        try:
            with database.atomic():
                for done in accepted:
                    _mark(done, claim, state="sent", sent_at=utcnow(), error=None)
                if row is not None and sending:
                    _fence(row, claim, **values)
                elif row is not None:
                    _mark(row, claim, **values)
        except ClaimLost:
            # The rows the server took are still recorded "sent" (outside the fence).
            with database.atomic():
                for done in accepted:
                    _mark(done, claim, state="sent", sent_at=utcnow(), error=None)
            accepted.clear()
            raise
        accepted.clear()

    try:
        totals = json.loads(run.totals or "{}")
        pdf_part = None
        if (run.pdf_size or 0) <= config["REPORTING_ATTACHMENT_MAX_BYTES"]:
            pdf_part = emails.attachment(read_pdf(run.pdf_location), run.week, run.study)
        with mailer_for(current_app).connect() as connection:
            while remaining:
                row = remaining[0]
                subscription, user = row.subscription, row.subscription.user
                if subscription.cancelled_at is not None or user.status != "active":
                    step(row, state="suppressed", error="unsubscribed or inactive")
                    remaining.pop(0)
                    continue
                data = emails.compose(
                    recipient=user.email,
                    name=user.name,
                    subscription_id=subscription.id,
                    run_id=run.id,
                    week=run.week,
                    study=run.study,
                    totals=totals,
                    pdf_part=pdf_part,
                    sender=sender,
                )
                # The window: from this commit until the next one records "sent", a crash
                # leaves the outcome unknown (recover_stalled records it as failed and never
                # sends it again).
                step(row, sending=True, recipient=user.email)
                try:
                    connection.send_bytes(email_address(sender), [user.email], data)
                except MailError as error:
                    if not error.permanent:
                        raise
                    # Refused for good, or sent with its answer lost (``outcome_unknown``):
                    # recorded failed, never sent again (at most once).
                    _mark(row, claim, state="failed", error=str(error))
                    remaining.pop(0)
                    if error.outcome_unknown:
                        # The connection is closed: the rest go back for the retry.
                        raise
                    continue
                accepted.append(row)
                remaining.pop(0)
            step()
    except ClaimLost:
        # Rows this batch still holds (normally none: they expire together) go back.
        _release(remaining, claim, "the batch lost its claim")
        raise
    except MailError as error:
        step()
        # Rows whose message was not (fully) handed to the server: back to pending.
        _release(remaining, claim, str(error))
        raise TemporaryFailure(f"report run {run.id}: {error}") from error
    except BaseException as error:
        # Anything else (a bug, the time limit): record what the server took, give the
        # untried rows back; a row in the middle of an SMTP transaction stays "sending".
        step()
        reason = f"{type(error).__name__}: {error}"
        _release([row for row in remaining if _state(row) == "claimed"], claim, reason)
        raise


def email_address(text: str) -> str:
    return email.utils.parseaddr(text)[1]


def _state(row: Delivery) -> str:
    return Delivery.select(Delivery.state).where(Delivery.id == row.id).scalar()


def _release(rows: list[Delivery], claim: str, reason: str) -> None:
    """Rows not accepted by the server: back to ``pending`` for the retry, or ``failed``
    once they have had their attempts."""
    for row in rows:
        if row.attempts >= MAX_DELIVERY_ATTEMPTS:
            _mark(
                row, claim, state="failed", error=f"gave up after {row.attempts} attempts: {reason}"
            )
        else:
            _mark(row, claim, state="pending", claim=None, error=reason)


# The scheduler's task --------------------------------------------------------------------

POISONED_RETRY = datetime.timedelta(hours=1)


def _poisoned(sub: Subscription, now: datetime.datetime, poisoned: set[int]) -> None:
    # One bad subscription (a zone the database holds but zoneinfo no longer knows, ...)
    # must not stop the others: logged, and put back by an hour so that it is not first in
    # line again at the next tick.
    log.exception("report subscription %s could not be scheduled", sub.id)
    poisoned.add(sub.id)
    Subscription.update(next_due_at=now + POISONED_RETRY).where(
        (Subscription.id == sub.id) & (Subscription.next_due_at == sub.next_due_at)
    ).execute()


def _advance(planned: list[tuple[Subscription, datetime.datetime, str]]) -> set[int]:
    """One conditional UPDATE for many subscriptions: each moves to its next occurrence if
    it is still due as read (another scheduler did not win it). Returns the ids won."""
    if not planned:
        return set()
    field = Subscription.next_due_at
    if is_sqlite():
        rows = ", ".join("(?, ?, ?)" for _ in planned)
        sql = (
            f"WITH v(id, old, new) AS (VALUES {rows}) "  # noqa: S608 (placeholders only)
            "UPDATE reporting_subscriptions SET next_due_at = v.new FROM v "
            "WHERE reporting_subscriptions.id = v.id "
            "AND reporting_subscriptions.next_due_at = v.old RETURNING reporting_subscriptions.id"
        )
    else:
        rows = ", ".join("(%s::bigint, %s::timestamp, %s::timestamp)" for _ in planned)
        sql = (
            "UPDATE reporting_subscriptions AS s SET next_due_at = v.new "  # noqa: S608 (placeholders only)
            f"FROM (VALUES {rows}) AS v(id, old, new) "
            "WHERE s.id = v.id AND s.next_due_at = v.old RETURNING s.id"
        )
    params = []
    for sub, following, _week in planned:
        params += [sub.id, field.db_value(sub.next_due_at), field.db_value(following)]
    return {row[0] for row in database.execute_sql(sql, params).fetchall()}


def _enqueue_many(
    planned: list[tuple[Subscription, datetime.datetime, str]],
    touched: dict[int, list[int]],
) -> int:
    """Advance the planned subscriptions in bulk and add the ledger rows of those won, in
    one transaction; returns how many were won (due)."""
    added_to: dict[int, list[int]] = {}
    with database.atomic():
        won = _advance(planned)
        groups: dict[tuple[str | None, str], list[int]] = {}
        for sub, _following, week in planned:
            if sub.id in won and sub.user.status == "active":
                groups.setdefault((sub.study, week), []).append(sub.id)
        for (study, week), ids in groups.items():
            run = ensure_run(study, week)
            # ON CONFLICT DO NOTHING: a row another scheduler added stays as it is.
            added_to.setdefault(run.id, []).extend(insert_recipients(run, ids))
    for run_id, ids in added_to.items():
        if ids:
            touched.setdefault(run_id, []).extend(ids)
    return len(won)


def _enqueue_one(sub: Subscription, now: datetime.datetime, touched: dict[int, list[int]]) -> bool:
    """Advance one due subscription and add its ledger row; False if another scheduler won."""
    latest = timing.latest_due(sub.weekday, sub.time, sub.timezone, now)
    following = timing.next_due(sub.weekday, sub.time, sub.timezone, now)
    with database.atomic():
        won = (
            Subscription.update(next_due_at=following)
            .where((Subscription.id == sub.id) & (Subscription.next_due_at == sub.next_due_at))
            .execute()
        )
        if not won:
            return False
        if sub.user.status != "active":
            return True
        run = ensure_run(sub.study, timing.reported_week(latest, sub.timezone))
        if add_recipients(run, [sub.id]):
            touched.setdefault(run.id, []).append(sub.id)
    return True


def enqueue_due(now: datetime.datetime | None = None, limit: int = 1000) -> int:
    """Ledger rows for every subscription due by ``now``, then the runs that need a job.

    Each due subscription is advanced to its next occurrence by a conditional UPDATE (only
    one scheduler wins it); the ledger's unique (subscription, week) makes a second row
    impossible anyway. Returns how many subscriptions were due.
    """
    now = now or utcnow()
    touched: dict[int, list[int]] = {}
    poisoned: set[int] = set()
    due = 0
    while True:
        batch = list(
            Subscription.select(Subscription, User)
            .join(User)
            .where(Subscription.cancelled_at.is_null() & (Subscription.next_due_at <= now))
            .order_by(Subscription.next_due_at)
            .limit(limit)
        )
        planned = []
        for sub in batch:
            try:
                latest = timing.latest_due(sub.weekday, sub.time, sub.timezone, now)
                following = timing.next_due(sub.weekday, sub.time, sub.timezone, now)
                week = timing.reported_week(latest, sub.timezone)
            except Exception:
                _poisoned(sub, now, poisoned)
                continue
            planned.append((sub, following, week))
        try:
            due += _enqueue_many(planned, touched)
        except Exception:
            log.exception("scheduling %s subscriptions at once failed; one by one", len(planned))
            for sub, _following, _week in planned:
                try:
                    if _enqueue_one(sub, now, touched):
                        due += 1
                except Exception:
                    _poisoned(sub, now, poisoned)
        if all(sub.id in poisoned for sub in batch):
            break
        if len(batch) < limit:
            break
    for run_id, subscription_ids in touched.items():
        try:
            # Only the caller whose conditional UPDATE wins kick's dispatches; a run already
            # sending gets batches for the rows added here, not for every pending one.
            if not kick(run_id, now, scheduled=True):
                run = ReportRun.get_by_id(run_id)
                if run.state == "sending":
                    dispatch(run_id, subscription_ids)
        except Exception:
            log.exception("report run %s could not be started", run_id)
    recover_stalled(now)
    return due
