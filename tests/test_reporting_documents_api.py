"""The documents store through the API: every route and role, uploads and their limit,
pagination and the study filter, PATCH validation, downloads (ranges, ETag, a safe
Content-Disposition), deletes whose file removal fails at first, and re-verification."""

import datetime
import hashlib
import io
import re
from pathlib import Path

import pytest

import jobs
from core.db import database, utcnow
from core.testing import assert_migrations_create, run_jobs
from plugins.reporting import plugin as reporting
from plugins.reporting.documents import records
from plugins.reporting.documents.models import Document, DocumentChange, DocumentFileRemoval
from plugins.reporting.documents.storage import store_for

CONTENT = bytes(range(256)) * 40  # 10,240 bytes, every byte value


@pytest.fixture
def caredeck_plugins():
    return {"reporting": reporting}


@pytest.fixture
def nurse(client_for):
    return client_for("nurse")


def upload(client, content=CONTENT, name="scan.pdf", content_type="application/pdf", **parts):
    data = {"file": (io.BytesIO(content), name, content_type), **parts}
    return client.post("/api/documents", data=data, content_type="multipart/form-data")


def files_in(app) -> list[Path]:
    """Every file under the local store's folder, temporary ones included."""
    root = Path(store_for(app).root)
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def changes():
    with database.connection_context():
        return list(DocumentChange.select().order_by(DocumentChange.id))


def removals():
    with database.connection_context():
        return list(DocumentFileRemoval.select())


def test_the_migrations_create_every_column(app):
    assert_migrations_create(app, "reporting")


# Uploads -------------------------------------------------------------------------------


def test_an_upload_streams_to_the_store_with_size_and_md5(app, nurse):
    answer = upload(nurse, study="ONC-7")
    assert answer.status_code == 201, answer.json
    document = answer.json
    assert document["filename"] == "scan.pdf"
    assert document["size"] == len(CONTENT)
    assert document["md5"] == hashlib.md5(CONTENT).hexdigest()  # noqa: S324
    assert document["content_type"] == "application/pdf"
    assert document["study"] == "ONC-7"
    assert document["uploaded_by"] == "nurse@example.org"
    assert re.fullmatch(r"documents/[0-9a-f]{32}", document["file_location"])
    assert document["created_at"] == document["updated_at"]
    assert answer.headers["Location"] == f"/api/documents/{document['id']}"
    assert [path.read_bytes() for path in files_in(app)] == [CONTENT]
    assert not removals(), "a finished upload leaves no pending removal"
    [change] = changes()
    assert (change.action, change.document_id, change.by) == (
        "created",
        document["id"],
        "nurse@example.org",
    )
    assert (change.filename, change.study, change.size, change.md5) == (
        "scan.pdf",
        "ONC-7",
        len(CONTENT),
        document["md5"],
    )


def test_the_filename_part_overrides_the_file_name_and_the_key_never_comes_from_it(app, nurse):
    answer = upload(nurse, name="../../etc/passwd", filename="  Protocol v2.pdf  ")
    assert answer.status_code == 201, answer.json
    assert answer.json["filename"] == "Protocol v2.pdf"
    assert answer.json["study"] is None
    answer = upload(nurse, name="../../etc/passwd")
    assert answer.json["filename"] == "../../etc/passwd"  # metadata, kept as sent
    assert "passwd" not in answer.json["file_location"]
    root = Path(store_for(app).root)
    assert all(root in path.parents for path in files_in(app))


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("image/PNG", "image/png"),
        ("text/plain; charset=UTF-8; evil=1", "text/plain; charset=utf-8"),
        ("text/<script>", "application/octet-stream"),
        ("not a type", "application/octet-stream"),
    ],
)
def test_the_content_type_comes_from_the_part_sanitized(nurse, sent, kept):
    body, boundary = _multipart([("file", "a.bin", sent, b"x")])
    answer = nurse.post(
        "/api/documents", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert answer.status_code == 201, answer.json
    assert answer.json["content_type"] == kept


def _multipart(parts, boundary="XyZ-boundary-123"):
    """A hand-written multipart body: (name, filename or None, content type or None, bytes)."""
    out = b""
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if content_type is not None:
            out += f"Content-Type: {content_type}\r\n".encode("latin-1")
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), boundary


