"""The spool's SQLite storage: durable commits, group commit, the WAL after a crash,
damaged bytes, a busy write lock, a full disk, the WAL's size.

These replace the journal's tests of its own internals (fdatasync counting,
preallocation, torn and zero tails, segment locks, failed writes) with tests of the
same guarantees as SQLite provides them. How each fault is made is said in each test:
a SIGKILLed child process, truncating or overwriting the WAL as a crash or a bad disk
would, ``PRAGMA max_page_count`` (SQLite's own "database or disk is full"), a tmpfs (as
root), or a monkeypatched free-space figure.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from scp.spool import db as spool_db
from scp.spool import writer as spool_module
from scp.spool import (
    DB_NAME,
    DEFAULT_SEGMENT_MAX_BYTES,
    Spool,
    SpoolCorruptError,
    SpoolError,
    SpoolFullError,
    SpoolWriter,
)
from tests.scp.test_spool import (
    COMPREHENSIVE_SR,
    EXPLICIT_VR_LITTLE_ENDIAN,
    fields,
    payload,
    read_marked_line,
    run_child,
    uids,
)

WAL = f"{DB_NAME}-wal"
FRAME = 24 + spool_db.PAGE_SIZE
"""A WAL frame: 24-byte header, then the page."""


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def traced_connections(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every connection the spool opens from now on records its SQL statements (one list each)."""
    traces: list[list[str]] = []
    real_connect = spool_db.SpoolDatabase.connect

    def connect(self: spool_db.SpoolDatabase, **options: Any) -> sqlite3.Connection:
        conn = real_connect(self, **options)
        trace: list[str] = []
        traces.append(trace)
        conn.set_trace_callback(trace.append)
        return conn

    monkeypatch.setattr(spool_db.SpoolDatabase, "connect", connect)
    return traces


# -- durable before acknowledged -----------------------------------------------------------------


