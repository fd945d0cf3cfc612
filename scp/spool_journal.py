"""Byte formats of the spool journal: self-checking records, segment files, the delivered log.

:mod:`scp.spool` decides where files live and what they are called; this module only
knows what is inside them.

**Record** (one received instance), appended to a segment file::

    offset  size  field
    0       4     magic b"S2FJ"
    4       2     format version (1), little-endian like every integer here
    6       2     flags (0, reserved)
    8       4     header length H
    12      8     payload length P
    20      4     CRC-32 of bytes 0..19, the header and the payload
    24      H     header: UTF-8 JSON object, the fields of :class:`RecordFields`
    24+H    P     payload: the DICOM bytes as received (opaque here)

A record exists only when it is complete and its CRC matches. Reading a segment stops
at the first record that is not: whatever follows (a torn tail left by a crash or by a
failed write, or garbage) is ignored, never an error.

**Segment file**: records back to back from offset 0, then a **zero tail**. The writer
preallocates space by writing zeros (:meth:`SegmentFile.preallocate`, then an fsync) and
writes each record with ``pwrite`` into that space: overwriting blocks that are already
allocated and durable lets the one fdatasync per record skip the file-size/extent
metadata that an append would change. So the file size is *not* the end of the records:
a record prefix of zeros (no magic) is the end, exactly like the end of the file. A
torn record inside the zero tail (its first bytes, then zeros) fails its CRC or its
header like any torn tail and ends the records too. A writer that closes a segment cuts
the zero tail off (:meth:`SegmentFile.trim`); a crashed writer's segment keeps it.
A record may also lie past the preallocated space (it was larger than what was left, or
preallocation failed): it is then an ordinary append that grows the file.

Reading a segment while its writer is still writing is safe: a record not yet fully
written fails its CRC (readers that skip payload CRCs, ``verify=False``, still check the
CRC of the last record they find), and a later scan from the same offset finds it.

**Delivered log** line (one consumed item)::

    <CRC-32 of "<item id> <outcome>", 8 hex digits> <item id> <outcome>\\n

A line without its newline (a torn tail) or with a wrong CRC is ignored.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "RECORD_PREFIX_SIZE",
    "CorruptRecordError",
    "DeliveredLog",
    "EndOfRecords",
    "RecordFields",
    "ScannedRecord",
    "SegmentFile",
    "encode_record",
    "fsync_dir",
    "garbage_after",
    "read_payload",
    "scan_records",
    "utc_now_iso",
]

MAGIC = b"S2FJ"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
"""Larger header lengths are treated as garbage (real headers are a few hundred bytes)."""

_PREFIX = struct.Struct("<4sHHIQ")  # magic, version, flags, header length, payload length
_CRC = struct.Struct("<I")
RECORD_PREFIX_SIZE = _PREFIX.size + _CRC.size
_ZERO_PREFIX = bytes(RECORD_PREFIX_SIZE)
_ZEROS = bytes(1024 * 1024)
"""Source of the zeros written by preallocation (and by the undo of a failed write)."""


def utc_now_iso() -> str:
    """The current time as an ISO 8601 UTC timestamp with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class RecordFields:
    """What the spool keeps about an instance besides its bytes (the record header)."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    calling_ae: str
    received_at: str = field(default_factory=utc_now_iso)
    """ISO 8601 UTC; defaults to the time the fields were created."""

    def to_json(self) -> dict[str, str]:
        """The header as a JSON-ready dict."""
        # not dataclasses.asdict: its recursive deep copy was a third of put's CPU time
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, obj: object) -> RecordFields:
        """Rebuild from :meth:`to_json` output; unknown keys are ignored. Raises ``ValueError``."""
        if not isinstance(obj, Mapping):
            raise ValueError("record header is not a JSON object")
        try:
            values = {name: obj[name] for name in cls.__dataclass_fields__}
        except KeyError as exc:
            raise ValueError(f"record header lacks {exc.args[0]!r}") from exc
        if not all(isinstance(value, str) for value in values.values()):
            raise ValueError("record header values must be strings")
        return cls(**values)


class CorruptRecordError(ValueError):
    """The bytes at an offset are not a complete record with a matching CRC."""


class EndOfRecords(CorruptRecordError):
    """Zeros where a record would start: the preallocated tail of a segment, not damage."""


@dataclass(frozen=True)
class ScannedRecord:
    """A valid record found in a segment: where it is and its header."""

    offset: int
    end: int
    fields: RecordFields
    payload_length: int


def encode_record(fields: RecordFields, data: bytes | bytearray | memoryview) -> bytes:
    """One complete record, ready for a single append."""
    header = json.dumps(fields.to_json(), separators=(",", ":"), sort_keys=True).encode()
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(f"record header is {len(header)} bytes; at most {MAX_HEADER_BYTES}")
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header), len(data))
    crc = zlib.crc32(data, zlib.crc32(header, zlib.crc32(prefix)))
    return b"".join((prefix, _CRC.pack(crc), header, data))


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset``, or fewer only at end of file."""
    chunks: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        chunks.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _read_prefix(fd: int, offset: int, file_size: int) -> tuple[int, int, int, int]:
    """(header length, payload length, crc, running crc of the prefix) or CorruptRecordError."""
    raw = _pread_exact(fd, RECORD_PREFIX_SIZE, offset)
    if len(raw) < RECORD_PREFIX_SIZE:
        raise CorruptRecordError(f"incomplete record prefix at offset {offset}")
    if raw == _ZERO_PREFIX:
        raise EndOfRecords(f"zero tail (preallocated space) at offset {offset}")
    prefix = raw[: _PREFIX.size]
    magic, version, _flags, header_length, payload_length = _PREFIX.unpack(prefix)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise CorruptRecordError(f"no record of format {FORMAT_VERSION} at offset {offset}")
    if header_length > MAX_HEADER_BYTES:
        raise CorruptRecordError(f"implausible header length at offset {offset}")
    if offset + RECORD_PREFIX_SIZE + header_length + payload_length > file_size:
        raise CorruptRecordError(f"record at offset {offset} runs past the end of the file")
    (crc,) = _CRC.unpack(raw[_PREFIX.size :])
    return header_length, payload_length, crc, zlib.crc32(prefix)