def test_the_file_may_come_before_or_after_the_text_parts(nurse):
    body, boundary = _multipart(
        [
            ("study", None, None, "ÉTUDE-1".encode()),
            ("file", "x.txt", "text/plain", b"hello"),
            ("filename", None, None, "Überblick.txt".encode()),
        ]
    )
    answer = nurse.post(
        "/api/documents", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert answer.status_code == 201, answer.json
    assert (answer.json["filename"], answer.json["study"], answer.json["size"]) == (
        "Überblick.txt",
        "ÉTUDE-1",
        5,
    )


@pytest.mark.parametrize(
    ("parts", "field"),
    [
        ([("study", None, None, b"X")], "file"),
        ([("file", "", None, b"abc")], "filename"),
        ([("file", "a.pdf", None, b"abc"), ("owner", None, None, b"me")], "owner"),
        ([("file", "a.pdf", None, b"abc"), ("file", "b.pdf", None, b"abc")], "file"),
        ([("file", "a.pdf", None, b"abc"), ("study", None, None, b"x" * 101)], "study"),
        ([("file", "a.pdf", None, b"abc"), ("filename", None, None, b"a\nb")], "filename"),
        ([("file", "a.pdf", None, b"abc"), ("study", None, None, b"\xff\xfe")], "study"),
    ],
)
def test_a_bad_upload_is_a_422_naming_the_part_and_stores_nothing(app, nurse, parts, field):
    body, boundary = _multipart(parts)
    answer = nurse.post(
        "/api/documents", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert answer.status_code == 422, answer.json
    assert field in answer.json["errors"]["form"]
    assert answer.json["message"].startswith("The request is invalid")
    assert files_in(app) == []
    assert not removals() and not changes()
    with database.connection_context():
        assert Document.select().count() == 0


def test_a_body_that_is_not_multipart_is_a_422(nurse):
    answer = nurse.post("/api/documents", json={"filename": "x"})
    assert answer.status_code == 422
    assert "file" in answer.json["errors"]["form"]


def test_a_truncated_body_stores_nothing(app, nurse):
    body, boundary = _multipart([("file", "a.pdf", None, CONTENT)])
    answer = nurse.post(
        "/api/documents",
        data=body[:-200],
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    assert answer.status_code == 422
    assert files_in(app) == [] and not removals()


def test_an_upload_over_the_limit_is_a_413_naming_it_and_leaves_nothing(app, nurse):
    app.config["REPORTING_UPLOAD_MAX_BYTES"] = 4096
    answer = upload(nurse, content=b"x" * 4097)
    assert answer.status_code == 413
    assert answer.json["code"] == 413
    assert "4096 bytes" in answer.json["message"]
    assert answer.json["errors"] == {"file": ["At most 4096 bytes."]}
    assert files_in(app) == [], "no file, not even a temporary one"
    assert not removals() and not changes()
    assert upload(nurse, content=b"x" * 4096).status_code == 201


def test_an_upload_announced_far_over_the_limit_is_refused_before_reading(app, nurse):
    app.config["REPORTING_UPLOAD_MAX_BYTES"] = 1024
    answer = upload(nurse, content=b"x" * 200_000)
    assert answer.status_code == 413
    assert "1024 bytes" in answer.json["message"]
    assert files_in(app) == [] and not removals()


@pytest.mark.parametrize(("size", "status"), [(4096, 201), (4097, 413), (200_000, 413)])
def test_a_chunked_upload_without_content_length_is_held_to_the_limit(app, nurse, size, status):
    from werkzeug.test import EnvironBuilder

    # The test client always sends a Content-Length, so this calls the app directly.
    app.config["REPORTING_UPLOAD_MAX_BYTES"] = 4096
    body, boundary = _multipart([("file", "a.bin", None, b"x" * size)])
    environ = EnvironBuilder(
        "/api/documents", method="POST", environ_base=nurse.environ_base
    ).get_environ()
    # What a server passes on for a chunked request: no length, a stream it terminates.
    environ.pop("CONTENT_LENGTH", None)
    environ["CONTENT_TYPE"] = f"multipart/form-data; boundary={boundary}"
    environ["wsgi.input"] = io.BytesIO(body)
    environ["wsgi.input_terminated"] = True
    answer = app.response_class.from_app(app, environ, buffered=True)
    assert answer.status_code == status, answer.get_data()
    if status == 413:
        assert "4096 bytes" in answer.get_json()["message"]
        assert files_in(app) == [] and not removals()


def test_an_upload_holds_no_database_connection_while_it_streams(app, nurse, monkeypatch):
    """A slow upload must not keep a pooled connection for the whole transfer: 20 of them
    would starve the pool (20 per process) and every other request would wait, then fail."""
    from playhouse.pool import PooledDatabase

    store, seen = store_for(app), []
    real_put = store.put

    def put(key, stream, content_type, max_bytes=None):
        pool = database.obj
        in_use = len(pool._in_use) if isinstance(pool, PooledDatabase) else 0
        seen.append((database.is_closed(), in_use))
        return real_put(key, stream, content_type, max_bytes)

    monkeypatch.setattr(store, "put", put)
    answer = upload(nurse)
    assert answer.status_code == 201, answer.json
    assert seen == [(True, 0)], "the request held a connection while the file streamed"
    with database.connection_context():
        assert Document.select().count() == 1
    assert not removals()


def test_a_failing_commit_removes_the_stored_file(app, nurse, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(records.Document, "create", broken)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    answer = upload(nurse)
    assert answer.status_code == 500
    assert files_in(app) == [] and not removals()


def test_a_store_that_is_down_is_a_clear_503_and_nothing_is_kept(app, nurse, monkeypatch):
    from plugins.reporting.documents.storage import StoreError

    created = upload(nurse).json
    store = store_for(app)

    def down(*args, **kwargs):
        raise StoreError("the disk is full")

    monkeypatch.setattr(store, "put", down)
    answer = upload(nurse)
    assert answer.status_code == 503
    assert answer.json["message"].startswith("The file store is unavailable; nothing was")
    monkeypatch.setattr(store, "open", down)
    answer = nurse.get(f"/api/documents/{created['id']}/file")
    assert answer.status_code == 503
    assert "try the download again" in answer.json["message"]
    with database.connection_context():
        assert Document.select().count() == 1
    assert not removals()


def test_an_upload_that_outlived_its_grace_is_refused_and_leaves_nothing(app, nurse, monkeypatch):
    monkeypatch.setattr(records, "UPLOAD_GRACE", -records.UPLOAD_GRACE)  # due at once
    answer = upload(nurse)
    assert answer.status_code == 409
    assert "upload the file again" in answer.json["message"]
    assert files_in(app) == [] and not removals() and not changes()


def test_an_upload_that_died_half_way_is_swept_later(app, nurse):
    """A pending upload (the process died after storing) is removed by the sweep, but only
    once it can no longer be in progress."""
    with app.app_context(), database.connection_context():
        key = records.new_key()
        pending = records.begin_upload(key)
        store_for(app).put(key, io.BytesIO(b"half"), "text/plain")
        assert records.sweep() == {"removed": 0, "failed": 0}
        assert len(files_in(app)) == 1
        later = utcnow() + records.UPLOAD_GRACE
        assert records.sweep(now=later) == {"removed": 1, "failed": 0}
        assert files_in(app) == []
        assert DocumentFileRemoval.get_or_none(DocumentFileRemoval.id == pending.id) is None


def test_the_sweep_removes_the_temporary_file_of_an_upload_whose_process_died(app, nurse):
    """A process killed during put leaves <key>.part (it cannot clean up); the sweep, which
    knows the key from the pending removal, removes it."""
    with app.app_context(), database.connection_context():
        key = records.new_key()
        pending = records.begin_upload(key)
        store = store_for(app)
        store.partial_path(key).parent.mkdir(parents=True, exist_ok=True)
        store.partial_path(key).write_bytes(b"half a file")
        assert [path.name for path in files_in(app)] == [f"{key.split('/')[-1]}.part"]
        later = utcnow() + records.UPLOAD_GRACE
        assert records.sweep(now=later) == {"removed": 1, "failed": 0}
        assert files_in(app) == []
        assert DocumentFileRemoval.get_or_none(DocumentFileRemoval.id == pending.id) is None


# Reading -------------------------------------------------------------------------------


def test_list_is_paginated_newest_first_and_filters_by_study(nurse):
    ids = []
    for number in range(5):
        answer = upload(nurse, content=b"%d" % number, study="A" if number % 2 else "B")
        ids.append(answer.json["id"])
    page = nurse.get("/api/documents?page=1&page_size=2")
    assert page.status_code == 200
    assert [d["id"] for d in page.json] == ids[::-1][:2]
    assert '"total": 5' in page.headers["X-Pagination"]
    second = nurse.get("/api/documents?page=2&page_size=2")
    assert [d["id"] for d in second.json] == ids[::-1][2:4]
    only_a = nurse.get("/api/documents?study=A")
    assert [d["id"] for d in only_a.json] == [ids[3], ids[1]]
    assert nurse.get("/api/documents?study=nothing").json == []


@pytest.mark.parametrize("study", ["%00x", "a%0Ab", "%E2%80%A8", "", "%20%20", "x" * 101], ids=repr)
def test_a_bad_study_filter_is_a_422_naming_it(nurse, study):
    """The filter follows a stored study's rules; a NUL was a 500 on PostgreSQL."""
    answer = nurse.get(f"/api/documents?study={study}")
    assert answer.status_code == 422, answer.get_data()
    assert "study" in answer.json["errors"]["query"]


def test_the_study_filter_is_trimmed_like_the_stored_study(nurse):
    created = upload(nurse, study="ONC-7").json
    answer = nurse.get("/api/documents?study=%20ONC-7%20")
    assert answer.status_code == 200
    assert [d["id"] for d in answer.json] == [created["id"]]


def test_get_one_and_404(nurse):
    created = upload(nurse).json
    answer = nurse.get(f"/api/documents/{created['id']}")
    assert answer.status_code == 200
    assert answer.json == created
    missing = nurse.get("/api/documents/999999")
    assert missing.status_code == 404
    assert set(missing.json) == {"code", "status", "message", "errors"}


# Access --------------------------------------------------------------------------------


ROUTES = [
    ("get", "/api/documents"),
    ("post", "/api/documents"),
    ("get", "/api/documents/{id}"),
    ("patch", "/api/documents/{id}"),
    ("delete", "/api/documents/{id}"),
    ("get", "/api/documents/{id}/file"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_patients_get_403_and_anonymous_401(app, client_for, method, path):
    document_id = upload(client_for("admin")).json["id"]
    url = path.format(id=document_id)
    assert getattr(client_for("patient"), method)(url).status_code == 403
    anonymous = getattr(app.test_client(), method)(url)
    assert anonymous.status_code == 401
    assert anonymous.json["code"] == 401


@pytest.mark.parametrize("role", ["admin", "doctor", "nurse"])
def test_every_staff_role_uses_every_route(client_for, role):
    client = client_for(role)
    created = upload(client)
    assert created.status_code == 201
    url = f"/api/documents/{created.json['id']}"
    assert client.get("/api/documents").status_code == 200
    assert client.get(url).status_code == 200
    assert client.get(url + "/file").status_code == 200
    assert client.patch(url, json={"study": "S"}).status_code == 200
    assert client.delete(url).status_code == 204


def test_every_route_is_audited_with_the_user(app, nurse):
    from core.audit import AuditEvent

    document_id = upload(nurse).json["id"]
    nurse.get(f"/api/documents/{document_id}/file")
    nurse.delete(f"/api/documents/{document_id}")
    with database.connection_context():
        actions = [(e.action, e.user) for e in AuditEvent.select().order_by(AuditEvent.id)]
    assert actions == [
        ("upload document", "nurse@example.org"),
        ("download document", "nurse@example.org"),
        ("delete document", "nurse@example.org"),
    ]


# PATCH ---------------------------------------------------------------------------------


def test_patch_changes_the_writable_fields_and_logs_the_change(nurse):
    created = upload(nurse, study="A").json
    answer = nurse.patch(
        f"/api/documents/{created['id']}",
        json={"filename": "renamed.pdf", "study": None, "content_type": "Application/X-Foo"},
    )
    assert answer.status_code == 200, answer.json
    assert (answer.json["filename"], answer.json["study"], answer.json["content_type"]) == (
        "renamed.pdf",
        None,
        "application/x-foo",
    )
    assert answer.json["updated_at"] > created["updated_at"]
    assert answer.json["md5"] == created["md5"]
    assert [(c.action, c.filename, c.study) for c in changes()] == [
        ("created", "scan.pdf", "A"),
        ("updated", "renamed.pdf", None),
    ]
    again = nurse.patch(f"/api/documents/{created['id']}", json={"filename": "renamed.pdf"})
    assert again.status_code == 200
    assert again.json["updated_at"] == answer.json["updated_at"]
    assert len(changes()) == 2, "a change that changes nothing is not logged"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"id": 5}, {"id"}),
        ({"md5": "0" * 32, "size": 1, "filename": "x"}, {"md5", "size"}),
        ({"file_location": "documents/other", "owner": "me"}, {"file_location", "owner"}),
        ({"owner": "me"}, {"owner"}),
        ({"filename": ""}, {"filename"}),
        ({"filename": None}, {"filename"}),
        ({"filename": "a" * 256}, {"filename"}),
        ({"study": "x" * 101}, {"study"}),
        ({"content_type": "nonsense"}, {"content_type"}),
        ({}, {"_schema"}),
    ],
)
def test_patch_validation_names_each_bad_field(nurse, body, fields):
    created = upload(nurse).json
    answer = nurse.patch(f"/api/documents/{created['id']}", json=body)
    assert answer.status_code == 422, answer.json
    assert set(answer.json["errors"]["json"]) == fields
    for name in fields - {"_schema"}:
        assert name in answer.json["message"]
    assert nurse.get(f"/api/documents/{created['id']}").json == created


def test_patch_read_only_field_says_so(nurse):
    created = upload(nurse).json
    answer = nurse.patch(f"/api/documents/{created['id']}", json={"uploaded_by": "x@y.z"})
    assert answer.json["errors"]["json"]["uploaded_by"][0].startswith("Read-only")


def test_patch_404(nurse):
    assert nurse.patch("/api/documents/424242", json={"study": "x"}).status_code == 404


# Downloads -----------------------------------------------------------------------------


def test_download_streams_the_file_with_etag_and_headers(nurse):
    created = upload(nurse).json
    answer = nurse.get(f"/api/documents/{created['id']}/file")
    assert answer.status_code == 200
    assert answer.data == CONTENT
    assert answer.headers["ETag"] == f'"{created["md5"]}"'
    assert answer.headers["Accept-Ranges"] == "bytes"
    assert answer.headers["Content-Length"] == str(len(CONTENT))
    assert answer.headers["Content-Type"] == "application/pdf"
    assert answer.headers["Content-Disposition"] == 'attachment; filename="scan.pdf"'
    assert "sandbox" in answer.headers["Content-Security-Policy"]
    head = nurse.head(f"/api/documents/{created['id']}/file")
    assert (head.status_code, head.data) == (200, b"")
    assert head.headers["Content-Length"] == str(len(CONTENT))


@pytest.mark.parametrize(
    ("headers", "status", "length"),
    [({}, 200, len(CONTENT)), ({"Range": "bytes=0-99"}, 206, 100)],
)
def test_head_answers_the_headers_without_opening_the_file(
    app, nurse, monkeypatch, headers, status, length
):
    """Nothing reads the body of a HEAD, so nothing would close an opened object."""
    created = upload(nurse).json
    store, opened = store_for(app), []
    real_open = store.open
    monkeypatch.setattr(store, "open", lambda *args: opened.append(args) or real_open(*args))
    answer = nurse.head(f"/api/documents/{created['id']}/file", headers=headers)
    assert (answer.status_code, answer.data) == (status, b"")
    assert answer.headers["Content-Length"] == str(length)
    assert answer.headers["ETag"] == f'"{created["md5"]}"'
    assert answer.headers["Content-Type"] == "application/pdf"
    assert opened == []
    assert nurse.get(f"/api/documents/{created['id']}/file", headers=headers).status_code == status
    assert len(opened) == 1


def test_if_none_match_gives_304(nurse):
    created = upload(nurse).json
    url = f"/api/documents/{created['id']}/file"
    etag = f'"{created["md5"]}"'
    for header in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        answer = nurse.get(url, headers={"If-None-Match": header})
        assert answer.status_code == 304, header
        assert answer.data == b""
        assert answer.headers["ETag"] == etag
    assert nurse.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=0-99", 0, 100),
        ("bytes=0-0", 0, 1),
        ("bytes=10000-", 10000, len(CONTENT)),
        ("bytes=-100", len(CONTENT) - 100, len(CONTENT)),
        ("bytes=-999999", 0, len(CONTENT)),
        ("bytes=10200-999999", 10200, len(CONTENT)),
    ],
)
def test_a_single_range_gives_206(nurse, header, start, stop):
    created = upload(nurse).json
    answer = nurse.get(f"/api/documents/{created['id']}/file", headers={"Range": header})
    assert answer.status_code == 206
    assert answer.data == CONTENT[start:stop]
    assert answer.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(CONTENT)}"
    assert answer.headers["Content-Length"] == str(stop - start)


