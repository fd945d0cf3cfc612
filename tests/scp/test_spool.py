"""The durable spool: journal round trips, crash recovery, locking, dead letters, re-queue.

Everything runs on real files under ``tmp_path``; processes that must be separate (a
writer killed with SIGKILL, a second consumer) are real subprocesses.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule
from structlog.testing import capture_logs

from scp import spool_journal
from scp.spool import (
    CONSUMER_LOCK,
    DELIVERED_LOG,
    DONE_DIR,
    FAILED_DIR,
    JOURNAL_DIR,
    PREALLOCATION_CHUNK_BYTES,
    REQUEUE_DIR,
    SEGMENT_SUFFIX,
    RecordFields,
    Spool,
    SpoolConsumer,
    SpoolError,
    SpoolFullError,
    SpoolLockedError,
)
from scp.spool_journal import MAGIC, RECORD_PREFIX_SIZE, garbage_after

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def fields(sop_instance_uid: str, **overrides: str) -> RecordFields:
    values = {
        "sop_class_uid": COMPREHENSIVE_SR,
        "transfer_syntax_uid": EXPLICIT_VR_LITTLE_ENDIAN,
        "calling_ae": "MODALITY",
        **overrides,
    }
    return RecordFields(sop_instance_uid=sop_instance_uid, **values)


def payload(sop_instance_uid: str, size: int = 300) -> bytes:
    """Distinct, recognisable bytes per instance."""
    seed = f"DICM|{sop_instance_uid}|".encode()
    return (seed * (size // len(seed) + 1))[:size]


def segments(root: Path) -> list[Path]:
    return sorted((root / JOURNAL_DIR).glob(f"*{SEGMENT_SUFFIX}"))


def records_end(segment: Path) -> int:
    """Where the valid records of ``segment`` end (its zero tail or torn tail starts)."""
    fd = os.open(segment, os.O_RDONLY)
    try:
        return max((record.end for record in spool_journal.scan_records(fd, 0)), default=0)
    finally:
        os.close(fd)


def tail_garbage(segment: Path) -> int:
    """Non-zero bytes after the valid records of ``segment`` (0: a clean zero tail or none)."""
    fd = os.open(segment, os.O_RDONLY)
    try:
        return garbage_after(fd, records_end(segment))
    finally:
        os.close(fd)


def uids(items: list) -> list[str]:
    return [item.sop_instance_uid for item in items]


def run_child(code: str, *args: str, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-c", code, *args], text=True, env=env, cwd=REPO_ROOT, **popen
    )


def read_marked_line(child: subprocess.Popen[str], marker: str) -> str:
    """The rest of the child's first stdout line that starts with ``marker`` (log lines skipped)."""
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith(marker + " "):
            return line[len(marker) + 1 :].strip()
    raise AssertionError(f"the child process exited without printing {marker!r}")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def consumer(spool: Spool) -> Iterator[SpoolConsumer]:
    with spool.consumer() as opened:
        yield opened


# -- put, pending, read -------------------------------------------------------------------


def test_put_pending_read_round_trip(spool: Spool, consumer: SpoolConsumer) -> None:
    record = fields("1.2.3.4", calling_ae="PACS", received_at="2024-05-01T10:00:00.000000+00:00")
    with spool.writer() as writer:
        item_id = writer.put(record, payload("1.2.3.4", 5000))
    [item] = consumer.pending()
    assert item.id == item_id
    assert (item.sop_instance_uid, item.sop_class_uid, item.transfer_syntax_uid) == (
        "1.2.3.4", COMPREHENSIVE_SR, EXPLICIT_VR_LITTLE_ENDIAN,
    )
    assert (item.calling_ae, item.received_at, item.size) == ("PACS", "2024-05-01T10:00:00.000000+00:00", 5000)
    assert item.read() == payload("1.2.3.4", 5000)
    assert item.record_fields() == record


