"""Creating, changing and deleting documents, so that the database and the store never
disagree for long, and never in the dangerous direction.

- An upload first records a pending removal of its (not yet written) key, then streams the
  file to the store, then, in one transaction, turns the pending removal into the document
  and its ``created`` change. A process that dies half way leaves a pending removal, which
  the sweep carries out once the upload can no longer be in progress: never an orphaned
  file.
- A delete removes the record, logs the ``deleted`` change and records the pending file
  removal in one transaction; after the commit it removes the file at once, and if that
  fails a job retries with back-off and, after that, the sweep. The record goes first, so a
  record never points at a file that is gone.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import peewee
from flask import current_app

from core.db import database, is_sqlite, utcnow
from plugins.reporting.documents.models import (
    SNAPSHOT_FIELDS,
    Document,
    DocumentChange,
    DocumentFileRemoval,
)
from plugins.reporting.documents.storage import Missing, Store, Stored, store_for

log = logging.getLogger("caredeck.reporting.documents")

KEY_PREFIX = "documents/"
# An upload still running after this long is treated as dead: the sweep removes its file,
# and if it does finish after all, its commit refuses (the client is asked to retry).
UPLOAD_GRACE = datetime.timedelta(hours=6)
# A deleted document's file: removed at once, else by the job's retries; the sweep takes
# over only after this, so that it does not race the request and the job.
DELETE_GRACE = datetime.timedelta(minutes=30)
SWEEP_BACKOFF_MAX = datetime.timedelta(hours=6)
WRITABLE_FIELDS = ("filename", "study", "content_type")


class UploadExpired(Exception):  # noqa: N818
    """The upload took longer than ``UPLOAD_GRACE``; its file may already be swept."""


def new_key() -> str:
    """A fresh store key: never derived from what a client sent."""
    return f"{KEY_PREFIX}{uuid.uuid4().hex}"


def store() -> Store:
    return store_for(current_app)


def _snapshot(document: Document) -> dict[str, Any]:
    return {name: getattr(document, name) for name in SNAPSHOT_FIELDS}


def _log_change(document: Document, action: str, by: str, at: datetime.datetime) -> None:
    DocumentChange.create(
        document_id=document.id, action=action, at=at, by=by, **_snapshot(document)
    )


# Uploads --------------------------------------------------------------------------------


def release_connection() -> None:
    """Give the calling thread's database connection back (to the pool on PostgreSQL).

    An upload calls this before streaming: a transfer may take minutes, and a connection
    held meanwhile would let a few slow uploads take the whole pool. The next query takes a
    connection again (``autoconnect``). It does nothing when the caller manages the
    connection (inside ``connection_context()`` or a transaction)."""
    if database.is_closed() or database.in_transaction() or database._state.ctx:
        return
    database.close()


def begin_upload(key: str) -> DocumentFileRemoval:
    """Record, before any byte is stored, that ``key`` is to be removed unless the upload
    finishes (committed at once, outside any transaction).

    Uses its own connection and gives it back at once (see :func:`release_connection`):
    the upload streams without one, and ``finish_upload`` takes one again."""
    release_connection()
    try:
        return DocumentFileRemoval.create(
            file_location=key, reason="upload", not_before=utcnow() + UPLOAD_GRACE
        )
    finally:
        release_connection()


def finish_upload(
    pending: DocumentFileRemoval, stored: Stored, fields: Mapping[str, Any], by: str
) -> Document:
    """Create the document for a stored file, in one transaction with its ``created`` change
    and the end of its pending removal."""
    now = utcnow()
    with database.atomic():
        # Only while the upload is not yet overdue: past that, the sweep may be removing
        # the file, and a record must never point at nothing.
        claimed = (
            DocumentFileRemoval.delete()
            .where((DocumentFileRemoval.id == pending.id) & (DocumentFileRemoval.not_before > now))
            .execute()
        )
        if claimed != 1:
            raise UploadExpired(pending.file_location)
        document = Document.create(
            filename=fields["filename"],
            study=fields.get("study"),
            content_type=fields["content_type"],
            file_location=stored.location,
            size=stored.size,
            md5=stored.md5,
            uploaded_by=by,
            created_at=now,
            updated_at=now,
        )
        _log_change(document, "created", by, now)
    log.info(
        "document %s uploaded by %s: %r, %d bytes, study %r",
        document.id,
        by,
        document.filename,
        document.size,
        document.study,
    )
    return document


def abandon_upload(pending: DocumentFileRemoval) -> None:
    """An upload failed: remove whatever it stored, now if possible, else later. Never
    raises, so that the upload's own error is the one reported."""
    try:
        store().delete(pending.file_location)
    except Exception:
        log.warning("could not remove the file of a failed upload; retrying later", exc_info=True)
        _retry_later(pending)
        return
    try:
        DocumentFileRemoval.delete().where(DocumentFileRemoval.id == pending.id).execute()
    except Exception:
        # The file is gone; the sweep will find the removal and do nothing harmful.
        log.warning("could not drop the pending removal %s", pending.id, exc_info=True)