def test_a_range_past_the_end_gives_416(nurse):
    created = upload(nurse).json
    url = f"/api/documents/{created['id']}/file"
    answer = nurse.get(url, headers={"Range": f"bytes={len(CONTENT)}-"})
    assert answer.status_code == 416
    assert answer.headers["Content-Range"] == f"bytes */{len(CONTENT)}"
    assert answer.json["code"] == 416
    assert answer.headers["Content-Type"] == "application/json"
    assert "Content-Disposition" not in answer.headers, "a JSON error is not the file"


def test_several_ranges_an_invalid_range_or_a_stale_if_range_give_the_whole_file(nurse):
    created = upload(nurse).json
    url = f"/api/documents/{created['id']}/file"
    for headers in (
        {"Range": "bytes=0-1,5-6"},
        {"Range": "bytes=9-5"},
        {"Range": "lines=1-2"},
        {"Range": "bytes=0-9", "If-Range": '"stale"'},
    ):
        answer = nurse.get(url, headers=headers)
        assert answer.status_code == 200, headers
        assert answer.data == CONTENT
    fresh = nurse.get(url, headers={"Range": "bytes=0-9", "If-Range": f'"{created["md5"]}"'})
    assert fresh.status_code == 206


@pytest.mark.parametrize(
    "if_range", ['W/"{md5}"', "Sun, 22 Nov 2099 10:00:00 GMT", '"{md5}", "other"']
)
def test_if_range_needs_a_strong_etag_match_else_the_whole_file(nurse, if_range):
    """RFC 9110 13.1.5: If-Range takes a strong comparison; a weak ETag (or a date, which
    is not how this server validates) gets the whole file, never a piece of another copy."""
    created = upload(nurse).json
    answer = nurse.get(
        f"/api/documents/{created['id']}/file",
        headers={"Range": "bytes=0-9", "If-Range": if_range.format(md5=created["md5"])},
    )
    assert answer.status_code == 200
    assert answer.data == CONTENT
    assert "Content-Range" not in answer.headers


