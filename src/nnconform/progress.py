"""One updating line for long steps (AIMET greedy search, nncodec QPs, split studies).

``with progress("aimet-ssvd greedy search", total=n) as p: p.update()`` redraws one line on a
terminal (carriage return, no newline until the step ends) and prints nothing when the stream is
not a TTY (CI logs, pipes) or under pytest-xdist (workers have no terminal of their own), so a
long case shows it is alive without adding lines to logs or reports.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import IO, Iterator


def _enabled(stream: IO[str]) -> bool:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """The state of one step: ``update(n=1, note="")`` advances it and redraws the line."""

    def __init__(self, label: str, total: int | None = None, stream: IO[str] | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.__stdout__
        self.enabled = self.stream is not None and _enabled(self.stream)
        self._start = time.monotonic()
        self._width = 0

    def update(self, n: int = 1, note: str = "") -> None:
        """Advance by ``n`` and redraw the line (on a TTY), with an optional short note."""
        self.done += n
        if not self.enabled:
            return
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        line = f"{self.label}: {count} ({time.monotonic() - self._start:.0f} s){' ' + note if note else ''}"
        # pad over what the previous, longer line left on screen
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def close(self) -> None:
        """Clear the line, leaving the terminal as it was."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


@contextmanager
def progress(label: str, total: int | None = None, stream: IO[str] | None = None) -> Iterator[Progress]:
    """A :class:`Progress` for the ``with`` block; the line is cleared when the block ends."""
    p = Progress(label, total, stream)
    try:
        yield p
    finally:
        p.close()
