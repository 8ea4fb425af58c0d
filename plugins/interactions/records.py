"""Recording, amending and reading interactions (no HTTP here: the API and the pages call
these). Only INSERTs and SELECTs: the record is append-only."""

from __future__ import annotations

import dataclasses
import datetime

import peewee

from core.auth.models import User
from core.db import database, is_sqlite, utcnow
from core.patients.models import touch
from plugins.interactions.models import (
    CONTENT_FIELDS,
    Interaction,
    InteractionErrorMark,
    InteractionVersion,
)


class RecordError(Exception):
    """A request the record refuses; ``status`` is the HTTP status that says why."""

    status = 409

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class NotTheAuthor(RecordError):
    status = 403


class AlreadyInError(RecordError):
    status = 409


class ChangedMeanwhile(RecordError):
    status = 409


class NothingChanged(RecordError):
    status = 422


MarkAuthor = User.alias("mark_author")


def _person(user):
    """What the record shows of a user (never the password hash)."""
    return (user.id, user.name, user.email)


def latest_number():
    """The number of an entry's latest version (correlated with the outer query's entry)."""
    later = InteractionVersion.alias("later")
    return later.select(peewee.fn.MAX(later.number)).where(later.interaction == Interaction.id)


def current() -> peewee.ModelSelect:
    """Every entry as it reads now: ``entry.current`` is its latest version, ``entry.author``
    its author, ``entry.error_mark`` the in-error mark or ``None``."""
    return (
        Interaction.select(
            Interaction,
            InteractionVersion,
            *_person(User),
            InteractionErrorMark,
            *_person(MarkAuthor),
        )
        .join(
            InteractionVersion,
            on=(
                (InteractionVersion.interaction == Interaction.id)
                & (InteractionVersion.number == latest_number())
            ),
            attr="current",
        )
        .switch(Interaction)
        .join(User, on=(Interaction.author == User.id), attr="author")
        .switch(Interaction)
        .join(
            InteractionErrorMark,
            peewee.JOIN.LEFT_OUTER,
            on=(InteractionErrorMark.interaction == Interaction.id),
            attr="error_mark",
        )
        .join(
            MarkAuthor,
            peewee.JOIN.LEFT_OUTER,
            on=(InteractionErrorMark.author == MarkAuthor.id),
            attr="author",
        )
    )


def _tidy(entry: Interaction) -> Interaction:
    """A left join that matched nothing gives an empty instance; say ``None`` instead."""
    mark = getattr(entry, "error_mark", None)
    if mark is not None and mark.id is None:
        entry.error_mark = None
    return entry


@dataclasses.dataclass(frozen=True)
class Filters:
    outcome: str | None = None
    author: str | None = None  # an email, or a user id in digits
    from_: datetime.datetime | None = None
    to: datetime.datetime | None = None
    entered_in_error: bool | None = None


def history(mrn: str, filters: Filters = Filters()) -> peewee.ModelSelect:  # noqa: B008
    """The patient's entries as they read now, newest first (by when they happened)."""
    query = current().where(Interaction.patient_mrn == mrn)
    if filters.outcome:
        query = query.where(InteractionVersion.outcome == filters.outcome)
    if filters.author:
        wanted = filters.author.strip()
        if wanted.isascii() and wanted.isdigit():  # "²" is a digit, but no number
            number = int(wanted)
            if number > 2**63 - 1:  # no user has that id (and the driver would overflow)
                query = query.where(Interaction.id.is_null())
            else:
                query = query.where(Interaction.author == number)
        else:
            query = query.where(User.email == wanted.lower())
    if filters.from_:
        query = query.where(InteractionVersion.occurred_at >= filters.from_)
    if filters.to:
        query = query.where(InteractionVersion.occurred_at <= filters.to)
    if filters.entered_in_error is True:
        query = query.where(InteractionErrorMark.id.is_null(False))
    elif filters.entered_in_error is False:
        query = query.where(InteractionErrorMark.id.is_null())
    return query.order_by(InteractionVersion.occurred_at.desc(), Interaction.id.desc())


@dataclasses.dataclass(frozen=True)
class PointContent:
    occurred_at: datetime.datetime
    kind: str
    summary: str
    outcome: str


@dataclasses.dataclass(frozen=True)
class Point:
    """What the chart's picture needs of an entry, shaped like an entry (``current``,
    ``error_mark``) so that the picture takes either."""

    id: int
    current: PointContent
    error_mark: bool  # marked entered in error


def with_latest_version(*columns) -> peewee.ModelSelect:
    """``columns`` of every entry joined with its latest version and, if it has one, its
    in-error mark (``InteractionErrorMark.id`` is null for an entry not in error)."""
    return (
        Interaction.select(*columns)
        .join(
            InteractionVersion,
            on=(
                (InteractionVersion.interaction == Interaction.id)
                & (InteractionVersion.number == latest_number())
            ),
        )
        .switch(Interaction)
        .join(
            InteractionErrorMark,
            peewee.JOIN.LEFT_OUTER,
            on=(InteractionErrorMark.interaction == Interaction.id),
        )
    )


def points(mrn: str) -> list[Point]:
    """Every entry of the patient, slim (one query: no notes, authors or older versions)."""
    rows = (
        with_latest_version(
            Interaction.id,
            InteractionVersion.occurred_at,
            InteractionVersion.kind,
            InteractionVersion.summary,
            InteractionVersion.outcome,
            InteractionErrorMark.id,
        )
        .where(Interaction.patient_mrn == mrn)
        .tuples()
    )
    return [
        Point(entry_id, PointContent(occurred_at, kind, summary, outcome), mark_id is not None)
        for entry_id, occurred_at, kind, summary, outcome, mark_id in rows
    ]


