"""Read-only reader of the journal spool of earlier releases, and its one-time migration.

Releases before the SQLite spool kept instances in ``journal/<created_ns>-<pid>.seg``
segments of self-checking records and listed the consumed ones in ``delivered.log``.
:func:`migrate` imports every record that is not consumed into ``spool.db`` (oldest
first, ``received_at`` kept) and then removes those files; :mod:`scp.spool` calls it
whenever it opens a spool that still has a ``journal/`` directory or a ``delivered.log``.

**Record** (all integers little-endian)::

    0  4  magic b"S2FJ"          12  8  payload length P
    4  2  format version (1)     20  4  CRC-32 of bytes 0..19, the header and the payload
    6  2  flags (0)              24  H  header: UTF-8 JSON object of the RecordFields
    8  4  header length H        24+H P payload: the DICOM bytes

Records follow each other from offset 0; the first one that is incomplete, fails its
CRC or starts with zeros (the preallocated tail) ends the segment. An item's id was
``<created_ns>-<pid>-<offset>``. **delivered.log** lines: ``<crc32 hex> <id> <outcome>``;
lines without a newline or with a wrong CRC do not count.

**Crash safety**: each segment is imported in transactions of about
:data:`MIGRATION_CHUNK_BYTES`; the same transaction records in ``legacy_segments`` how far
the segment is imported, so an interrupted migration resumes there (nothing lost, nothing
twice). The segment is unlinked only after its last transaction committed (durably);
``delivered.log`` and ``journal/`` go once no segment is left. A segment another process
holds ``flock`` on (a writer of the old release still running) is left for a later open.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from .db import durable, fsync_dir, insert_items, retrying, write_transaction
from .items import RecordFields, spool_error

__all__ = ["DELIVERED_LOG", "JOURNAL_DIR", "MIGRATION_CHUNK_BYTES", "LegacyRecord", "legacy_present", "migrate",
           "pending_records", "read_segment", "segment_paths"]

log = structlog.get_logger()

JOURNAL_DIR = "journal"
DELIVERED_LOG = "delivered.log"
SEGMENT_SUFFIX = ".seg"
MAGIC = b"S2FJ"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MIGRATION_CHUNK_BYTES = 8 * 1024 * 1024
"""Payload bytes imported per transaction (a record larger than this is one transaction)."""

_PREFIX = struct.Struct("<4sHHIQ")  # magic, version, flags, header length, payload length
_CRC = struct.Struct("<I")
_PREFIX_SIZE = _PREFIX.size + _CRC.size
_SEGMENT_NAME = re.compile(r"^(\d+)-(\d+)" + re.escape(SEGMENT_SUFFIX) + "$")


@dataclass(frozen=True)
class LegacyRecord:
    """A valid record of a segment: its old item id, where it ends, its fields and bytes."""

    item_id: str
    end: int
    fields: RecordFields
    payload: bytes


def legacy_present(root: Path) -> bool:
    """Whether ``root`` still holds anything of a journal spool."""
    return (root / JOURNAL_DIR).is_dir() or (root / DELIVERED_LOG).exists()


def segment_paths(root: Path) -> list[Path]:
    """The journal's segments, oldest first (creation time, then pid)."""
    try:
        names = os.listdir(root / JOURNAL_DIR)
    except FileNotFoundError:
        return []
    found = [((int(m[1]), int(m[2])), name) for name in names if (m := _SEGMENT_NAME.match(name))]
    return [root / JOURNAL_DIR / name for _, name in sorted(found)]


