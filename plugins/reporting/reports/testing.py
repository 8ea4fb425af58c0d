"""Stand-ins for the renderer and the file store, for tests that exercise the pipeline's
bookkeeping (ledger, retries, schedulers) without rendering a real PDF each time."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

FAKE_TOTALS = {
    "new": 3,
    "updated": 1,
    "deleted": 0,
    "new_bytes": 1234,
    "missing": 0,
    "corrupt": 0,
    "images": 2,
    "near_duplicates": 0,
}


@dataclasses.dataclass
class FakeRendered:
    pdf: bytes
    study: str | None
    week: str
    totals: dict


@dataclasses.dataclass
class FakeStored:
    location: str
    size: int
    md5: str


class FakeStore:
    """A folder; ``put``/``open``/``size``/``delete`` like the documents store."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def put(self, key, stream, content_type) -> FakeStored:
        data = stream.read()
        path = self.folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return FakeStored(key, len(data), hashlib.md5(data).hexdigest())  # noqa: S324

    def open(self, location, start=0, end=None) -> Iterator[bytes]:
        data = (self.folder / location).read_bytes()
        yield data[start : None if end is None else end + 1]

    def size(self, location) -> int:
        return (self.folder / location).stat().st_size

    def delete(self, location) -> None:
        (self.folder / location).unlink(missing_ok=True)


class FakeRenderer:
    """Counts its calls; ``fail`` makes the next N calls raise."""

    def __init__(self, pdf_size: int = 2000) -> None:
        self.calls: list[tuple[str | None, str]] = []
        self.fail = 0
        self.pdf_size = pdf_size
        self._lock = threading.Lock()

    def __call__(self, study, week) -> FakeRendered:
        with self._lock:
            self.calls.append((study, week))
            if self.fail > 0:
                self.fail -= 1
                raise RuntimeError("renderer failed on purpose")
        body = b"%PDF-1.4\n% fake report " + week.encode() + b"\n"
        return FakeRendered(body.ljust(self.pdf_size, b"0"), study, week, dict(FAKE_TOTALS))


def install(monkeypatch, folder: Path, pdf_size: int = 2000) -> tuple[FakeRenderer, FakeStore]:
    from plugins.reporting.reports import pipeline

    renderer, store = FakeRenderer(pdf_size), FakeStore(folder)
    monkeypatch.setattr(pipeline, "render", renderer)
    monkeypatch.setattr(pipeline, "store", lambda: store)
    return renderer, store