def count_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every sync of the spool: "fdatasync", "fsync file" (preallocation) or "fsync dir"."""
    synced: list[str] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def fsync(fd: int) -> None:
        synced.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    monkeypatch.setattr(spool_journal.os, "fdatasync", lambda fd: (synced.append("fdatasync"), real_fdatasync(fd))[1])
    monkeypatch.setattr(spool_journal.os, "fsync", fsync)
    return synced


def test_one_fdatasync_per_put_and_no_directory_fsync(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = count_syncs(monkeypatch)
    with spool.writer() as writer:
        for n in range(10):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}"))
    # the journal directory once for the new segment, its first preallocated chunk once
    assert synced == ["fsync dir", "fsync file"] + ["fdatasync"] * 10


def test_one_fdatasync_per_put_while_preallocation_extends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunk = 8 * 1024
    spool = Spool(tmp_path / "spool", preallocation_chunk_bytes=chunk)
    synced = count_syncs(monkeypatch)
    with spool.writer() as writer:
        for n in range(60):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}", 1000))
        [segment] = segments(spool.directory)
        preallocated = segment.stat().st_size
    assert synced.count("fdatasync") == 60  # one per put, none for preallocation
    assert synced.count("fsync dir") == 1
    assert preallocated % chunk == 0 and preallocated > 60 * 1000
    assert synced.count("fsync file") == preallocated // chunk  # one per preallocated chunk


def test_layout_is_created_on_first_use(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    Spool(root, retention="keep").writer().close()
    assert {p.name for p in root.iterdir()} == {JOURNAL_DIR, FAILED_DIR, REQUEUE_DIR, DONE_DIR}


def test_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(SpoolError, match="cannot create the spool directory"):
        Spool(tmp_path / "file" / "spool").writer()


def test_empty_and_large_payloads(spool: Spool, consumer: SpoolConsumer) -> None:
    with spool.writer() as writer:
        writer.put(fields("1.1"), b"")
        writer.put(fields("1.2"), payload("1.2", 3 * 1024 * 1024))
    empty, large = consumer.pending()
    assert empty.read() == b""
    assert large.read() == payload("1.2", 3 * 1024 * 1024)


def test_pending_limit_returns_the_oldest(spool: Spool, consumer: SpoolConsumer) -> None:
    with spool.writer() as writer:
        for n in range(5):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}"))
    assert uids(consumer.pending(2)) == ["1.0", "1.1"]
    assert uids(consumer.pending()) == [f"1.{n}" for n in range(5)]


def test_segment_rollover_and_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", segment_max_bytes=2000)
    with spool.writer() as writer:
        for n in range(10):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}", 700))
    files = segments(spool.directory)
    assert len(files) == 5  # two ~1 KB records per 2000-byte segment
    assert all(f.stat().st_size <= 2000 for f in files)
    with spool.writer() as second_writer:  # a later writer's segment sorts after the earlier ones
        second_writer.put(fields("2.0"), payload("2.0"))
    with spool.consumer() as consumer:
        items = consumer.pending()
    assert uids(items) == [f"1.{n}" for n in range(10)] + ["2.0"]
    assert [item.read() for item in items] == [payload(f"1.{n}", 700) for n in range(10)] + [payload("2.0")]


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", segment_max_bytes=1000)
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1", 100))
        writer.put(fields("1.2"), payload("1.2", 5000))
        writer.put(fields("1.3"), payload("1.3", 100))
    assert len(segments(spool.directory)) == 3
    with spool.consumer() as consumer:
        assert [item.read() for item in consumer.pending()] == [
            payload("1.1", 100), payload("1.2", 5000), payload("1.3", 100),
        ]


def test_consumer_sees_records_appended_after_it_opened(spool: Spool, consumer: SpoolConsumer) -> None:
    writer = spool.writer()
    assert consumer.pending() == []
    writer.put(fields("1.1"), payload("1.1"))
    assert uids(consumer.pending()) == ["1.1"]
    writer.put(fields("1.2"), payload("1.2"))
    assert uids(consumer.pending()) == ["1.1", "1.2"]
    writer.close()


def test_writer_after_close_refuses(spool: Spool) -> None:
    writer = spool.writer()
    writer.close()
    with pytest.raises(SpoolError, match="closed"):
        writer.put(fields("1.1"), b"x")
    assert segments(spool.directory) == []  # a writer that never wrote leaves no segment


def test_free_bytes(spool: Spool) -> None:
    with spool.writer() as writer:
        assert writer.free_bytes() == shutil.disk_usage(spool.directory).free


# -- torn tails and garbage -------------------------------------------------------------------


def write_three(spool: Spool, size: int = 300) -> tuple[Path, int]:
    """Three records in one segment; returns the segment and the offset of the last record."""
    with spool.writer() as writer:
        ids = [writer.put(fields(f"1.{n}"), payload(f"1.{n}", size)) for n in range(3)]
    [segment] = segments(spool.directory)
    return segment, int(ids[-1].rpartition("-")[2])


@pytest.mark.parametrize("cut", [1, 4, 8, 12, 20, RECORD_PREFIX_SIZE - 1, RECORD_PREFIX_SIZE, 40, 150, -150, -1])
def test_torn_tail_is_discarded_and_appending_still_works(spool: Spool, cut: int) -> None:
    segment, last = write_three(spool)
    end = segment.stat().st_size
    os.truncate(segment, last + cut if cut > 0 else end + cut)
    with spool.consumer() as consumer:
        items = consumer.pending()
        assert uids(items) == ["1.0", "1.1"]
        assert [item.read() for item in items] == [payload("1.0"), payload("1.1")]
        with spool.writer() as writer:
            writer.put(fields("1.3"), payload("1.3"))
        assert uids(consumer.pending()) == ["1.0", "1.1", "1.3"]


def test_torn_tail_at_every_offset_of_the_last_record(spool: Spool) -> None:
    segment, last = write_three(spool, size=40)
    original = segment.read_bytes()
    for cut in range(last, len(original)):
        segment.write_bytes(original[:cut])
        assert spool.status().pending == 2, cut
        with spool.consumer() as consumer:
            assert uids(consumer.pending()) == ["1.0", "1.1"], cut
    segment.write_bytes(original)
    assert spool.status().pending == 3


@pytest.mark.parametrize(
    "garbage",
    [b"\x00" * 100, os.urandom(4096), MAGIC + b"\x01\x00" + os.urandom(200), MAGIC + b"\x01\x00\x00\x00" + b"\xff" * 20],
)
def test_garbage_after_the_last_record_is_ignored(spool: Spool, garbage: bytes) -> None:
    segment, _ = write_three(spool)
    with segment.open("ab") as out:
        out.write(garbage)
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.0", "1.1", "1.2"]
        with spool.writer() as writer:
            writer.put(fields("1.3"), payload("1.3"))
        assert uids(consumer.pending()) == ["1.0", "1.1", "1.2", "1.3"]


def test_flipped_payload_byte_ends_the_readable_part(spool: Spool) -> None:
    segment, last = write_three(spool)
    data = bytearray(segment.read_bytes())
    data[last - 5] ^= 0xFF  # inside the payload of the second record
    segment.write_bytes(bytes(data))
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.0"]


def test_torn_delivered_log_line_is_cut_off(spool: Spool) -> None:
    with spool.writer() as writer:
        for n in range(3):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}"))
    with spool.consumer() as consumer:
        first, *_ = consumer.pending()
        consumer.mark_delivered(first)
    with (spool.directory / DELIVERED_LOG).open("ab") as out:
        out.write(b"0badc0de 123-4")  # a torn line: no newline
    with spool.consumer() as consumer:
        second, third = consumer.pending()
        consumer.mark_delivered(second)
    with spool.consumer() as consumer:
        assert consumer.pending() == [third]


# -- preallocation: the zero tail ------------------------------------------------------------

WRITER_CHILD = """
import sys
from scp.spool import RecordFields, Spool
writer = Spool(sys.argv[1]).writer()
for line in sys.stdin:
    uid = line.strip()
    item_id = writer.put(RecordFields(uid, sys.argv[2], sys.argv[3], "CHILD"), (uid + "|").encode() * 60)
    print("ID", item_id, flush=True)
