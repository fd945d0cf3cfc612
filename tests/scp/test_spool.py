"""The durable spool: round trips, crash recovery, locking, dead letters, re-queue.

Everything runs on real files under ``tmp_path``; processes that must be separate (a
writer killed with SIGKILL, a second consumer) are real subprocesses. What is specific
to the SQLite storage (commits, the WAL after a crash, a full disk, vacuum, busy
locks) is in ``test_spool_storage.py``; the migration of a journal spool in
``test_spool_migration.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
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

from scp.spool import db as spool_db
from scp.spool import writer as spool_module
from scp.spool import (
    CONSUMER_LOCK,
    DB_NAME,
    DONE_DIR,
    FAILED_DIR,
    REQUEUE_DIR,
    RecordFields,
    Spool,
    SpoolConsumer,
    SpoolError,
    SpoolFullError,
    SpoolLockedError,
)

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


def database_bytes(root: Path) -> int:
    """Size of ``spool.db`` plus its WAL."""
    return sum(path.stat().st_size for path in (root / DB_NAME, root / f"{DB_NAME}-wal") if path.exists())


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


def test_layout_is_created_on_first_use(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    Spool(root, retention="keep").writer().close()
    # the WAL and its index go when the last connection closes
    assert {p.name for p in root.iterdir()} == {DB_NAME, FAILED_DIR, REQUEUE_DIR, DONE_DIR}


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


def test_order_across_writers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with spool.writer() as writer:
        for n in range(10):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}", 700))
    with spool.writer() as second_writer:  # a later writer's items come after the earlier ones
        second_writer.put(fields("2.0"), payload("2.0"))
    with spool.consumer() as consumer:
        items = consumer.pending()
    assert uids(items) == [f"1.{n}" for n in range(10)] + ["2.0"]
    assert [item.read() for item in items] == [payload(f"1.{n}", 700) for n in range(10)] + [payload("2.0")]


def test_knobs_of_the_journal_are_still_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment_max_bytes must be positive"):
        Spool(tmp_path / "spool", segment_max_bytes=0)
    with pytest.raises(ValueError, match="preallocation_chunk_bytes must not be negative"):
        Spool(tmp_path / "spool", preallocation_chunk_bytes=-1)
    with pytest.raises(ValueError, match="retention"):
        Spool(tmp_path / "spool", retention="forever")  # type: ignore[arg-type]
    spool = Spool(tmp_path / "spool", segment_max_bytes=1, preallocation_chunk_bytes=0)
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.1"]


def test_ids_are_never_reused(spool: Spool, consumer: SpoolConsumer) -> None:
    """Not after the table emptied (AUTOINCREMENT), not in a database made anew: a dead
    letter in failed/ or a done/ copy is never overwritten by another item's."""
    with spool.writer() as writer:
        first = writer.put(fields("1.1"), payload("1.1"))
        [item] = consumer.pending()
        consumer.settle(item)
        second = writer.put(fields("1.2"), payload("1.2"))
    assert second != first
    consumer.close()
    for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
        (spool.directory / name).unlink(missing_ok=True)
    with Spool(spool.directory).writer() as writer:
        third = writer.put(fields("1.3"), payload("1.3"))
    assert third not in (first, second)


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
    assert spool.status().pending == 0


def test_free_bytes(spool: Spool) -> None:
    with spool.writer() as writer:
        assert writer.free_bytes() == shutil.disk_usage(spool.directory).free


# -- another process writes; a writer crashes -------------------------------------------------

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


def test_consumer_sees_records_written_by_another_process(spool: Spool, consumer: SpoolConsumer) -> None:
    writer = WriterProcess(spool.directory)
    try:
        first = writer.put("1.1")
        assert [item.id for item in consumer.pending()] == [first]
        for n in range(2, 6):
            writer.put(f"1.{n}")
            assert uids(consumer.pending()) == [f"1.{k}" for k in range(1, n + 1)]
            assert spool.status().pending == n
        assert [item.read() for item in consumer.pending()] == [child_payload(f"1.{n}") for n in range(1, 6)]
    finally:
        writer.kill()


