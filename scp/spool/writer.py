"""The listener's side of the spool: puts, with group commit and a free-space reserve.

See :mod:`scp.spool` for the layout and the recovery rules this follows.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import structlog

from .db import (
    LOW_SPACE_BYTES,
    PAGE_SIZE,
    WRITER_CHECKPOINT_PAGES,
    SpoolDatabase,
    adapt_checkpoints,
    free_bytes,
    insert_items,
    retrying,
    vacuum_if_sparse,
    write_transaction,
)
from .items import ItemId, RecordFields, SpoolError, SpoolFullError, spool_error

__all__ = ["RECLAIM_INTERVAL_S", "RESERVE_BYTES", "SpoolWriter", "wal_preallocation_bytes"]

log = structlog.get_logger()

RESERVE_BYTES = 512 * 1024
"""A put is refused while it would leave less free space than this (plus twice its own
size: the WAL, then ``spool.db``), so that delivered items can still be removed."""
RECLAIM_INTERVAL_S = 1.0
"""A put that finds too little space gives free pages back first, at most this often."""
PREALLOCATION_CHUNK_BYTES = 1024 * 1024
"""The WAL is extended this much at a time, each under SQLite's write lock (the default of
the spool's ``preallocation_chunk_bytes``)."""


def wal_preallocation_bytes(wal_size_limit: int) -> int:
    """How far a writer fills the WAL with zeros ahead: the frames of a writer's checkpoint
    cycle (and a few more), but never past ``journal_size_limit`` (SQLite would cut it)."""
    return min(wal_size_limit, 32 + (WRITER_CHECKPOINT_PAGES + 100) * (24 + PAGE_SIZE))


class _Put:
    """One put waiting for the group commit."""

    __slots__ = ("data", "error", "fields", "item_id", "size")

    def __init__(self, fields: RecordFields, data: bytes | bytearray | memoryview) -> None:
        self.fields = fields
        self.data = data
        self.size = memoryview(data).nbytes  # TypeError here, in the caller's thread
        self.item_id: ItemId | None = None
        self.error: SpoolError | None = None