def read_delivered(path: Path) -> dict[str, str]:
    """Item id -> last outcome logged in ``delivered.log`` (torn and damaged lines skipped)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    outcomes: dict[str, str] = {}
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        crc, _, body = line.partition(b" ")
        try:
            valid = int(crc, 16) == zlib.crc32(body)
        except ValueError:
            valid = False
        item_id, _, outcome = body.decode("ascii", "replace").partition(" ")
        if valid and item_id and outcome:
            outcomes[item_id] = outcome
    return outcomes


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        chunks.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def read_segment(fd: int, stem: str, start: int = 0) -> Iterator[LegacyRecord]:
    """The valid records of a segment from offset ``start`` on (a record boundary)."""
    file_size = os.fstat(fd).st_size
    offset = start
    while offset + _PREFIX_SIZE <= file_size:
        raw = _pread_exact(fd, _PREFIX_SIZE, offset)
        magic, version, _flags, header_length, payload_length = _PREFIX.unpack(raw[: _PREFIX.size])
        (crc,) = _CRC.unpack(raw[_PREFIX.size :])
        end = offset + _PREFIX_SIZE + header_length + payload_length
        if magic != MAGIC or version != FORMAT_VERSION or header_length > MAX_HEADER_BYTES or end > file_size:
            return  # the zero tail, a torn record or garbage: the end of the records
        header = _pread_exact(fd, header_length, offset + _PREFIX_SIZE)
        payload = _pread_exact(fd, payload_length, offset + _PREFIX_SIZE + header_length)
        if zlib.crc32(payload, zlib.crc32(header, zlib.crc32(raw[: _PREFIX.size]))) != crc:
            return
        try:
            fields = RecordFields.from_json(json.loads(header))
        except ValueError:  # also JSONDecodeError and UnicodeDecodeError
            return
        yield LegacyRecord(f"{stem}-{offset}", end, fields, payload)
        offset = end


def pending_records(root: Path) -> list[tuple[int, str]]:
    """(size, received_at) of every record not consumed yet, read without any lock (for
    :meth:`scp.spool.Spool.status` while segments wait for their migration)."""
    if not legacy_present(root):
        return []
    delivered = read_delivered(root / DELIVERED_LOG)
    found = []
    for path, fd in _open_segments(root):
        found += [(len(record.payload), record.fields.received_at)
                  for record in read_segment(fd, path.name.removesuffix(SEGMENT_SUFFIX))
                  if record.item_id not in delivered]
    return found


def _open_segments(root: Path) -> Iterator[tuple[Path, int]]:
    """Each journal segment still there, opened read-only; closed before the next is opened
    (a segment removed meanwhile is skipped)."""
    for path in segment_paths(root):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            yield path, fd
        finally:
            os.close(fd)


def migrate(root: Path, conn: sqlite3.Connection, *, chunk_bytes: int = MIGRATION_CHUNK_BYTES) -> int:
    """Import the unconsumed records of the journal spool under ``root`` through ``conn``,
    then remove the journal's files; returns how many segments had to be left (locked).

    Raises :class:`~scp.spool.db.SpoolError` (``SpoolFullError`` when the disk is full);
    what was committed stays committed and the rest is done by the next call.
    """
    if not legacy_present(root):
        return 0
    delivered = read_delivered(root / DELIVERED_LOG)
    left = imported = removed = 0
    with contextlib.closing(_open_segments(root)) as segments:
        for path, fd in segments:
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    left += 1
                    log.warning("spool_legacy_segment_busy", segment=path.name,
                                reason="another process holds it (a writer of the previous release?); migrated later")
                    continue
                imported += _import_segment(conn, fd, path.name, delivered, chunk_bytes)
            except OSError as exc:
                raise spool_error(exc, f"cannot migrate journal segment {path.name}") from exc
            path.unlink(missing_ok=True)  # after its import committed (its lock goes with the close)
            removed += 1
    try:
        if removed:
            fsync_dir(root / JOURNAL_DIR)
        if not left:
            (root / DELIVERED_LOG).unlink(missing_ok=True)
            (root / f".{DELIVERED_LOG}.tmp").unlink(missing_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(root / JOURNAL_DIR)
            fsync_dir(root)
    except OSError as exc:
        log.warning("spool_legacy_cleanup_failed", error=exc.strerror or str(exc))
        return max(left, 1)
    log.info("spool_migrated", imported=imported, segments=removed, segments_left=left)
    return left


def _import_segment(conn: sqlite3.Connection, fd: int, name: str, delivered: dict[str, str], chunk_bytes: int) -> int:
    """Import one locked segment from where an earlier import stopped; returns the count."""
    rows = retrying(lambda: conn.execute("SELECT imported_to FROM legacy_segments WHERE name = ?", (name,)).fetchall())
    start = rows[0][0] if rows else 0
    batch: list[tuple[RecordFields, bytes]] = []
    size = count = 0
    end = start

    def commit() -> None:
        with durable(conn), write_transaction(conn, f"cannot migrate journal segment {name}"):
            insert_items(conn, batch)
            conn.execute("INSERT OR REPLACE INTO legacy_segments (name, imported_to) VALUES (?, ?)", (name, end))

    for record in read_segment(fd, name.removesuffix(SEGMENT_SUFFIX), start):
        end = record.end
        if record.item_id in delivered:
            continue
        batch.append((record.fields, record.payload))
        size += len(record.payload)
        if size >= chunk_bytes:
            commit()
            count += len(batch)
            batch, size = [], 0
    if batch:
        commit()
        count += len(batch)
    return count
