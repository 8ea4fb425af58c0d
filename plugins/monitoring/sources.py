"""Where files come from: a local file, a local folder, or an S3 bucket read over HTTP.

Every source lists :class:`SourceObject` entries (key, ETag, modification time) and opens
one for reading as a byte stream whose MD5 is computed while it is read.

- A file: its key is its name. A folder: every ``*.csv`` file below it (other files, such
  as a README, and hidden files are skipped), keyed by its path relative to the folder.
  A local file's ETag is the MD5 of its bytes; hashes are kept per (path, size, mtime) so a
  watched folder is not re-hashed on every poll. When the bytes read differ from the hash
  listed (the file changed while it was being read), :class:`ChangedWhileReading` is raised.
- S3: ``https://BUCKET.s3.REGION.amazonaws.com/[prefix]`` (any ``http(s)://`` endpoint in
  this virtual-host style), or ``s3://BUCKET/prefix`` (``https://BUCKET.s3.amazonaws.com/``).
  Listed with ListObjectsV2 (``?list-type=2``, following ``NextContinuationToken``), keys
  ending in ``.csv``; read with GET. No credentials: the bucket must be public. Every
  request has a timeout (connect 5 s, read 60 s); an unreachable endpoint or an HTTP error
  raises :class:`SourceError` with one sentence naming the URL and the status.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlsplit

import requests

TIMEOUT = (5, 60)  # connect, read (seconds)
S3_NAMESPACE = "{http://s3.amazonaws.com/doc/2006-03-01/}"
DATA_SUFFIXES = (".csv",)
CHUNK = 1 << 20


class SourceError(Exception):
    """The source cannot be listed or read; the message is one sentence naming it."""


class ChangedWhileReading(SourceError):
    """The bytes read are not the ones listed: the object changed while it was read."""


@dataclass
class SourceObject:
    key: str
    etag: str
    modified_at: datetime.datetime  # aware UTC
    size: int | None = None


class HashingReader(io.RawIOBase):
    """A byte stream that computes the MD5 of what passes through it."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.md5 = hashlib.md5()  # noqa: S324 (an ETag, not a security measure)
        self.bytes_read = 0
        self.nul_seen = False  # PostgreSQL cannot store NUL characters: rows are checked

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        if not data:
            return 0
        count = len(data)
        buffer[:count] = data
        self.md5.update(data)
        if not self.nul_seen and b"\x00" in data:
            self.nul_seen = True
        self.bytes_read += count
        return count

    @property
    def hexdigest(self) -> str:
        return self.md5.hexdigest()


def is_data_key(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return bool(name) and not name.startswith(".") and name.lower().endswith(DATA_SUFFIXES)


def open_source(source: str) -> Source:
    """The source a command-line argument names (not yet listed)."""
    if source.startswith("s3://"):
        bucket, _, prefix = source.removeprefix("s3://").partition("/")
        if not bucket:
            raise SourceError(f"{source!r} names no bucket; write s3://BUCKET/prefix.")
        return S3Source(source, f"https://{bucket}.s3.amazonaws.com/", prefix)
    if source.startswith(("http://", "https://")):
        parts = urlsplit(source)
        if not parts.netloc:
            raise SourceError(f"{source!r} is not a bucket URL.")
        return S3Source(source, f"{parts.scheme}://{parts.netloc}/", parts.path.lstrip("/"))
    return LocalSource(source)


class Source:
    def __init__(self, source: str):
        self.source = source

    def list(self) -> list[SourceObject]:
        """Every data object, oldest first (then by key); raises :class:`SourceError`."""
        raise NotImplementedError

    @contextmanager
    def open(self, obj: SourceObject) -> Iterator[HashingReader]:
        """The object's bytes; ``obj.etag`` and ``obj.modified_at`` are updated to what is
        actually read when the source can tell (S3 answers with the object's ETag)."""
        raise NotImplementedError
        yield

    def verify(self, obj: SourceObject, reader: HashingReader) -> None:
        """Raise :class:`ChangedWhileReading` if the bytes read are not the object listed."""


def _ordered(objects: list[SourceObject]) -> list[SourceObject]:
    return sorted(objects, key=lambda o: (o.modified_at, o.key))


class LocalSource(Source):
    def __init__(self, source: str):
        super().__init__(source)
        self.path = Path(source).expanduser()
        self._hashes: dict[str, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, md5)

    def _md5(self, path: Path, stat: os.stat_result) -> str:
        cached = self._hashes.get(str(path))
        if cached and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            return cached[2]
        digest = hashlib.md5()  # noqa: S324 (an ETag)
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        self._hashes[str(path)] = (stat.st_size, stat.st_mtime_ns, digest.hexdigest())
        return digest.hexdigest()

    def _object(self, path: Path, key: str) -> SourceObject:
        stat = path.stat()
        modified = datetime.datetime.fromtimestamp(stat.st_mtime, datetime.UTC)
        return SourceObject(key, self._md5(path, stat), modified, stat.st_size)

    def list(self) -> list[SourceObject]:
        path = self.path
        try:
            if path.is_file():
                return [self._object(path, path.name)]
            if not path.is_dir():
                raise SourceError(f"{self.source} is neither a file, a folder nor a bucket URL.")
            objects = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    file = Path(root) / name
                    key = file.relative_to(path).as_posix()
                    if is_data_key(key) and file.is_file():
                        try:
                            objects.append(self._object(file, key))
                        except FileNotFoundError:
                            continue  # removed while listing
            return _ordered(objects)
        except OSError as error:
            raise SourceError(f"cannot read {self.source}: {error.strerror or error}.") from None

    def _file(self, obj: SourceObject) -> Path:
        return self.path if self.path.is_file() else self.path / obj.key

    @contextmanager
    def open(self, obj: SourceObject) -> Iterator[HashingReader]:
        try:
            handle = self._file(obj).open("rb")
        except OSError as error:
            raise SourceError(f"cannot read {obj.key}: {error.strerror or error}.") from None
        with handle:
            yield HashingReader(handle)

    def verify(self, obj: SourceObject, reader: HashingReader) -> None:
        if reader.hexdigest != obj.etag:
            raise ChangedWhileReading(f"{obj.key} changed while it was being read.")


def _xml(content: bytes) -> ElementTree.Element:
    """Parse an S3 answer. The standard parser is safe enough here: it never fetches
    external entities, and expat >= 2.4 (Python 3.11 bundles 2.5) refuses entity expansion
    bombs; the answers come from the bucket the operator named."""
    return ElementTree.fromstring(content)  # noqa: S314


def _s3_error(url: str, response: requests.Response) -> SourceError:
    detail = ""
    try:
        root = _xml(response.content)
        code = root.findtext("Code") or root.findtext(f"{S3_NAMESPACE}Code")
        message = root.findtext("Message") or root.findtext(f"{S3_NAMESPACE}Message")
        if code or message:
            detail = f" ({': '.join(part for part in (code, message) if part)})"
    except ElementTree.ParseError:
        pass
    return SourceError(f"{url} answered HTTP {response.status_code}{detail}.")


def _parse_time(text: str | None) -> datetime.datetime:
    if not text:
        return datetime.datetime.now(datetime.UTC)
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        from email.utils import parsedate_to_datetime

        value = parsedate_to_datetime(text)
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)


