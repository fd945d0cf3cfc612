"""The durable spool between the DICOM listener and the forwarder: one SQLite database.

The listener makes each received instance durable before it answers the C-STORE
(:meth:`SpoolWriter.put`, :mod:`scp.spool.writer`: one committed transaction, the WAL
fdatasync'ed); the forwarder, another process, takes items oldest first
(:class:`SpoolConsumer`, :mod:`scp.spool.consumer`); ``sr2fhir spool ...`` inspects and
re-queues dead letters while both run (:meth:`Spool.status`, :meth:`Spool.failed`,
:meth:`Spool.requeue`). The SQL is in :mod:`scp.spool.db`, the plain files in
:mod:`scp.spool.files`, the reader of the journal spool of earlier releases in
:mod:`scp.spool.legacy`.

On-disk layout under the spool directory::

    spool.db                         the pending instances (SQLite): one row each, the
                                     payload as a BLOB with its CRC-32 (schema: scp.spool.db)
    spool.db-wal, spool.db-shm       SQLite's write-ahead log and its index, while a
                                     connection is open (a crashed one's stay: recovered)
    consumer.lock                    flock'ed by the one consumer; holds its pid
    failed/<id>.dcm, failed/<id>.json    a dead letter: the bytes and the JSON sidecar
    requeue/<id>.dcm, requeue/<id>.json  dead letters handed back by ``sr2fhir spool retry``
    done/<id>.dcm                    delivered items, only with retention "keep"
                                     (spool.db also remembers what each delivered SR wrote,
                                     for amended reports: scp.spool.registry)
    journal/, delivered.log          only from an earlier release, until migrated

An item id is ``<epoch>-<seq>``: the database's creation time and the item's row
(``AUTOINCREMENT``: never reused). Dead letters of the journal era keep their
``<created_ns>-<pid>-<offset>`` ids.

Writing: every process has one writer connection, shared by the listener's association
threads with group commit (puts that arrive while a transaction commits are committed
together by the next leader thread: one transaction, one fdatasync). Readers never block
writers (WAL); writers of several processes (the listener, the consumer's removals and
re-queues, a second listener) take turns on SQLite's write lock (``BEGIN IMMEDIATE``,
waiting up to ``BUSY_TIMEOUT_S`` in short steps). Checkpoints (copying the WAL into
``spool.db``) are mostly made by the consumer's commits, off the path of puts.

Space: a put is refused with :class:`SpoolFullError` (C-STORE 0xA700) when the file
system would keep less than :data:`RESERVE_BYTES` free after it (twice the payload is
counted: WAL, then ``spool.db``), and when SQLite or the OS report the disk full; nothing
is written then and later puts succeed once there is room. The reserve lets the consumer
still remove what it delivers (that writes to the WAL, and a checkpoint may need room
in ``spool.db``); with less than ``LOW_SPACE_BYTES`` free every connection checkpoints
after 64 WAL frames instead of 1000-4000, so little is waiting to be copied. Pages of
removed items are reused by later puts; the consumer gives them back to the file system
once many are free (incremental vacuum); :meth:`SpoolWriter.release_space`, and a put
short of space, do so at once and truncate the WAL.

Recovery rules:

1. An item exists once its transaction committed; ``put`` returns after that commit
   (``synchronous=FULL``: the WAL is fdatasync'ed), so a crash at any point never loses an
   acknowledged item, and SQLite's WAL recovery drops a transaction that was not
   complete (a torn tail) and never leaves a half-written one. The payload's CRC-32 is
   checked on every :meth:`SpoolItem.read` (:class:`SpoolCorruptError`).
2. An item is consumed once the transaction that deleted its row committed. The
   consumer's removals are ``synchronous=NORMAL``: they survive any crash of a process
   and become durable with the next fdatasync of the WAL (the next put, a checkpoint);
   only a power failure before that can undo one. Either way the item is delivered
   again, which the forwarder's idempotent PUTs make harmless.
3. Same SOP Instance UID pending twice: the newest copy (latest ``received_at``, then
   the later one stored) is kept, the older ones are removed and logged as
   ``spool_item_superseded``. A re-queued dead letter keeps its original ``received_at``,
   so a copy the sender sent since wins.
4. Dead letter: ``failed/<id>.dcm`` then ``failed/<id>.json`` (each temp, fsync, rename;
   then the directory fsync), then the row is deleted. The ``.json`` marks the dead
   letter: it exists when its ``.json`` does.
5. Re-queue: the CLI renames ``.dcm`` then ``.json`` into ``requeue/``; the consumer
   inserts the items again (committed with ``synchronous=FULL``), then removes ``.dcm``,
   then ``.json``. An interruption leaves a half-moved dead letter (still listed as
   failed; re-queue it again), a duplicate row (rule 3 collapses it) or a lone
   ``requeue/<id>.json`` (already re-queued; removed).
6. Migration: a ``journal/`` left by an earlier release is imported when a writer or
   the consumer opens the spool (see :mod:`scp.spool.legacy`: resumable, each segment
   removed only after its import committed with ``synchronous=FULL``), keeping the
   journal's order and ``received_at``.

Locks: ``consumer.lock`` is a BSD ``flock``; SQLite locks the WAL index with POSIX
locks (shared memory in ``spool.db-shm``). The spool must therefore live on a local
file system.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import structlog

from .consumer import OUTCOMES, ItemOutcome, SpoolConsumer
from .db import CHECKPOINT_PAGES, DB_NAME, WRITER_CHECKPOINT_PAGES, SpoolDatabase, retrying
from .files import (
    CONSUMER_LOCK,
    DONE_DIR,
    FAILED_DIR,
    REQUEUE_DIR,
    SIDECAR_SPOOL_KEY,
    SIDECAR_SUFFIX,
    FailedItem,
    SpoolLayout,
)
from .items import (
    ItemId,
    RecordFields,
    SpoolCorruptError,
    SpoolError,
    SpoolFullError,
    SpoolItem,
    SpoolLockedError,
    received_us,
    spool_error,
)
from .legacy import migrate as migrate_journal
from .registry import DeliveredReport, Supersession, SupersessionState
from .legacy import pending_records, segment_paths
from .writer import RESERVE_BYTES, SpoolWriter

if TYPE_CHECKING:
    from ..config import SpoolSettings

__all__ = [
    "open_spool",
    "CONSUMER_LOCK",
    "DB_NAME",
    "DEFAULT_SEGMENT_MAX_BYTES",
    "DONE_DIR",
    "FAILED_DIR",
    "OUTCOMES",
    "REQUEUE_DIR",
    "RESERVE_BYTES",
    "FailedItem",
    "ItemId",
    "ItemOutcome",
    "DeliveredReport",
    "Supersession",
    "SupersessionState",
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

DEFAULT_SEGMENT_MAX_BYTES = 64 * 1024 * 1024

@dataclass(frozen=True)
class SpoolStatus:
    """Counts for ``sr2fhir spool status``; pending includes re-queued dead letters.

    ``segments``: files holding pending items: 1 for ``spool.db`` (0 before it exists),
    plus journal segments of an earlier release not migrated yet.
    """

    pending: int
    pending_bytes: int
    oldest_pending_received_at: str | None
    failed: int
    segments: int


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
        """The two knobs of the journal spool keep their names and their checks, with a
        meaning for the database: ``segment_max_bytes`` is the most the WAL file
        (``spool.db-wal``) keeps on disk after a checkpoint (``journal_size_limit``; it grows
        past it only for a transaction larger than that), and the writer fills the WAL with
        zeros ahead only that far; ``preallocation_chunk_bytes`` is how much of it the writer
        fills at a time (``None``: :data:`scp.spool.writer.PREALLOCATION_CHUNK_BYTES`; 0: no
        filling ahead)."""
        if segment_max_bytes <= 0:
            raise ValueError("segment_max_bytes must be positive")
        if preallocation_chunk_bytes is not None and preallocation_chunk_bytes < 0:
            raise ValueError("preallocation_chunk_bytes must not be negative")
        if retention not in ("delete", "keep"):
            raise ValueError(f"retention must be 'delete' or 'keep', not {retention!r}")
        self._layout = SpoolLayout(Path(directory))
        self._database = SpoolDatabase(self._layout.root, wal_size_limit=segment_max_bytes)
        self._wal_size_limit = segment_max_bytes
        self._preallocation_chunk_bytes = preallocation_chunk_bytes
        self._retention = retention

    @property
    def directory(self) -> Path:
        return self._layout.root

    def writer(self) -> SpoolWriter:
        """A writer for this process (one is enough; it is thread-safe)."""
        return SpoolWriter(self._database, self._connect(checkpoint=WRITER_CHECKPOINT_PAGES), self._layout.root,
                           wal_size_limit=self._wal_size_limit,
                           preallocation_chunk_bytes=self._preallocation_chunk_bytes)

    def consumer(self) -> SpoolConsumer:
        """The consumer (not yet open: ``with spool.consumer() as consumer: ...``)."""
        return SpoolConsumer(self._layout, self._database, retention=self._retention)

    def status(self) -> SpoolStatus:
        """Counts from a consistent snapshot of the database (payload CRCs not checked), plus
        the files in ``requeue/`` and ``failed/``, and the records of journal segments not
        migrated yet (counted, not migrated: that is for the writer and the consumer)."""
        conn = self._connect(migrate=False)
        try:
            count, size, oldest = retrying(lambda: conn.execute(_STATUS).fetchall())[0]
        except sqlite3.Error as exc:
            raise spool_error(exc, "cannot read the spool") from exc
        finally:
            conn.close()
        items = [(size, oldest)] if count else []
        try:
            legacy = pending_records(self._layout.root)
        except OSError as exc:
            raise spool_error(exc, "cannot read the journal of the previous release") from exc
        items += legacy
        count += len(legacy)
        for _old_id, data_path, sidecar_path in self._layout.requeued():
            try:
                received_at = json.loads(sidecar_path.read_bytes())[SIDECAR_SPOOL_KEY]["received_at"]
                items.append((data_path.stat().st_size, received_at))
                count += 1
            except (OSError, ValueError, KeyError, TypeError):
                continue
        failed = sum(SIDECAR_SUFFIX in s for s in SpoolLayout.entries(self._layout.failed).values())
        return SpoolStatus(
            pending=count,
            pending_bytes=sum(size for size, _ in items),
            oldest_pending_received_at=min((at for _, at in items), key=received_us, default=None),
            failed=failed,
            segments=int(self._database.path.exists()) + len(segment_paths(self._layout.root)),
        )

    def failed(self) -> list[FailedItem]:
        """The dead letters, oldest id first."""
        self._layout.ensure(keep_done=self._retention == "keep")
        return self._layout.failed_items()

    def requeue(self, ids: list[ItemId] | None = None) -> list[ItemId]:
        """Hand dead letters back to the consumer (``None``: all); returns the ids moved.

        Unknown ids raise ``KeyError`` before anything is moved.
        """
        self._layout.ensure(keep_done=self._retention == "keep")
        return self._layout.requeue_items(ids)

    def _connect(self, *, checkpoint: int = CHECKPOINT_PAGES, migrate: bool = True) -> sqlite3.Connection:
        """A connection to ``spool.db`` (created if missing), a journal spool migrated first."""
        self._layout.ensure(keep_done=self._retention == "keep")
        conn = self._database.connect(checkpoint=checkpoint)
        if migrate:
            try:
                migrate_journal(self._layout.root, conn)
            except SpoolError as exc:  # what is not imported stays in the journal; the consumer tries again
                log.error("spool_migration_failed", error=str(exc))
        return conn


_STATUS = """
WITH newest AS (
    SELECT size, received_us, received_at FROM (
        SELECT size, received_us, received_at, row_number() OVER (
            PARTITION BY sop_instance_uid ORDER BY received_us DESC, seq DESC) AS copy
        FROM items)
    WHERE copy = 1)
SELECT count(*), coalesce(sum(size), 0),
       (SELECT received_at FROM newest ORDER BY received_us, received_at LIMIT 1)
FROM newest
"""
"""Pending items counted as the consumer will hand them out: one per SOP Instance UID."""


def open_spool(settings: SpoolSettings) -> Spool:
    """The spool the ``spool`` section of the configuration describes."""
    return Spool(settings.directory, segment_max_bytes=int(settings.segment_max_bytes), retention=settings.retention)
