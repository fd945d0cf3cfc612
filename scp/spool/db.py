"""The spool's SQLite database: schema, connections, locking, and every SQL statement.

:mod:`scp.spool` decides when things happen; this module only knows how they are stored.

**File**: ``spool.db`` in the spool directory, with SQLite's ``spool.db-wal`` and
``spool.db-shm`` beside it while a connection is open. Every connection uses
``journal_mode=WAL``, ``synchronous=FULL`` (a commit returns after the WAL is
fdatasync'ed; the consumer's removals are the exception, see :mod:`scp.spool`),
``wal_autocheckpoint`` = :data:`WRITER_CHECKPOINT_PAGES` or :data:`CHECKPOINT_PAGES`
(consumer; :data:`LOW_SPACE_CHECKPOINT_PAGES` on a nearly full file system, see
:func:`checkpoint_pages`) and ``journal_size_limit`` = the spool's ``segment_max_bytes``
(the most the WAL file keeps on disk after a checkpoint).

**Schema** (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`)::

    items            one row per pending instance: seq (INTEGER PRIMARY KEY), the
                     RecordFields, received_us (received_at as microseconds since the
                     epoch, for ordering), size, crc32 of the payload, payload (BLOB, the
                     last column so that reading the other columns never touches its
                     overflow pages)
    meta             key/value: ``epoch`` = time_ns() when the file was created (item ids
                     are ``<epoch>-<seq>``, so a recreated database never reuses the id
                     of a dead letter left in ``failed/``); ``last_seq`` = the highest seq
                     ever removed (a new seq is above it and above every row: never reused)
    legacy_segments  migration bookkeeping: journal segment name -> offset imported to
    progress         how far the delivery of an item split into several transactions got:
                     seq of the item, digest (of the Bundle and the chunk size), chunks_done
                     (acknowledged by the server, in order); deleted with the item's row
    delivered_reports, supersessions
                     the registry of delivered SRs and of the SRs they replace (amended and
                     corrected reports): :mod:`scp.spool.registry`, which holds their SQL

Versions: 1 (December 2026) had no ``progress``, 2 no registry; a file of an earlier version
is upgraded in place, step by step, when it is opened (:data:`MIGRATIONS`). A file of a later version than
:data:`SCHEMA_VERSION` is refused, since an older release cannot know what it holds.

A put of a 4.5 KB SR writes three or four pages (page 1, the row's leaf page, one
overflow page, and the freelist's trunk page when it reuses free pages) and no more: no
index (the consumer keeps the newest row per SOP Instance UID in memory), no AUTOINCREMENT (``last_seq`` is written only when the highest row is
removed), no ``auto_vacuum`` (free pages are reused by the next puts, and given back to
the file system by :func:`vacuum_if_sparse` when the file is mostly empty). Each of the
three would add a page to every put's commit (measured: 10-18 µs per put each).

**Locking**: connections are opened with ``busy_timeout=0``; :func:`retrying` waits for a
busy database itself, first in steps of tens of µs (SQLite's own busy handler sleeps 1, 2,
5, 10 ... ms, which would add milliseconds to a put that meets a consumer's commit),
for up to :data:`BUSY_TIMEOUT_S`. Write transactions are ``BEGIN IMMEDIATE``, so the
write lock is taken (or waited for) before anything is read.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..common.files import fsync_directory as fsync_dir
from .items import ItemId, Payload, RecordFields, SpoolError, SpoolItem, received_us, spool_error

__all__ = [
    "BUSY_TIMEOUT_S",
    "CHECKPOINT_PAGES",
    "DB_NAME",
    "LOW_SPACE_BYTES",
    "LOW_SPACE_CHECKPOINT_PAGES",
    "PAGE_SIZE",
    "REGISTRY_TABLES",
    "SCHEMA_VERSION",
    "VACUUM_FREE_RATIO",
    "VACUUM_MAX_LIVE_PAGES",
    "VACUUM_MIN_FREE_PAGES",
    "WRITER_CHECKPOINT_PAGES",
    "PayloadReader",
    "SpoolDatabase",
    "adapt_checkpoints",
    "checkpoint_pages",
    "durable",
    "free_bytes",
    "fsync_dir",
    "insert_items",
    "new_rows",
    "read_progress",
    "remove_items",
    "retrying",
    "vacuum_if_sparse",
    "write_progress",
    "write_transaction",
]

DB_NAME = "spool.db"
SCHEMA_VERSION = 3
PAGE_SIZE = 4096
BUSY_TIMEOUT_S = 10.0
"""How long a statement waits for another connection's write transaction (or recovery)."""
CHECKPOINT_PAGES = 1000
"""``wal_autocheckpoint`` of the consumer (SQLite's default, 4 MiB): a commit that leaves
more WAL frames than this copies them into ``spool.db`` (an fdatasync of each file),
then the WAL starts over and is overwritten in place. The consumer's process is niced,
and its commits are the ones that checkpoint while it runs."""
WRITER_CHECKPOINT_PAGES = 4000
"""``wal_autocheckpoint`` of a writer: higher, so that checkpoints (milliseconds) are left
to the consumer and stay off the path of puts; still bounded when no consumer runs."""
LOW_SPACE_CHECKPOINT_PAGES = 64
"""``wal_autocheckpoint`` of every connection while the file system has less than
:data:`LOW_SPACE_BYTES` free: the WAL then holds little (256 KiB) that a checkpoint still
has to copy, which on a nearly full disk needs room in ``spool.db``."""
LOW_SPACE_BYTES = 32 * 1024 * 1024
VACUUM_MIN_FREE_PAGES = 4096
"""Free pages are reused by later puts; they go back to the file system (``VACUUM``) once
at least this many (16 MiB) are free ..."""
VACUUM_FREE_RATIO = 4
"""... and at least this many times as many as the pages in use ..."""
VACUUM_MAX_LIVE_PAGES = 4096
"""... and those are not more than this (16 MiB): VACUUM copies them while it holds the
write lock, so puts wait for it (about 0.1 s for 16 MiB here)."""


