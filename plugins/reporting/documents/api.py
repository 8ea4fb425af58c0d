"""``/api/documents``: the clinical-trial documents store (staff)."""

from __future__ import annotations

import logging

import marshmallow as ma
from flask import Response, current_app, request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from werkzeug.exceptions import RequestEntityTooLarge

from core.audit import audited
from core.auth import allow, current_user
from core.auth.access import STAFF
from plugins.reporting.documents import downloads, records
from plugins.reporting.documents.models import Document
from plugins.reporting.documents.schemas import (
    ReportingDocumentPatchSchema,
    ReportingDocumentQuerySchema,
    ReportingDocumentSchema,
    ReportingDocumentUploadSchema,
)
from plugins.reporting.documents.storage import Missing, StoreError, TooLarge
from plugins.reporting.documents.upload import (
    MAX_PARTS,
    TEXT_PART_MAX_BYTES,
    UploadInvalid,
    boundary_of,
    read_upload,
)

log = logging.getLogger("caredeck.reporting.documents")

blp = Blueprint(
    "reporting_documents",
    __name__,
    url_prefix="/api/documents",
    description="Clinical-trial documents: metadata in the database, files in the store "
    "(a local folder, or S3). Staff upload, list, read, rename and delete documents, and "
    "download the files (ETag, ranges). Every change is kept in a change log for the "
    "weekly report.",
)
# Room for the multipart framing and the text parts around the file itself.
MULTIPART_OVERHEAD = 64 * 1024 + MAX_PARTS * TEXT_PART_MAX_BYTES
ID_PARAMETER = {
    "in": "path",
    "name": "document_id",
    "description": "The document's id.",
    "example": 1,
}
DOCUMENT_EXAMPLE = {
    "id": 1,
    "filename": "consent-form.pdf",
    "file_location": "documents/0b6f6a4c1d2e4f0a9e5b7c3d2a1f0e9d",
    "size": 48213,
    "md5": "9e107d9d372bb6826bd81d3542a419d6",
    "content_type": "application/pdf",
    "study": "ONC-2026-07",
    "uploaded_by": "nurse@caredeck.local",
    "created_at": "2026-11-16T09:12:03+00:00",
    "updated_at": "2026-11-16T09:12:03+00:00",
}
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "The bytes. The part's Content-Type becomes the "
                        "document's (application/octet-stream if absent or malformed).",
                    },
                    "filename": {
                        "type": "string",
                        "description": "The document's name; defaults to the file part's filename.",
                    },
                    "study": {"type": "string", "description": "The trial (optional)."},
                },
            }
        }
    },
}
FILE_RESPONSES = {
    "200": {
        "description": "The file (`ETag`: its MD5; `Accept-Ranges: bytes`)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    "206": {"description": "The requested byte range (`Content-Range`)"},
    "304": {"description": "`If-None-Match` matched the `ETag`: the copy you have is current"},
    "404": {
        "description": "No such document, or its file is missing from the store or is not "
        "the one uploaded (its size differs from the record's)"
    },
    "416": {"description": "The range starts past the end of the file"},
    "503": {"description": "The file store is unavailable"},
}


def _by() -> str:
    return current_user().email


def _document_or_404(document_id: int) -> Document:
    document = Document.get_or_none(Document.id == document_id)
    if document is None:
        abort(404, message=f"There is no document {document_id}.")
    return document


def _too_large(limit: int):
    abort(
        413,
        message=f"The file is larger than the upload limit of {limit} bytes "
        f"({limit / 1024 / 1024:.1f} MiB); nothing was stored. Upload a smaller file, or ask "
        "an administrator to raise CAREDECK_REPORTING_UPLOAD_MAX_BYTES.",
        errors={"file": [f"At most {limit} bytes."]},
    )


def _store_unavailable(consequence: str):
    abort(503, message=f"The file store is unavailable; {consequence}")


def _file_missing(document: Document):
    log.error("document %s: its file %s is missing", document.id, document.file_location)
    abort(
        404,
        message=f"The file of document {document.id} is missing from the store; "
        "the weekly report flags it. Upload it again.",
    )


def _file_damaged(document: Document, stored_size: int):
    log.error(
        "document %s: its file %s has %d bytes, the record says %d",
        document.id,
        document.file_location,
        stored_size,
        document.size,
    )
    abort(
        404,
        message=f"The file of document {document.id} in the store is not the one uploaded "
        f"({stored_size} bytes, the record says {document.size}); the weekly report flags "
        "it. Upload it again.",
    )


def _invalid(errors: dict):
    abort(422, errors={"form": errors})


@blp.route("")
class Documents(MethodView):
    @allow(*STAFF)
    @audited("search documents")
    @blp.arguments(ReportingDocumentQuerySchema, location="query")
    @blp.response(200, ReportingDocumentSchema(many=True), example=[DOCUMENT_EXAMPLE])
    @blp.paginate()
    def get(self, args, pagination_parameters):
        """Documents, newest first

        Filter by `study`. Paginated: `page`, `page_size` (at most 100); the
        `X-Pagination` header holds the totals.
        """
        query = Document.select().order_by(Document.id.desc())
        if "study" in args:
            query = query.where(Document.study == args["study"])
        pagination_parameters.item_count = query.count()
        return list(query.paginate(pagination_parameters.page, pagination_parameters.page_size))

    @allow(*STAFF)
    @audited("upload document")
    @blp.doc(requestBody=UPLOAD_BODY)
    @blp.response(201, ReportingDocumentSchema, example=DOCUMENT_EXAMPLE)
    @blp.alt_response(413, description="The file is over the upload limit; nothing was stored")
    @blp.alt_response(422, description="Names each bad part (no file, an unknown part, ...)")
    @blp.alt_response(503, description="The file store is unavailable; nothing was stored")
    def post(self):
        """Upload a document (multipart)

        Parts: `file` (the bytes), `filename` (defaults to the file part's name) and
        `study` (optional). The file streams to the store, its size and MD5 computed on the
        way. Over the upload limit (`CAREDECK_REPORTING_UPLOAD_MAX_BYTES`) the answer is
        `413` naming the limit, and nothing is stored; nor on any other failure. The
        answer's `Location` header is the new document's address.
        """
        limit = current_app.config["REPORTING_UPLOAD_MAX_BYTES"]
        boundary = boundary_of(request.headers.get("Content-Type"))
        if boundary is None:
            _invalid({"file": ["Send multipart/form-data with the file in a part named file."]})
        if request.content_length is not None and request.content_length > (
            limit + MULTIPART_OVERHEAD
        ):
            _too_large(limit)  # refused before reading a byte
        request.max_content_length = limit + MULTIPART_OVERHEAD  # this request's own limit
        store = records.store()
        key = records.new_key()
        pending = records.begin_upload(key)
        try:
            upload = read_upload(
                request.stream,
                boundary,
                lambda reader, content_type: store.put(key, reader, content_type, limit),
            )
            try:
                fields = ReportingDocumentUploadSchema().load(
                    {
                        "filename": upload.fields.get("filename", upload.file_name),
                        "study": upload.fields.get("study"),
                        "content_type": upload.content_type,
                    }
                )
            except ma.ValidationError as error:
                raise UploadInvalid(error.messages) from None
            document = records.finish_upload(pending, upload.stored, fields, _by())
        except (TooLarge, RequestEntityTooLarge):
            records.abandon_upload(pending)
            _too_large(limit)
        except UploadInvalid as error:
            records.abandon_upload(pending)
            _invalid(error.errors)
        except StoreError as error:
            log.error("upload failed, the store is unavailable: %s", error)
            records.abandon_upload(pending)
            _store_unavailable("nothing was stored. Upload the file again in a moment.")
        except records.UploadExpired:
            records.abandon_upload(pending)
            abort(
                409,
                message="The upload took too long to finish and was discarded; upload the "
                "file again.",
            )
        except BaseException:
            records.abandon_upload(pending)
            raise
        location = url_for("reporting_documents.DocumentById", document_id=document.id)
        return document, 201, {"Location": location}


@blp.route("/<int(max=9223372036854775807):document_id>", parameters=[ID_PARAMETER])
class DocumentById(MethodView):
    @allow(*STAFF)
    @audited("view document")
    @blp.response(200, ReportingDocumentSchema, example=DOCUMENT_EXAMPLE)
    @blp.alt_response(404, description="No such document")
    def get(self, document_id):
        """One document's record"""
        return _document_or_404(document_id)

    @allow(*STAFF)
    @audited("update document")
    @blp.arguments(ReportingDocumentPatchSchema, example={"study": "ONC-2026-08"})
    @blp.response(200, ReportingDocumentSchema, example=DOCUMENT_EXAMPLE)
    @blp.alt_response(404, description="No such document")
    @blp.alt_response(422, description="Names each bad, unknown or read-only field")
    def patch(self, changes, document_id):
        """Change a document's filename, study or content type

        Send any of `filename`, `study` (null: none) and `content_type`. The other fields
        (`id`, `file_location`, `size`, `md5`, `uploaded_by`, `created_at`, `updated_at`)
        are read-only: sending one is a `422` naming it, as is an unknown field. A change
        is kept in the change log; sending the current values changes nothing.
        """
        document = records.update(document_id, changes, _by())
        if document is None:
            abort(404, message=f"There is no document {document_id}.")
        return document

    @allow(*STAFF)
    @audited("delete document")
    @blp.response(204)
    @blp.alt_response(404, description="No such document")
    def delete(self, document_id):
        """Delete a document and its file

        The record goes at once (and the change log keeps what it held); the file is
        removed right after, or, if the store fails, by a job that retries with back-off.
        A record never points at a missing file, and no file is left behind.
        """
        if not records.delete(document_id, _by()):
            abort(404, message=f"There is no document {document_id}.")
        return ""


@blp.route("/<int(max=9223372036854775807):document_id>/file", parameters=[ID_PARAMETER])
class DocumentFile(MethodView):
    @allow(*STAFF)
    @audited("download document")
    @blp.doc(responses=FILE_RESPONSES)
    def get(self, document_id):
        """Download the file

        Streamed as an attachment. `ETag` is the MD5: send it back in `If-None-Match` to
        get `304` when you have the current copy. Single byte ranges (`Range: bytes=0-99`,
        `bytes=100-`, `bytes=-100`) answer `206`; a range past the end `416`.
        """
        document = _document_or_404(document_id)
        etag = downloads.etag_of(document.md5)
        # On every answer about the file, the 304 and the 416 included.
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            # The browser may keep a copy but must revalidate it (a cheap 304); no proxy does.
            "Cache-Control": "private, no-cache",
        }
        if request.if_none_match and request.if_none_match.contains_weak(document.md5):
            return Response(status=304, headers=headers)

        # The answer promises Content-Length (and ranges) from the size, so check the
        # store's before promising anything: a file shorter than its record would end the
        # answer early, and the client would wait for bytes that never come.
        try:
            stored_size = records.store().size(document.file_location)
        except StoreError as error:
            log.error("document %s: the store is unavailable: %s", document.id, error)
            _store_unavailable("try the download again in a moment.")
        if stored_size is None:
            _file_missing(document)
        if stored_size != document.size:
            _file_damaged(document, stored_size)
        size, wanted = document.size, None
        # If-Range: the range only if the client's copy is this one, which takes a strong
        # ETag match (RFC 9110, 13.1.5): a weak ETag or a date gets the whole file.
        # (werkzeug's parsed If-Range drops the W/, so the header is compared as sent.)
        fresh = "If-Range" not in request.headers or request.headers["If-Range"].strip() == etag
        if request.range is not None and fresh:
            try:
                wanted = downloads.byte_range(request.range, size)
            except downloads.Unsatisfiable:
                abort(  # a JSON error: not offered as the file (no Content-Disposition)
                    416,
                    message=f"The range starts past the end of the file ({size} bytes).",
                    headers={"Content-Range": f"bytes */{size}", **headers},
                )
        # Only on the file itself (200, 206), never on a JSON error.
        headers["Content-Disposition"] = downloads.content_disposition(document.filename)
        # Uploaded bytes never run as a page of ours, whatever their type says.
        headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
        start, stop = (wanted.start, wanted.stop) if wanted else (0, size)
        headers["Content-Length"] = str(stop - start)
        if wanted is not None:
            headers["Content-Range"] = wanted.content_range(size)
        status = 206 if wanted else 200
        if request.method == "HEAD":
            # The headers a GET would answer, without opening the object: nothing would
            # read it, so nothing would close it (a file handle, or an S3 connection).
            return Response(status=status, headers=headers, content_type=document.content_type)
        try:
            chunks = records.store().open(document.file_location, start, stop)
        except Missing:  # removed since the size was read
            _file_missing(document)
        except StoreError as error:
            log.error("document %s: the store is unavailable: %s", document.id, error)
            _store_unavailable("try the download again in a moment.")
        return Response(
            chunks,
            status=status,
            headers=headers,
            content_type=document.content_type,
            direct_passthrough=True,
        )