def test_put_returns_only_after_its_transaction_committed_with_a_full_sync(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    traces = traced_connections(monkeypatch)
    writer = spool.writer()
    writer._preallocation.join()  # white box: the thread filling the WAL ahead has a connection too
    trace = traces[0]  # the writer's
    conn = writer._conn  # white box: the settings that make a commit durable
    assert conn.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    assert conn.execute("PRAGMA synchronous").fetchall() == [(2,)]  # FULL: the WAL is synced at commit
    trace.clear()
    for n in range(3):
        item_id = writer.put(fields(f"1.{n}"), payload(f"1.{n}"))
        trace.append(f"returned {item_id}")
    writer.close()
    steps = [line.split()[0] for line in trace if not line.startswith("PRAGMA")]
    assert steps == ["BEGIN", "INSERT", "COMMIT", "returned"] * 3


STRACED_PUTS = """
import sys
from scp.spool import RecordFields, Spool
writer = Spool(sys.argv[1]).writer()
writer._preallocation.join()  # its fsyncs of the zeros it writes ahead are not the puts'
writer.put(RecordFields("0.0", "1.2", "1.2.3", "AE"), b"warm up" * 100)
print("BEGIN-PUTS", flush=True)
for n in range(20):
    writer.put(RecordFields(f"1.{n}", "1.2", "1.2.3", "AE"), b"payload" * 600)
print("END-PUTS", flush=True)
writer.close()
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to count fdatasync system calls")
def test_one_fdatasync_of_the_wal_per_put_and_nothing_else_synced(spool: Spool, tmp_path: Path) -> None:
    """The system calls themselves (strace -y names each descriptor's file); the spool
    exists already, as it does for a running listener."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-c", STRACED_PUTS, str(spool.directory)]
    subprocess.run(command, env=env, capture_output=True, check=True)
    log_path = tmp_path / "strace.log"
    traced = subprocess.run(["strace", "-f", "-y", "-e", "trace=fsync,fdatasync,write", "-o", str(log_path),
                             *command], env=env, capture_output=True, text=True, check=False)
    assert traced.returncode == 0, traced.stderr
    lines = log_path.read_text().splitlines()
    begin = next(i for i, line in enumerate(lines) if "BEGIN-PUTS" in line)
    end = next(i for i, line in enumerate(lines) if "END-PUTS" in line)
    syncs = [line for line in lines[begin:end] if "sync(" in line]
    assert len(syncs) == 20, syncs
    assert all("fdatasync(" in line and line.split("<", 1)[1].startswith(str(spool.directory / WAL))
               for line in syncs), syncs


class CountingCondition(threading.Condition):
    """A Condition that tells how many threads wait on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        self.changed = threading.Condition()

    def wait(self, timeout: float | None = None) -> bool:
        with self.changed:
            self.waiting += 1
            self.changed.notify_all()
        try:
            return super().wait(timeout)
        finally:
            with self.changed:
                self.waiting -= 1


def gated_writer(writer: SpoolWriter, monkeypatch: pytest.MonkeyPatch) -> tuple[CountingCondition, threading.Event,
                                                                                 list[int]]:
    """Holds the first transaction until the test sets the returned event; records batch sizes."""
    condition = CountingCondition()
    writer._cond = condition  # white box: count the puts queued behind the leader
    release = threading.Event()
    batches: list[int] = []
    real_insert = spool_module.insert_items

    def insert_items(conn: sqlite3.Connection, entries: list[Any]) -> list[int]:
        batches.append(len(entries))
        if len(batches) == 1:
            assert release.wait(timeout=30)
        return real_insert(conn, entries)

    monkeypatch.setattr(spool_module, "insert_items", insert_items)
    return condition, release, batches


def test_concurrent_puts_share_one_commit(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: while one transaction commits, the puts that arrive queue up, and the
    next leader commits all of them at once; each put still returns only after that."""
    traces = traced_connections(monkeypatch)
    writer = spool.writer()
    writer._preallocation.join()  # white box: the thread filling the WAL ahead has a connection too
    trace = traces[0]  # the writer's
    condition, release, batches = gated_writer(writer, monkeypatch)
    ids: dict[str, str] = {}

    def put(uid: str) -> None:
        ids[uid] = writer.put(fields(uid), payload(uid))

    first = threading.Thread(target=put, args=("1.0",))
    first.start()
    others = [threading.Thread(target=put, args=(f"1.{n}",)) for n in range(1, 8)]
    for thread in others:
        thread.start()
    with condition.changed:  # the seven wait behind the leader, their puts queued
        assert condition.changed.wait_for(lambda: condition.waiting == 7, timeout=30)
    assert ids == {}  # nothing is acknowledged before its commit
    trace.clear()
    release.set()
    for thread in [first, *others]:
        thread.join()
    writer.close()
    assert batches == [1, 7]
    assert sum(line == "COMMIT" for line in trace) == 2
    with spool.consumer() as consumer:
        assert sorted(item.id for item in consumer.pending()) == sorted(ids.values())


def test_a_put_that_fails_in_a_batch_fails_alone(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``PRAGMA max_page_count`` makes SQLite answer SQLITE_FULL for the one large put; the
    small ones committed with it are stored one by one."""
    writer = spool.writer()
    writer._conn.execute("PRAGMA max_page_count = 200")  # 800 KiB
    condition, release, batches = gated_writer(writer, monkeypatch)
    results: dict[str, object] = {}

    def put(uid: str, size: int) -> None:
        try:
            results[uid] = writer.put(fields(uid), payload(uid, size))
        except SpoolError as exc:
            results[uid] = exc

    threads = [threading.Thread(target=put, args=("1.0", 100))]
    threads[0].start()
    for uid, size in (("1.1", 100), ("1.2", 3 * 1024 * 1024), ("1.3", 100)):
        threads.append(threading.Thread(target=put, args=(uid, size)))
        threads[-1].start()
    with condition.changed:
        assert condition.changed.wait_for(lambda: condition.waiting == 3, timeout=30)
    release.set()
    for thread in threads:
        thread.join()
    writer.close()
    assert batches[:2] == [1, 3]  # the three together first, then each alone
    assert isinstance(results["1.2"], SpoolFullError) and "No space left" in str(results["1.2"])
    assert all(isinstance(results[uid], str) for uid in ("1.0", "1.1", "1.3"))
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.0", "1.1", "1.3"]


# -- after a crash: the WAL ---------------------------------------------------------------------

CRASHING_WRITER = """
import os, sys
from scp.spool import RecordFields, Spool
writer = Spool(sys.argv[1], preallocation_chunk_bytes=0).writer()  # the WAL ends where its frames do
wal = os.path.join(sys.argv[1], "spool.db-wal")
for n in range(3):
    writer.put(RecordFields(f"1.{n}", sys.argv[2], sys.argv[3], "CHILD"), (f"1.{n}|" * 1000).encode())
    print("WAL", os.path.getsize(wal), flush=True)
sys.stdin.read()  # wait here to be killed
"""


def child_payload(uid: str) -> bytes:
    return (f"{uid}|" * 1000).encode()


@pytest.fixture(scope="module")
def crashed_spool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """A spool whose writer was SIGKILLed after three puts: (directory, WAL size after the
    second put, after the third)."""
    directory = tmp_path_factory.mktemp("crashed") / "spool"
    child = run_child(CRASHING_WRITER, str(directory), COMPREHENSIVE_SR, EXPLICIT_VR_LITTLE_ENDIAN,
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        sizes = [int(read_marked_line(child, "WAL")) for _ in range(3)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (directory / WAL).stat().st_size == sizes[2]
    return directory, sizes[1], sizes[2]


def copy_of(crashed: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "spool"
    shutil.copytree(crashed, directory)
    return directory


def assert_first_two_then_appending_works(directory: Path) -> None:
    spool = Spool(directory)
    assert spool.status().pending == 2
    with spool.consumer() as consumer:
        items = consumer.pending()
        assert uids(items) == ["1.0", "1.1"]
        assert [item.read() for item in items] == [child_payload("1.0"), child_payload("1.1")]
        with spool.writer() as writer:
            writer.put(fields("1.3"), payload("1.3"))
        assert uids(consumer.pending()) == ["1.0", "1.1", "1.3"]
    conn = sqlite3.connect(directory / DB_NAME)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def last_transaction_cuts(second: int, third: int) -> list[int]:
    """Offsets inside the frames of the third put: every frame boundary, a byte either side
    of it, inside the frame header, and every 499th byte."""
    cuts = set(range(second + 1, third, 499))
    for boundary in range(second, third, FRAME):
        cuts |= {boundary + 1, boundary + 12, boundary + 24, boundary + 25, boundary + FRAME - 1}
    return sorted(cut for cut in cuts if second < cut < third)


def test_the_crashed_writers_wal_holds_every_acknowledged_put(crashed_spool: tuple[Path, int, int],
                                                              tmp_path: Path) -> None:
    directory = copy_of(crashed_spool[0], tmp_path)
    with Spool(directory).consumer() as consumer:
        assert [item.read() for item in consumer.pending()] == [child_payload(f"1.{n}") for n in range(3)]


def test_torn_wal_tail_is_discarded_and_appending_still_works(crashed_spool: tuple[Path, int, int],
                                                              tmp_path: Path) -> None:
    """The last put's frames cut off at every frame boundary and between (a crash during its
    commit, before it was acknowledged): recovery drops that transaction, nothing else."""
    crashed, second, third = crashed_spool
    cuts = last_transaction_cuts(second, third)
    assert len(cuts) > 20
    for n, cut in enumerate(cuts):
        directory = copy_of(crashed, tmp_path / str(n))
        os.truncate(directory / WAL, cut)
        assert_first_two_then_appending_works(directory)


def test_torn_wal_frames_that_read_as_zeros_are_discarded(crashed_spool: tuple[Path, int, int],
                                                          tmp_path: Path) -> None:
    """The file kept its length but the last put's bytes from some offset on never reached
    the disk (zeros), in a WAL filled with zeros ahead (as a writer does): the same."""
    crashed, second, third = crashed_spool
    data = (crashed / WAL).read_bytes()
    torn = [cut for cut in last_transaction_cuts(second, third)[::3] if data[cut:third].strip(b"\0")]
    assert len(torn) > 10  # (zeros over bytes that were zeros already tear nothing)
    for n, cut in enumerate(torn):
        directory = copy_of(crashed, tmp_path / str(n))
        with open(directory / WAL, "r+b") as wal:
            wal.seek(cut)
            wal.write(bytes(third - cut + 1024 * 1024))
        assert_first_two_then_appending_works(directory)


@pytest.mark.parametrize("garbage", ["zeros", "random", "frame-copy"])
def test_garbage_after_the_last_commit_is_ignored(crashed_spool: tuple[Path, int, int], tmp_path: Path,
                                                  garbage: str) -> None:
    crashed, second, third = crashed_spool
    directory = copy_of(crashed, tmp_path)
    wal = directory / WAL
    data = wal.read_bytes()
    extra = {"zeros": bytes(3 * FRAME), "random": os.urandom(3 * FRAME),
             "frame-copy": data[second:second + 24] + os.urandom(FRAME - 24)}[garbage]
    wal.write_bytes(data + extra)
    with Spool(directory).consumer() as consumer:
        assert [item.read() for item in consumer.pending()] == [child_payload(f"1.{n}") for n in range(3)]


def test_a_damaged_wal_frame_ends_the_wal_and_the_database_stays_consistent(
    crashed_spool: tuple[Path, int, int], tmp_path: Path
) -> None:
    """A byte flipped in the second put's frames (a bad disk, not a crash): its frame
    checksum fails, so recovery keeps what came before it: a consistent database."""
    crashed, second, _ = crashed_spool
    directory = copy_of(crashed, tmp_path)
    with open(directory / WAL, "r+b") as wal:
        wal.seek(second - FRAME // 2)
        byte = wal.read(1)
        wal.seek(second - FRAME // 2)
        wal.write(bytes([byte[0] ^ 0xFF]))
    with Spool(directory).consumer() as consumer:
        items = consumer.pending()
        assert uids(items) == ["1.0"]
        assert items[0].read() == child_payload("1.0")
    conn = sqlite3.connect(directory / DB_NAME)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def test_a_flipped_payload_byte_is_caught_by_the_crc(spool: Spool) -> None:
    """Bit rot in spool.db itself (SQLite has no page checksums): the item still lists,
    ``read()`` raises SpoolCorruptError, the others read fine, and the dead letter keeps
    the damaged bytes and says so."""
    marker = b"<<the bytes of 1.1>>" * 50
    with spool.writer() as writer:
        writer.put(fields("1.0"), payload("1.0"))
        writer.put(fields("1.1"), marker)
        writer.put(fields("1.2"), payload("1.2"))
        writer.release_space()  # checkpoint: the payloads are in spool.db now
    database = spool.directory / DB_NAME
    data = bytearray(database.read_bytes())
    at = data.index(marker) + len(marker) // 2
    data[at] ^= 0x01
    database.write_bytes(bytes(data))
    with spool.consumer() as consumer:
        first, damaged, last = consumer.pending()
        assert (first.read(), last.read()) == (payload("1.0"), payload("1.2"))
        with pytest.raises(SpoolCorruptError, match="CRC mismatch"):
            damaged.read()
        consumer.dead_letter(damaged, {"reason": "unreadable SR"})
        assert uids(consumer.pending()) == ["1.0", "1.2"]
    [failed] = spool.failed()
    assert failed.sidecar["spool"]["damaged"].startswith("CRC mismatch")
    kept = (spool.directory / "failed" / f"{damaged.id}.dcm").read_bytes()
    assert len(kept) == len(marker) and kept != marker


# -- the write lock ----------------------------------------------------------------------------


@pytest.fixture
def lock_holder(spool: Spool) -> Iterator[sqlite3.Connection]:
    """A connection of another "process" that can hold the write lock."""
    spool.writer().close()  # creates the database
    conn = sqlite3.connect(spool.directory / DB_NAME, isolation_level=None)
    yield conn
    conn.close()


def test_a_put_waits_for_another_connections_write_transaction(
    spool: Spool, lock_holder: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting = threading.Event()
    real_pause = spool_db._pause

    def pause(seconds: float) -> None:
        waiting.set()
        real_pause(seconds)

    monkeypatch.setattr(spool_db, "_pause", pause)
    writer = spool.writer()
    writer._preallocation.join()  # white box: its thread takes the write lock too
    lock_holder.execute("BEGIN IMMEDIATE")
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(writer.put(fields("1.1"), payload("1.1"))))
    thread.start()
    assert waiting.wait(timeout=30)  # the put found the lock taken and waits for it
    assert result == []
    lock_holder.execute("COMMIT")
    thread.join()
    writer.close()
    assert len(result) == 1
    with spool.consumer() as consumer:
        assert [item.id for item in consumer.pending()] == result


def test_a_write_lock_held_too_long_fails_the_put_not_the_spool(
    spool: Spool, lock_holder: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_db, "BUSY_TIMEOUT_S", 0.0)
    with spool.writer() as writer:
        writer._preallocation.join()  # white box: its thread takes the write lock too
        lock_holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(SpoolError, match="database is locked") as raised:
            writer.put(fields("1.1"), payload("1.1"))
        assert not isinstance(raised.value, SpoolFullError)  # 0xA700 all the same, but not "full"
        lock_holder.execute("ROLLBACK")
        writer.put(fields("1.2"), payload("1.2"))
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.2"]


def test_an_io_error_is_a_spool_error_and_later_puts_succeed(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated (monkeypatched insert): SQLite reports SQLITE_IOERR inside the transaction."""
    real_insert = spool_module.insert_items
    calls: list[int] = []

    def failing_once(conn: sqlite3.Connection, entries: list[Any]) -> list[int]:
        calls.append(len(entries))
        if len(calls) == 2:
            real_insert(conn, entries)  # written, then the error: rolled back
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = sqlite3.SQLITE_IOERR  # type: ignore[attr-defined]
            raise error
        return real_insert(conn, entries)

    monkeypatch.setattr(spool_module, "insert_items", failing_once)
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
        with pytest.raises(SpoolError, match="disk I/O error") as raised:
            writer.put(fields("1.2"), payload("1.2"))
        assert not isinstance(raised.value, SpoolFullError)
        writer.put(fields("1.3"), payload("1.3"))
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.1", "1.3"]


# -- a full disk, simulated --------------------------------------------------------------------


def test_database_full_gives_spool_full_and_delivering_makes_room(spool: Spool) -> None:
    """``PRAGMA max_page_count`` stands for the disk: SQLite answers SQLITE_FULL, "database
    or disk is full", exactly as on ENOSPC. Nothing stored is damaged, and once the
    consumer has delivered, the freed pages take new puts without any intervention."""
    writer = spool.writer()
    writer._conn.execute("PRAGMA max_page_count = 120")  # white box: 480 KiB for this connection
    stored = []
    with pytest.raises(SpoolFullError, match="No space left"):
        for n in range(100):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}", 20 * 1024))
            stored.append(f"1.{n}")
    assert 0 < len(stored) < 100
    with spool.consumer() as consumer:
        items = consumer.pending()
        assert uids(items) == stored
        assert [item.read() for item in items] == [payload(uid, 20 * 1024) for uid in stored]
        with pytest.raises(SpoolFullError):
            writer.put(fields("2.0"), payload("2.0", 20 * 1024))
        for item in items:
            consumer.settle(item)
        writer.put(fields("2.0"), payload("2.0", 20 * 1024))
        assert uids(consumer.pending()) == ["2.0"]
    assert writer._conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    writer.close()