def _decode_header(header: bytes, offset: int) -> RecordFields:
    try:
        return RecordFields.from_json(json.loads(header))
    except ValueError as exc:  # also json.JSONDecodeError and UnicodeDecodeError
        raise CorruptRecordError(f"unreadable record header at offset {offset}: {exc}") from exc


def _read_record(fd: int, offset: int, file_size: int, *, verify: bool) -> tuple[ScannedRecord, bytes | None]:
    """The record at ``offset`` and, when ``verify``, its payload (checked against the CRC)."""
    header_length, payload_length, crc, running = _read_prefix(fd, offset, file_size)
    body_offset = offset + RECORD_PREFIX_SIZE
    header = _pread_exact(fd, header_length, body_offset)
    payload: bytes | None = None
    if verify:
        payload = _pread_exact(fd, payload_length, body_offset + header_length)
        if len(header) != header_length or len(payload) != payload_length:
            raise CorruptRecordError(f"record at offset {offset} is incomplete")
        if zlib.crc32(payload, zlib.crc32(header, running)) != crc:
            raise CorruptRecordError(f"CRC mismatch in the record at offset {offset}")
    elif len(header) != header_length:
        raise CorruptRecordError(f"record at offset {offset} is incomplete")
    end = body_offset + header_length + payload_length
    return ScannedRecord(offset, end, _decode_header(header, offset), payload_length), payload