@pytest.mark.parametrize(
    ("filename", "disposition"),
    [
        ("../../etc/passwd", 'attachment; filename="passwd"'),
        ("..\\..\\boot.ini", 'attachment; filename="boot.ini"'),
        (
            'say "hi";.pdf',
            "attachment; filename=\"say _hi_.pdf\"; filename*=UTF-8''say%20%22hi%22%3B.pdf",
        ),
        (
            "Überweisung résumé 検査.pdf",
            'attachment; filename="Uberweisung resume.pdf"; '
            "filename*=UTF-8''%C3%9Cberweisung%20r%C3%A9sum%C3%A9%20%E6%A4%9C%E6%9F%BB.pdf",
        ),
        ("..", 'attachment; filename="document"'),
        ("\u202egpj.exe", 'attachment; filename="gpj.exe"'),
    ],
)
def test_content_disposition_is_safe_for_awkward_names(nurse, filename, disposition):
    created = upload(nurse, filename=filename)
    assert created.status_code == 201, created.json
    answer = nurse.get(f"/api/documents/{created.json['id']}/file")
    assert answer.headers["Content-Disposition"] == disposition


def test_a_missing_file_is_a_clear_404_and_verifies_as_missing(app, nurse):
    created = upload(nurse).json
    store_for(app).delete(created["file_location"])
    answer = nurse.get(f"/api/documents/{created['id']}/file")
    assert answer.status_code == 404
    assert "missing from the store" in answer.json["message"]
    assert "Content-Disposition" not in answer.headers
    assert nurse.head(f"/api/documents/{created['id']}/file").status_code == 404
    with app.app_context(), database.connection_context():
        assert records.verify(Document.get_by_id(created["id"])) == "missing"