class SpoolWriter:
    """Stores received instances; one per process is enough.

    Thread-safe, with group commit: puts that arrive while a transaction commits queue
    up; when it is done, one of them (the leader) commits all queued puts in one
    transaction and one fdatasync, and the others wait for it instead of committing
    their own.

    WAL preallocation: a short-lived background thread ("spool-preallocate-wal") fills the
    WAL with zeros past its end up to :func:`wal_preallocation_bytes`, a chunk (1 MiB) at a
    time under SQLite's write lock (so no frame is being written there), each fsync'ed. SQLite
    writes its frames over those zeros and reuses the file after every checkpoint, so a
    put's fdatasync has no file size or extent change to commit (a growing WAL doubles the
    cost of a put, measured). Zeros after the last frame read as the end of the WAL. Not
    done with less than ``LOW_SPACE_BYTES`` free besides.
    """

    def __init__(self, database: SpoolDatabase, conn: sqlite3.Connection, root: Path, *,
                 wal_size_limit: int = 0, preallocation_chunk_bytes: int | None = None) -> None:
        self._database = database
        self._conn = conn
        self._root = root
        self._cond = threading.Condition()
        self._queue: list[_Put] = []
        self._busy = False
        """A thread is using the connection (committing, or releasing space)."""
        self._closed = False
        self._reclaimed_at = float("-inf")
        self._checkpoint_pages: int | None = None
        self._stop_preallocation = threading.Event()
        self._preallocation: threading.Thread | None = None
        target = wal_preallocation_bytes(wal_size_limit)
        chunk = PREALLOCATION_CHUNK_BYTES if preallocation_chunk_bytes is None else preallocation_chunk_bytes
        if target > 0 and chunk > 0:
            self._preallocation = threading.Thread(target=self._preallocate_wal, args=(target, chunk),
                                                   name="spool-preallocate-wal", daemon=True)
            self._preallocation.start()

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, record_fields: RecordFields, data: bytes | bytearray | memoryview) -> ItemId:
        """Store one instance; returns its id once it is durable (safe to acknowledge).

        Raises :class:`SpoolFullError` when the disk is full (or nearly, see
        :data:`RESERVE_BYTES`), :class:`SpoolError` otherwise; a failed put stores nothing,
        and later puts may succeed.
        """
        if not isinstance(record_fields, RecordFields):
            raise TypeError(f"record_fields must be RecordFields, not {type(record_fields).__name__}")
        entry = _Put(record_fields, data)
        with self._cond:
            if self._closed:
                raise SpoolError("the spool writer is closed")
            self._queue.append(entry)
            while self._busy and entry.item_id is None and entry.error is None:
                self._cond.wait()
            batch: list[_Put] = []
            if entry.item_id is None and entry.error is None:
                self._busy = True  # the leader: commits everything queued so far
                batch, self._queue = self._queue, []
        if batch:
            results: list[tuple[ItemId | None, SpoolError | None]] = []
            try:
                results = self._commit(batch)
            finally:
                with self._cond:
                    for put, (item_id, error) in zip(batch, results):  # noqa: B905 - empty if _commit raised
                        put.item_id, put.error = item_id, error
                    for put in batch:
                        if put.item_id is None and put.error is None:
                            put.error = SpoolError("the spool writer failed while storing the instance")
                    self._busy = False
                    self._cond.notify_all()
        if entry.error is not None:
            raise entry.error
        assert entry.item_id is not None
        return entry.item_id

    def free_bytes(self) -> int:
        """Space left for unprivileged writers on the spool's file system."""
        return free_bytes(self._root)

    def release_space(self) -> None:
        """Give the database's free pages back to the file system (``VACUUM``, unless many
        items are pending) and truncate the WAL (as far as other connections let it); for
        a full disk. Never raises."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            if self._closed:
                return
            self._busy = True
        try:
            self._reclaim()
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def close(self) -> None:
        """Wait for the puts under way, then close the connection; idempotent."""
        self._stop_preallocation.set()
        if self._preallocation is not None:
            self._preallocation.join()
        with self._cond:
            while self._busy or self._queue:
                self._cond.wait()
            if self._closed:
                return
            self._closed = True
            self._conn.close()

    def _commit(self, batch: list[_Put]) -> list[tuple[ItemId | None, SpoolError | None]]:
        """Store ``batch`` in one transaction; on failure each put alone, so that one put
        that does not fit (or fails otherwise) does not fail the others."""
        try:
            return [(item_id, None) for item_id in self._store(batch)]
        except SpoolError as exc:
            if len(batch) == 1:
                return [(None, exc)]
        results: list[tuple[ItemId | None, SpoolError | None]] = []
        for put in batch:
            try:
                results.append((self._store([put])[0], None))
            except SpoolError as exc:
                results.append((None, exc))
        return results

    def _store(self, batch: list[_Put]) -> list[ItemId]:
        self._check_space(sum(put.size for put in batch))
        try:
            with write_transaction(self._conn, "cannot store the instance"):
                seqs = insert_items(self._conn, [(put.fields, put.data) for put in batch])
        except (TypeError, ValueError, OverflowError) as exc:  # a field SQLite cannot bind
            raise SpoolError(f"cannot store the instance: {exc}") from exc
        return [self._database.item_id(seq) for seq in seqs]

    def _check_space(self, size: int) -> None:
        """:class:`SpoolFullError` unless ``size`` bytes fit above the reserve, after giving
        free pages back to the file system if that helps (at most every RECLAIM_INTERVAL_S).
        Checkpoints come sooner while space is low (:func:`scp.spool.db.checkpoint_pages`)."""
        needed = RESERVE_BYTES + 2 * size
        try:
            free = self.free_bytes()
            if free < needed and time.monotonic() - self._reclaimed_at >= RECLAIM_INTERVAL_S:
                self._reclaim()
                free = self.free_bytes()
            self._checkpoint_pages = adapt_checkpoints(self._conn, free, self._checkpoint_pages,
                                                       WRITER_CHECKPOINT_PAGES)
        except (OSError, sqlite3.Error) as exc:
            raise spool_error(exc, "cannot check the spool's free space") from exc
        if free < needed:
            raise SpoolFullError(f"No space left on device for the spool: {free} bytes free, {needed} needed "
                                 f"(the spool keeps {RESERVE_BYTES} bytes to remove what it delivers)")

    def _reclaim(self) -> None:
        """Stop filling the WAL ahead, ``VACUUM`` if the pages in use are few
        (:func:`scp.spool.db.vacuum_if_sparse`), then a TRUNCATE checkpoint (as far as other
        connections let it)."""
        self._stop_preallocation.set()  # short of space: no zeros ahead any more
        if self._preallocation is not None:
            self._preallocation.join()
        self._reclaimed_at = time.monotonic()
        conn = self._conn
        try:
            vacuumed = vacuum_if_sparse(conn, force=True)
            busy, wal_frames, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
        except sqlite3.Error as exc:
            log.warning("spool_release_space_failed", error=str(exc))
            return
        log.info("spool_space_released", reason="spool file system full or under its reserve", vacuumed=vacuumed,
                 wal_truncated=not busy, wal_frames=wal_frames)

    def _preallocate_wal(self, target: int, chunk: int) -> None:
        """Background thread: zeros past the WAL's end up to ``target`` bytes (see the class)."""
        wal = Path(f"{self._database.path}-wal")
        try:
            if free_bytes(self._root) < LOW_SPACE_BYTES + target:
                return
            conn = self._database.connect(checkpoint=WRITER_CHECKPOINT_PAGES)
        except (OSError, SpoolError) as exc:
            log.warning("spool_wal_preallocation_failed", error=str(exc))
            return
        zeros = bytes(chunk)
        try:
            while not self._stop_preallocation.is_set():
                retrying(lambda: conn.execute("BEGIN IMMEDIATE"))
                try:  # no connection writes frames now: past the end is ours to fill
                    fd = os.open(wal, os.O_WRONLY | os.O_CLOEXEC)
                    try:
                        end = os.fstat(fd).st_size
                        if end >= target:
                            return
                        length = min(len(zeros), target - end)
                        if os.pwrite(fd, memoryview(zeros)[:length], end) != length:
                            raise OSError("short write while preallocating the WAL")
                    finally:
                        os.close(fd)
                finally:
                    conn.execute("ROLLBACK")
                fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fdatasync(fd)  # outside the lock: puts go on meanwhile
                finally:
                    os.close(fd)
        except (OSError, sqlite3.Error) as exc:  # not fatal: SQLite then grows the WAL itself
            log.warning("spool_wal_preallocation_failed", error=str(exc))
        finally:
            conn.close()
