"""Serving a document's file: a safe ``Content-Disposition`` (RFC 6266), ``ETag`` from the
MD5, conditional requests and single byte ranges (RFC 9110)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

from werkzeug.datastructures import Range

FALLBACK_NAME = "document"
UNSAFE_ASCII = re.compile(r"[^A-Za-z0-9 ._()+,=-]+")


def download_name(filename: str) -> str:
    """The name to offer the browser: the last path segment of ``filename`` (the record may
    hold ``../../etc/passwd``; the browser gets ``passwd``), without control or formatting
    characters, leading dots or trailing dots and spaces."""
    last = re.split(r"[/\\]", filename)[-1]
    cleaned = "".join(
        character
        for character in last
        if unicodedata.category(character) not in ("Cc", "Cf", "Cs", "Zl", "Zp")
    )
    cleaned = cleaned.strip().lstrip(".").rstrip(". ")
    return cleaned or FALLBACK_NAME


def ascii_name(name: str) -> str:
    """An ASCII stand-in for ``name`` that needs no escaping inside a quoted string."""
    decomposed = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    safe = UNSAFE_ASCII.sub("_", decomposed)
    safe = re.sub(r" +(?=\.)", "", re.sub(r" +", " ", safe)).strip(" _")
    if not safe or set(safe) <= {".", "_"}:
        return FALLBACK_NAME
    return safe


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII ``filename`` every browser reads and, when the name is
    not plain ASCII, the exact name as ``filename*`` (UTF-8, percent-encoded)."""
    name = download_name(filename)
    fallback = ascii_name(name)
    value = f'attachment; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def etag_of(md5: str) -> str:
    return f'"{md5}"'


@dataclass(frozen=True)
class ByteRange:
    start: int
    stop: int  # exclusive

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


class Unsatisfiable(Exception):  # noqa: N818
    """The range starts past the end (``416``)."""


def byte_range(requested: Range | None, size: int) -> ByteRange | None:
    """The one range to serve, or ``None`` for the whole file (no range, a range in other
    units, or several ranges, which the server may answer with the whole file). Raises
    :class:`Unsatisfiable` when the range lies past the end."""
    if requested is None or requested.units != "bytes" or len(requested.ranges) != 1:
        return None
    begin, end = requested.ranges[0]
    if begin < 0:  # the last -begin bytes
        if size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size + begin), size)
    if begin >= size:
        raise Unsatisfiable
    return ByteRange(begin, size if end is None else min(end, size))