@pytest.mark.parametrize("stored", [CONTENT[:100], CONTENT + b"more"], ids=["short", "long"])
@pytest.mark.parametrize("method", ["get", "head"])
def test_a_file_whose_size_is_not_the_records_is_a_clear_error_not_a_broken_answer(
    app, nurse, stored, method
):
    """Served with the record's Content-Length, a shorter file ended the answer early (the
    client waited for bytes that never came)."""
    created = upload(nurse).json
    (Path(store_for(app).root) / created["file_location"]).write_bytes(stored)
    for headers in ({}, {"Range": "bytes=0-9"}):
        answer = getattr(nurse, method)(f"/api/documents/{created['id']}/file", headers=headers)
        assert answer.status_code == 404
        assert "Content-Disposition" not in answer.headers
        if method == "get":
            assert "is not the one uploaded" in answer.json["message"]
            assert f"{len(stored)} bytes, the record says {len(CONTENT)}" in answer.json["message"]


def test_verify_finds_a_corrupt_file(app, nurse):
    created = upload(nurse).json
    with app.app_context(), database.connection_context():
        document = Document.get_by_id(created["id"])
        assert records.verify(document) == "ok"
        path = store_for(app).path(document.file_location)
        data = bytearray(path.read_bytes())
        data[100] ^= 0xFF  # same size, one byte flipped
        path.write_bytes(bytes(data))
        assert records.verify(document) == "corrupt"
        path.write_bytes(CONTENT[:-1])
        assert records.verify(document) == "corrupt"