def entries(query: peewee.ModelSelect) -> list[Interaction]:
    return [_tidy(entry) for entry in query]


def find(mrn: str, interaction_id: int) -> Interaction | None:
    """One entry of this patient's as it reads now, or ``None`` (another patient's is
    ``None`` too: the id alone never reaches across records)."""
    entry = (
        current().where(Interaction.patient_mrn == mrn, Interaction.id == interaction_id).first()
    )
    return _tidy(entry) if entry is not None else None


def versions(entry: Interaction) -> list[InteractionVersion]:
    """Every version, the original first, each with its author."""
    return versions_of([entry.id])[entry.id]


def changed_fields(before: InteractionVersion | None, after: InteractionVersion) -> list[str]:
    if before is None:
        return []
    return [name for name in CONTENT_FIELDS if getattr(before, name) != getattr(after, name)]


def create(
    mrn: str, author: User, data: dict, *, recorded_at: datetime.datetime | None = None
) -> Interaction:
    """Record an interaction (``data`` validated by ``InteractionsNewSchema``).
    ``recorded_at`` is for the demo data only: a record is written now."""
    now = recorded_at or utcnow()
    content = {name: data.get(name) for name in CONTENT_FIELDS}
    content["occurred_at"] = data.get("occurred_at") or now
    with database.atomic():
        entry = Interaction.create(patient_mrn=mrn, author=author, created_at=now)
        InteractionVersion.create(
            interaction=entry, number=1, author=author, recorded_at=now, **content
        )
    touch(mrn)
    return find(mrn, entry.id)


def _lock(entry: Interaction) -> None:
    """Serialise amendments and in-error marks of one entry (PostgreSQL; SQLite has one
    writer at a time anyway). A row lock fires no trigger: nothing is updated."""
    if not is_sqlite():
        Interaction.select(Interaction.id).where(Interaction.id == entry.id).for_update().execute()


def refuse_unless_open(entry: Interaction, user: User, doing: str) -> None:
    if entry.author.id != user.id:
        raise NotTheAuthor(f"Only the author ({entry.author.name}) can {doing} this interaction.")
    mark = InteractionErrorMark.get_or_none(InteractionErrorMark.interaction == entry.id)
    if mark is not None:
        raise AlreadyInError(
            f"This interaction was marked entered in error on {mark.recorded_at.isoformat()}; "
            "it can no longer be changed. Record a new interaction instead."
        )


def amend(
    entry: Interaction,
    user: User,
    changes: dict,
    reason: str,
    *,
    base_version: int | None = None,
    recorded_at: datetime.datetime | None = None,
) -> Interaction:
    """A new version with ``changes`` applied to the current one; refuses an amendment that
    changes nothing, one made from a version that is no longer the latest (``base_version``:
    the version the client saw; a stale form would otherwise silently undo a newer
    amendment), and one racing another amendment for the same version number."""
    now = recorded_at or utcnow()
    with database.atomic():
        _lock(entry)
        refuse_unless_open(entry, user, "amend")
        latest = (
            InteractionVersion.select()
            .where(InteractionVersion.interaction == entry.id)
            .order_by(InteractionVersion.number.desc())
            .first()
        )
        if base_version is not None and base_version != latest.number:
            raise ChangedMeanwhile(
                f"The interaction was amended meanwhile: you amended version {base_version}, "
                f"it now reads as version {latest.number}. Reload it and amend the latest "
                "version."
            )
        content = latest.content() | {
            name: changes[name] for name in CONTENT_FIELDS if name in changes
        }
        if content == latest.content():
            raise NothingChanged(
                "The amendment changes nothing: change at least one field.", field="_schema"
            )
        try:
            with database.atomic():
                InteractionVersion.create(
                    interaction=entry,
                    number=latest.number + 1,
                    author=user,
                    recorded_at=now,
                    reason=reason,
                    **content,
                )
        except peewee.IntegrityError:
            raise ChangedMeanwhile(
                "The interaction was amended meanwhile; reload it and amend the latest version."
            ) from None
    touch(entry.patient_mrn)
    return find(entry.patient_mrn, entry.id)


def mark_in_error(
    entry: Interaction, user: User, reason: str, *, recorded_at: datetime.datetime | None = None
) -> Interaction:
    """Flag the entry as entered in error; it stays in the record, flagged."""
    with database.atomic():
        _lock(entry)
        refuse_unless_open(entry, user, "mark in error")
        try:
            with database.atomic():
                InteractionErrorMark.create(
                    interaction=entry,
                    author=user,
                    recorded_at=recorded_at or utcnow(),
                    reason=reason,
                )
        except peewee.IntegrityError:
            raise AlreadyInError("This interaction is already marked entered in error.") from None
    touch(entry.patient_mrn)
    return find(entry.patient_mrn, entry.id)


def versions_of(ids: list[int]) -> dict[int, list[InteractionVersion]]:
    """Every version of each of these entries (one query), the original first."""
    found: dict[int, list[InteractionVersion]] = {entry_id: [] for entry_id in ids}
    if not ids:
        return found
    rows = (
        InteractionVersion.select(InteractionVersion, *_person(User))
        .join(User, on=(InteractionVersion.author == User.id), attr="author")
        .where(InteractionVersion.interaction.in_(ids))
        .order_by(InteractionVersion.interaction, InteractionVersion.number)
    )
    for version in rows:
        found[version.interaction_id].append(version)
    return found