def scan_records(fd: int, start: int, *, verify: bool = True) -> Iterator[ScannedRecord]:
    """The valid records from ``start`` on, stopping silently at the first invalid one.

    The end of the file and a zero tail (preallocated space) end the records alike.
    With ``verify=False`` payloads are not read and CRCs not checked (a quick count for
    status reports); completeness, magic, version and header are still checked, and so
    is the CRC of the last record found: a torn record whose prefix and header made it
    into the preallocated space but whose payload did not would otherwise pass (its
    length no longer runs past the end of the file). A record followed by another one
    was complete before its successor was begun, as far as a live writer goes; after a
    power loss unsynced pages may be missing in any order, so such a count may include
    a never-acknowledged record that a verifying reader stops before.
    """
    file_size = os.fstat(fd).st_size
    offset = start
    held: ScannedRecord | None = None  # verify=False: the last record is checked before it is yielded
    while offset + RECORD_PREFIX_SIZE <= file_size:
        try:
            record, _ = _read_record(fd, offset, file_size, verify=verify)
        except CorruptRecordError:
            break
        if verify:
            yield record
        else:
            if held is not None:
                yield held
            held = record
        offset = record.end
    if held is not None:
        try:
            _read_record(fd, held.offset, file_size, verify=True)
        except CorruptRecordError:
            return
        yield held


def garbage_after(fd: int, offset: int) -> int:
    """How many bytes from ``offset`` up to the last non-zero byte of the file (0: only zeros).

    What follows the last record of a segment is its zero tail, if anything: a non-zero
    byte there is a torn record or garbage (for logs; never an error).
    """
    file_size = os.fstat(fd).st_size
    last_nonzero = offset
    position = offset
    while position < file_size:
        chunk = os.pread(fd, min(len(_ZEROS), file_size - position), position)
        if not chunk:
            break
        kept = len(chunk.rstrip(b"\0"))
        if kept:
            last_nonzero = position + kept
        position += len(chunk)
    return last_nonzero - offset


def read_payload(fd: int, offset: int, *, verify: bool = True) -> bytes:
    """The payload of the record at ``offset``; raises :class:`CorruptRecordError`.

    ``verify=False`` skips the CRC check (to rescue the bytes of a damaged record).
    """
    file_size = os.fstat(fd).st_size
    if verify:
        _, payload = _read_record(fd, offset, file_size, verify=True)
        assert payload is not None
        return payload
    header_length, payload_length, _, _ = _read_prefix(fd, offset, file_size)
    return _pread_exact(fd, payload_length, offset + RECORD_PREFIX_SIZE + header_length)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - a regular file never does this
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:  # pragma: no cover - a regular file never does this
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]
        offset += written


