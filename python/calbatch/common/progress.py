"""Progress of long work as plain lines on stderr (one per finished item, with the rate and the time
left), written by rank 0 only and by no rank when the command was given ``--quiet``. Plain lines,
not a bar: they read the same in a terminal, a batch log or a test's captured stderr."""

from __future__ import annotations

import sys
import time

from .mpi import is_root


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """``update(done, note)`` after each item of ``total`` (None: open-ended, no ETA)."""

    def __init__(self, label: str, total: int | None = None, unit: str = "case", show: bool = True):
        self.label, self.total, self.unit = label, total, unit
        self.show = show and is_root()
        self.start = time.perf_counter()
        self.done = 0

    def update(self, done: int | None = None, note: str = "") -> None:
        self.done = self.done + 1 if done is None else done
        if not self.show:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        text = f"{self.label}: {count} {self.unit}{'' if self.unit.endswith('s') else 's'}"
        if self.total is not None and rate > 0:
            text += f", {rate:.2f} {self.unit}/s, ETA {_duration((self.total - self.done) / rate)}"
        else:
            text += f", {_duration(elapsed)}"
        sys.stderr.write(text + (f"  {note}" if note else "") + "\n")
        sys.stderr.flush()

    def say(self, text: str) -> None:
        if self.show:
            sys.stderr.write(f"{self.label}: {text}\n")
            sys.stderr.flush()
