"""A one-line progress bar on a terminal, for long ``sr2fhir convert`` runs.

Shown only when the stream is a terminal and there are enough inputs to wait for; otherwise
every method does nothing, so piped or logged stderr carries the error and warning lines alone.
Lines printed through :meth:`Progress.line` go above the bar.
"""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["Progress", "MIN_INPUTS"]

MIN_INPUTS = 21
"""Fewer inputs than this finish too quickly for a bar to help."""

_WIDTH = 30
_INTERVAL_S = 0.1
_CLEAR = "\r\x1b[K"


class Progress:
    """``[#####.....]  123/1000 files  45.6 files/s`` on ``stream``, redrawn at most 10 times a second."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.done = 0
        self.enabled = total >= MIN_INPUTS and _is_terminal(stream)
        self._started = time.monotonic()
        self._drawn_at = float("-inf")
        self._shown = False

    def line(self, text: str) -> None:
        """Print ``text`` (one line) above the bar."""
        if self._shown:
            self.stream.write(_CLEAR)
            self._shown = False
        print(text, file=self.stream)

    def advance(self) -> None:
        """One more input is done."""
        self.done += 1
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn_at >= _INTERVAL_S or self.done == self.total:
            self._draw(now)

    def finish(self) -> None:
        """Leave the final state of the bar on its own line."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False

    def _draw(self, now: float) -> None:
        filled = _WIDTH * self.done // self.total
        elapsed = now - self._started
        rate = f"  {self.done / elapsed:.1f} files/s" if elapsed > 0 else ""
        self.stream.write(f"{_CLEAR}[{'#' * filled}{'.' * (_WIDTH - filled)}] {self.done}/{self.total} files{rate}")
        self.stream.flush()
        self._drawn_at = now
        self._shown = True


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