def checkpoint_pages(free_bytes: int, normal: int) -> int:
    """The ``wal_autocheckpoint`` for a file system with ``free_bytes`` free."""
    return LOW_SPACE_CHECKPOINT_PAGES if free_bytes < LOW_SPACE_BYTES else normal


def free_bytes(directory: Path) -> int:
    """Space left for unprivileged writers on the file system holding ``directory``."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


T = TypeVar("T")

_PROGRESS_TABLE = """CREATE TABLE progress (
        seq INTEGER PRIMARY KEY,
        digest TEXT NOT NULL,
        chunks_done INTEGER NOT NULL)"""
REGISTRY_TABLES = (
    """CREATE TABLE delivered_reports (
        sop_instance_uid TEXT NOT NULL UNIQUE,
        delivered_us INTEGER NOT NULL,
        entries BLOB NOT NULL)""",
    "CREATE INDEX delivered_reports_age ON delivered_reports (delivered_us)",
    """CREATE TABLE supersessions (
        predecessor_uid TEXT NOT NULL,
        successor_uid TEXT NOT NULL,
        carried BLOB NOT NULL,
        state TEXT NOT NULL,
        recorded_us INTEGER NOT NULL,
        PRIMARY KEY (predecessor_uid, successor_uid))""",
    "CREATE INDEX supersessions_state ON supersessions (state, recorded_us)",
)
"""The statements that add the registry to a spool database (schema 2 -> 3)."""
_SCHEMA = (
    """CREATE TABLE items (
        seq INTEGER PRIMARY KEY,
        sop_instance_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        transfer_syntax_uid TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        received_at TEXT NOT NULL,
        received_us INTEGER NOT NULL,
        size INTEGER NOT NULL,
        crc32 INTEGER NOT NULL,
        payload BLOB NOT NULL)""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID",
    "CREATE TABLE legacy_segments (name TEXT PRIMARY KEY, imported_to INTEGER NOT NULL) WITHOUT ROWID",
    _PROGRESS_TABLE,
    *REGISTRY_TABLES,
)
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (_PROGRESS_TABLE,),
    2: REGISTRY_TABLES,
}
"""Schema version -> the statements that turn a file of that version into the next one."""
_ITEM_COLUMNS = "seq, sop_instance_uid, sop_class_uid, transfer_syntax_uid, calling_ae, received_at, size"
_INSERT = ("INSERT INTO items (seq, sop_instance_uid, sop_class_uid, transfer_syntax_uid, calling_ae, received_at,"
           " received_us, size, crc32, payload) VALUES ("
           "(SELECT max(coalesce((SELECT max(seq) FROM items), 0), value) + 1 FROM meta WHERE key = 'last_seq'),"
           " ?, ?, ?, ?, ?, ?, ?, ?, ?)")
"""The new seq is one above both the highest row and ``last_seq``: never one used before."""
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _BUSY_CODES


_pause = time.sleep
"""How :func:`retrying` waits (a seam for tests)."""


