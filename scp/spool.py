"""The durable spool between the DICOM listener and the forwarder: an append-only journal.

The listener makes each received instance durable with **one** ``fdatasync`` before it
answers the C-STORE (:meth:`SpoolWriter.put`); the forwarder, another process, takes
items oldest first (:class:`SpoolConsumer`); ``sr2fhir spool ...`` inspects and re-queues
dead letters while both run (:meth:`Spool.status`, :meth:`Spool.failed`,
:meth:`Spool.requeue`). This is the only module that knows the layout below; the byte
formats inside the files are in :mod:`scp.spool_journal`.

On-disk layout under the spool directory (names are the constants below)::

    journal/<created_ns>-<pid>.seg   segments of records (header + DICOM bytes + CRC); each
                                     writer process appends to its own active segment and
                                     holds flock(LOCK_EX) on it while it does. The records
                                     are followed by a zero tail: space preallocated by
                                     writing zeros, PREALLOCATION_CHUNK_BYTES at a time,
                                     never past segment_max_bytes (cut off on close)
    delivered.log                    one CRC-checked line per consumed item: id and outcome
                                     (delivered, superseded, failed)
    consumer.lock                    flock'ed by the one consumer; holds its pid
    failed/<id>.dcm, failed/<id>.json    a dead letter: the bytes and the JSON sidecar
    requeue/<id>.dcm, requeue/<id>.json  dead letters handed back by ``sr2fhir spool retry``
    done/<id>.dcm                    delivered items, only with retention "keep"

An item id is ``<created_ns>-<pid>-<offset>``: segment and byte offset of its record.

Preallocation: a writer that creates a segment writes zeros over its first chunk and
fsyncs once; each record is then ``pwrite``-n into that space, so the fdatasync of a put
has no file size or extent change to commit (an append has: it costs a journal commit
more). Once less than half a chunk is left a background thread writes the next chunk of
zeros and fsyncs it; puts keep writing before it meanwhile (a record that does not fit
waits for it). A record that still does not fit, or every record while preallocation
is failing (ENOSPC: the zeros written are cut off again and it is retried after
PREALLOCATION_RETRY_SECONDS), grows the file like an append; only a record that cannot
be written fails the put. So the file size says nothing about where the records end.

Locks are BSD ``flock`` locks (:func:`fcntl.flock`). They belong to an open file, not to
a process, so inside the forwarder process the consumer's own re-queue writer and its
segment clean-up still exclude each other, and closing some other descriptor of a file
never drops a lock (both would go wrong with POSIX ``lockf`` record locks). The spool
must therefore live on a local file system.

Recovery rules:

1. A record exists only when complete with a matching CRC; reading a segment stops at
   the first one that is not (a torn tail after a crash or a failed write: ignored),
   and at a zero record prefix, which is the zero tail: the end, not damage. A torn
   record inside the zero tail (its start written, then zeros) is a torn tail like any
   other. Readers find records written later into the zero tail by scanning again from
   where their valid records ended (never from the file size). ``put`` returns after
   the fdatasync that covers its record (every record written before it is covered
   too, so what follows a torn record was never acknowledged); ``journal/`` is fsynced
   once per new segment. A failed write is undone (zeros again inside the preallocated
   space, truncation past it); if that fails too the writer rolls to a new segment. A
   writer never writes into another process's segment, so a crashed writer's zero tail
   and torn record stay as they are until the segment is deleted.
2. An item is consumed once ``delivered.log`` durably says so. A crash before that means
   it is delivered again, which the forwarder's idempotent PUTs make harmless.
3. Same SOP Instance UID pending twice: the newest record (latest ``received_at``, then
   journal order) is kept, the older ones are logged as ``superseded``. A re-queued dead
   letter keeps its original ``received_at``, so a copy the sender sent since wins.
4. Dead letter: ``failed/<id>.dcm`` then ``failed/<id>.json`` (each temp, fsync, rename;
   then the directory fsync), then the ``failed`` line. The ``.json`` marks the dead
   letter: it exists when its ``.json`` does.
5. Re-queue: the CLI renames ``.dcm`` then ``.json`` into ``requeue/``; the consumer
   appends the item to the journal (durably), then removes ``.dcm``, then ``.json``. An
   interruption leaves a half-moved dead letter (still listed as failed; re-queue it
   again), a duplicate record (rule 3 collapses it) or a lone ``requeue/<id>.json``
   (already re-queued; removed).
6. Only the consumer deletes a segment, while holding its lock and after re-reading it
   to the end of its records and finding every record consumed, zero tail or not; then
   ``delivered.log`` is rewritten (temp, fsync, rename) without the lines of deleted
   segments. Only non-zero bytes after the records are logged as discarded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeAlias

import structlog

from .spool_journal import (
    CorruptRecordError,
    DeliveredLog,
    RecordFields,
    SegmentFile,
    encode_record,
    fsync_dir,
    garbage_after,
    read_payload,
    scan_records,
    utc_now_iso,
)

__all__ = [
    "DEFAULT_SEGMENT_MAX_BYTES",
    "PREALLOCATION_CHUNK_BYTES",
    "FailedItem",
    "ItemId",
    "ItemOutcome",
    "RecordFields",
    "Spool",
    "SpoolConsumer",
    "SpoolCorruptError",
    "SpoolError",
    "SpoolFullError",
    "SpoolItem",
    "SpoolLockedError",
    "SpoolStatus",
    "SpoolWriter",
]

log = structlog.get_logger()

JOURNAL_DIR = "journal"
SEGMENT_SUFFIX = ".seg"
DELIVERED_LOG = "delivered.log"
CONSUMER_LOCK = "consumer.lock"
FAILED_DIR = "failed"
REQUEUE_DIR = "requeue"
DONE_DIR = "done"
DATA_SUFFIX = ".dcm"
SIDECAR_SUFFIX = ".json"
TEMP_PREFIX = "."
"""Files being written start with a dot and end in ``.tmp``; listings skip them."""
TEMP_SUFFIX = ".tmp"
SIDECAR_SPOOL_KEY = "spool"
"""Sidecar key under which the spool keeps the record fields a re-queue needs."""
DEFAULT_SEGMENT_MAX_BYTES = 64 * 1024 * 1024
PREALLOCATION_CHUNK_BYTES = 4 * 1024 * 1024
"""A writer preallocates its segment this much at a time (zeros, then one fsync): when it
creates the segment, and in a background thread once less than half of it is left.
Never past ``segment_max_bytes``; 0 turns preallocation off (every record then grows the
file). Read when a writer is made, so tests may monkeypatch it."""
PREALLOCATION_RETRY_SECONDS = 5.0
"""After a failed preallocation (ENOSPC, ...) a writer appends without for this long."""

ItemId: TypeAlias = str
ItemOutcome: TypeAlias = Literal["delivered", "superseded", "failed"]
OUTCOMES: frozenset[str] = frozenset({"delivered", "superseded", "failed"})

_SEGMENT_NAME = re.compile(r"^(\d+)-(\d+)" + re.escape(SEGMENT_SUFFIX) + "$")
_ITEM_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class SpoolError(Exception):
    """Base class of spool errors; the spool could not do what was asked.

    ::

        SpoolError
         ├── SpoolFullError     no space or quota left: answer C-STORE 0xA700
         ├── SpoolLockedError   another consumer already reads this spool
         └── SpoolCorruptError  an item's bytes no longer match their CRC
    """


class SpoolFullError(SpoolError):
    """The file system is full (ENOSPC) or the quota is spent (EDQUOT)."""


class SpoolLockedError(SpoolError):
    """Another process holds ``consumer.lock``: only one forwarder may run per spool."""


class SpoolCorruptError(SpoolError):
    """A record failed its CRC check when read back."""


def _spool_error(exc: OSError, doing: str) -> SpoolError:
    kind = SpoolFullError if exc.errno in _FULL_ERRNOS else SpoolError
    return kind(f"{doing}: {exc.strerror or exc}")


@dataclass(frozen=True)
class SpoolItem:
    """A pending instance. ``read()`` returns its bytes as received."""

    id: ItemId
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    calling_ae: str
    received_at: str
    size: int
    """Length of the DICOM bytes."""
    segment: Path = field(repr=False, compare=False)
    offset: int = field(repr=False, compare=False)
    order: tuple[int, int, int] = field(repr=False, compare=False)

    def read(self) -> bytes:
        """The DICOM bytes; :class:`SpoolCorruptError` if they fail their CRC."""
        try:
            with _open_ro(self.segment) as fd:
                return read_payload(fd, self.offset)
        except FileNotFoundError as exc:
            raise SpoolError(f"item {self.id} is no longer in the spool") from exc
        except CorruptRecordError as exc:
            raise SpoolCorruptError(f"item {self.id}: {exc}") from exc
        except OSError as exc:
            raise _spool_error(exc, f"cannot read item {self.id}") from exc

    def record_fields(self) -> RecordFields:
        """The record header, as given to :meth:`SpoolWriter.put`."""
        return RecordFields(
            self.sop_instance_uid, self.sop_class_uid, self.transfer_syntax_uid, self.calling_ae, self.received_at
        )


@dataclass(frozen=True)
class SpoolStatus:
    """Counts for ``sr2fhir spool status``; pending includes re-queued dead letters."""

    pending: int
    pending_bytes: int
    oldest_pending_received_at: str | None
    failed: int
    segments: int


@dataclass(frozen=True)
class FailedItem:
    """A dead letter; ``sidecar`` is the whole JSON sidecar as stored."""

    id: ItemId
    sop_instance_uid: str
    reason: str
    sidecar: dict[str, Any]


@contextlib.contextmanager
def _open_ro(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``path`` under a temporary name, fdatasync it, rename it into place."""
    temp = path.with_name(f"{TEMP_PREFIX}{path.name}{TEMP_SUFFIX}")
    with open(temp, "wb") as out:
        out.write(data)
        out.flush()
        if sync:
            os.fdatasync(out.fileno())
    os.replace(temp, path)


