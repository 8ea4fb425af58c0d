"""The file store's contract, run on both stores: the local folder and S3 against a real
S3-compatible server (moto's server mode on 127.0.0.1, the ``s3_server`` fixture)."""

import hashlib
import io
import os
import subprocess
import sys
import uuid

import boto3
import pytest

from core.db import database, utcnow
from plugins.reporting import plugin as reporting
from plugins.reporting.documents import records
from plugins.reporting.documents.models import Document, DocumentFileRemoval
from plugins.reporting.documents.storage import (
    S3_MIN_PART_SIZE,
    LocalStore,
    Missing,
    S3Store,
    Stored,
    StoreError,
    TooLarge,
    from_url,
    store_for,
)

MiB = 1024 * 1024


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324


@pytest.fixture
def s3_environment(s3_server, monkeypatch):
    """boto3's standard variables pointing at the moto server, and a fresh bucket."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"caredeck-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket


class Slow(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read, like a socket."""

    def __init__(self, data: bytes, step: int = 7000) -> None:
        self.data, self.position, self.step = data, 0, step

    def readable(self):
        return True

    def read(self, size=-1):
        size = self.step if size is None or size < 0 else min(size, self.step)
        chunk = self.data[self.position : self.position + size]
        self.position += len(chunk)
        return chunk


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "files")
    bucket = request.getfixturevalue("s3_environment")
    # The smallest part S3 allows, so that the multipart path runs with little data.
    return S3Store(bucket, "caredeck/test", part_size=S3_MIN_PART_SIZE)


def leftovers(store) -> list[str]:
    """Everything the store holds, temporary files and unfinished uploads included."""
    if isinstance(store, LocalStore):
        if not store.root.exists():
            return []
        return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())
    objects = store.client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return sorted(o["Key"] for o in objects) + [f"upload:{u['Key']}" for u in uploads]


def read_all(store, location, start=0, end=None) -> bytes:
    return b"".join(store.open(location, start, end))


def test_put_then_open_size_delete(store):
    data = b"hello, store" * 1000
    stored = store.put("documents/a", Slow(data), "text/plain")
    assert stored == Stored(location="documents/a", size=len(data), md5=md5(data))
    assert read_all(store, "documents/a") == data
    assert store.size("documents/a") == len(data)
    store.delete("documents/a")
    assert store.size("documents/a") is None
    store.delete("documents/a")  # missing is not an error
    assert leftovers(store) == []


def test_open_ranges(store):
    data = bytes(range(256)) * 1000
    store.put("documents/r", io.BytesIO(data), "application/octet-stream")
    assert read_all(store, "documents/r", 0, 10) == data[:10]
    assert read_all(store, "documents/r", 1000) == data[1000:]
    assert read_all(store, "documents/r", 5000, 200_000) == data[5000:200_000]
    assert read_all(store, "documents/r", 10, 10) == b""
    assert read_all(store, "documents/r", len(data) - 1) == data[-1:]


def test_open_and_size_of_a_missing_object(store):
    with pytest.raises(Missing):
        store.open("documents/none")  # at once, before the first chunk
    with pytest.raises(Missing):
        store.open("documents/none", 5, 10)
    assert store.size("documents/none") is None


def test_put_replaces_an_object(store):
    store.put("documents/x", io.BytesIO(b"first"), "text/plain")
    store.put("documents/x", io.BytesIO(b"second"), "text/plain")
    assert read_all(store, "documents/x") == b"second"


def test_an_empty_stream_is_an_empty_object(store):
    assert store.put("documents/empty", io.BytesIO(b""), "text/plain").size == 0
    assert read_all(store, "documents/empty") == b""
    assert store.size("documents/empty") == 0


