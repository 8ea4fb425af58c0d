"""A heartbeat file for processes that serve no HTTP (the consumer), for container probes.

The process touches the file while it works; a probe asks how old it is::

    python -m core.heartbeat /tmp/caredeck-consume.alive 30   # readiness: touched < 30 s ago
    python -m core.heartbeat --missing-ok FILE 300            # liveness: not stuck

The file is removed while the process is not connected, so a readiness probe fails then;
a liveness probe passes (``--missing-ok``): restarting does not bring a broker back.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# Touching a file on every loop would be a write per message; once in a while is enough.
BEAT_EVERY_SECONDS = 5.0


class Heartbeat:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.last = 0.0

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.path is None or (not force and now - self.last < BEAT_EVERY_SECONDS):
            return
        self.path.touch()
        self.last = now

    def stop(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.last = 0.0


def age(path: Path) -> float | None:
    """Seconds since the last beat, or ``None`` without a file."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def main(argv: list[str]) -> int:
    missing_ok = "--missing-ok" in argv
    argv = [arg for arg in argv if arg != "--missing-ok"]
    if len(argv) != 2:
        print("usage: python -m core.heartbeat [--missing-ok] FILE MAX_AGE", file=sys.stderr)
        return 2
    seconds = age(Path(argv[0]))
    if seconds is None:
        if missing_ok:
            return 0
        print(f"{argv[0]}: no heartbeat (not started, or not connected)", file=sys.stderr)
        return 1
    if seconds > float(argv[1]):
        print(f"{argv[0]}: last beat {seconds:.0f} s ago (limit {argv[1]} s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