class S3Source(Source):
    """A public bucket, read with plain HTTP requests (ListObjectsV2 and GET)."""

    def __init__(self, source: str, endpoint: str, prefix: str):
        super().__init__(source)
        self.endpoint = endpoint
        self.prefix = prefix
        self.session = requests.Session()

    def _get(self, url: str, **kwargs) -> requests.Response:
        try:
            response = self.session.get(url, timeout=TIMEOUT, **kwargs)
        except requests.Timeout:
            raise SourceError(f"{url} did not answer in time.") from None
        except requests.RequestException as error:
            reason = type(error).__name__
            raise SourceError(f"cannot reach {url}: {reason}.") from None
        if response.status_code != 200:
            error = _s3_error(url, response)
            response.close()
            raise error
        return response

    def list(self) -> list[SourceObject]:
        objects = []
        token = None
        while True:
            params = {"list-type": "2", "prefix": self.prefix}
            if token:
                params["continuation-token"] = token
            response = self._get(self.endpoint, params=params)
            try:
                root = _xml(response.content)
            except ElementTree.ParseError:
                raise SourceError(
                    f"{self.endpoint} did not answer with an S3 bucket listing."
                ) from None
            ns = S3_NAMESPACE if root.tag.startswith(S3_NAMESPACE) else ""
            if root.tag != f"{ns}ListBucketResult":
                raise SourceError(f"{self.endpoint} did not answer with an S3 bucket listing.")
            for item in root.iter(f"{ns}Contents"):
                key = item.findtext(f"{ns}Key") or ""
                if not is_data_key(key):
                    continue
                size = item.findtext(f"{ns}Size")
                objects.append(
                    SourceObject(
                        key,
                        (item.findtext(f"{ns}ETag") or "").strip('"'),
                        _parse_time(item.findtext(f"{ns}LastModified")),
                        int(size) if size and size.isdigit() else None,
                    )
                )
            truncated = (root.findtext(f"{ns}IsTruncated") or "").lower() == "true"
            token = root.findtext(f"{ns}NextContinuationToken")
            if not truncated:
                break
            if not token:
                raise SourceError(
                    f"{self.endpoint} said the listing continues but gave no continuation token."
                )
        return _ordered(objects)

    def url(self, key: str) -> str:
        return self.endpoint + quote(key, safe="/~")

    @contextmanager
    def open(self, obj: SourceObject) -> Iterator[HashingReader]:
        url = self.url(obj.key)
        response = self._get(url, stream=True)
        with response:
            etag = response.headers.get("ETag", "").strip('"')
            if etag and etag != obj.etag:
                # Replaced since the listing: record what is actually read.
                obj.etag = etag
                obj.modified_at = _parse_time(response.headers.get("Last-Modified"))
            response.raw.decode_content = True
            yield HashingReader(_ReadErrors(response.raw, url))


class _ReadErrors(io.RawIOBase):
    """Turns a network failure in the middle of a download into a :class:`SourceError`."""

    def __init__(self, raw, url: str):
        self.raw, self.url = raw, url

    def read(self, size: int = -1) -> bytes:
        try:
            return self.raw.read(size)
        except (requests.RequestException, OSError) as error:
            raise SourceError(f"reading {self.url} failed: {type(error).__name__}.") from None
        except Exception as error:  # urllib3 errors (ProtocolError, ReadTimeoutError)
            if type(error).__module__.startswith("urllib3"):
                raise SourceError(f"reading {self.url} failed: {type(error).__name__}.") from None
            raise
