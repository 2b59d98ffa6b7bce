"""Progress that reads well in a terminal and in a log file (nohup, SLURM's --output).

In a terminal a line is redrawn in place (carriage return); without one every report is a whole line
ending in a newline, written at most every UNSAMFLOW_PROGRESS_SECONDS seconds (default 30) and at the
end, so a log never holds lines run together nor one line per pair of a long run.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

DEFAULT_SECONDS = 30.0


def progress_seconds() -> float:
    """The interval of non-terminal progress lines: $UNSAMFLOW_PROGRESS_SECONDS, else 30 s (0 = every one)."""
    text = os.environ.get("UNSAMFLOW_PROGRESS_SECONDS", "").strip()
    try:
        return max(float(text), 0.0) if text else DEFAULT_SECONDS
    except ValueError:
        return DEFAULT_SECONDS


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


class PairProgress:
    """`progress(n, total, label)` after each item (n counts finished items); `close()` at the end."""

    def __init__(self, what: str, stream: TextIO | None = None, every: float | None = None):
        self.what = what
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = progress_seconds() if every is None else every
        self.start = time.monotonic()
        self.last: float | None = None
        self.pending = ""

    def __call__(self, n: int, total: int, label: str) -> None:
        now = time.monotonic()
        rate = n / max(now - self.start, 1e-9)
        eta = format_duration((total - n) / rate) if rate > 0 and total >= n else "?"
        line = f"{self.what} {n}/{total} {label} ({rate:.2f}/s, ETA {eta})"
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
            self.stream.flush()
            return
        self.pending = line
        if self.last is None or now - self.last >= self.every or n >= total:
            self._emit(now)

    def _emit(self, now: float) -> None:
        self.stream.write(self.pending + "\n")
        self.stream.flush()
        self.pending, self.last = "", now

    def close(self) -> None:
        """End the in-place line (terminal) or write the last report not yet written (log)."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        elif self.pending:
            self._emit(time.monotonic())
