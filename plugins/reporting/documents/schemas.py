"""What a document looks like on the wire, and what uploads and changes accept."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

import marshmallow as ma

from plugins.reporting.documents.models import FILENAME_MAX_LENGTH, STUDY_MAX_LENGTH
from plugins.reporting.documents.records import WRITABLE_FIELDS
from plugins.reporting.documents.upload import clean_content_type

READ_ONLY_FIELDS = (
    "id",
    "file_location",
    "size",
    "md5",
    "uploaded_by",
    "created_at",
    "updated_at",
)


def _single_line(text: str) -> None:
    for character in text:
        if unicodedata.category(character) in ("Cc", "Cs", "Zl", "Zp"):
            raise ma.ValidationError("Must not contain control characters or line breaks.")


def _media_type(text: str) -> None:
    if clean_content_type(text) is None:
        raise ma.ValidationError("Not a media type: use e.g. application/pdf or image/png.")


def filename_field(**options) -> ma.fields.String:
    return ma.fields.String(
        validate=[
            ma.validate.Length(
                min=1,
                max=FILENAME_MAX_LENGTH,
                error=f"Give a file name of 1 to {FILENAME_MAX_LENGTH} characters.",
            ),
            _single_line,
        ],
        metadata={
            "description": "The document's name (metadata only: the store's key is "
            "generated). Defaults to the uploaded file's name.",
            "example": "consent-form.pdf",
        },
        **options,
    )


def study_field(**options) -> ma.fields.String:
    return ma.fields.String(
        allow_none=True,
        validate=[
            ma.validate.Length(
                min=1,
                max=STUDY_MAX_LENGTH,
                error=f"Give a study of 1 to {STUDY_MAX_LENGTH} characters, or none.",
            ),
            _single_line,
        ],
        metadata={
            "description": "The clinical trial the document belongs to; null for none.",
            "example": "ONC-2026-07",
        },
        **options,
    )


def content_type_field(**options) -> ma.fields.String:
    return ma.fields.String(
        validate=_media_type,
        metadata={
            "description": "The media type served with the file (lower-cased; parameters "
            "other than charset are dropped).",
            "example": "application/pdf",
        },
        **options,
    )


class _Trimmed(ma.Schema):
    """Trim text; an empty study means none."""

    @ma.pre_load
    def _trim(self, data, **kwargs):
        if not isinstance(data, Mapping):
            return data  # marshmallow reports the wrong type itself
        tidy = {}
        for key, value in data.items():
            if isinstance(value, str):
                value = value.strip()
                if key == "study" and value == "":
                    value = None
            tidy[key] = value
        return tidy

    @ma.post_load
    def _normalise(self, data, **kwargs):
        if data.get("content_type"):
            data["content_type"] = clean_content_type(data["content_type"])
        return data


class ReportingDocumentUploadSchema(_Trimmed):
    """The text parts of an upload (checked after the file has streamed in)."""

    filename = filename_field(
        required=True,
        error_messages={
            "required": "Give a file name: the part filename, or a name on the file part."
        },
    )
    study = study_field()
    content_type = content_type_field(required=True)


class ReportingDocumentPatchSchema(_Trimmed):
    """A change to a document: any of its writable fields."""

    filename = filename_field()
    study = study_field()
    content_type = content_type_field()

    @ma.pre_load
    def _refuse_read_only(self, data, **kwargs):
        if not isinstance(data, Mapping):
            return data
        read_only = [name for name in data if name in READ_ONLY_FIELDS]
        if read_only:
            errors = {
                name: [f"Read-only: only {', '.join(WRITABLE_FIELDS)} can be changed."]
                for name in read_only
            }
            for name in data:
                if name not in READ_ONLY_FIELDS and name not in WRITABLE_FIELDS:
                    errors[name] = ["Unknown field."]
            raise ma.ValidationError(errors)
        return data

    @ma.validates_schema
    def _something(self, data, **kwargs):
        if not data:
            raise ma.ValidationError(
                f"Send at least one of {', '.join(WRITABLE_FIELDS)} to change."
            )


class ReportingDocumentSchema(ma.Schema):
    """A document's record."""

    id = ma.fields.Integer()
    filename = ma.fields.String()
    file_location = ma.fields.String(
        metadata={"description": "The file's key in the configured store (STORAGE_URL)."}
    )
    size = ma.fields.Integer(metadata={"description": "Bytes."})
    md5 = ma.fields.String(metadata={"description": "MD5 of the bytes, hex."})
    content_type = ma.fields.String()
    study = ma.fields.String(allow_none=True)
    uploaded_by = ma.fields.String(metadata={"description": "The uploader's email."})
    created_at = ma.fields.AwareDateTime()
    updated_at = ma.fields.AwareDateTime()


class ReportingDocumentQuerySchema(ma.Schema):
    """The list's filter: the same rules as a stored study (trimmed, one line, 1 to 100
    characters), so that no value reaches the database that it could not hold (PostgreSQL
    refuses a NUL in a string: that was a 500)."""

    study = ma.fields.String(
        validate=[
            ma.validate.Length(
                min=1,
                max=STUDY_MAX_LENGTH,
                error=f"Give a study of 1 to {STUDY_MAX_LENGTH} characters.",
            ),
            _single_line,
        ],
        metadata={"description": "Only this study's documents."},
    )

    @ma.pre_load
    def _trim(self, data, **kwargs):
        if not isinstance(data, Mapping):
            return data
        return {
            key: value.strip() if isinstance(value, str) else value for key, value in data.items()
        }