"""


def child_payload(uid: str) -> bytes:
    return (uid + "|").encode() * 60


class WriterProcess:
    """A writer in another process: ``put(uid)`` there, ``kill()`` it (SIGKILL, no clean close)."""

    def __init__(self, directory: Path) -> None:
        self.child = run_child(
            WRITER_CHILD, str(directory), COMPREHENSIVE_SR, EXPLICIT_VR_LITTLE_ENDIAN,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )

    def put(self, uid: str) -> str:
        assert self.child.stdin is not None
        self.child.stdin.write(uid + "\n")
        self.child.stdin.flush()
        return read_marked_line(self.child, "ID")

    def kill(self) -> None:
        self.child.send_signal(signal.SIGKILL)
        self.child.wait()


@pytest.fixture(scope="module")
def crashed_segment(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes, int, int]:
    """A segment left by a writer killed after three puts: (name, bytes, last offset, records end)."""
    directory = tmp_path_factory.mktemp("crashed") / "spool"
    writer = WriterProcess(directory)
    try:
        ids = [writer.put(f"1.{n}") for n in range(3)]
    finally:
        writer.kill()
    [segment] = segments(directory)
    return segment.name, segment.read_bytes(), int(ids[-1].rpartition("-")[2]), records_end(segment)


def test_segment_is_preallocated_and_its_zero_tail_is_no_corruption(spool: Spool) -> None:
    with capture_logs() as logs:
        writer = spool.writer()
        for n in range(3):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}"))
        [segment] = segments(spool.directory)
        end = records_end(segment)
        assert segment.stat().st_size == PREALLOCATION_CHUNK_BYTES  # a multiple of the chunk
        assert 3 * 300 < end < 2000
        assert tail_garbage(segment) == 0
        status = spool.status()
        assert (status.pending, status.pending_bytes, status.segments) == (3, 900, 1)
        with spool.consumer() as consumer:
            items = consumer.pending()
            assert [item.read() for item in items] == [payload(f"1.{n}") for n in range(3)]
        writer.close()
    assert segment.stat().st_size == end  # a writer that closes cuts its zero tail off
    assert [entry for entry in logs if entry["log_level"] in ("warning", "error")] == []


def test_preallocation_off_appends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool", preallocation_chunk_bytes=0)
    synced = count_syncs(monkeypatch)
    with spool.writer() as writer:
        for n in range(3):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}"))
            [segment] = segments(spool.directory)
            assert segment.stat().st_size == records_end(segment)
    assert synced == ["fsync dir"] + ["fdatasync"] * 3


def test_consumer_sees_records_written_into_preallocated_space(spool: Spool, consumer: SpoolConsumer) -> None:
    """Another process writes; the file size does not change, the consumer still finds each record."""
    writer = WriterProcess(spool.directory)
    try:
        first = writer.put("1.1")
        [segment] = segments(spool.directory)
        size = segment.stat().st_size
        assert [item.id for item in consumer.pending()] == [first]
        for n in range(2, 6):
            writer.put(f"1.{n}")
            assert uids(consumer.pending()) == [f"1.{k}" for k in range(1, n + 1)]
            assert spool.status().pending == n
        assert segment.stat().st_size == size
        assert [item.read() for item in consumer.pending()] == [child_payload(f"1.{n}") for n in range(1, 6)]
    finally:
        writer.kill()


def test_crashed_writers_segment_with_zero_tail_is_deleted_once_consumed(spool: Spool, consumer: SpoolConsumer) -> None:
    writer = WriterProcess(spool.directory)
    try:
        writer.put("1.1")
        writer.put("1.2")
        for item in consumer.pending():
            consumer.mark_delivered(item)
        assert len(segments(spool.directory)) == 1  # its writer still holds it
    finally:
        writer.kill()
    [segment] = segments(spool.directory)
    assert segment.stat().st_size == PREALLOCATION_CHUNK_BYTES  # the zero tail stayed
    with capture_logs() as logs:
        assert consumer.pending() == []
    assert segments(spool.directory) == []
    [deleted] = [entry for entry in logs if entry["event"] == "spool_segment_deleted"]
    assert deleted["discarded_tail_bytes"] == 0


@pytest.mark.parametrize("cut", [1, 4, 8, 12, 20, RECORD_PREFIX_SIZE - 1, RECORD_PREFIX_SIZE, 40, 150, -150, -1])
def test_torn_record_in_the_zero_tail_is_ignored(
    spool: Spool, crashed_segment: tuple[str, bytes, int, int], cut: int
) -> None:
    """A crash tore the last record: its first bytes made it to disk, the rest is still zeros."""
    name, original, last, end = crashed_segment
    torn = bytearray(original)
    kept = last + cut if cut > 0 else end + cut
    torn[kept:end] = bytes(end - kept)
    with spool.writer():  # creates the layout
        pass
    segment = spool.directory / JOURNAL_DIR / name
    segment.write_bytes(bytes(torn))
    assert len(torn) == PREALLOCATION_CHUNK_BYTES > end
    assert spool.status().pending == 2
    with spool.consumer() as consumer:
        items = consumer.pending()
        assert uids(items) == ["1.0", "1.1"]
        assert [item.read() for item in items] == [child_payload("1.0"), child_payload("1.1")]
        with spool.writer() as writer:
            writer.put(fields("1.3"), payload("1.3"))
            assert len(segments(spool.directory)) == 2  # never into the crashed writer's segment
        assert uids(consumer.pending()) == ["1.0", "1.1", "1.3"]
        for item in consumer.pending():
            consumer.mark_delivered(item)
        with capture_logs() as logs:
            assert consumer.pending() == []
    assert segments(spool.directory) == []
    discarded = {entry["segment"]: entry["discarded_tail_bytes"] for entry in logs
                 if entry["event"] == "spool_segment_deleted"}
    assert discarded[name] == len(bytes(torn[last:kept]).rstrip(b"\0")) > 0


def test_torn_record_at_every_offset_in_the_zero_tail(spool: Spool) -> None:
    segment, last = write_three(spool, size=40)
    original = segment.read_bytes()
    zero_tail = bytes(8192)
    for cut in range(last, len(original)):
        segment.write_bytes(original[:cut] + bytes(len(original) - cut) + zero_tail)
        assert spool.status().pending == 2, cut
        with spool.consumer() as consumer:
            assert uids(consumer.pending()) == ["1.0", "1.1"], cut
    segment.write_bytes(original + zero_tail)
    assert spool.status().pending == 3
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.0", "1.1", "1.2"]


def test_preallocation_extends_chunk_by_chunk_and_rolls_over_at_segment_max(tmp_path: Path) -> None:
    chunk, segment_max = 8 * 1024, 64 * 1024
    spool = Spool(tmp_path / "spool", segment_max_bytes=segment_max, preallocation_chunk_bytes=chunk)
    active_sizes = set()
    with spool.writer() as writer:
        for n in range(150):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}", 1000))
            *closed, active = segments(spool.directory)
            size = active.stat().st_size
            assert size % chunk == 0 and records_end(active) <= size <= segment_max, n
            active_sizes.add(size)
            assert all(f.stat().st_size == records_end(f) <= segment_max for f in closed), n
    assert max(active_sizes) == segment_max and len(active_sizes) == segment_max // chunk  # every chunk in turn
    files = segments(spool.directory)
    assert len(files) == 3  # ~1.2 KB records, 53 to a 64 KiB segment
    assert all(f.stat().st_size == records_end(f) > segment_max - 1300 for f in files[:-1])
    with spool.consumer() as consumer:
        items = consumer.pending()
    assert uids(items) == [f"1.{n}" for n in range(150)]
    assert [item.read() for item in items] == [payload(f"1.{n}", 1000) for n in range(150)]


def test_failed_preallocation_is_no_failed_put(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    def enospc(self: object, start: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool_journal.SegmentFile, "preallocate", enospc)
    with capture_logs() as logs, spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
        writer.put(fields("1.2"), payload("1.2"))
        [segment] = segments(spool.directory)
        assert segment.stat().st_size == records_end(segment)  # appended instead
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == ["spool_preallocation_failed"]
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.1", "1.2"]


def test_failed_background_preallocation_is_cut_back_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC halfway through extending: the zeros written are cut off, records are
    appended meanwhile, and a later extension succeeds."""
    chunk = 8 * 1024
    spool = Spool(tmp_path / "spool", preallocation_chunk_bytes=chunk)
    real_pwrite, real_ftruncate = os.pwrite, os.ftruncate
    failures: list[int] = []
    truncations: list[int] = []

    def extension_fails_once(fd: int, data: bytes, offset: int) -> int:
        if offset >= chunk and is_zeros(data) and not failures:
            failures.append(offset)
            real_pwrite(fd, bytes(data)[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(spool_journal.os, "pwrite", extension_fails_once)
    monkeypatch.setattr(spool_journal.os, "ftruncate", lambda fd, n: (truncations.append(n), real_ftruncate(fd, n))[1])
    monkeypatch.setattr("scp.spool.PREALLOCATION_RETRY_SECONDS", 0.0)
    with capture_logs() as logs, spool.writer() as writer:
        for n in range(30):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}", 1000))
        [segment] = segments(spool.directory)
        assert segment.stat().st_size > records_end(segment)  # preallocated again
    assert failures == [chunk]
    assert truncations[0] == chunk  # the half-written zeros were cut off at once
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == ["spool_preallocation_failed"]
    with spool.consumer() as consumer:
        items = consumer.pending()
    assert [item.read() for item in items] == [payload(f"1.{n}", 1000) for n in range(30)]


# -- delivery, reopening, crashes, locking -----------------------------------------------------


def test_mark_delivered_survives_reopen(spool: Spool) -> None:
    with spool.writer() as writer:
        for n in range(3):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}"))
    with spool.consumer() as consumer:
        first, second, _ = consumer.pending()
        consumer.mark_delivered(first)
        consumer.mark_delivered(second)
        assert uids(consumer.pending()) == ["1.2"]
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.2"]


