"""Benchmark of the weekly report's rendering (issue 7): ``render_report`` over one week of
10,000 new documents, 500 of them images, on the local PostgreSQL.

Generates, with a fixed seed, in the database named by ``--database-url`` (its ``public``
schema is dropped and created; by default the render engineer's test database) and a file
store in a temporary folder:

- the week 2026-W47 (Europe/Berlin): ``--documents`` new documents over 20 studies, of which
  ``--images`` are images (PNG and JPEG, 640 x 480 to 1600 x 1200, about 5 % of them
  near-duplicates of another: re-encoded or resized), the others PDF, CSV or DOCX-typed
  files of 1 KB to 2 MB; plus 1,000 older documents updated and 300 deleted in the week;
- 20,000 documents of earlier weeks, so the week's queries have something to skip;
- a few broken files: missing, corrupt, an undecodable image.

Then renders the week for all studies (twice) and for one study, and prints the breakdown
(queries, file reads with MD5 and images, assembly, PDF) on stderr and one JSON line on
stdout. A benchmark, not a test: the exit status is 0 whatever the figures. Run::

    .venv/bin/python bench/reporting_render.py [--documents 10000] [--images 500] [--store s3]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw  # noqa: E402

SEED = 20261122
WEEK = "2026-W47"
ZONE = ZoneInfo("Europe/Berlin")
DEFAULT_URL = os.environ.get(
    "CAREDECK_TEST_DATABASE_URL",
    "postgresql://postgres@127.0.0.1:5432/caredeck_test_render",
)
STUDIES = [f"TRIAL-{n:03d}" for n in range(1, 21)]
OTHER_TYPES = ["application/pdf", "text/csv", "application/vnd.openxmlformats-officedocument"]
SIZES = [(640, 480), (800, 600), (800, 600), (800, 600), (1024, 768), (1600, 1200)]
GOAL_S = 60


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def picture(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        w, h = (
            rng.randrange(size[0] // 16, size[0] // 3),
            rng.randrange(size[1] // 16, size[1] // 3),
        )
        draw.ellipse([x, y, x + w, y + h], fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 85} if fmt == "JPEG" else {"compress_level": 1}))
    return out.getvalue()


@contextlib.contextmanager
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 for the run (``moto[server]``, in the test extras),
    with boto3's environment pointing at it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    executable = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(  # noqa: S603 (our own console script, fixed arguments)
        [str(executable), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):  # noqa: S310
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not answer within 30 s") from None
                time.sleep(0.1)
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",  # noqa: S106 (moto accepts anything)
            AWS_DEFAULT_REGION="us-east-1",
        )
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench-render")
        yield "s3://bench-render/documents"
    finally:
        process.terminate()
        process.wait(timeout=10)


def make_app(url: str, files: Path, storage_url: str | None = None):
    from core import db
    from core.app import create_app
    from core.testing import reset_postgresql
    from plugins.reporting import plugin as reporting

    reset_postgresql(url)
    app = create_app(
        {
            "INSTANCE_PATH": str(files.parent / "instance"),
            "DATABASE_URL": url,
            "AMQP_URL": "memory://",
            "DRAMATIQ_URL": "stub://",
            "REDIS_URL": "memory://",
            "SMTP_URL": f"file://{files.parent}/outbox",
            "STORAGE_URL": storage_url or f"file://{files}",
            "SECRET_KEY": "bench-secret-key-that-is-long-enough-0123456789",
            "TIMEZONE": str(ZONE),
        },
        plugin_objects={"reporting": reporting},
    )
    db.upgrade(app.extensions["caredeck"].migration_sources)
    return app


def generate(app, documents: int, images: int) -> dict:
    """Files through the store, rows through the models, in batches."""
    from core.db import database
    from plugins.reporting.documents.models import Document, DocumentChange
    from plugins.reporting.documents.storage import store_for
    from plugins.reporting.reports.timing import week_bounds

    rng = random.Random(SEED)
    store = store_for(app)
    start, end = week_bounds(WEEK, ZONE)
    span = (end - start).total_seconds()
    earlier = start - datetime.timedelta(days=120)
    counts = {"files_bytes": 0, "image_seconds": 0.0}

    def put(key: str, data: bytes, content_type: str):
        counts["files_bytes"] += len(data)
        return store.put(key, io.BytesIO(data), content_type)

    image_slots = set(rng.sample(range(documents), images))
    made_images: list[Image.Image] = []
    rows = []
    for index in range(documents):
        at = start + datetime.timedelta(seconds=rng.uniform(0, span - 1))
        if index in image_slots:
            clock = time.perf_counter()
            if made_images and rng.random() < 0.05:  # a near-duplicate of an earlier one
                image = rng.choice(made_images)
                image = image.resize((image.width * 9 // 10, image.height * 9 // 10))
            else:
                image = picture(rng, rng.choice(SIZES))
                if len(made_images) < 60:
                    made_images.append(image)
            fmt = rng.choice(["PNG", "JPEG"])
            data = encode(image, fmt)
            counts["image_seconds"] += time.perf_counter() - clock
            content_type = f"image/{fmt.lower()}"
            name = f"image-{index:05d}.{fmt.lower()}"
        else:
            size = min(int(rng.lognormvariate(9.5, 1.2)) + 1024, 2 * 1024 * 1024)
            data = (os.urandom(64) * (size // 64 + 1))[:size]
            content_type = rng.choice(OTHER_TYPES)
            name = f"document-{index:05d}.bin"
        stored = put(f"bench/{index:05d}", data, content_type)
        rows.append(
            {
                "filename": name,
                "file_location": stored.location,
                "size": stored.size,
                "md5": stored.md5,
                "content_type": content_type,
                "study": rng.choice(STUDIES),
                "uploaded_by": "bench@example.org",
                "created_at": at,
                "updated_at": at,
            }
        )
    # Older documents (rows only; their files are never read by the week's report).
    old_rows = []
    for index in range(20_000):
        at = earlier + datetime.timedelta(seconds=rng.uniform(0, 100 * 86400))
        old_rows.append(
            {
                "filename": f"old-{index:05d}.pdf",
                "file_location": f"bench/old/{index:05d}",
                "size": 1000 + index,
                "md5": hashlib.md5(str(index).encode(), usedforsecurity=False).hexdigest(),
                "content_type": "application/pdf",
                "study": rng.choice(STUDIES),
                "uploaded_by": "bench@example.org",
                "created_at": at,
                "updated_at": at,
            }
        )

    def snapshot(document_id: int, row: dict, action: str, at) -> dict:
        return {
            "document_id": document_id,
            "action": action,
            "at": at,
            "filename": row["filename"],
            "study": row["study"],
            "content_type": row["content_type"],
            "size": row["size"],
            "md5": row["md5"],
            "file_location": row["file_location"],
            "by": row["uploaded_by"],
        }

    with database.connection_context(), database.atomic():
        changes = []
        old_ids = []
        for batch in range(0, len(old_rows), 2000):
            chunk = old_rows[batch : batch + 2000]
            ids = Document.insert_many(chunk).returning(Document.id).tuples().execute()
            for (document_id,), row in zip(ids, chunk, strict=True):
                old_ids.append(document_id)
                changes.append(snapshot(document_id, row, "created", row["created_at"]))
        for batch in range(0, len(rows), 2000):
            chunk = rows[batch : batch + 2000]
            ids = Document.insert_many(chunk).returning(Document.id).tuples().execute()
            for (document_id,), row in zip(ids, chunk, strict=True):
                changes.append(snapshot(document_id, row, "created", row["created_at"]))
        by_id = dict(zip(old_ids, old_rows, strict=True))
        touched = rng.sample(old_ids, 1300)
        for document_id in touched[:1000]:
            at = start + datetime.timedelta(seconds=rng.uniform(0, span - 1))
            changes.append(snapshot(document_id, by_id[document_id], "updated", at))
        for document_id in touched[1000:]:
            at = start + datetime.timedelta(seconds=rng.uniform(0, span - 1))
            changes.append(snapshot(document_id, by_id[document_id], "deleted", at))
        Document.delete().where(Document.id.in_(touched[1000:])).execute()
        for batch in range(0, len(changes), 5000):
            DocumentChange.insert_many(changes[batch : batch + 5000]).execute()
        database.execute_sql("ANALYZE")

    # A few broken files: two missing, two corrupt, one undecodable "image" (as long as the
    # image it replaces, so only its MD5 differs).
    plain = [i for i in range(documents) if i not in image_slots]
    for index in plain[:2]:
        store.delete(f"bench/{index:05d}")
    for index in plain[2:4]:
        data = bytearray(b"".join(store.open(f"bench/{index:05d}")))
        data[0] ^= 0xFF
        store.put(f"bench/{index:05d}", io.BytesIO(bytes(data)), "application/octet-stream")
    broken = sorted(image_slots)[0]
    store.put(
        f"bench/{broken:05d}", io.BytesIO(b"\0" * rows[broken]["size"]), "application/octet-stream"
    )
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument(
        "--store",
        choices=("file", "s3"),
        default="file",
        help="the file store: a local folder, or S3 on a moto server started for the run",
    )
    parser.add_argument("--workers", type=int, help="threads reading files (render.WORKERS)")
    args = parser.parse_args()

    from core.db import close_pool, database
    from plugins.reporting.reports import render

    if args.workers:
        render.WORKERS = args.workers

    workdir = Path(tempfile.mkdtemp(prefix="caredeck-bench-render-"))
    with contextlib.ExitStack() as stack:
        storage_url = stack.enter_context(s3_endpoint()) if args.store == "s3" else None
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        app = make_app(args.database_url, workdir / "files", storage_url)
        clock = time.perf_counter()
        generated = generate(app, args.documents, args.images)
        generate_s = time.perf_counter() - clock
        log(
            f"generated {args.documents:,} documents ({args.images} images, "
            f"{generated['files_bytes'] / 1e6:,.0f} MB) in {generate_s:.1f} s"
        )
        runs = {}
        for label, study in (("all", None), ("all_again", None), ("one_study", STUDIES[0])):
            clock = time.perf_counter()
            rendered = render.render_report(study, WEEK, app=app)
            total = time.perf_counter() - clock
            runs[label] = {
                "seconds": round(total, 2),
                "breakdown": {k: round(v, 2) for k, v in rendered.timings.items()},
                "pdf_bytes": len(rendered.pdf),
                "totals": rendered.totals,
            }
            log(
                f"{label}: {total:.2f} s "
                + ", ".join(f"{k} {v:.2f} s" for k, v in rendered.timings.items())
                + f"; PDF {len(rendered.pdf) / 1e6:.2f} MB; {rendered.totals}"
            )
        close_pool(database.obj)
        result = {
            "benchmark": "reporting_render",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}",
            "documents": args.documents,
            "images": args.images,
            "store": args.store,
            "workers": render.WORKERS,
            "generate_seconds": round(generate_s, 1),
            "runs": runs,
            "goal_seconds": GOAL_S,
            "goal_met": runs["all"]["seconds"] < GOAL_S,
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
