"""Write a file so that a crash leaves either the old content or the new, never a mix."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["fsync_directory", "write_atomically"]


def write_atomically(path: Path, data: bytes | bytearray | memoryview, *, sync: bool = True,
                     sync_directory: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path`` (a name starting with a dot), fsync it,
    rename it over ``path``.

    With ``sync`` (the default) the file's data is fsynced before the rename and, unless
    ``sync_directory`` is false (a caller that writes several files and fsyncs the directory
    once), the directory after it, so the rename survives a power loss. Without ``sync`` the
    file is still never seen half written. The temporary file is removed if anything fails.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            if sync:
                os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    if sync and sync_directory:
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """fsync a directory, making the names created, renamed or removed in it durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