def test_a_large_stream_goes_up_in_parts(store):
    data = (b"0123456789abcdef" * (MiB // 16)) * 11 + b"tail"  # 11 MiB: three 5 MiB parts
    stored = store.put("documents/big", Slow(data, step=1 << 20), "application/pdf")
    assert (stored.size, stored.md5) == (len(data), md5(data))
    assert store.size("documents/big") == len(data)
    assert (
        read_all(store, "documents/big", 5 * MiB - 3, 5 * MiB + 3)
        == data[5 * MiB - 3 : 5 * MiB + 3]
    )
    assert md5(read_all(store, "documents/big")) == md5(data)
    assert not [key for key in leftovers(store) if key.startswith("upload:")]


@pytest.mark.parametrize(("size", "limit"), [(1001, 1000), (12 * MiB, 6 * MiB)])
def test_too_large_raises_and_leaves_nothing(store, size, limit):
    with pytest.raises(TooLarge) as raised:
        store.put("documents/huge", io.BytesIO(b"x" * size), "text/plain", max_bytes=limit)
    assert raised.value.limit == limit
    assert store.size("documents/huge") is None
    assert leftovers(store) == []


def test_a_stream_that_fails_half_way_leaves_nothing(store):
    class Broken(io.RawIOBase):
        calls = 0

        def readable(self):
            return True

        def read(self, size=-1):
            self.calls += 1
            if self.calls > 2:
                raise ConnectionResetError("client went away")
            return b"y" * min(size if size and size > 0 else MiB, 3 * MiB)

    with pytest.raises(ConnectionResetError):
        store.put("documents/broken", Broken(), "text/plain")
    assert leftovers(store) == []


def test_an_unreachable_store_raises_store_error(tmp_path, s3_environment, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    store = S3Store(s3_environment)
    for call in (
        lambda: store.put("documents/a", io.BytesIO(b"x"), "text/plain"),
        lambda: store.open("documents/a"),
        lambda: store.size("documents/a"),
        lambda: store.delete("documents/a"),
    ):
        with pytest.raises(StoreError) as raised:
            call()
        assert not isinstance(raised.value, Missing)
    (tmp_path / "readonly").mkdir(mode=0o500)
    local = LocalStore(tmp_path / "readonly")
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(StoreError):
            local.put("documents/a", io.BytesIO(b"x"), "text/plain")


def test_a_403_is_a_store_error_never_missing(s3_environment):
    """Without s3:ListBucket S3 answers 403 for a missing key, but a 403 also means expired
    credentials or a refusing policy: reported as missing, staff would re-upload documents
    that are still there. So a 403 is a StoreError (docs/documents.md: grant ListBucket)."""
    from botocore.stub import Stubber

    store = S3Store(s3_environment)
    with Stubber(store.client) as stub:
        stub.add_client_error("head_object", "403", "Forbidden", http_status_code=403)
        stub.add_client_error("get_object", "AccessDenied", "Access Denied", 403)
        for call in (lambda: store.size("documents/a"), lambda: store.open("documents/a")):
            with pytest.raises(StoreError) as raised:
                call()
            assert not isinstance(raised.value, Missing)


def test_exactly_max_bytes_is_accepted(store):
    assert store.put("documents/edge", io.BytesIO(b"z" * 1000), "text/plain", 1000).size == 1000


def test_a_put_killed_half_way_leaves_only_what_discard_incomplete_removes(tmp_path):
    """SIGKILL, an OOM kill or an evicted pod: put cannot clean up, so its temporary file
    is named by the key, and removing the key (or discard_incomplete) removes it."""
    script = (
        "import os, sys\n"
        "from plugins.reporting.documents.storage import LocalStore\n"
        "class Dying:\n"
        "    calls = 0\n"
        "    def read(self, size):\n"
        "        Dying.calls += 1\n"
        "        if Dying.calls > 2:\n"
        "            os._exit(9)\n"
        "        return b'x' * size\n"
        "LocalStore(sys.argv[1]).put('documents/abc', Dying(), 'text/plain')\n"
    )
    died = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert died.returncode == 9
    store = LocalStore(tmp_path)
    assert leftovers(store) == ["documents/abc.part"]
    store.discard_incomplete("documents/abc")
    assert leftovers(store) == []
    # Again, and this time the key is deleted: that removes the leftover too.
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert leftovers(store) == ["documents/abc.part"]
    store.delete("documents/abc")
    assert leftovers(store) == []


def test_a_leftover_of_a_dead_put_does_not_block_the_key(tmp_path):
    store = LocalStore(tmp_path)
    store.partial_path("documents/abc").parent.mkdir(parents=True)
    store.partial_path("documents/abc").write_bytes(b"half of something longer")
    assert store.put("documents/abc", io.BytesIO(b"new"), "text/plain").size == 3
    assert read_all(store, "documents/abc") == b"new"
    assert leftovers(store) == ["documents/abc"]


def test_two_puts_of_one_key_at_once_do_not_share_a_temporary_file(tmp_path):
    store = LocalStore(tmp_path)

    class Nested(io.RawIOBase):
        done = False

        def readable(self):
            return True

        def read(self, size=-1):
            if not self.done:
                self.done = True
                with pytest.raises(StoreError, match="in progress"):
                    store.put("documents/abc", io.BytesIO(b"other"), "text/plain")
                return b"first"
            return b""

    store.put("documents/abc", Nested(), "text/plain")
    assert read_all(store, "documents/abc") == b"first"
    assert leftovers(store) == ["documents/abc"]


def test_discard_incomplete_aborts_an_unfinished_multipart_upload_of_the_key(s3_environment):
    store = S3Store(s3_environment, "caredeck", part_size=S3_MIN_PART_SIZE)
    client = store.client
    for key in ("documents/abc", "documents/abcd"):  # the second only shares a prefix
        upload = client.create_multipart_upload(Bucket=store.bucket, Key=store.object_key(key))
        client.upload_part(
            Bucket=store.bucket,
            Key=store.object_key(key),
            UploadId=upload["UploadId"],
            PartNumber=1,
            Body=b"x" * 1024,
        )
    store.discard_incomplete("documents/abc")
    assert leftovers(store) == ["upload:caredeck/documents/abcd"]
    store.discard_incomplete("documents/abcd")
    store.discard_incomplete("documents/nothing")  # nothing there: not an error
    assert leftovers(store) == []


@pytest.mark.parametrize(
    "key", ["../etc/passwd", "/abs", "a//b", "documents/../x", "", "a b", "documents/a.part"]
)
def test_keys_that_could_escape_are_refused(store, key):
    with pytest.raises(ValueError):
        store.put(key, io.BytesIO(b"x"), "text/plain")


def test_the_local_store_never_shows_a_half_file(tmp_path):
    store = LocalStore(tmp_path)

    class Watching(io.RawIOBase):
        seen = []

        def readable(self):
            return True

        def read(self, size=-1):
            self.seen.append(sorted(p.name for p in (tmp_path / "documents").iterdir()))
            return b"" if len(self.seen) > 3 else b"data"

    store.put("documents/final", Watching(), "text/plain")
    assert all("final" not in names for names in Watching.seen)
    assert (tmp_path / "documents" / "final").read_bytes() == b"data" * 3


def test_storage_url_chooses_the_store(tmp_path, s3_environment):
    local = from_url(f"file://{tmp_path}/files")
    assert isinstance(local, LocalStore) and str(local.root) == f"{tmp_path}/files"
    s3 = from_url(f"s3://{s3_environment}/some/prefix/")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix) == (s3_environment, "some/prefix")
    s3.put("documents/k", io.BytesIO(b"v"), "text/plain")
    keys = [o["Key"] for o in s3.client.list_objects_v2(Bucket=s3_environment)["Contents"]]
    assert keys == ["some/prefix/documents/k"]
    for bad in ("s3:///prefix", "ftp://x/y"):
        with pytest.raises(ValueError):
            from_url(bad)


# The API on S3 -------------------------------------------------------------------------


@pytest.fixture
def caredeck_plugins():
    return {"reporting": reporting}


def test_the_api_on_s3_uploads_downloads_verifies_and_deletes(
    s3_environment, make_app, users, client_for
):
    app = make_app(STORAGE_URL=f"s3://{s3_environment}/caredeck")
    from core.auth.models import ApiToken

    with database.connection_context():
        token, _ = ApiToken.issue(users["doctor"])
    doctor = app.test_client()
    doctor.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    data = b"%PDF-1.7 trial protocol " * 5000
    answer = doctor.post(
        "/api/documents",
        data={"file": (io.BytesIO(data), "protocol.pdf", "application/pdf"), "study": "S3-1"},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 201, answer.json
    created = answer.json
    assert isinstance(store_for(app), S3Store)
    assert (created["size"], created["md5"]) == (len(data), md5(data))

    whole = doctor.get(f"/api/documents/{created['id']}/file")
    assert whole.data == data
    part = doctor.get(f"/api/documents/{created['id']}/file", headers={"Range": "bytes=-50"})
    assert (part.status_code, part.data) == (206, data[-50:])

    with app.app_context(), database.connection_context():
        document = Document.get_by_id(created["id"])
        assert records.verify(document) == "ok"
        store_for(app).put(document.file_location, io.BytesIO(b"tampered"), "text/plain")
        assert records.verify(document) == "corrupt"

    app.config["REPORTING_UPLOAD_MAX_BYTES"] = 100
    too_big = doctor.post(
        "/api/documents",
        data={"file": (io.BytesIO(b"x" * 101), "big.bin")},
        content_type="multipart/form-data",
    )
    assert too_big.status_code == 413

    assert doctor.delete(f"/api/documents/{created['id']}").status_code == 204
    assert leftovers(store_for(app)) == []


def test_the_sweep_aborts_the_multipart_upload_of_an_upload_that_died(
    s3_environment, make_app, users
):
    """A process killed during a large upload leaves an unfinished multipart upload (billed
    until aborted) and a pending removal; the sweep aborts the upload."""
    app = make_app(STORAGE_URL=f"s3://{s3_environment}/caredeck")
    store = store_for(app)
    with app.app_context(), database.connection_context():
        key = records.new_key()
        pending = records.begin_upload(key)
        store.client.create_multipart_upload(Bucket=store.bucket, Key=store.object_key(key))
        assert leftovers(store) == [f"upload:caredeck/{key}"]
        later = utcnow() + records.UPLOAD_GRACE
        assert records.sweep(now=later) == {"removed": 1, "failed": 0}
        assert leftovers(store) == []
        assert DocumentFileRemoval.get_or_none(DocumentFileRemoval.id == pending.id) is None