class _Layout:
    """Paths and names under the spool directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.journal = root / JOURNAL_DIR
        self.delivered_log = root / DELIVERED_LOG
        self.consumer_lock = root / CONSUMER_LOCK
        self.failed = root / FAILED_DIR
        self.requeue = root / REQUEUE_DIR
        self.done = root / DONE_DIR

    def ensure(self, *, keep_done: bool) -> None:
        """Create the tree if needed; :class:`SpoolError` if it is not a writable directory."""
        dirs = [self.journal, self.failed, self.requeue] + ([self.done] if keep_done else [])
        try:
            for directory in dirs:
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool directory {self.root}: {exc.strerror or exc}") from exc
        if not all(os.access(d, os.W_OK | os.X_OK) for d in [self.root, *dirs]):
            raise SpoolError(f"the spool directory {self.root} is not writable")

    def segment_path(self, created_ns: int, pid: int) -> Path:
        return self.journal / f"{created_ns}-{pid}{SEGMENT_SUFFIX}"

    def segments(self) -> list[tuple[tuple[int, int], Path]]:
        """Existing segments as ``((created_ns, pid), path)``, oldest first."""
        found = []
        for name in os.listdir(self.journal):
            match = _SEGMENT_NAME.match(name)
            if match:
                found.append(((int(match[1]), int(match[2])), self.journal / name))
        return sorted(found)

    @staticmethod
    def item_id(segment: Path, offset: int) -> ItemId:
        return f"{segment.name.removesuffix(SEGMENT_SUFFIX)}-{offset}"

    @staticmethod
    def segment_name_of(item_id: ItemId) -> str:
        return item_id.rpartition("-")[0] + SEGMENT_SUFFIX

    @staticmethod
    def entries(directory: Path) -> dict[str, set[str]]:
        """Item id -> suffixes present in a dead-letter directory (temp files skipped)."""
        found: dict[str, set[str]] = {}
        for name in os.listdir(directory):
            stem, dot, suffix = name.rpartition(".")
            if dot and not name.startswith(TEMP_PREFIX) and _ITEM_ID.match(stem):
                found.setdefault(stem, set()).add(dot + suffix)
        return found


class SpoolWriter:
    """Appends received instances to this process's active segment.

    Thread-safe: the listener's association threads share one writer. Concurrent puts
    share fdatasyncs (group commit): one thread syncs, the others that appended before
    the sync started wait for it instead of issuing their own. Records go into zeros
    preallocated ahead of them (see the module docstring); a short-lived background
    thread ("spool-preallocate") writes the next chunk of zeros while puts go on.
    """

    def __init__(
        self, layout: _Layout, *, segment_max_bytes: int, preallocation_chunk_bytes: int | None = None
    ) -> None:
        self._layout = layout
        self._segment_max_bytes = segment_max_bytes
        self._chunk = PREALLOCATION_CHUNK_BYTES if preallocation_chunk_bytes is None else preallocation_chunk_bytes
        self._cond = threading.Condition()
        self._segment: SegmentFile | None = None
        self._syncing = False
        self._closed = False
        self._last_created_ns = 0
        self._preallocate_after = 0.0
        """time.monotonic() before which no preallocation is tried (after one failed)."""

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, record_fields: RecordFields, data: bytes | bytearray | memoryview) -> ItemId:
        """Append one instance; returns its id once it is durable (safe to acknowledge).

        Raises :class:`SpoolFullError` on ENOSPC/EDQUOT, :class:`SpoolError` otherwise;
        a failed put leaves nothing that reads as a record, and later puts may succeed.
        """
        record = encode_record(record_fields, data)
        with self._cond:
            if self._closed:
                raise SpoolError("the spool writer is closed")
            segment = self._segment_for(len(record))
            try:
                offset = segment.append(record)
            except OSError as exc:
                if exc.errno in _FULL_ERRNOS:
                    segment.broken = True  # the next put retires it, so its space can be reclaimed
                raise _spool_error(exc, f"cannot append to journal segment {segment.path.name}") from exc
            self._extend_if_low(segment)
            item_id = _Layout.item_id(segment.path, offset)
            end = offset + len(record)
            while segment.synced_to < end and segment.sync_error is None and self._syncing:
                self._cond.wait()
            if segment.synced_to >= end:
                return item_id
            if segment.sync_error is not None:
                raise _spool_error(segment.sync_error, f"cannot sync journal segment {segment.path.name}")
            self._syncing = True
            target = segment.size
        error: OSError | None = None
        try:
            segment.sync()
        except OSError as exc:
            error = exc
        with self._cond:
            self._syncing = False
            if error is None:
                segment.synced_to = max(segment.synced_to, target)
            else:
                segment.sync_error = error
            self._cond.notify_all()
        if error is not None:
            raise _spool_error(error, f"cannot sync journal segment {segment.path.name}")
        return item_id

    def free_bytes(self) -> int:
        """Space left for unprivileged writers on the spool's file system."""
        stat = os.statvfs(self._layout.root)
        return stat.f_bavail * stat.f_frsize

    def release_space(self) -> None:
        """Retire the active segment now (cut off its zero tail, unlock it); for a full disk.

        The consumer deletes a retired segment once every record in it is consumed; the next
        put starts a new segment. Without this, a writer that keeps its segment open holds
        space (records already delivered, preallocated zeros) until it rolls over or closes.
        """
        with self._cond:
            while self._syncing or (self._segment is not None and self._segment.extending):
                self._cond.wait()
            if self._segment is not None and not self._closed:
                self._retire(self._segment)
                log.info("spool_segment_released", reason="spool file system full or under its reserve")

    def close(self) -> None:
        """Close the active segment (deleting it if empty, else cutting off its zero tail); idempotent."""
        with self._cond:
            while self._syncing or (self._segment is not None and self._segment.extending):
                self._cond.wait()
            self._closed = True
            if self._segment is not None:
                self._retire(self._segment)

    def _segment_for(self, record_length: int) -> SegmentFile:
        """The segment to append to, rolling over when full or unusable (lock held)."""
        while True:
            if self._closed:  # closed while this thread waited
                raise SpoolError("the spool writer is closed")
            segment = self._segment
            if segment is None:
                self._segment = segment = self._create_segment()
                return segment
            full = segment.size > 0 and segment.size + record_length > self._segment_max_bytes
            if not (full or segment.broken or segment.sync_error is not None):
                if segment.extending and segment.size + record_length > segment.allocated:
                    self._cond.wait()  # never write where the preallocation is writing zeros
                    continue
                return segment
            if self._syncing or segment.extending:  # let them finish before closing the file
                self._cond.wait()
                continue
            self._retire(segment)

    def _retire(self, segment: SegmentFile) -> None:
        """Sync what is not yet durable, cut off the zero tail, close.

        Lock held, no fdatasync and no preallocation running. The cut is not synced: if
        it is lost in a crash the zero tail is back, which reads as the end of records.
        """
        if segment.sync_error is None and segment.synced_to < segment.size:
            try:
                segment.sync()
                segment.synced_to = segment.size
            except OSError as exc:
                segment.sync_error = exc
            self._cond.notify_all()
        if segment.size == 0 and not segment.broken:
            with contextlib.suppress(OSError):
                segment.path.unlink()
        else:
            with contextlib.suppress(OSError):
                segment.trim()
        segment.close()
        self._segment = None

    def _preallocation_length(self, segment: SegmentFile) -> int:
        """How much to preallocate at ``segment.allocated`` now (0: nothing). Lock held."""
        if self._chunk <= 0 or segment.broken or segment.sync_error is not None:
            return 0
        if time.monotonic() < self._preallocate_after:
            return 0
        return max(0, min(self._chunk, self._segment_max_bytes - segment.allocated))

    def _preallocation_failed(self, segment: SegmentFile, exc: OSError) -> None:
        """Append without preallocating for a while (lock held)."""
        self._preallocate_after = time.monotonic() + PREALLOCATION_RETRY_SECONDS
        log.warning("spool_preallocation_failed", segment=segment.path.name, error=exc.strerror or str(exc))

    def _extend_if_low(self, segment: SegmentFile) -> None:
        """Start a background preallocation when less than half a chunk is left (lock held)."""
        if segment.extending or segment.allocated - segment.size >= self._chunk // 2:
            return
        length = self._preallocation_length(segment)
        if length <= 0:
            return
        segment.extending = True
        thread = threading.Thread(
            target=self._extend, args=(segment, segment.allocated, length), name="spool-preallocate", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no new threads (interpreter shutting down): append without
            segment.extending = False

    def _extend(self, segment: SegmentFile, start: int, length: int) -> None:
        """Background thread: zeros at ``start`` while puts write before it."""
        error: OSError | None = None
        done = False
        try:
            segment.preallocate(start, length)
            done = True
        except OSError as exc:
            error = exc
        finally:
            with self._cond:
                segment.extending = False
                if done:
                    segment.allocated = max(segment.allocated, start + length)
                elif error is not None:
                    self._preallocation_failed(segment, error)
                self._cond.notify_all()

    def _create_segment(self) -> SegmentFile:
        for _attempt in range(100):
            created_ns = max(time.time_ns(), self._last_created_ns + 1)
            self._last_created_ns = created_ns
            path = self._layout.segment_path(created_ns, os.getpid())
            try:
                segment = SegmentFile.create(path)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _spool_error(exc, "cannot create a journal segment") from exc
            if segment is None:
                continue
            try:
                fsync_dir(self._layout.journal)
            except OSError as exc:
                segment.close()
                with contextlib.suppress(OSError):
                    path.unlink()
                raise _spool_error(exc, "cannot sync the journal directory") from exc
            length = self._preallocation_length(segment)
            if length > 0:
                try:
                    segment.preallocate(0, length)
                    segment.allocated = length
                except OSError as exc:  # not fatal: records are appended instead
                    self._preallocation_failed(segment, exc)
            log.debug("spool_segment_created", segment=path.name, preallocated=segment.allocated)
            return segment
        raise SpoolError(f"cannot create a journal segment in {self._layout.journal}")


@dataclass
class _SegmentState:
    path: Path
    key: tuple[int, int]
    scanned_to: int = 0
    unconsumed: int = 0


class _JournalIndex:
    """What the journal holds: segments read so far and the pending items, oldest first."""

    def __init__(self, layout: _Layout, delivered: Mapping[str, str]) -> None:
        self._layout = layout
        self._delivered = delivered
        self.segments: dict[str, _SegmentState] = {}
        self.pending: dict[ItemId, SpoolItem] = {}
        self.superseded: list[SpoolItem] = []
        """Items dropped by the SOP Instance UID rule, not yet logged."""
        self._by_sop: dict[str, ItemId] = {}
        self._unsorted = False

    def scan(self, *, verify: bool) -> None:
        """Read what was appended since the last scan, in every segment."""
        listed = self._layout.segments()
        for key, path in listed:
            state = self.segments.get(path.name)
            if state is None:
                state = self.segments[path.name] = _SegmentState(path, key)
            with contextlib.suppress(FileNotFoundError), _open_ro(path) as fd:
                self.scan_segment(state, fd, verify=verify)
        vanished = set(self.segments) - {path.name for _, path in listed}
        for name in vanished:
            lost = [item_id for item_id, item in self.pending.items() if item.segment.name == name]
            for item_id in lost:
                self.consume(item_id)
            if lost:
                log.warning("spool_segment_vanished", segment=name, pending_items=len(lost))
            del self.segments[name]
        self.settle()

    def settle(self) -> None:
        """Restore the oldest-first order after items arrived out of order."""
        if self._unsorted:
            self.pending = dict(sorted(self.pending.items(), key=lambda entry: entry[1].order))
            self._unsorted = False

    def scan_segment(self, state: _SegmentState, fd: int, *, verify: bool) -> None:
        for record in scan_records(fd, state.scanned_to, verify=verify):
            state.scanned_to = record.end
            item_id = _Layout.item_id(state.path, record.offset)
            if item_id in self._delivered:
                continue
            f = record.fields
            self._add(
                SpoolItem(
                    item_id, f.sop_instance_uid, f.sop_class_uid, f.transfer_syntax_uid, f.calling_ae,
                    f.received_at, record.payload_length, state.path, record.offset, (*state.key, record.offset),
                ),
                state,
            )

    def _add(self, item: SpoolItem, state: _SegmentState) -> None:
        state.unconsumed += 1
        other_id = self._by_sop.get(item.sop_instance_uid)
        if other_id is not None:
            other = self.pending[other_id]
            if _newness(item) < _newness(other):
                state.unconsumed -= 1
                self.superseded.append(item)
                return
            self.consume(other_id)
            self.superseded.append(other)
        if self.pending and item.order < next(reversed(self.pending.values())).order:
            self._unsorted = True
        self.pending[item.id] = item
        self._by_sop[item.sop_instance_uid] = item.id

    def consume(self, item_id: ItemId) -> None:
        """Forget a pending item (delivered, superseded or dead-lettered)."""
        item = self.pending.pop(item_id, None)
        if item is None:
            return
        if self._by_sop.get(item.sop_instance_uid) == item_id:
            del self._by_sop[item.sop_instance_uid]
        state = self.segments.get(item.segment.name)
        if state is not None:
            state.unconsumed -= 1


class SpoolConsumer:
    """The forwarder's side: pending items oldest first, delivered marks, dead letters.

    Only one consumer per spool (``consumer.lock``). Use as a context manager or call
    :meth:`open` and :meth:`close`. Methods may be called from several threads.
    """

    def __init__(
        self,
        layout: _Layout,
        *,
        retention: Literal["delete", "keep"],
        segment_max_bytes: int,
        preallocation_chunk_bytes: int | None = None,
    ) -> None:
        self._layout = layout
        self._retention = retention
        self._segment_max_bytes = segment_max_bytes
        self._preallocation_chunk_bytes = preallocation_chunk_bytes
        self._lock = threading.RLock()
        self._lock_fd = -1
        self._log: DeliveredLog | None = None
        self._index: _JournalIndex | None = None
        self._done_unsynced = False

    def __enter__(self) -> SpoolConsumer:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        """Take ``consumer.lock`` (else :class:`SpoolLockedError`) and read the journal."""
        with self._lock:
            if self._lock_fd >= 0:
                return
            self._layout.ensure(keep_done=self._retention == "keep")
            fd = os.open(self._layout.consumer_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise SpoolLockedError(
                    f"another consumer (pid {holder or 'unknown'}) holds {self._layout.consumer_lock}; "
                    "only one forwarder may run per spool"
                ) from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._log = delivered_log = DeliveredLog.open(self._layout.delivered_log)
                self._index = index = _JournalIndex(self._layout, delivered_log.outcomes)
                index.scan(verify=True)
                self._log_superseded()
                if any(_Layout.segment_name_of(i) not in index.segments for i in delivered_log.outcomes):
                    delivered_log.rewrite(lambda i: _Layout.segment_name_of(i) in index.segments)
            except OSError as exc:
                self._close_files(fd)
                raise _spool_error(exc, f"cannot open the spool at {self._layout.root}") from exc
            except BaseException:
                self._close_files(fd)
                raise
            self._lock_fd = fd

    def close(self) -> None:
        """Release the lock; idempotent."""
        with self._lock:
            self._close_files(self._lock_fd)
            self._lock_fd = -1

    def pending(self, limit: int | None = None) -> list[SpoolItem]:
        """Up to ``limit`` pending items, oldest first (segment creation, then offset).

        Picks up re-queued dead letters and everything appended since the last call,
        logs older duplicates of a SOP Instance UID as superseded, and deletes fully
        consumed segments that no writer holds.
        """
        with self._lock:
            index = self._open_index()
            try:
                self.ingest_requeued()
            except SpoolError as exc:  # keep delivering (which may free space); retry next time
                log.error("spool_requeue_failed", error=str(exc))
            try:
                index.scan(verify=True)
                self._log_superseded()
                self._collect_garbage(index)
                index.settle()
            except OSError as exc:
                raise _spool_error(exc, "cannot read the journal") from exc
            return list(itertools.islice(index.pending.values(), limit))

    def mark_delivered(self, item: SpoolItem, outcome: ItemOutcome = "delivered") -> None:
        """Durably record that ``item`` is done (one fdatasync); it is not pending again."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, not {outcome!r}")
        with self._lock:
            index = self._open_index()
            assert self._log is not None
            try:
                if outcome == "delivered" and self._retention == "keep":
                    _write_file(self._layout.done / f"{item.id}{DATA_SUFFIX}", item.read())
                    self._done_unsynced = True
                self._log.append([(item.id, outcome)])
            except OSError as exc:
                raise _spool_error(exc, f"cannot mark item {item.id} {outcome}") from exc
            index.consume(item.id)

    def dead_letter(self, item: SpoolItem, sidecar: Mapping[str, Any]) -> None:
        """Move ``item`` to ``failed/`` with ``sidecar`` (reason, OperationOutcome, attempts...)."""
        if SIDECAR_SPOOL_KEY in sidecar:
            raise ValueError(f"sidecar key {SIDECAR_SPOOL_KEY!r} is reserved for the spool")
        spooled: dict[str, Any] = {"id": item.id, **item.record_fields().to_json(), "dead_lettered_at": utc_now_iso()}
        document = {**sidecar, SIDECAR_SPOOL_KEY: spooled}
        json.dumps(document)  # a sidecar that is not JSON fails here, before anything is written
        with self._lock:
            index = self._open_index()
            if item.id not in index.pending and not item.segment.exists():
                # superseded by a newer copy, or delivered, and its segment deleted since
                log.warning("spool_item_gone", item_id=item.id, sop_instance_uid=item.sop_instance_uid)
                return
            try:
                with _open_ro(item.segment) as fd:
                    try:
                        data = read_payload(fd, item.offset)
                    except CorruptRecordError as exc:  # keep what is left; it must not block the queue
                        spooled["damaged"] = str(exc)
                        try:
                            data = read_payload(fd, item.offset, verify=False)
                        except CorruptRecordError:
                            data = b""
            except OSError as exc:
                raise _spool_error(exc, f"cannot read item {item.id}") from exc
            encoded = json.dumps(document, indent=2, sort_keys=True).encode()
            try:
                _write_file(self._layout.failed / f"{item.id}{DATA_SUFFIX}", data)
                _write_file(self._layout.failed / f"{item.id}{SIDECAR_SUFFIX}", encoded)
                fsync_dir(self._layout.failed)
            except OSError as exc:
                raise _spool_error(exc, f"cannot dead-letter item {item.id}") from exc
            log.info("spool_item_dead_lettered", item_id=item.id, sop_instance_uid=item.sop_instance_uid)
            self.mark_delivered(item, "failed")

    def ingest_requeued(self) -> list[ItemId]:
        """Append the dead letters found in ``requeue/`` to the journal; returns their new ids."""
        with self._lock:
            self._open_index()
            entries = _Layout.entries(self._layout.requeue)
            new_ids: list[ItemId] = []
            if not entries:
                return new_ids
            writer = SpoolWriter(
                self._layout,
                segment_max_bytes=self._segment_max_bytes,
                preallocation_chunk_bytes=self._preallocation_chunk_bytes,
            )
            try:
                for old_id, suffixes in sorted(entries.items(), key=lambda entry: _id_key(entry[0])):
                    data_path = self._layout.requeue / f"{old_id}{DATA_SUFFIX}"
                    sidecar_path = self._layout.requeue / f"{old_id}{SIDECAR_SUFFIX}"
                    if SIDECAR_SUFFIX not in suffixes:
                        continue  # the CLI is moving it right now, or was interrupted doing so
                    if DATA_SUFFIX not in suffixes:
                        sidecar_path.unlink(missing_ok=True)  # rule 5: already re-queued
                        continue
                    try:
                        document = json.loads(sidecar_path.read_bytes())
                        fields = RecordFields.from_json(document[SIDECAR_SPOOL_KEY])
                    except (ValueError, KeyError, TypeError) as exc:
                        log.error("spool_requeue_unreadable", item_id=old_id, error=str(exc))
                        continue
                    new_id = writer.put(fields, data_path.read_bytes())
                    data_path.unlink()
                    sidecar_path.unlink()
                    log.info("spool_item_requeued", item_id=new_id, requeued_from=old_id,
                             sop_instance_uid=fields.sop_instance_uid)
                    new_ids.append(new_id)
            except OSError as exc:
                raise _spool_error(exc, "cannot take re-queued items") from exc
            finally:
                writer.close()
            return new_ids

    def _open_index(self) -> _JournalIndex:
        if self._index is None or self._log is None:
            raise SpoolError("the spool consumer is not open")
        return self._index

    def _log_superseded(self) -> None:
        index, delivered_log = self._index, self._log
        assert index is not None and delivered_log is not None
        if index.superseded:
            delivered_log.append((item.id, "superseded") for item in index.superseded)
            for item in index.superseded:
                log.info("spool_item_superseded", item_id=item.id, sop_instance_uid=item.sop_instance_uid)
            index.superseded.clear()

    def _collect_garbage(self, index: _JournalIndex) -> None:
        """Delete consumed segments, then drop their lines from ``delivered.log``."""
        deleted = []
        for name, state in list(index.segments.items()):
            if state.unconsumed == 0 and self._delete(index, state):
                deleted.append(name)
        if not deleted:
            return
        fsync_dir(self._layout.journal)
        for name in deleted:
            del index.segments[name]
        assert self._log is not None
        self._log.rewrite(lambda item_id: _Layout.segment_name_of(item_id) in index.segments)

    def _delete(self, index: _JournalIndex, state: _SegmentState) -> bool:
        """Delete a consumed segment if no writer holds it (rule 6)."""
        try:
            fd = os.open(state.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a writer is still appending to it
            index.scan_segment(state, fd, verify=True)  # what it appended before letting go
            self._log_superseded()
            if state.unconsumed:
                return False
            if self._done_unsynced:
                fsync_dir(self._layout.done)
                self._done_unsynced = False
            discarded = garbage_after(fd, state.scanned_to)  # a zero tail is not discarded data
            os.unlink(state.path)
            log.info("spool_segment_deleted", segment=state.path.name, discarded_tail_bytes=discarded)
            return True
        finally:
            os.close(fd)

    def _close_files(self, lock_fd: int) -> None:
        if self._log is not None:
            self._log.close()
        self._log = None
        self._index = None
        if lock_fd >= 0:
            os.close(lock_fd)


class Spool:
    """Entry point: ``Spool(directory).writer()`` in the listener, ``.consumer()`` in the
    forwarder, ``.status()`` / ``.failed()`` / ``.requeue()`` anywhere, any time."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES,
        retention: Literal["delete", "keep"] = "delete",
        preallocation_chunk_bytes: int | None = None,
    ) -> None:
        """``preallocation_chunk_bytes``: see :data:`PREALLOCATION_CHUNK_BYTES` (``None``: that)."""
        if segment_max_bytes <= 0:
            raise ValueError("segment_max_bytes must be positive")
        if preallocation_chunk_bytes is not None and preallocation_chunk_bytes < 0:
            raise ValueError("preallocation_chunk_bytes must not be negative")
        if retention not in ("delete", "keep"):
            raise ValueError(f"retention must be 'delete' or 'keep', not {retention!r}")
        self._layout = _Layout(Path(directory))
        self._segment_max_bytes = segment_max_bytes
        self._retention = retention
        self._preallocation_chunk_bytes = preallocation_chunk_bytes

    @property
    def directory(self) -> Path:
        return self._layout.root

    def writer(self) -> SpoolWriter:
        """A writer for this process (one is enough; it is thread-safe)."""
        self._layout.ensure(keep_done=self._retention == "keep")
        return SpoolWriter(
            self._layout,
            segment_max_bytes=self._segment_max_bytes,
            preallocation_chunk_bytes=self._preallocation_chunk_bytes,
        )

    def consumer(self) -> SpoolConsumer:
        """The consumer (not yet open: ``with spool.consumer() as consumer: ...``)."""
        return SpoolConsumer(
            self._layout,
            retention=self._retention,
            segment_max_bytes=self._segment_max_bytes,
            preallocation_chunk_bytes=self._preallocation_chunk_bytes,
        )

    def status(self) -> SpoolStatus:
        """Counts read without any lock (a snapshot; payload CRCs are not checked, except
        the last record's in each segment, which may be torn)."""
        self._layout.ensure(keep_done=self._retention == "keep")
        index = _JournalIndex(self._layout, DeliveredLog.read(self._layout.delivered_log))
        index.scan(verify=False)
        items = [(item.size, item.received_at) for item in index.pending.values()]
        for item_id, suffixes in _Layout.entries(self._layout.requeue).items():
            if {DATA_SUFFIX, SIDECAR_SUFFIX} <= suffixes:
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    received_at = json.loads((self._layout.requeue / f"{item_id}{SIDECAR_SUFFIX}").read_bytes())[
                        SIDECAR_SPOOL_KEY]["received_at"]
                    items.append(((self._layout.requeue / f"{item_id}{DATA_SUFFIX}").stat().st_size, received_at))
        failed = sum(SIDECAR_SUFFIX in s for s in _Layout.entries(self._layout.failed).values())
        return SpoolStatus(
            pending=len(items),
            pending_bytes=sum(size for size, _ in items),
            oldest_pending_received_at=min((at for _, at in items), key=_instant, default=None),
            failed=failed,
            segments=len(index.segments),
        )

    def failed(self) -> list[FailedItem]:
        """The dead letters, oldest id first."""
        self._layout.ensure(keep_done=self._retention == "keep")
        result = []
        for item_id, suffixes in sorted(_Layout.entries(self._layout.failed).items(), key=lambda e: _id_key(e[0])):
            if SIDECAR_SUFFIX not in suffixes:
                continue
            try:
                sidecar = json.loads((self._layout.failed / f"{item_id}{SIDECAR_SUFFIX}").read_bytes())
                if not isinstance(sidecar, dict):
                    raise ValueError("not a JSON object")
            except FileNotFoundError:
                continue  # re-queued meanwhile
            except (OSError, ValueError) as exc:
                sidecar = {"reason": f"unreadable sidecar: {exc}"}
            spooled = sidecar.get(SIDECAR_SPOOL_KEY)
            sop_instance_uid = str(spooled.get("sop_instance_uid", "")) if isinstance(spooled, dict) else ""
            result.append(FailedItem(item_id, sop_instance_uid, str(sidecar.get("reason", "")), sidecar))
        return result

    def requeue(self, ids: list[ItemId] | None = None) -> list[ItemId]:
        """Hand dead letters back to the consumer (``None``: all); returns the ids moved.

        Unknown ids raise ``KeyError`` before anything is moved.
        """
        self._layout.ensure(keep_done=self._retention == "keep")
        failed, requeue = self._layout.failed, self._layout.requeue
        known = {i for i, suffixes in _Layout.entries(failed).items() if SIDECAR_SUFFIX in suffixes}
        targets = sorted(known, key=_id_key) if ids is None else list(dict.fromkeys(ids))
        unknown = [i for i in targets if i not in known]
        if unknown:
            raise KeyError(f"no dead letter with id {', '.join(unknown)} in {failed} (see `sr2fhir spool failed`)")
        try:
            moved = []
            for item_id in targets:
                with contextlib.suppress(FileNotFoundError):  # already moved by an interrupted requeue
                    os.rename(failed / f"{item_id}{DATA_SUFFIX}", requeue / f"{item_id}{DATA_SUFFIX}")
                with contextlib.suppress(FileNotFoundError):  # a concurrent requeue was faster
                    os.rename(failed / f"{item_id}{SIDECAR_SUFFIX}", requeue / f"{item_id}{SIDECAR_SUFFIX}")
                    moved.append(item_id)
            if moved:
                fsync_dir(requeue)
                fsync_dir(failed)
        except OSError as exc:
            raise _spool_error(exc, "cannot re-queue dead letters") from exc
        return moved


def _instant(timestamp: str) -> tuple[float, str]:
    """Sort key for ISO 8601 timestamps; unparseable ones sort first (and visibly)."""
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return (float("-inf"), timestamp)
    return ((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp(), timestamp)


def _newness(item: SpoolItem) -> tuple[tuple[float, str], tuple[int, int, int]]:
    """Which of two copies of an instance is the newer: received later, else spooled later."""
    return _instant(item.received_at), item.order


def _id_key(item_id: str) -> tuple[int, ...]:
    match = _ITEM_ID.match(item_id)
    return tuple(int(part) for part in match.groups()) if match else ()