def test_consumer_must_be_open(spool: Spool) -> None:
    with pytest.raises(SpoolError, match="not open"):
        spool.consumer().pending()


PUT_THEN_WAIT = """
import sys
from scp.spool import RecordFields, Spool
writer = Spool(sys.argv[1]).writer()
item_id = writer.put(RecordFields("9.9.9", sys.argv[2], sys.argv[3], "CRASHER"), b"acknowledged" * 100)
print("ID", item_id, flush=True)
sys.stdin.read()  # wait here to be killed
"""


def test_put_survives_sigkill_right_after_it_returned(spool: Spool) -> None:
    child = run_child(
        PUT_THEN_WAIT, str(spool.directory), COMPREHENSIVE_SR, EXPLICIT_VR_LITTLE_ENDIAN,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        item_id = read_marked_line(child, "ID")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    with spool.consumer() as consumer:
        [item] = consumer.pending()
    assert (item.id, item.sop_instance_uid, item.calling_ae) == (item_id, "9.9.9", "CRASHER")
    assert item.read() == b"acknowledged" * 100


OPEN_CONSUMER = """
import sys
from scp.spool import Spool, SpoolLockedError
try:
    with Spool(sys.argv[1]).consumer() as consumer:
        print("RESULT opened", len(consumer.pending()), flush=True)
except SpoolLockedError as exc:
    print("RESULT locked", exc, flush=True)
"""


def test_second_consumer_process_is_refused(spool: Spool) -> None:
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
    with spool.consumer():
        child = run_child(OPEN_CONSUMER, str(spool.directory), stdout=subprocess.PIPE)
        output = read_marked_line(child, "RESULT")
        child.wait()
        assert output.startswith("locked")
        assert f"pid {os.getpid()}" in output
    child = run_child(OPEN_CONSUMER, str(spool.directory), stdout=subprocess.PIPE)
    output = read_marked_line(child, "RESULT")
    child.wait()
    assert output == "opened 1"


def test_second_consumer_in_the_same_process_is_refused(spool: Spool, consumer: SpoolConsumer) -> None:
    with pytest.raises(SpoolLockedError, match=CONSUMER_LOCK):
        spool.consumer().open()


def test_writer_makes_another_segment_when_a_consumer_deleted_its_fresh_one(
    spool: Spool, consumer: SpoolConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race between a writer's create and lock, and a consumer deleting the empty segment."""
    real_flock = spool_journal.fcntl.flock
    raced: list[str] = []

    def consumer_deletes_first(fd: int, operation: int) -> None:
        if not raced:
            [fresh] = segments(spool.directory)
            fresh.unlink()  # what a consumer holding the lock would do with an empty segment
            raced.append(fresh.name)
        real_flock(fd, operation)

    monkeypatch.setattr(spool_journal.fcntl, "flock", consumer_deletes_first)
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
        [segment] = segments(spool.directory)
        assert segment.name != raced[0]
    assert uids(consumer.pending()) == ["1.1"]


def test_writer_skips_a_fresh_segment_a_consumer_has_locked(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    real_flock = spool_journal.fcntl.flock
    held: list[int] = []

    def consumer_holds_it(fd: int, operation: int) -> None:
        if not held:
            [fresh] = segments(spool.directory)
            held.append(os.open(fresh, os.O_RDONLY))
            real_flock(held[0], spool_journal.fcntl.LOCK_EX)
        real_flock(fd, operation)

    monkeypatch.setattr(spool_journal.fcntl, "flock", consumer_holds_it)
    try:
        with spool.writer() as writer:
            writer.put(fields("1.1"), payload("1.1"))
        assert len(segments(spool.directory)) == 2  # the abandoned, empty one is the consumer's to delete
    finally:
        os.close(held[0])
    monkeypatch.undo()
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.1"]
        assert len(segments(spool.directory)) == 1


# -- dead letters and re-queue ---------------------------------------------------------------


def test_dead_letter_then_requeue_brings_it_back_once(spool: Spool, consumer: SpoolConsumer) -> None:
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
        writer.put(fields("1.2"), payload("1.2"))
    failing, _ = consumer.pending()
    consumer.dead_letter(failing, {"reason": "HTTP 422", "attempts": 1, "operation_outcome": {"issue": []}})

    failed_dir = spool.directory / FAILED_DIR
    assert (failed_dir / f"{failing.id}.dcm").read_bytes() == payload("1.1")
    sidecar = json.loads((failed_dir / f"{failing.id}.json").read_text())
    assert sidecar["reason"] == "HTTP 422" and sidecar["attempts"] == 1
    assert sidecar["spool"]["sop_instance_uid"] == "1.1"
    assert uids(consumer.pending()) == ["1.2"]
    [failed] = spool.failed()
    assert (failed.id, failed.sop_instance_uid, failed.reason) == (failing.id, "1.1", "HTTP 422")
    assert spool.status().failed == 1

    assert spool.requeue([failing.id]) == [failing.id]
    assert spool.failed() == []
    assert spool.status().pending == 2
    pending = consumer.pending()
    assert uids(pending) == ["1.2", "1.1"]
    assert pending[1].read() == payload("1.1")
    assert pending[1].received_at == failing.received_at
    assert uids(consumer.pending()) == ["1.2", "1.1"]
    assert os.listdir(spool.directory / REQUEUE_DIR) == []
    consumer.close()
    with spool.consumer() as reopened:
        assert uids(reopened.pending()) == ["1.2", "1.1"]


def test_requeue_all_and_unknown_ids(spool: Spool, consumer: SpoolConsumer) -> None:
    with spool.writer() as writer:
        for n in range(3):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}"))
    for item in consumer.pending():
        consumer.dead_letter(item, {"reason": "mapping error"})
    with pytest.raises(KeyError, match="no dead letter with id 1-2-3"):
        spool.requeue(["1-2-3"])
    assert len(spool.failed()) == 3  # nothing moved
    assert len(spool.requeue()) == 3
    assert uids(consumer.pending()) == ["1.0", "1.1", "1.2"]
    assert spool.requeue() == []


def test_reserved_sidecar_key_is_refused(spool: Spool, consumer: SpoolConsumer) -> None:
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
    [item] = consumer.pending()
    with pytest.raises(ValueError, match="reserved"):
        consumer.dead_letter(item, {"spool": 1})
    with pytest.raises(TypeError):
        consumer.dead_letter(item, {"reason": object()})
    assert consumer.pending() == [item]
    assert spool.failed() == []


def test_interrupted_requeue_is_finished_by_requeueing_again(spool: Spool, consumer: SpoolConsumer) -> None:
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
    [item] = consumer.pending()
    consumer.dead_letter(item, {"reason": "HTTP 400"})
    # The CLI died between its two renames: the payload is in requeue/, the sidecar in failed/.
    os.rename(spool.directory / FAILED_DIR / f"{item.id}.dcm", spool.directory / REQUEUE_DIR / f"{item.id}.dcm")
    assert consumer.pending() == []
    assert [f.id for f in spool.failed()] == [item.id]
    assert spool.requeue([item.id]) == [item.id]
    assert uids(consumer.pending()) == ["1.1"]


def test_interrupted_requeue_cleanup_leaves_no_duplicate(spool: Spool, consumer: SpoolConsumer) -> None:
    # The consumer died after appending the item and removing the payload, before the sidecar.
    (spool.directory / REQUEUE_DIR / "1-2-3.json").write_text(json.dumps({"spool": fields("1.1").to_json()}))
    assert consumer.pending() == []
    assert os.listdir(spool.directory / REQUEUE_DIR) == []


def test_duplicate_requeue_collapses_to_one_item(spool: Spool, consumer: SpoolConsumer) -> None:
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
    [item] = consumer.pending()
    consumer.dead_letter(item, {"reason": "HTTP 400"})
    spool.requeue()
    [requeued] = consumer.pending()
    # The consumer died after appending but before removing the files: it appends again.
    (spool.directory / REQUEUE_DIR / f"{item.id}.dcm").write_bytes(payload("1.1"))
    sidecar = {"reason": "HTTP 400", "spool": requeued.record_fields().to_json()}
    (spool.directory / REQUEUE_DIR / f"{item.id}.json").write_text(json.dumps(sidecar))
    [again] = consumer.pending()
    assert again.id != requeued.id and again.sop_instance_uid == "1.1"


def test_unreadable_requeue_entry_does_not_block_the_queue(spool: Spool, consumer: SpoolConsumer) -> None:
    (spool.directory / REQUEUE_DIR / "1-2-3.dcm").write_bytes(b"x")
    (spool.directory / REQUEUE_DIR / "1-2-3.json").write_text("{not json")
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
    assert uids(consumer.pending()) == ["1.1"]
    assert sorted(os.listdir(spool.directory / REQUEUE_DIR)) == ["1-2-3.dcm", "1-2-3.json"]


# -- the SOP Instance UID rule -----------------------------------------------------------------


def test_same_sop_instance_uid_twice_keeps_the_newest(spool: Spool) -> None:
    with spool.writer() as writer:
        writer.put(fields("1.1"), b"first version")
        writer.put(fields("1.2"), payload("1.2"))
        writer.put(fields("1.1"), b"second version")
    with spool.consumer() as consumer:
        items = consumer.pending()
        assert uids(items) == ["1.2", "1.1"]
        assert items[1].read() == b"second version"
    log = (spool.directory / DELIVERED_LOG).read_text().split()
    assert log[-1] == "superseded"
    assert spool.status().pending == 2
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.2", "1.1"]


def test_newer_duplicate_arriving_later_supersedes_a_pending_item(spool: Spool, consumer: SpoolConsumer) -> None:
    writer = spool.writer()
    writer.put(fields("1.1"), b"first version")
    [first] = consumer.pending()
    writer.put(fields("1.1"), b"second version")
    [second] = consumer.pending()
    assert second.id != first.id and second.read() == b"second version"
    consumer.mark_delivered(first)  # the forwarder finishes the one it had started: harmless
    assert consumer.pending() == [second]
    writer.close()


def test_a_resent_copy_beats_an_older_requeued_one(spool: Spool, consumer: SpoolConsumer) -> None:
    with spool.writer() as listener:
        listener.put(fields("1.1"), b"original")
        [original] = consumer.pending()
        consumer.dead_letter(original, {"reason": "HTTP 422"})
        listener.put(fields("1.1"), b"corrected, sent again by the modality")
        spool.requeue()  # the operator re-queues the old dead letter afterwards
        [item] = consumer.pending()
    assert item.read() == b"corrected, sent again by the modality"
    assert spool.status().pending == 1


def test_dead_letter_of_a_superseded_item_whose_segment_is_gone(spool: Spool, consumer: SpoolConsumer) -> None:
    with spool.writer() as writer:
        writer.put(fields("1.1"), b"first version")
    [first] = consumer.pending()
    with spool.writer() as writer:
        writer.put(fields("1.1"), b"second version")
    [second] = consumer.pending()  # supersedes the first; its segment is now consumed and deleted
    assert not first.segment.exists()
    consumer.dead_letter(first, {"reason": "HTTP 422"})  # the forwarder's late verdict: nothing to keep
    assert spool.failed() == []
    assert consumer.pending() == [second]


# -- disk full and failed writes ---------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs; skipped unless this process may mount one (root)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.parametrize("chunk", [PREALLOCATION_CHUNK_BYTES, 256 * 1024], ids=["never-fits", "fits-a-while"])
def test_full_disk_raises_spool_full_and_the_spool_recovers(tiny_tmpfs: Path, chunk: int) -> None:
    """4 MiB never fit on the 1 MiB file system (records are appended); 256 KiB chunks do
    until the disk is full. Either way only the record that cannot be written fails."""
    spool = Spool(tiny_tmpfs / "spool", preallocation_chunk_bytes=chunk)
    filler = tiny_tmpfs / "filler"
    filler.write_bytes(b"\0" * 200 * 1024)
    with spool.consumer() as consumer, spool.writer() as writer:
        stored = []
        with pytest.raises(SpoolFullError):
            for n in range(20):
                writer.put(fields(f"1.{n}"), payload(f"1.{n}", 100 * 1024))
                stored.append(f"1.{n}")
        assert 0 < len(stored) < 20
        items = consumer.pending()
        assert uids(items) == stored
        assert [item.read() for item in items] == [payload(uid, 100 * 1024) for uid in stored]
        filler.unlink()  # the operator frees space
        writer.put(fields("2.0"), payload("2.0", 100 * 1024))
        # The full segment was retired (so its space can be reclaimed once consumed); the
        # put went to a new one, and nothing of the failed record reads as a record.
        assert len(segments(spool.directory)) == 2
        assert uids(consumer.pending()) == [*stored, "2.0"]


def is_zeros(data: bytes | memoryview) -> bool:
    return not bytes(data).strip(b"\0")


@pytest.mark.parametrize("chunk", [PREALLOCATION_CHUNK_BYTES, 0], ids=["into-preallocated", "appending"])
def test_failed_write_leaves_no_half_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Simulated (monkeypatched os.pwrite): half the record is written, then ENOSPC.

    Into preallocated space the half record is zeroed again; past it the file is cut back.
    """
    spool = Spool(tmp_path / "spool", preallocation_chunk_bytes=chunk)
    writer = spool.writer()
    writer.put(fields("1.1"), payload("1.1"))
    [segment] = segments(spool.directory)
    size_before = segment.stat().st_size
    real_pwrite = os.pwrite
    calls = []

    def half_then_enospc(fd: int, data: bytes, offset: int) -> int:
        if is_zeros(data):  # undoing
            return real_pwrite(fd, data, offset)
        calls.append(len(data))
        if len(calls) == 1:
            return real_pwrite(fd, bytes(data)[: len(data) // 2], offset)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool_journal.os, "pwrite", half_then_enospc)
    with pytest.raises(SpoolFullError, match="No space left"):
        writer.put(fields("1.2"), payload("1.2"))
    assert segment.stat().st_size == size_before
    assert tail_garbage(segment) == 0  # nothing of the half record is left
    monkeypatch.setattr(spool_journal.os, "pwrite", real_pwrite)
    writer.put(fields("1.3"), payload("1.3"))
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.1", "1.3"]
    assert len(segments(spool.directory)) == 2  # after ENOSPC the writer rolls to a new segment
    assert tail_garbage(segment) == 0
    writer.close()


@pytest.mark.parametrize("chunk", [PREALLOCATION_CHUNK_BYTES, 0], ids=["into-preallocated", "appending"])
def test_write_that_cannot_be_undone_rolls_to_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Simulated: EIO after a partial write, and the undo (zeroing or truncation) fails too."""
    spool = Spool(tmp_path / "spool", preallocation_chunk_bytes=chunk)
    writer = spool.writer()
    writer.put(fields("1.1"), payload("1.1"))
    real_pwrite, real_ftruncate = os.pwrite, os.ftruncate

    def partial_then_eio(fd: int, data: bytes, offset: int) -> int:
        monkeypatch.setattr(spool_journal.os, "pwrite", eio)
        return real_pwrite(fd, bytes(data)[:50], offset)

    def eio(*args: object) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(spool_journal.os, "pwrite", partial_then_eio)
    monkeypatch.setattr(spool_journal.os, "ftruncate", eio)
    with pytest.raises(SpoolError, match="Input/output error") as raised:
        writer.put(fields("1.2"), payload("1.2"))
    assert not isinstance(raised.value, SpoolFullError)
    monkeypatch.setattr(spool_journal.os, "pwrite", real_pwrite)
    monkeypatch.setattr(spool_journal.os, "ftruncate", real_ftruncate)
    writer.put(fields("1.3"), payload("1.3"))
    assert len(segments(spool.directory)) == 2
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.1", "1.3"]
    writer.close()


def test_failed_fdatasync_is_an_error_and_the_segment_is_abandoned(
    spool: Spool, consumer: SpoolConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = spool.writer()
    real_fdatasync = os.fdatasync

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(spool_journal.os, "fdatasync", eio)
    with pytest.raises(SpoolError, match="cannot sync"):
        writer.put(fields("1.1"), payload("1.1"))
    monkeypatch.setattr(spool_journal.os, "fdatasync", real_fdatasync)
    writer.put(fields("1.2"), payload("1.2"))
    assert len(segments(spool.directory)) == 2
    assert "1.2" in uids(consumer.pending())
    writer.close()


# -- concurrency -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 4096], ids=["default-chunk", "small-chunk"])
def test_concurrent_puts_lose_nothing(tmp_path: Path, chunk: int | None) -> None:
    """Eight association threads; with small chunks, background extensions race the puts
    and a consumer reads along meanwhile."""
    spool = Spool(tmp_path / "spool", segment_max_bytes=64 * 1024, preallocation_chunk_bytes=chunk)
    writer = spool.writer()
    start = threading.Barrier(8)
    ids: list[str] = []
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def forwarder() -> None:
        try:
            with spool.consumer() as consumer:
                while not stop.is_set():
                    for item in consumer.pending():
                        n = int(item.sop_instance_uid.rpartition(".")[2])
                        assert item.read() == payload(item.sop_instance_uid, 1000 + n)
                        seen.add(item.id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    reader = threading.Thread(target=forwarder)
    reader.start()

    def association(thread: int) -> None:
        start.wait()
        try:
            for n in range(50):
                uid = f"1.{thread}.{n}"
                ids.append(writer.put(fields(uid), payload(uid, 1000 + n)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=association, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    stop.set()
    reader.join()
    assert errors == []
    assert len(set(ids)) == 400
    assert seen <= set(ids)
    assert len(segments(spool.directory)) > 1
    with spool.consumer() as consumer:
        items = consumer.pending()
    assert {item.id for item in items} == set(ids)
    for item in items:
        n = int(item.sop_instance_uid.rpartition(".")[2])
        assert item.read() == payload(item.sop_instance_uid, 1000 + n)


# -- segment deletion, retention, status -------------------------------------------------------


def test_fully_consumed_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", segment_max_bytes=2000)
    writer = spool.writer()
    for n in range(6):
        writer.put(fields(f"1.{n}"), payload(f"1.{n}", 700))
    assert len(segments(spool.directory)) == 3
    with spool.consumer() as consumer:
        for item in consumer.pending():
            consumer.mark_delivered(item)
        assert consumer.pending() == []
        assert len(segments(spool.directory)) == 1  # the writer still holds its active segment
        writer.close()
        assert consumer.pending() == []
        assert segments(spool.directory) == []
    assert (spool.directory / DELIVERED_LOG).read_bytes() == b""  # compacted
    assert spool.status().segments == 0


def test_partly_consumed_segment_is_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", segment_max_bytes=2000)
    with spool.writer() as writer:
        for n in range(4):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}", 700))
    with spool.consumer() as consumer:
        for item in consumer.pending()[:3]:
            consumer.mark_delivered(item)
        assert uids(consumer.pending()) == ["1.3"]
        assert len(segments(spool.directory)) == 1
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.3"]
    assert len((spool.directory / DELIVERED_LOG).read_text().splitlines()) == 1


def test_retention_keep_writes_done_copies(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", retention="keep")
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
    with spool.consumer() as consumer:
        [item] = consumer.pending()
        consumer.mark_delivered(item)
        consumer.pending()
    assert (spool.directory / DONE_DIR / f"{item.id}.dcm").read_bytes() == payload("1.1")
    assert segments(spool.directory) == []


def test_status_counts(spool: Spool) -> None:
    assert spool.status().pending == 0
    with spool.writer() as writer:
        writer.put(fields("1.1", received_at="2024-01-02T00:00:00.000000+00:00"), payload("1.1", 100))
        writer.put(fields("1.2", received_at="2024-01-01T00:00:00.000000+00:00"), payload("1.2", 200))
        writer.put(fields("1.3", received_at="2024-01-03T00:00:00.000000+00:00"), payload("1.3", 300))
        writer.put(fields("1.4"), payload("1.4", 400))
        with spool.consumer() as consumer:
            first, second, _, fourth = consumer.pending()
            consumer.mark_delivered(first)
            consumer.dead_letter(fourth, {"reason": "HTTP 422"})
            status = spool.status()  # while the writer and the consumer are running
    assert (status.pending, status.pending_bytes, status.failed, status.segments) == (2, 500, 1, 1)
    assert status.oldest_pending_received_at == second.received_at
    spool.requeue()
    status = spool.status()
    assert (status.pending, status.pending_bytes, status.failed) == (3, 900, 0)


# -- property: nothing is ever lost ------------------------------------------------------------


class SpoolMachine(RuleBasedStateMachine):
    """Random puts, deliveries, dead letters, re-queues and reopenings.

    Invariant: every instance put is exactly one of pending, delivered or failed.
    """

    preallocation_chunk_bytes: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="spool-machine-"))
        self.spool = Spool(
            self.directory, segment_max_bytes=1500, preallocation_chunk_bytes=self.preallocation_chunk_bytes
        )
        self.writer = self.spool.writer()
        self.consumer = self.spool.consumer()
        self.consumer.open()
        self.state: dict[str, str] = {}
        self.data: dict[str, bytes] = {}
        self.counter = 0

    pending_uids = Bundle("pending_uids")

    @rule(target=pending_uids, size=st.integers(0, 900))
    def put(self, size: int) -> str:
        self.counter += 1
        uid = f"2.25.{self.counter}"
        self.data[uid] = payload(uid, size)
        self.writer.put(fields(uid), self.data[uid])
        self.state[uid] = "pending"
        return uid

    @rule(uid=pending_uids, size=st.integers(0, 900))
    def put_again(self, uid: str, size: int) -> None:
        """The sender sends a pending instance again (maybe changed): one item, the newest."""
        self.data[uid] = payload(uid, size)[::-1]
        self.writer.put(fields(uid), self.data[uid])

    def _item(self, uid: str):  # noqa: ANN202
        matches = [item for item in self.consumer.pending() if item.sop_instance_uid == uid]
        assert len(matches) == 1, (uid, self.state[uid])
        return matches[0]

    @rule(uid=consumes(pending_uids))
    def deliver(self, uid: str) -> None:
        self.consumer.mark_delivered(self._item(uid))
        self.state[uid] = "delivered"

    @rule(uid=consumes(pending_uids))
    def dead_letter(self, uid: str) -> None:
        self.consumer.dead_letter(self._item(uid), {"reason": "rejected"})
        self.state[uid] = "failed"

    @rule(target=pending_uids, which=st.integers(0, 5))
    def requeue_one(self, which: int) -> str:
        failed = self.spool.failed()
        if not failed:
            return self.put(size=10)
        chosen = failed[which % len(failed)]
        assert self.spool.requeue([chosen.id]) == [chosen.id]
        self.state[chosen.sop_instance_uid] = "pending"
        return chosen.sop_instance_uid

    @rule()
    def reopen_consumer(self) -> None:
        self.consumer.close()
        self.consumer = self.spool.consumer()
        self.consumer.open()

    @rule()
    def reopen_writer(self) -> None:
        self.writer.close()
        self.writer = self.spool.writer()

    @invariant()
    def every_instance_is_in_exactly_one_place(self) -> None:
        items = self.consumer.pending()
        pending = uids(items)
        assert [item.read() for item in items] == [self.data[uid] for uid in pending]
        failed = [item.sop_instance_uid for item in self.spool.failed()]
        assert len(pending) == len(set(pending))
        assert set(pending).isdisjoint(failed)
        assert sorted(pending) == sorted(uid for uid, s in self.state.items() if s == "pending")
        assert sorted(failed) == sorted(uid for uid, s in self.state.items() if s == "failed")
        status = self.spool.status()
        assert (status.pending, status.failed) == (len(pending), len(failed))

    def teardown(self) -> None:
        self.writer.close()
        self.consumer.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class SmallChunkSpoolMachine(SpoolMachine):
    """The same with 512-byte preallocation chunks: extensions, waits for them and records
    past the preallocated space all happen."""

    preallocation_chunk_bytes = 512


SpoolMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
SmallChunkSpoolMachine.TestCase.settings = SpoolMachine.TestCase.settings
test_spool_never_loses_an_instance = SpoolMachine.TestCase
test_spool_never_loses_an_instance_with_small_preallocation_chunks = SmallChunkSpoolMachine.TestCase


def test_release_space_retires_the_active_segment_so_a_consumed_one_is_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with spool.writer() as writer, spool.consumer() as consumer:
        writer.put(fields("1.1"), payload("1.1"))
        [item] = consumer.pending()
        consumer.mark_delivered(item)
        assert len(segments(spool.directory)) == 1  # the writer still holds it
        writer.release_space()
        assert consumer.pending() == []
        assert segments(spool.directory) == []  # consumed and released: deleted
        writer.put(fields("1.2"), payload("1.2"))  # a new segment
        assert uids(consumer.pending()) == ["1.2"]