# Changes --------------------------------------------------------------------------------


def _write_transaction():
    """A transaction that reads a row and then changes it.

    On SQLite it takes the write lock at ``BEGIN`` (``IMMEDIATE``): a deferred transaction
    reads under a shared lock and must upgrade it at its first write, which fails at once
    with "database is locked" (the busy timeout does not apply) when another transaction
    wrote meanwhile, so two deletes of one document were a 204 and a 500. With the lock
    taken first, the second waits (up to the busy timeout) and then finds nothing: a 404.
    PostgreSQL locks the row instead (``SELECT ... FOR UPDATE``, :func:`_locked`)."""
    if is_sqlite():
        return database.atomic(lock_type="IMMEDIATE")
    return database.atomic()


def _locked(document_id: int) -> Document | None:
    """The document, locked until the transaction ends (on SQLite, the whole database is:
    see :func:`_write_transaction`)."""
    query = Document.select().where(Document.id == document_id)
    if not is_sqlite():
        query = query.for_update()
    return query.first()


def update(document_id: int, changes: Mapping[str, Any], by: str) -> Document | None:
    """Apply ``changes`` (writable fields only); ``None`` if there is no such document.

    A change that changes nothing writes nothing (no ``updated`` change, same
    ``updated_at``)."""
    unknown = set(changes) - set(WRITABLE_FIELDS)
    if unknown:
        raise ValueError(f"not writable: {sorted(unknown)}")
    with _write_transaction():
        document = _locked(document_id)
        if document is None:
            return None
        changed = {
            name: value for name, value in changes.items() if getattr(document, name) != value
        }
        if not changed:
            return document
        now = utcnow()
        for name, value in changed.items():
            setattr(document, name, value)
        document.updated_at = now
        document.save()
        _log_change(document, "updated", by, now)
    log.info("document %s updated by %s: %s", document.id, by, ", ".join(sorted(changed)))
    return document


def delete(document_id: int, by: str) -> bool:
    """Delete the document and its file; ``False`` if there is no such document.

    The record, its ``deleted`` change and the pending file removal are one transaction;
    then the file is removed, and if that fails a job retries it (and, after that, the
    sweep)."""
    with _write_transaction():
        document = _locked(document_id)
        if document is None:
            return False
        now = utcnow()
        Document.delete().where(Document.id == document.id).execute()
        _log_change(document, "deleted", by, now)
        removal = DocumentFileRemoval.create(
            file_location=document.file_location,
            reason="delete",
            document_id=document.id,
            not_before=now + DELETE_GRACE,
        )
    log.info("document %s deleted by %s: %r", document.id, by, document.filename)
    try:
        remove_file(removal.id)
    except Exception:
        log.warning(
            "could not remove the file of deleted document %s at once; a job retries it",
            document_id,
            exc_info=True,
        )
        _retry_later(removal)
    return True