# Deletes -------------------------------------------------------------------------------


def test_delete_removes_record_and_file_and_logs_what_it_held(app, nurse):
    created = upload(nurse, study="ONC-7").json
    url = f"/api/documents/{created['id']}"
    answer = nurse.delete(url)
    assert answer.status_code == 204
    assert answer.data == b""
    assert nurse.get(url).status_code == 404
    assert nurse.get(url + "/file").status_code == 404
    assert nurse.delete(url).status_code == 404
    assert files_in(app) == [] and not removals()
    deleted = changes()[-1]
    assert (deleted.action, deleted.document_id, deleted.by) == (
        "deleted",
        created["id"],
        "nurse@example.org",
    )
    assert (deleted.filename, deleted.study, deleted.size, deleted.md5) == (
        "scan.pdf",
        "ONC-7",
        len(CONTENT),
        created["md5"],
    )


def test_a_deleted_documents_id_is_never_given_to_another(app, nurse):
    """The change log names documents by id: the newest one deleted must not hand its id on
    (SQLite reuses the highest rowid unless the key is AUTOINCREMENT)."""
    first = upload(nurse).json["id"]
    assert nurse.delete(f"/api/documents/{first}").status_code == 204
    assert upload(nurse).json["id"] > first


def test_a_done_removals_id_is_never_given_to_another(app, nurse):
    """A job names its removal by id: one still retrying "removal 7" after removal 7 was
    done must not carry out a newer removal 7 (on SQLite, without AUTOINCREMENT, the newest
    removal's id came back once it was deleted)."""
    with app.app_context(), database.connection_context():
        first = records.begin_upload(records.new_key())
        assert records.remove_file(first.id)
        second = records.begin_upload(records.new_key())
        assert second.id > first.id
        assert not records.remove_file(first.id), "the old id names nothing"
        assert DocumentFileRemoval.get_or_none(DocumentFileRemoval.id == second.id)


