"""The append-only audit log file: AuditEvents written as one JSON line each (:class:`AuditLog`).

One ``write(2)`` per line on an ``O_APPEND`` descriptor, so lines from the
listener's threads and from the worker process never interleave (local file systems apply an
append as one step; a lock orders this process's threads too). Not fsynced per line: the
kernel keeps what was written when the process dies, and only a power cut loses the last
seconds of lines, while an fsync per event would double the cost of every C-STORE (the spool
already spends one on the instance itself, which is the record that matters). Rotation is
left to logrotate (``create`` or ``copytruncate``) or to a journald/syslog shipper: before
each line the path is checked and reopened when it was moved away.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import orjson

__all__ = ["AuditLog"]


class AuditLog:
    """Appends AuditEvents to ``path``, one compact JSON object per line; thread-safe.

    Opened on first write (parent directories created, mode 0640 since events may carry PHI
    with ``include_phi``); reopened when the path was rotated away. ``write`` raises
    ``OSError`` when the line cannot be written.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None

    def write(self, event: dict[str, Any]) -> None:
        line = _json_line(event)
        with self._lock:
            fd = self._open()
            view = memoryview(line)
            while view:  # one write(2) unless the disk fills mid-line
                view = view[os.write(fd, view):]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _open(self) -> int:
        if self._fd is not None:
            try:
                current = os.stat(self.path)
                mine = os.fstat(self._fd)
                if (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                    return self._fd
            except FileNotFoundError:
                pass
            os.close(self._fd)  # rotated away: continue in a new file under the path
            self._fd = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return self._fd


def _json_line(event: dict[str, Any]) -> bytes:
    """One compact UTF-8 JSON line. orjson (a C-STORE writes one event, and the standard
    library took half the event's cost); what orjson refuses (an integer over 64 bits, a
    non-string key) goes through the standard library, which writes it or raises."""
    try:
        return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