def test_a_crashed_writer_leaves_nothing_to_clean_up(spool: Spool, consumer: SpoolConsumer) -> None:
    """Killed without closing: its WAL is recovered by the other connections, its items are
    delivered, and a new writer goes on; nothing is logged as damaged or discarded."""
    writer = WriterProcess(spool.directory)
    try:
        writer.put("1.1")
        writer.put("1.2")
    finally:
        writer.kill()
    with capture_logs() as logs:
        items = consumer.pending()
        assert [item.read() for item in items] == [child_payload("1.1"), child_payload("1.2")]
        for item in items:
            consumer.settle(item)
        with spool.writer() as second:
            second.put(fields("1.3"), payload("1.3"))
        assert uids(consumer.pending()) == ["1.3"]
    assert [entry for entry in logs if entry["log_level"] in ("warning", "error")] == []
    assert spool.status().pending == 1


# -- delivery, reopening, crashes, locking -----------------------------------------------------


def test_mark_delivered_survives_reopen(spool: Spool) -> None:
    with spool.writer() as writer:
        for n in range(3):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}"))
    with spool.consumer() as consumer:
        first, second, _ = consumer.pending()
        consumer.settle(first)
        consumer.settle(second)
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


MARK_THEN_WAIT = """
import sys
from scp.spool import Spool
with Spool(sys.argv[1]).consumer() as consumer:
    first = consumer.pending()[0]
    consumer.settle(first)
    print("MARKED", first.id, flush=True)
    sys.stdin.read()  # wait here to be killed
"""


def test_mark_delivered_survives_sigkill_right_after_it_returned(spool: Spool) -> None:
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
        writer.put(fields("1.2"), payload("1.2"))
    child = run_child(MARK_THEN_WAIT, str(spool.directory), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        read_marked_line(child, "MARKED")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.2"]


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
    with capture_logs() as logs, spool.consumer() as consumer:
        items = consumer.pending()
        assert uids(items) == ["1.2", "1.1"]
        assert items[1].read() == b"second version"
    [superseded] = [entry for entry in logs if entry["event"] == "spool_item_superseded"]
    assert superseded["sop_instance_uid"] == "1.1" and superseded["item_id"] != items[1].id
    assert spool.status().pending == 2
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.2", "1.1"]


def test_status_counts_one_item_per_sop_instance_uid_before_the_consumer_has_looked(spool: Spool) -> None:
    with spool.writer() as writer:
        writer.put(fields("1.1", received_at="2024-01-01T00:00:00.000000+00:00"), payload("1.1", 100))
        writer.put(fields("1.1", received_at="2024-01-02T00:00:00.000000+00:00"), payload("1.1", 200))
        writer.put(fields("1.1", received_at="2023-12-31T00:00:00.000000+00:00"), payload("1.1", 400))
    status = spool.status()
    assert (status.pending, status.pending_bytes) == (1, 200)
    assert status.oldest_pending_received_at == "2024-01-02T00:00:00.000000+00:00"


def test_newer_duplicate_arriving_later_supersedes_a_pending_item(spool: Spool, consumer: SpoolConsumer) -> None:
    writer = spool.writer()
    writer.put(fields("1.1"), b"first version")
    [first] = consumer.pending()
    writer.put(fields("1.1"), b"second version")
    [second] = consumer.pending()
    assert second.id != first.id and second.read() == b"second version"
    consumer.settle(first)  # the forwarder finishes the one it had started: harmless
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


def test_dead_letter_of_a_superseded_item_that_is_gone(spool: Spool, consumer: SpoolConsumer) -> None:
    with spool.writer() as writer:
        writer.put(fields("1.1"), b"first version")
    [first] = consumer.pending()
    with spool.writer() as writer:
        writer.put(fields("1.1"), b"second version")
    [second] = consumer.pending()  # supersedes the first, which is removed
    with pytest.raises(SpoolError, match="no longer in the spool"):
        first.read()
    consumer.dead_letter(first, {"reason": "HTTP 422"})  # the forwarder's late verdict: nothing to keep
    assert spool.failed() == []
    assert consumer.pending() == [second]


# -- disk full ----------------------------------------------------------------------------------


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


@pytest.mark.parametrize("reserve", [True, False], ids=["reserve-refuses", "enospc"])
def test_full_disk_raises_spool_full_and_the_spool_recovers(
    tiny_tmpfs: Path, monkeypatch: pytest.MonkeyPatch, reserve: bool
) -> None:
    """With its reserve the spool refuses before the disk is full; without it (as when
    something else fills the disk) SQLite meets ENOSPC. Either way only the record that
    cannot be written fails, nothing stored is damaged, and puts succeed again once the
    operator frees space."""
    if not reserve:  # no reserve, and the free-space check never refuses: the disk is full first
        monkeypatch.setattr(spool_module, "free_bytes", lambda directory: 2**50)
    spool = Spool(tiny_tmpfs / "spool")
    filler = tiny_tmpfs / "filler"
    filler.write_bytes(b"\0" * 200 * 1024)
    with spool.consumer() as consumer, spool.writer() as writer:
        stored = []
        with pytest.raises(SpoolFullError, match="No space left") as raised:
            for n in range(20):
                writer.put(fields(f"1.{n}"), payload(f"1.{n}", 100 * 1024))
                stored.append(f"1.{n}")
        assert ("SQLite: database or disk is full" in str(raised.value)) == (not reserve)
        assert 0 < len(stored) < 20
        items = consumer.pending()
        assert uids(items) == stored
        assert [item.read() for item in items] == [payload(uid, 100 * 1024) for uid in stored]
        filler.unlink()  # the operator frees space
        writer.put(fields("2.0"), payload("2.0", 100 * 1024))
        assert uids(consumer.pending()) == [*stored, "2.0"]
        assert writer._conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_tiny_disk_never_fills_with_delivered_items(tiny_tmpfs: Path) -> None:
    """Twice the file system's size goes through it: the pages of delivered items are
    reused by the next puts (the journal kept them until a whole segment was consumed)."""
    spool = Spool(tiny_tmpfs / "spool")
    with spool.consumer() as consumer, spool.writer() as writer:
        for n in range(600):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}", 3500))
            [item] = consumer.pending()
            assert item.read() == payload(f"1.{n}", 3500)
            consumer.settle(item)
    assert spool.status().pending == 0


