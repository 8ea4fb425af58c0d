"""A stand-in renderer, for tests that exercise the reports pipeline's bookkeeping (ledger,
retries, schedulers) without rendering a real PDF each time."""

from __future__ import annotations

import dataclasses
import threading

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


def install(monkeypatch, pdf_size: int = 2000) -> FakeRenderer:
    """Render with a :class:`FakeRenderer`; the PDF is kept in the app's real store."""
    from plugins.reporting.reports import pipeline

    renderer = FakeRenderer(pdf_size)
    monkeypatch.setattr(pipeline, "render", renderer)
    return renderer