def test_the_reserve_refuses_a_put_before_the_disk_is_full(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Monkeypatched free space: under RESERVE_BYTES plus twice the payload, nothing is
    written and the error says the device is full; with room again, puts go on."""
    free = [10**12]
    monkeypatch.setattr(spool_module, "free_bytes", lambda directory: free[0])
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1", 1000))
        free[0] = spool_module.RESERVE_BYTES + 1999
        with capture_logs() as logs, pytest.raises(SpoolFullError, match="No space left on device"):
            writer.put(fields("1.2"), payload("1.2", 1000))
        assert [entry["event"] for entry in logs] == ["spool_space_released"]  # it tried to make room first
        with pytest.raises(SpoolFullError):
            writer.put(fields("1.2"), payload("1.2", 1000))
        free[0] = spool_module.RESERVE_BYTES + 2000
        writer.put(fields("1.3"), payload("1.3", 1000))
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.1", "1.3"]


def test_checkpoints_come_sooner_when_space_is_low(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    free = [10**12]
    monkeypatch.setattr(spool_module, "free_bytes", lambda directory: free[0])
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
        assert writer._conn.execute("PRAGMA wal_autocheckpoint").fetchall() == [(spool_db.WRITER_CHECKPOINT_PAGES,)]
        free[0] = spool_db.LOW_SPACE_BYTES - 1
        writer.put(fields("1.2"), payload("1.2"))
        assert writer._conn.execute("PRAGMA wal_autocheckpoint").fetchall() == [
            (spool_db.LOW_SPACE_CHECKPOINT_PAGES,)]


# -- sizes ---------------------------------------------------------------------------------------


def test_the_wal_is_cut_back_to_segment_max_bytes(tmp_path: Path) -> None:
    """``segment_max_bytes`` is the WAL's journal_size_limit: a large SR grows it, and
    after the next checkpoint it is cut back to that size."""
    spool = Spool(tmp_path / "spool", segment_max_bytes=256 * 1024)
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1", 2 * 1024 * 1024))
        wal = spool.directory / WAL
        assert wal.stat().st_size > 2 * 1024 * 1024
        conn = sqlite3.connect(spool.directory / DB_NAME)
        assert conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0][0] == 0
        conn.close()
        writer.put(fields("1.2"), payload("1.2"))  # the WAL starts over, and is cut back
        assert wal.stat().st_size <= 256 * 1024
    with spool.consumer() as consumer:
        assert [item.size for item in consumer.pending()] == [2 * 1024 * 1024, 300]


def test_the_wal_is_filled_ahead_and_then_overwritten_in_place(spool: Spool) -> None:
    """The writer fills the WAL with zeros up to a checkpoint cycle (a put's fdatasync then
    commits no size change); puts and deliveries for a while: checkpoints keep the WAL at
    that size, it is overwritten in place, and no warning is logged."""
    target = spool_module.wal_preallocation_bytes(DEFAULT_SEGMENT_MAX_BYTES)
    with capture_logs() as logs, spool.writer() as writer, spool.consumer() as consumer:
        writer._preallocation.join()  # white box: the background thread is done
        wal = spool.directory / WAL
        assert wal.stat().st_size == target
        for n in range(1500):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}", 4500))
            if n % 10 == 9:
                for item in consumer.pending():
                    consumer.settle(item)
                assert wal.stat().st_size == target
        assert consumer.pending() == []
    assert [entry for entry in logs if entry["log_level"] in ("warning", "error")] == []
    assert spool.status().pending == 0


def test_zeros_ahead_in_the_wal_are_no_damage(crashed_spool: tuple[Path, int, int], tmp_path: Path) -> None:
    """A writer killed after its WAL was filled ahead: the zeros after the last frame are
    the end of the WAL, whatever their length."""
    crashed, _, third = crashed_spool
    directory = copy_of(crashed, tmp_path)
    with open(directory / WAL, "r+b") as wal:
        wal.truncate(third)
        wal.seek(third)
        wal.write(bytes(5 * 1024 * 1024))
    with Spool(directory).consumer() as consumer:
        assert [item.read() for item in consumer.pending()] == [child_payload(f"1.{n}") for n in range(3)]


def test_no_wal_is_filled_ahead_when_space_is_low(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "free_bytes", lambda directory: spool_db.LOW_SPACE_BYTES)
    with spool.writer() as writer:
        writer._preallocation.join()
        writer.put(fields("1.1"), payload("1.1"))
        assert (spool.directory / WAL).stat().st_size < 64 * 1024


@pytest.mark.parametrize(("options", "expected"), [
    ({"preallocation_chunk_bytes": 0}, 0),  # off
    ({"segment_max_bytes": 3 * 1024 * 1024, "preallocation_chunk_bytes": 100_000}, 3 * 1024 * 1024),
])
def test_how_far_and_how_the_wal_is_filled_ahead_is_configurable(
    tmp_path: Path, options: dict[str, int], expected: int
) -> None:
    spool = Spool(tmp_path / "spool", **options)
    with spool.writer() as writer:
        if writer._preallocation is not None:
            writer._preallocation.join()
        wal = spool.directory / WAL
        if expected:
            assert wal.stat().st_size == expected
        else:
            assert wal.stat().st_size < 64 * 1024  # only the frames that created the schema
        writer.put(fields("1.1"), payload("1.1"))
        assert wal.stat().st_size == expected or not expected
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.1"]


def test_release_space_gives_free_pages_back_and_truncates_the_wal(spool: Spool) -> None:
    with spool.writer() as writer, spool.consumer() as consumer:
        for n in range(100):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}", 10_000))
        for item in consumer.pending():
            consumer.settle(item)
        before = (spool.directory / DB_NAME).stat().st_size + (spool.directory / WAL).stat().st_size
        assert before > 100 * 10_000
        with capture_logs() as logs:
            writer.release_space()
        assert [entry["event"] for entry in logs] == ["spool_space_released"]
        assert (spool.directory / WAL).stat().st_size == 0
        assert (spool.directory / DB_NAME).stat().st_size < 100 * 10_000 // 10
        writer.put(fields("1.x"), payload("1.x"))
        assert uids(consumer.pending()) == ["1.x"]
