"""The forwarder's side of the spool: pending items, delivered marks, dead letters, re-queue.

See :mod:`scp.spool` for the layout and the recovery rules this follows.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, TypeAlias

import structlog

from .db import (
    CHECKPOINT_PAGES,
    LOW_SPACE_BYTES,
    PayloadReader,
    SpoolDatabase,
    adapt_checkpoints,
    durable,
    free_bytes,
    fsync_dir,
    insert_items,
    new_rows,
    read_progress,
    remove_items,
    vacuum_if_sparse,
    write_progress,
    write_transaction,
)
from .items import (
    ItemId,
    RecordFields,
    SpoolError,
    SpoolItem,
    SpoolLockedError,
    checked,
    crc_problem,
    spool_error,
    utc_now_iso,
)
from .files import DATA_SUFFIX, SIDECAR_SPOOL_KEY, SpoolLayout, write_file
from .legacy import MIGRATION_CHUNK_BYTES, migrate
from .registry import (
    DeliveredReport,
    Supersession,
    SupersessionState,
    forget_before,
    forget_oldest,
    pending_supersessions,
    record_delivered,
    set_supersession_state,
    supersessions_of,
)

__all__ = ["OUTCOMES", "ItemOutcome", "SpoolConsumer"]

log = structlog.get_logger()

ItemOutcome: TypeAlias = Literal["delivered", "superseded", "failed", "ignored"]
OUTCOMES: frozenset[str] = frozenset({"delivered", "superseded", "failed", "ignored"})
SHORT_OF_SPACE_FORGETS = 2
"""Delivered reports forgotten (oldest first) per report recorded while the file system holding
the spool has less than ``LOW_SPACE_BYTES`` free: the registry shrinks instead of growing, and
received instances keep the room (the spool never refuses an SR for the registry's sake)."""
LEGACY_RETRY_S = 60.0
"""How often the consumer tries again to migrate journal segments left by an earlier try."""


class SpoolConsumer:
    """The forwarder's side: pending items oldest first, delivered marks, dead letters.

    Only one consumer per spool (``consumer.lock``). Use as a context manager or call
    :meth:`open` and :meth:`close`. Methods may be called from several threads.
    """

    def __init__(self, layout: SpoolLayout, database: SpoolDatabase, *, retention: Literal["delete", "keep"]) -> None:
        self._layout = layout
        self._database = database
        self._retention = retention
        self._lock = threading.RLock()
        self._lock_fd = -1
        self._conn: sqlite3.Connection | None = None
        self._reader: PayloadReader | None = None
        self._checked_to = 0
        """Every row up to this seq has been checked against the same-UID rule."""
        self._newest: dict[str, tuple[int, int]] = {}
        """SOP Instance UID -> (received_us, seq) of the copy kept, for every pending item."""
        self._superseded: dict[int, str] = {}
        """seq -> SOP Instance UID of older copies to remove (still there if removing failed)."""
        self._deletions = 0
        self._legacy_left = 0
        self._legacy_retry_at = 0.0
        self._checkpoint_pages: int | None = None
        self._told_short_of_space = False

    def __enter__(self) -> SpoolConsumer:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        """Take ``consumer.lock`` (else :class:`SpoolLockedError`), open the database and
        migrate a journal spool left by an earlier release."""
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
                self._conn = self._database.connect(synchronous="NORMAL")
                self._reader = PayloadReader(self._database)
                self._checked_to = 0
                self._newest.clear()
                self._superseded.clear()
                self._checkpoint_pages = None
                self._migrate()
                self._supersede()
            except BaseException as exc:
                self._close_all(fd)
                if isinstance(exc, OSError):
                    raise spool_error(exc, f"cannot open the spool at {self._layout.root}") from exc
                raise
            self._lock_fd = fd

    def close(self) -> None:
        """Release the lock; idempotent."""
        with self._lock:
            self._close_all(self._lock_fd)
            self._lock_fd = -1

    def pending(self, limit: int | None = None) -> list[SpoolItem]:
        """Up to ``limit`` pending items, oldest first (the order they were stored in).

        Picks up re-queued dead letters, drops older copies of a SOP Instance UID (logged
        as superseded) and gives free space back to the file system now and then.
        """
        with self._lock:
            conn, reader = self._open_conn()
            try:
                self.ingest_requeued()
            except SpoolError as exc:  # keep delivering (which may free space); retry next time
                log.error("spool_requeue_failed", error=str(exc))
            if self._legacy_left and time.monotonic() >= self._legacy_retry_at:
                self._migrate()
            hidden = self._supersede()
            self._vacuum_if_sparse(conn)
            try:  # its removals checkpoint sooner too when space is low
                self._checkpoint_pages = adapt_checkpoints(conn, free_bytes(self._layout.root), self._checkpoint_pages,
                                                           CHECKPOINT_PAGES)
            except (OSError, sqlite3.Error) as exc:
                log.warning("spool_free_space_unknown", error=str(exc))
            try:
                items = self._database.pending(conn, reader, None if limit is None else limit + len(hidden))
            except sqlite3.Error as exc:
                raise spool_error(exc, "cannot read the spool") from exc
            return [item for item in items if item.seq not in hidden][:limit]

    def settle(self, item: SpoolItem, outcome: ItemOutcome = "delivered", *,
               report: DeliveredReport | None = None) -> list[Supersession]:
        """Remove ``item`` (one commit, not fsync'ed by itself: rule 2 of :mod:`scp.spool`);
        it is not pending again. With retention "keep" a delivered item's bytes go to
        ``done/<id>.dcm`` first (fsync'ed). ``ignored``: a readable SR that is not mapped
        (``mapping.unmapped: ignore``), removed like a delivered one but never kept.

        ``report`` (a delivered item) is recorded in the registry of delivered reports in the
        same commit (:mod:`.registry`): the supersessions it starts are on record exactly
        when the item is gone. Returns those supersessions."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, not {outcome!r}")
        with self._lock:
            conn, reader = self._open_conn()
            if outcome == "delivered" and self._retention == "keep":
                found = reader.read(item.seq)
                if found is None:
                    return []  # superseded meanwhile: nothing left to keep or to remove
                try:
                    write_file(self._layout.done / f"{item.id}{DATA_SUFFIX}", checked(item.id, *found))
                    fsync_dir(self._layout.done)
                except OSError as exc:
                    raise spool_error(exc, f"cannot keep item {item.id}") from exc
            supersessions: list[Supersession] = []
            forgotten = 0
            short_of_space = report is not None and self._short_of_space()
            with write_transaction(conn, f"cannot mark item {item.id} {outcome}"):
                remove_items(conn, [item.seq])
                if report is not None:
                    supersessions = record_delivered(conn, report)
                    if short_of_space:
                        forgotten = forget_oldest(conn, SHORT_OF_SPACE_FORGETS)
            if short_of_space and not self._told_short_of_space:
                log.warning("registry_short_of_space", forgotten=forgotten,
                            reason=f"less than {LOW_SPACE_BYTES} bytes free for the spool: the oldest delivered "
                                   "reports are forgotten to keep room for received SRs (an amendment of a "
                                   "forgotten report does not retire it)")
            if report is not None:
                self._told_short_of_space = short_of_space
            self._deletions += 1 + forgotten
            if self._newest.get(item.sop_instance_uid, (0, 0))[1] == item.seq:
                del self._newest[item.sop_instance_uid]
            return supersessions

    # -- the registry of delivered reports (amended and corrected reports: .registry) ----------

    def _short_of_space(self) -> bool:
        try:
            return free_bytes(self._layout.root) < LOW_SPACE_BYTES
        except OSError:
            return False

    def supersessions_of(self, predecessor_uid: str) -> list[Supersession]:
        """The recorded successors of ``predecessor_uid`` (the SRs that replace it)."""
        with self._lock:
            conn, _ = self._open_conn()
            try:
                return supersessions_of(conn, predecessor_uid)
            except sqlite3.Error as exc:
                raise spool_error(exc, "cannot read the registry of delivered reports") from exc

    def pending_supersessions(self, limit: int = 16, predecessors: list[str] | None = None) -> list[Supersession]:
        """Supersessions whose predecessor's resources are still to be rewritten, oldest first."""
        with self._lock:
            conn, _ = self._open_conn()
            try:
                return pending_supersessions(conn, limit, predecessors)
            except sqlite3.Error as exc:
                raise spool_error(exc, "cannot read the registry of delivered reports") from exc

    def settle_supersession(self, supersession: Supersession, state: SupersessionState) -> None:
        """Record a supersession's new state (durably: it says the server was changed)."""
        with self._lock:
            conn, _ = self._open_conn()
            with durable(conn), write_transaction(conn, "cannot record a supersession"):
                set_supersession_state(conn, supersession.predecessor_uid, supersession.successor_uid, state)

    def forget_delivered(self, before_us: int, limit: int = 500) -> int:
        """Forget up to ``limit`` delivered reports (and settled supersessions) recorded before
        ``before_us``; returns how many rows went (call again while it is ``limit``)."""
        with self._lock:
            conn, _ = self._open_conn()
            with write_transaction(conn, "cannot prune the registry of delivered reports"):
                removed = forget_before(conn, before_us, limit)
            self._deletions += removed
            return removed

    def progress(self, item: SpoolItem) -> tuple[str, int] | None:
        """(digest, chunks_done) of ``item``'s delivery in several transactions, as last
        recorded by :meth:`record_progress`; None when nothing is recorded."""
        with self._lock:
            conn, _ = self._open_conn()
            try:
                return read_progress(conn, item.seq)
            except sqlite3.Error as exc:
                raise spool_error(exc, f"cannot read the progress of item {item.id}") from exc

    def record_progress(self, item: SpoolItem, digest: str, chunks_done: int) -> None:
        """Record durably (``synchronous=FULL``) that the first ``chunks_done`` transactions of
        ``item``'s Bundle (identified by ``digest``) were acknowledged. The record goes with
        the item when it is settled, dead-lettered or superseded; nothing is recorded for an
        item that is gone already."""
        with self._lock:
            conn, _ = self._open_conn()
            with durable(conn), write_transaction(conn, f"cannot record the progress of item {item.id}"):
                write_progress(conn, item.seq, digest, chunks_done)

    def dead_letter(self, item: SpoolItem, sidecar: Mapping[str, Any]) -> None:
        """Move ``item`` to ``failed/`` with ``sidecar`` (reason, OperationOutcome, attempts...)."""
        if SIDECAR_SPOOL_KEY in sidecar:
            raise ValueError(f"sidecar key {SIDECAR_SPOOL_KEY!r} is reserved for the spool")
        spooled: dict[str, Any] = {"id": item.id, **item.record_fields().to_json(), "dead_lettered_at": utc_now_iso()}
        document = {**sidecar, SIDECAR_SPOOL_KEY: spooled}
        json.dumps(document)  # a sidecar that is not JSON fails here, before anything is written
        with self._lock:
            _, reader = self._open_conn()
            found = reader.read(item.seq)
            if found is None:  # superseded by a newer copy, or delivered
                log.warning("spool_item_gone", item_id=item.id, sop_instance_uid=item.sop_instance_uid)
                return
            data, crc = found
            damage = crc_problem(data, crc)
            if damage is not None:  # keep what is left; it must not block the queue
                spooled["damaged"] = damage
            encoded = json.dumps(document, indent=2, sort_keys=True).encode()
            try:
                self._layout.write_dead_letter(item.id, data, encoded)
            except OSError as exc:
                raise spool_error(exc, f"cannot dead-letter item {item.id}") from exc
            log.info("spool_item_dead_lettered", item_id=item.id, sop_instance_uid=item.sop_instance_uid)
            self.settle(item, "failed")

    def ingest_requeued(self) -> list[ItemId]:
        """Store the dead letters found in ``requeue/`` again (durably, then remove their
        files: ``.dcm`` first); returns their new ids."""
        with self._lock:
            conn, _ = self._open_conn()
            new_ids: list[ItemId] = []
            batch: list[tuple[str, Any, Any, RecordFields, bytes]] = []
            size = 0
            try:
                for old_id, data_path, sidecar_path in self._layout.requeued():
                    try:
                        document = json.loads(sidecar_path.read_bytes())
                        fields = RecordFields.from_json(document[SIDECAR_SPOOL_KEY])
                    except (ValueError, KeyError, TypeError) as exc:
                        log.error("spool_requeue_unreadable", item_id=old_id, error=str(exc))
                        continue
                    batch.append((old_id, data_path, sidecar_path, fields, data_path.read_bytes()))
                    size += len(batch[-1][4])
                    if size >= MIGRATION_CHUNK_BYTES:
                        new_ids += self._store_requeued(conn, batch)
                        batch, size = [], 0
                if batch:
                    new_ids += self._store_requeued(conn, batch)
            except OSError as exc:
                raise spool_error(exc, "cannot take re-queued items") from exc
            return new_ids

    def _store_requeued(self, conn: sqlite3.Connection, batch: list[tuple[str, Any, Any, RecordFields, bytes]]
                        ) -> list[ItemId]:
        with durable(conn), write_transaction(conn, "cannot store re-queued items"):
            seqs = insert_items(conn, [(fields, data) for _, _, _, fields, data in batch])
        new_ids = []
        for seq, (old_id, data_path, sidecar_path, fields, _) in zip(seqs, batch, strict=True):
            data_path.unlink(missing_ok=True)
            sidecar_path.unlink(missing_ok=True)
            new_id = self._database.item_id(seq)
            log.info("spool_item_requeued", item_id=new_id, requeued_from=old_id,
                     sop_instance_uid=fields.sop_instance_uid)
            new_ids.append(new_id)
        return new_ids

    def _open_conn(self) -> tuple[sqlite3.Connection, PayloadReader]:
        if self._conn is None or self._reader is None:
            raise SpoolError("the spool consumer is not open")
        return self._conn, self._reader

    def _migrate(self) -> None:
        """Import a journal spool of an earlier release (again, if an earlier try left some)."""
        assert self._conn is not None
        try:
            self._legacy_left = migrate(self._layout.root, self._conn)
        except SpoolError as exc:  # what is not imported stays in the journal: nothing is lost
            log.error("spool_migration_failed", error=str(exc))
            self._legacy_left = 1
        self._legacy_retry_at = time.monotonic() + LEGACY_RETRY_S

    def _supersede(self) -> set[int]:
        """Remove older copies of a SOP Instance UID (rule 3); returns the seqs of copies
        that could not be removed (not to be handed out now; tried again next time)."""
        conn, _ = self._open_conn()
        try:
            rows = new_rows(conn, self._checked_to)
        except sqlite3.Error as exc:
            raise spool_error(exc, "cannot read the spool") from exc
        for seq, sop_instance_uid, received in rows:
            kept = self._newest.get(sop_instance_uid)
            if kept is not None and kept > (received, seq):
                self._superseded[seq] = sop_instance_uid
                continue
            if kept is not None:
                self._superseded[kept[1]] = sop_instance_uid
            self._newest[sop_instance_uid] = (received, seq)
        if rows:
            self._checked_to = rows[-1][0]
        if not self._superseded:
            return set()
        try:
            with write_transaction(conn, "cannot remove superseded items"):
                remove_items(conn, list(self._superseded))
        except SpoolError as exc:
            log.error("spool_supersede_failed", error=str(exc))
            return set(self._superseded)
        self._deletions += len(self._superseded)
        for seq, sop_instance_uid in self._superseded.items():
            log.info("spool_item_superseded", item_id=self._database.item_id(seq), sop_instance_uid=sop_instance_uid)
        self._superseded.clear()
        return set()

    def _vacuum_if_sparse(self, conn: sqlite3.Connection) -> None:
        """Give free pages back to the file system when the file is mostly free pages."""
        if not self._deletions:
            return
        self._deletions = 0
        try:
            if vacuum_if_sparse(conn):
                log.info("spool_vacuumed", size=self._database.path.stat().st_size)
        except (sqlite3.Error, OSError) as exc:  # only space not given back yet
            log.warning("spool_vacuum_failed", error=str(exc))

    def _close_all(self, lock_fd: int) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._reader is not None:
            self._reader.close()
        self._conn = None
        self._reader = None
        if lock_fd >= 0:
            os.close(lock_fd)