def test_a_delete_whose_file_removal_fails_at_first_is_finished_by_the_retried_job(
    app, nurse, monkeypatch
):
    created = upload(nurse).json
    store = store_for(app)
    real_delete, calls = store.delete, []

    def flaky_delete(location):
        calls.append(location)
        if len(calls) <= 2:  # the request's attempt and the job's first attempt
            raise OSError("the store is unavailable")
        real_delete(location)

    monkeypatch.setattr(store, "delete", flaky_delete)
    answer = nurse.delete(f"/api/documents/{created['id']}")
    assert answer.status_code == 204, "the record is gone even though the file is not yet"
    assert nurse.get(f"/api/documents/{created['id']}").status_code == 404
    assert len(files_in(app)) == 1
    [pending] = removals()
    assert (pending.reason, pending.file_location) == ("delete", created["file_location"])

    run_jobs(app)

    assert len(calls) == 3
    assert files_in(app) == []
    assert not removals()


def test_the_sweep_finishes_removals_the_job_could_not(app, nurse, monkeypatch):
    created = upload(nurse).json
    store = store_for(app)
    real_delete = store.delete
    monkeypatch.setattr(store, "delete", lambda location: (_ for _ in ()).throw(OSError("down")))
    # The queue is down too: the removal stays pending for the sweep.
    monkeypatch.setattr(
        jobs.Job, "send", lambda *a: (_ for _ in ()).throw(ConnectionError("no broker"))
    )
    assert nurse.delete(f"/api/documents/{created['id']}").status_code == 204
    with app.app_context(), database.connection_context():
        later = utcnow() + records.DELETE_GRACE
        assert records.sweep(now=later) == {"removed": 0, "failed": 1}
        [pending] = DocumentFileRemoval.select()
        assert pending.attempts == 1 and "down" in pending.last_error
        monkeypatch.setattr(store, "delete", real_delete)
        assert records.sweep(now=later) == {"removed": 0, "failed": 0}, "backing off"
        assert records.sweep(now=later + records.SWEEP_BACKOFF_MAX) == {
            "removed": 1,
            "failed": 0,
        }
    assert files_in(app) == []