# File removals --------------------------------------------------------------------------


def remove_file(removal_id: int) -> bool:
    """Carry out one pending removal (safe to run twice); ``False`` if it was done already.

    Raises when the store fails, leaving the removal pending."""
    removal = DocumentFileRemoval.get_or_none(DocumentFileRemoval.id == removal_id)
    if removal is None:
        return False
    store().delete(removal.file_location)
    if removal.reason == "upload":  # a process that died during put may have left a part
        store().discard_incomplete(removal.file_location)
    DocumentFileRemoval.delete().where(DocumentFileRemoval.id == removal.id).execute()
    log.info("removed file %s (%s)", removal.file_location, removal.reason)
    return True


def _retry_later(removal: DocumentFileRemoval) -> None:
    """Hand a removal to the job (retries with back-off); if even the queue is down, the
    removal stays pending for the sweep."""
    from plugins.reporting.documents.jobs import remove_document_file

    try:
        DocumentFileRemoval.update(not_before=utcnow() + DELETE_GRACE).where(
            DocumentFileRemoval.id == removal.id
        ).execute()
        remove_document_file.send(removal.id)
    except Exception:
        log.exception("could not queue the removal of %s; the sweep will", removal.file_location)


def pending_removals(now: datetime.datetime | None = None, limit: int = 1000):
    """Removals the sweep should carry out now, oldest first."""
    now = now or utcnow()
    return (
        DocumentFileRemoval.select()
        .where(DocumentFileRemoval.not_before <= now)
        .order_by(DocumentFileRemoval.not_before, DocumentFileRemoval.id)
        .limit(limit)
    )


def sweep(now: datetime.datetime | None = None, limit: int = 1000) -> dict[str, int]:
    """Carry out every removal still pending past its time (the job
    ``reporting.sweep_document_files``, which the scheduler enqueues every 10 minutes).

    A failure is recorded on the removal (attempts, last error) and tried again later with
    back-off. Returns ``{"removed": n, "failed": m}``."""
    now = now or utcnow()
    removed = failed = 0
    for removal in pending_removals(now, limit):
        try:
            if remove_file(removal.id):
                removed += 1
        except Exception as error:
            failed += 1
            attempts = removal.attempts + 1
            backoff = min(datetime.timedelta(minutes=2**attempts), SWEEP_BACKOFF_MAX)
            DocumentFileRemoval.update(
                attempts=attempts,
                last_error=f"{type(error).__name__}: {error}"[:2000],
                not_before=now + backoff,
            ).where(DocumentFileRemoval.id == removal.id).execute()
            log.warning("sweep could not remove %s: %s", removal.file_location, error)
    return {"removed": removed, "failed": failed}


# Reading the change log -----------------------------------------------------------------


def changes_between(
    start: datetime.datetime, end: datetime.datetime, study: str | None = None
) -> peewee.ModelSelect:
    """The change log's rows with ``start <= at < end`` (optionally for one study), in the
    order they happened: what the weekly report aggregates (served by the indexes
    ``(at, id)`` and ``(study, at)``)."""
    query = DocumentChange.select().where((DocumentChange.at >= start) & (DocumentChange.at < end))
    if study is not None:
        query = query.where(DocumentChange.study == study)
    return query.order_by(DocumentChange.at, DocumentChange.id)


# Verification ---------------------------------------------------------------------------


def verify(document: Document, store: Store | None = None) -> str:
    """Re-read the document's file from the store: ``"ok"``, ``"missing"`` or ``"corrupt"``
    (the bytes' MD5 or size differs from the record's)."""
    store = store or store_for(current_app)
    digest, size = hashlib.md5(usedforsecurity=False), 0
    try:
        for chunk in store.open(document.file_location):
            digest.update(chunk)
            size += len(chunk)
    except Missing:
        return "missing"
    if size != document.size or digest.hexdigest() != document.md5:
        return "corrupt"
    return "ok"
