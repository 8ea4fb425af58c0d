"""Reading a ``multipart/form-data`` upload as it arrives, so that the file part goes
straight to the store (computing its size and MD5 on the way) instead of being spooled to
a temporary file first, as ``request.files`` would.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import (
    NEED_DATA,
    Data,
    Epilogue,
    Field,
    File,
    MultipartDecoder,
    Preamble,
)

from plugins.reporting.documents.storage import Stored

CHUNK_SIZE = 64 * 1024
FILE_PART = "file"
TEXT_PARTS = ("filename", "study")
TEXT_PART_MAX_BYTES = 4096
MAX_PARTS = 10
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# type/subtype as RFC 6838 allows them (lower-cased), optionally with a charset.
MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
CHARSET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,39}$")


class UploadInvalid(Exception):  # noqa: N818
    """The request body is not an acceptable upload; ``errors`` names the parts."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{name}: {' '.join(why)}" for name, why in errors.items()))
        self.errors = errors


@dataclass
class Upload:
    """What a multipart body held: its text parts, the file part's name and type, and what
    the store kept of the file."""

    fields: dict[str, str] = field(default_factory=dict)
    file_name: str | None = None
    content_type: str = DEFAULT_CONTENT_TYPE
    stored: Stored | None = None


def clean_content_type(value: str | None) -> str | None:
    """``type/subtype`` (lower-cased), with its charset if it has a sane one; ``None`` if
    ``value`` is not a media type."""
    if not value:
        return None
    mimetype, options = parse_options_header(value)
    mimetype = mimetype.strip().lower()
    if not MEDIA_TYPE.match(mimetype):
        return None
    charset = options.get("charset")
    if charset and CHARSET.match(charset):
        return f"{mimetype}; charset={charset.lower()}"
    return mimetype


def boundary_of(content_type: str | None) -> bytes | None:
    mimetype, options = parse_options_header(content_type or "")
    boundary = options.get("boundary")
    if mimetype != "multipart/form-data" or not boundary:
        return None
    try:
        return boundary.encode("latin-1")
    except UnicodeEncodeError:
        return None


class _Events:
    """The decoder's events, reading more of the body whenever it needs data."""

    def __init__(self, stream: BinaryIO, boundary: bytes) -> None:
        self.stream = stream
        self.decoder = MultipartDecoder(boundary, max_parts=MAX_PARTS)

    def next(self):
        while True:
            try:
                event = self.decoder.next_event()
            except ValueError as error:
                raise UploadInvalid(
                    {FILE_PART: [f"The multipart body is malformed or incomplete ({error})."]}
                ) from None
            if event is not NEED_DATA:
                return event
            chunk = self.stream.read(CHUNK_SIZE)
            self.decoder.receive_data(chunk or None)  # None: the body has ended

    def part_data(self) -> Iterator[bytes]:
        """The current part's bytes, up to its end."""
        while True:
            event = self.next()
            if not isinstance(event, Data):
                raise UploadInvalid({FILE_PART: ["The multipart body is malformed."]})
            if event.data:
                yield event.data
            if not event.more_data:
                return


class _PartReader:
    """A read-only file over one part's bytes, for the store's ``put``."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._ended = False

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            rest = self._buffer + b"".join(self._chunks)
            self._buffer, self._ended = b"", True
            return rest
        while not self._buffer and not self._ended:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._ended = True
            else:
                self._buffer = chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def drain(self) -> None:
        while self.read(CHUNK_SIZE):
            pass


def read_upload(
    stream: BinaryIO, boundary: bytes, store_file: Callable[[BinaryIO, str], Stored]
) -> Upload:
    """Read the multipart body from ``stream``: the text parts ``filename`` and ``study``,
    and the part ``file``, which is handed to ``store_file(reader, content_type)`` as it
    arrives. Raises :class:`UploadInvalid` naming each bad part (unknown, repeated, too
    long, not UTF-8, or a malformed body); whatever ``store_file`` raises passes through.
    The caller removes the stored file when anything fails after it was stored.
    """
    events, upload = _Events(stream, boundary), Upload()
    seen: set[str] = set()
    errors: dict[str, list[str]] = {}
    while True:
        event = events.next()
        if isinstance(event, Preamble):
            continue
        if isinstance(event, Epilogue):
            break
        if not isinstance(event, Field | File):
            raise UploadInvalid({FILE_PART: ["The multipart body is malformed."]})
        name = event.name or "(unnamed part)"
        if name in seen:
            errors[name] = ["Send this part once."]
            _skip(events)
            continue
        seen.add(name)
        if name == FILE_PART:
            upload.file_name = event.filename if isinstance(event, File) else None
            content_type = clean_content_type(event.headers.get("content-type"))
            upload.content_type = content_type or DEFAULT_CONTENT_TYPE
            reader = _PartReader(events.part_data())
            upload.stored = store_file(reader, upload.content_type)
            reader.drain()
        elif name in TEXT_PARTS:
            text = _read_text(events, name)
            if text is None:
                errors[name] = [f"At most {TEXT_PART_MAX_BYTES} bytes of UTF-8 text."]
            else:
                upload.fields[name] = text
        else:
            errors[name] = [
                "Unknown part: send file, and optionally filename and study.",
            ]
            _skip(events)
    if FILE_PART not in seen:
        errors[FILE_PART] = ["Attach the document as the multipart part named file."]
    if errors:
        raise UploadInvalid(errors)
    return upload


def _skip(events: _Events) -> None:
    for _ in events.part_data():
        pass


def _read_text(events: _Events, name: str) -> str | None:
    data, too_long = bytearray(), False
    for chunk in events.part_data():
        if len(data) + len(chunk) > TEXT_PART_MAX_BYTES:
            too_long = True
        elif not too_long:
            data.extend(chunk)
    if too_long:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