def test_changes_between_two_times_for_the_weekly_report(app, nurse):
    before = utcnow()
    first = upload(nurse, study="A").json
    upload(nurse, study="B")
    nurse.patch(f"/api/documents/{first['id']}", json={"filename": "x.pdf"})
    nurse.delete(f"/api/documents/{first['id']}")
    after = utcnow()
    with database.connection_context():
        rows = list(records.changes_between(before, after, study="A"))
        assert [(c.action, c.document_id) for c in rows] == [
            ("created", first["id"]),
            ("updated", first["id"]),
            ("deleted", first["id"]),
        ]
        assert len(list(records.changes_between(before, after))) == 4
        assert list(records.changes_between(after, after)) == []


def test_the_change_log_is_append_only(app, nurse):
    import peewee

    upload(nurse)
    with database.connection_context():
        with pytest.raises(peewee.DatabaseError), database.atomic():
            DocumentChange.update(by="someone@else").execute()
        with pytest.raises(peewee.DatabaseError), database.atomic():
            DocumentChange.delete().execute()
        assert DocumentChange.select().count() == 1


def test_the_remove_job_is_safe_to_run_twice(app, nurse):
    created = upload(nurse).json
    assert nurse.delete(f"/api/documents/{created['id']}").status_code == 204
    with app.app_context(), database.connection_context():
        assert records.remove_file(10**9) is False


def test_the_scheduler_enqueues_the_sweep_which_removes_what_is_due(app, nurse):
    """The sweep is registered with the core's scheduler; the schedule only enqueues it
    (when something is due), and the job carries it out."""
    from core.scheduler import Scheduler, collect

    [schedule] = [s for s in collect(app) if s.name == "reporting.sweep_document_files"]
    assert schedule.every == datetime.timedelta(minutes=10)
    scheduler = Scheduler(app, [schedule])
    queue = app.extensions["caredeck"].jobs.broker.queues["default"]
    assert scheduler.run_one(schedule) and queue.qsize() == 0, "nothing due, nothing queued"

    # An upload whose process died once it had stored its file, now overdue.
    with app.app_context(), database.connection_context():
        key = records.new_key()
        store_for(app).put(key, io.BytesIO(b"orphan"), "text/plain")
        DocumentFileRemoval.create(
            file_location=key,
            reason="upload",
            not_before=utcnow() - datetime.timedelta(seconds=1),
        )
    assert len(files_in(app)) == 1
    assert scheduler.run_one(schedule)
    assert queue.qsize() == 1
    assert len(files_in(app)) == 1, "the scheduler itself only enqueues"
    run_jobs(app)
    assert files_in(app) == [] and not removals()


@pytest.mark.parametrize("method", ["delete", "patch"])
def test_two_changes_of_one_document_at_once_never_give_a_500(app, client_for, monkeypatch, method):
    """Both read the document, then both write: on SQLite the second used to fail at once
    with "database is locked" (a 500). Now the second waits and finds what the first did."""
    import threading

    nurse, doctor = client_for("nurse"), client_for("doctor")
    created = upload(nurse).json
    path = f"/api/documents/{created['id']}"
    both_read = threading.Barrier(2, timeout=1)
    real_locked = records._locked

    def slow_locked(document_id):
        document = real_locked(document_id)
        try:
            both_read.wait()  # on SQLite and PostgreSQL the second never gets here in time
        except threading.BrokenBarrierError:
            pass
        return document

    monkeypatch.setattr(records, "_locked", slow_locked)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    answers = {}

    def change(client, name):
        if method == "delete":
            answers[name] = client.delete(path).status_code
        else:
            answers[name] = client.patch(path, json={"study": f"by-{name}"}).status_code

    threads = [
        threading.Thread(target=change, args=(client, name))
        for client, name in ((nurse, "nurse"), (doctor, "doctor"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    if method == "delete":
        assert sorted(answers.values()) == [204, 404], answers
        assert [change.action for change in changes()] == ["created", "deleted"]
    else:
        assert sorted(answers.values()) == [200, 200], answers
        assert [change.action for change in changes()] == ["created", "updated", "updated"]