# -- concurrency -----------------------------------------------------------------------------


@pytest.mark.parametrize("readers", [0, 1], ids=["writers-only", "consumer-reading-along"])
def test_concurrent_puts_lose_nothing(tmp_path: Path, readers: int) -> None:
    """Eight association threads share one writer (group commit); a consumer reads along
    meanwhile in the second variant."""
    spool = Spool(tmp_path / "spool")
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
    if readers:
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
    if readers:
        reader.join()
    assert errors == []
    assert len(set(ids)) == 400
    assert seen <= set(ids)
    with spool.consumer() as consumer:
        items = consumer.pending()
    assert {item.id for item in items} == set(ids)
    for item in items:
        n = int(item.sop_instance_uid.rpartition(".")[2])
        assert item.read() == payload(item.sop_instance_uid, 1000 + n)


# -- space, retention, status ------------------------------------------------------------------


def test_consumed_items_give_their_space_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delivered rows are deleted; once the file is mostly free pages (at least
    VACUUM_MIN_FREE_PAGES, lowered here), the consumer returns them to the file system."""
    monkeypatch.setattr(spool_db, "VACUUM_MIN_FREE_PAGES", 16)
    spool = Spool(tmp_path / "spool")
    with spool.writer() as writer:
        for n in range(200):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}", 8000))
        writer.release_space()  # a checkpoint: everything is in spool.db now
        full = (spool.directory / DB_NAME).stat().st_size
        assert full > 200 * 8000
        with spool.consumer() as consumer:
            for item in consumer.pending():
                consumer.settle(item)
            assert consumer.pending() == []  # this call gives the free pages back
            writer.release_space()  # and this checkpoint makes spool.db shorter
            assert (spool.directory / DB_NAME).stat().st_size < full // 4
            writer.put(fields("2.0"), payload("2.0"))
            assert uids(consumer.pending()) == ["2.0"]
    status = spool.status()
    assert (status.pending, status.segments) == (1, 1)


def test_partly_consumed_spool_is_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with spool.writer() as writer:
        for n in range(4):
            writer.put(fields(f"1.{n}"), payload(f"1.{n}", 700))
    with spool.consumer() as consumer:
        for item in consumer.pending()[:3]:
            consumer.settle(item)
        assert uids(consumer.pending()) == ["1.3"]
    with spool.consumer() as consumer:
        assert uids(consumer.pending()) == ["1.3"]
    assert spool.status().pending == 1


def test_retention_keep_writes_done_copies(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", retention="keep")
    with spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
    with spool.consumer() as consumer:
        [item] = consumer.pending()
        consumer.settle(item)
        consumer.pending()
    assert (spool.directory / DONE_DIR / f"{item.id}.dcm").read_bytes() == payload("1.1")
    assert spool.status().pending == 0


def test_status_counts(spool: Spool) -> None:
    assert spool.status().pending == 0
    with spool.writer() as writer:
        writer.put(fields("1.1", received_at="2024-01-02T00:00:00.000000+00:00"), payload("1.1", 100))
        writer.put(fields("1.2", received_at="2024-01-01T00:00:00.000000+00:00"), payload("1.2", 200))
        writer.put(fields("1.3", received_at="2024-01-03T00:00:00.000000+00:00"), payload("1.3", 300))
        writer.put(fields("1.4"), payload("1.4", 400))
        with spool.consumer() as consumer:
            first, second, _, fourth = consumer.pending()
            consumer.settle(first)
            consumer.dead_letter(fourth, {"reason": "HTTP 422"})
            status = spool.status()  # while the writer and the consumer are running
    assert (status.pending, status.pending_bytes, status.failed, status.segments) == (2, 500, 1, 1)
    assert status.oldest_pending_received_at == second.received_at
    spool.requeue()
    status = spool.status()
    assert (status.pending, status.pending_bytes, status.failed) == (3, 900, 0)


# -- property: nothing is ever lost ------------------------------------------------------------


class SpoolMachine(RuleBasedStateMachine):
    """Random puts, deliveries, dead letters, re-queues, reopenings and space releases.

    Invariant: every instance put is exactly one of pending, delivered or failed.
    """

    patches: dict[tuple[object, str], object] = {}
    """Module attributes set for the run of one example (restored in teardown)."""

    def __init__(self) -> None:
        super().__init__()
        self._saved = {(module, name): getattr(module, name) for module, name in self.patches}
        for (module, name), value in self.patches.items():
            setattr(module, name, value)
        self.directory = Path(tempfile.mkdtemp(prefix="spool-machine-"))
        self.spool = Spool(self.directory, segment_max_bytes=1500)
        self.writer = self.spool.writer()
        self.consumer = self.spool.consumer()
        self.consumer.open()
        self.state: dict[str, str] = {}
        self.data: dict[str, bytes] = {}
        self.counter = 0

    pending_uids = Bundle("pending_uids")

    @rule(target=pending_uids, size=st.integers(0, 9000))
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
        self.consumer.settle(self._item(uid))
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

    @rule()
    def release_space(self) -> None:
        self.writer.release_space()

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
        for (module, name), value in self._saved.items():
            setattr(module, name, value)


class VacuumingSpoolMachine(SpoolMachine):
    """The same with a checkpoint every 8 WAL frames and a VACUUM whenever a page is free
    after removals: the file of pending items is rewritten all the time."""

    patches = {
        (spool_db, "checkpoint_pages"): lambda free_bytes, normal: 8,
        (spool_db, "VACUUM_MIN_FREE_PAGES"): 1,
        (spool_db, "VACUUM_FREE_RATIO"): 0,
    }


SpoolMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
VacuumingSpoolMachine.TestCase.settings = SpoolMachine.TestCase.settings
test_spool_never_loses_an_instance = SpoolMachine.TestCase
test_spool_never_loses_an_instance_while_pages_move = VacuumingSpoolMachine.TestCase