def _write_zeros(fd: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        piece = min(len(_ZEROS), end - offset)
        _pwrite_all(fd, memoryview(_ZEROS)[:piece], offset)
        offset += piece


class SegmentFile:
    """A segment open for writing by its only writer, which holds ``flock(LOCK_EX)`` on it.

    ``size`` is the end of the records, ``allocated`` how far the file is known to hold
    zeros written by :meth:`preallocate` (or records): a record that ends at or before
    ``allocated`` overwrites allocated blocks and its fdatasync commits no metadata.
    ``allocated`` may understate the file (after a failed preallocation), never overstate
    it. The writer's group commit keeps ``synced_to`` (bytes known durable) and
    ``sync_error`` (a failed fdatasync: the segment must not be used again) here;
    ``extending`` is true while a preallocation of this segment is running.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.size = 0
        self.allocated = 0
        self.synced_to = 0
        self.sync_error: OSError | None = None
        self.broken = False
        """A failed write could not be undone: bytes after ``size`` may be garbage."""
        self.extending = False
        self._fd = fd

    @classmethod
    def create(cls, path: Path) -> SegmentFile | None:
        """Create and lock a new segment; ``None`` if a consumer took it away meanwhile.

        Raises ``FileExistsError`` when the name is taken. A consumer deletes a segment
        only while holding its lock and finding it fully consumed, which a fresh, empty
        segment is; so a writer that cannot lock at once, or that finds its segment
        already unlinked, leaves it to the consumer and makes another.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC  # no O_APPEND: records are pwritten
        fd = os.open(path, flags, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)
                return None
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def preallocate(self, start: int, length: int) -> None:
        """Write ``length`` zeros at ``start`` (at or past ``allocated``), then fsync.

        Safe while records are written before ``start`` by another thread; the caller
        updates ``allocated`` afterwards. On failure (ENOSPC...) the file is cut back to
        ``start`` so that no space stays taken, and the error is raised; zeros left
        behind if even that fails are harmless (they read as the end of the records).
        """
        try:
            _write_zeros(self._fd, start, length)
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                if os.fstat(self._fd).st_size > start:
                    os.ftruncate(self._fd, start)
            raise

    def append(self, record: bytes) -> int:
        """Write one record at ``size`` (not yet durable) and return its offset.

        On failure the bytes are undone: zeros again inside the preallocated space, the
        file cut back where it had grown past it; so no partial record stays behind. If
        even that fails the segment is marked ``broken``.
        """
        if self.broken or self.sync_error is not None:
            raise OSError(errno.EIO, "segment is no longer usable")
        offset = self.size
        end = offset + len(record)
        try:
            _pwrite_all(self._fd, record, offset)
        except OSError:
            try:
                if end > self.allocated:
                    os.ftruncate(self._fd, max(offset, self.allocated))
                if self.allocated > offset:
                    _write_zeros(self._fd, offset, min(end, self.allocated) - offset)
            except OSError:
                self.broken = True
            raise
        self.size = end
        self.allocated = max(self.allocated, end)
        return offset

    def sync(self) -> None:
        """fdatasync: every record written so far is durable when this returns."""
        os.fdatasync(self._fd)

    def trim(self) -> None:
        """Cut the file back to the end of the records (the zero tail, or garbage if broken)."""
        os.ftruncate(self._fd, self.size)
        self.allocated = self.size

    def close(self) -> None:
        """Close the file, which releases the lock."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _delivered_line(item_id: str, outcome: str) -> bytes:
    body = f"{item_id} {outcome}".encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _parse_delivered(data: bytes) -> tuple[dict[str, str], int]:
    """(item id -> last outcome, length of the complete lines)."""
    complete = data.rfind(b"\n") + 1
    outcomes: dict[str, str] = {}
    for line in data[:complete].splitlines():
        crc, _, body = line.partition(b" ")
        try:
            valid = int(crc, 16) == zlib.crc32(body)
        except ValueError:
            valid = False
        item_id, _, outcome = body.decode("ascii", "replace").partition(" ")
        if valid and item_id and outcome:
            outcomes[item_id] = outcome
    return outcomes, complete


class DeliveredLog:
    """The append-only log of consumed items, written by the one consumer only.

    ``outcomes`` maps item id to its last logged outcome and is updated in place.
    """

    def __init__(self, path: Path, fd: int, size: int, outcomes: dict[str, str]) -> None:
        self.path = path
        self.outcomes = outcomes
        self._fd = fd
        self._size = size

    @staticmethod
    def read(path: Path) -> dict[str, str]:
        """Item id -> outcome, without writing (for readers that hold no lock)."""
        try:
            return _parse_delivered(path.read_bytes())[0]
        except FileNotFoundError:
            return {}

    @classmethod
    def open(cls, path: Path) -> DeliveredLog:
        """Open for appending, first cutting off a torn last line so the next one starts clean."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            data = _pread_exact(fd, os.fstat(fd).st_size, 0)
            outcomes, complete = _parse_delivered(data)
            if complete < len(data):
                os.ftruncate(fd, complete)
                os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, complete, outcomes)

    def append(self, entries: Iterable[tuple[str, str]]) -> None:
        """Log ``(item id, outcome)`` pairs with one write and one fdatasync."""
        pairs = list(entries)
        if not pairs:
            return
        data = b"".join(_delivered_line(item_id, outcome) for item_id, outcome in pairs)
        try:
            _write_all(self._fd, data)
            os.fdatasync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass  # the unterminated line is cut off by the next open()
            raise
        self._size += len(data)
        self.outcomes.update(pairs)

    def rewrite(self, keep: Callable[[str], bool]) -> None:
        """Replace the log by one holding only the entries ``keep`` accepts (temp, fsync, rename)."""
        kept = {item_id: outcome for item_id, outcome in self.outcomes.items() if keep(item_id)}
        data = b"".join(_delivered_line(item_id, outcome) for item_id, outcome in kept.items())
        temp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            _write_all(fd, data)
            os.fdatasync(fd)
            os.replace(temp, self.path)
            fsync_dir(self.path.parent)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd, self._size = fd, len(data)
        self.outcomes.clear()
        self.outcomes.update(kept)

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