def retrying(operation: Callable[[], T], *, timeout_s: float | None = None) -> T:
    """``operation()``, again while it fails with SQLITE_BUSY/LOCKED, for up to ``timeout_s``
    (``None``: :data:`BUSY_TIMEOUT_S`).

    Only for operations that change nothing when they fail busy: ``BEGIN IMMEDIATE`` and
    statements run outside a transaction.
    """
    delay = 20e-6
    deadline: float | None = None
    while True:
        try:
            return operation()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + (BUSY_TIMEOUT_S if timeout_s is None else timeout_s)
            elif now >= deadline:
                raise
        _pause(delay)
        delay = min(delay * 1.5, 0.002)


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection, doing: str) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (durable when it returns); rolled back on any error.

    ``sqlite3.Error`` and ``OSError`` come out as :class:`SpoolError` (``SpoolFullError``
    for SQLITE_FULL/ENOSPC), prefixed with ``doing``.
    """
    try:
        retrying(lambda: conn.execute("BEGIN IMMEDIATE"))
    except sqlite3.Error as exc:
        raise spool_error(exc, doing) from exc
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        if isinstance(exc, (sqlite3.Error, OSError)):
            raise spool_error(exc, doing) from exc
        raise


def insert_items(conn: sqlite3.Connection, entries: Sequence[tuple[RecordFields, Payload]]) -> list[int]:
    """Insert instances (inside a write transaction); returns their ``seq`` values."""
    seqs = []
    for fields, data in entries:
        view = memoryview(data).cast("B")
        cursor = conn.execute(_INSERT, (
            fields.sop_instance_uid, fields.sop_class_uid, fields.transfer_syntax_uid, fields.calling_ae,
            fields.received_at, received_us(fields.received_at), view.nbytes, zlib.crc32(view), view,
        ))
        assert cursor.lastrowid is not None
        seqs.append(cursor.lastrowid)
    return seqs


def remove_items(conn: sqlite3.Connection, seqs: Sequence[int]) -> None:
    """Delete rows (inside a write transaction). Removing the highest row records its seq
    as ``last_seq``, so that it is never handed out again (an id is ``<epoch>-<seq>``, and
    a dead letter or a done copy of that id may still exist)."""
    if not seqs:
        return
    top = conn.execute("SELECT coalesce(max(seq), 0) FROM items").fetchall()[0][0]
    conn.executemany("DELETE FROM items WHERE seq = ?", [(seq,) for seq in seqs])
    conn.executemany("DELETE FROM progress WHERE seq = ?", [(seq,) for seq in seqs])
    highest = max(seqs)
    if highest >= top:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq' AND value < ?", (highest, highest))


def read_progress(conn: sqlite3.Connection, seq: int) -> tuple[str, int] | None:
    """(digest, chunks_done) recorded for item ``seq``, or None."""
    rows = retrying(lambda: conn.execute("SELECT digest, chunks_done FROM progress WHERE seq = ?", (seq,)).fetchall())
    return (rows[0][0], rows[0][1]) if rows else None


def write_progress(conn: sqlite3.Connection, seq: int, digest: str, chunks_done: int) -> bool:
    """Record the progress of item ``seq`` (inside a write transaction); False (nothing
    written) when the item is no longer there."""
    cursor = conn.execute(
        "INSERT OR REPLACE INTO progress (seq, digest, chunks_done)"
        " SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM items WHERE seq = ?)", (seq, digest, chunks_done, seq))
    return cursor.rowcount > 0


def new_rows(conn: sqlite3.Connection, since: int) -> list[tuple[int, str, int]]:
    """(seq, SOP Instance UID, received_us) of the rows above ``since``, in seq order."""
    return retrying(lambda: conn.execute(
        "SELECT seq, sop_instance_uid, received_us FROM items WHERE seq > ? ORDER BY seq", (since,)).fetchall())


def vacuum_if_sparse(conn: sqlite3.Connection, *, force: bool = False) -> bool:
    """``VACUUM`` (rewrite the file without its free pages) when at least
    :data:`VACUUM_MIN_FREE_PAGES` are free, :data:`VACUUM_FREE_RATIO` times as many as
    those in use, and those are few (:data:`VACUUM_MAX_LIVE_PAGES`: VACUUM copies them while
    it holds the write lock). ``force`` (short of space): as soon as the free pages are
    at least 16 and an eighth of those in use. Returns whether it ran."""
    free = retrying(lambda: conn.execute("PRAGMA freelist_count").fetchall())[0][0]
    live = retrying(lambda: conn.execute("PRAGMA page_count").fetchall())[0][0] - free
    if live > VACUUM_MAX_LIVE_PAGES:
        return False
    if force:
        if free < 16 or free * 8 < live:
            return False
    elif free < VACUUM_MIN_FREE_PAGES or live * VACUUM_FREE_RATIO > free:
        return False
    retrying(lambda: conn.execute("VACUUM"))
    return True


class SpoolDatabase:
    """Where ``spool.db`` is and how to connect to it; knows the id epoch once connected."""

    def __init__(self, directory: Path, *, wal_size_limit: int) -> None:
        self.path = directory / DB_NAME
        self._wal_size_limit = wal_size_limit
        self._epoch: str | None = None

    def connect(self, *, synchronous: str = "FULL", checkpoint: int = CHECKPOINT_PAGES) -> sqlite3.Connection:
        """A new connection with the spool's settings; creates the schema on first use.

        ``checkpoint``: its ``wal_autocheckpoint`` while space is plentiful. For use by one
        thread at a time (callers lock); raises :class:`SpoolError`.
        """
        created = not self.path.exists()
        try:
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise spool_error(exc, f"cannot open {self.path}") from exc
        try:
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only acts on a new, empty file
            mode = retrying(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchall())[0][0]
            if mode != "wal":
                raise SpoolError(f"{self.path}: cannot use write-ahead logging (journal mode {mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {checkpoint_pages(free_bytes(self.path.parent), checkpoint)}")
            conn.execute(f"PRAGMA journal_size_limit = {self._wal_size_limit}")
            if retrying(lambda: conn.execute("PRAGMA user_version").fetchall())[0][0] != SCHEMA_VERSION:
                self._create_schema(conn)
            if self._epoch is None:
                rows = retrying(lambda: conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchall())
                self._epoch = rows[0][0]
        except BaseException as exc:
            conn.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise spool_error(exc, f"cannot open {self.path}") from exc
            raise
        if created:
            with contextlib.suppress(OSError):
                fsync_dir(self.path.parent)
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        """Create the tables in a new file, or upgrade an earlier version's (one transaction)."""
        with write_transaction(conn, f"cannot create {self.path}"):
            version = conn.execute("PRAGMA user_version").fetchall()[0][0]
            if version == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?), ('last_seq', 0)",
                             (str(time.time_ns()),))
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version < SCHEMA_VERSION:  # an earlier release's file: upgrade it in place
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[step]:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise SpoolError(f"{self.path} is a spool database of version {version}; "
                                 f"this release reads versions up to {SCHEMA_VERSION}")

    def item_id(self, seq: int) -> ItemId:
        assert self._epoch is not None, "connect() first"
        return f"{self._epoch}-{seq}"

    def item(self, row: Sequence[Any], reader: PayloadReader) -> SpoolItem:
        """A :class:`SpoolItem` from a row of ``_ITEM_COLUMNS``."""
        seq, sop_instance_uid, sop_class_uid, transfer_syntax_uid, calling_ae, received_at, size = row
        return SpoolItem(self.item_id(seq), sop_instance_uid, sop_class_uid, transfer_syntax_uid, calling_ae,
                         received_at, size, seq, reader)

    def pending(self, conn: sqlite3.Connection, reader: PayloadReader, limit: int | None) -> list[SpoolItem]:
        """Up to ``limit`` items, oldest (lowest seq) first."""
        rows = retrying(lambda: conn.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items ORDER BY seq LIMIT ?", (-1 if limit is None else limit,)).fetchall())
        return [self.item(row, reader) for row in rows]


def adapt_checkpoints(conn: sqlite3.Connection, free: int, current: int | None, normal: int) -> int:
    """Set ``wal_autocheckpoint`` for ``free`` bytes free if it is not ``current``; returns it."""
    pages = checkpoint_pages(free, normal)
    if pages != current:
        conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
    return pages


@contextlib.contextmanager
def durable(conn: sqlite3.Connection) -> Iterator[None]:
    """Commits inside are ``synchronous=FULL`` whatever the connection's setting."""
    previous = conn.execute("PRAGMA synchronous").fetchall()[0][0]
    if previous >= 2:
        yield
        return
    conn.execute("PRAGMA synchronous = FULL")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA synchronous = {previous}")


class PayloadReader:
    """Reads payloads for :meth:`SpoolItem.read` through a connection of its own (opened on
    first use, again after :meth:`close`); thread-safe."""

    def __init__(self, database: SpoolDatabase) -> None:
        self._database = database
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def read(self, seq: int) -> tuple[bytes, int] | None:
        """(payload, crc32) of item ``seq``, or ``None`` when it is no longer there."""
        with self._lock:
            if self._conn is None:
                self._conn = self._database.connect()
            conn = self._conn
            try:
                rows = retrying(lambda: conn.execute(
                    "SELECT payload, crc32 FROM items WHERE seq = ?", (seq,)).fetchall())
            except sqlite3.Error as exc:
                raise spool_error(exc, f"cannot read item {self._database.item_id(seq)}") from exc
        return (rows[0][0], rows[0][1]) if rows else None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


