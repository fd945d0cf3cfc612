"""Migration of a journal spool (the releases before SQLite) on first open.

The journal spools are written by the journal code itself: :data:`GENERATOR` runs the
``scp/spool.py`` and ``scp/spool_journal.py`` of :data:`LEGACY_REVISION` (taken with
``git show``) in a subprocess. One such spool is committed under
``tests/scp/data/legacy_spool`` (with ``expected.json``, what it holds), so the tests run
without git too; ``python -m tests.scp.test_spool_migration`` writes it again.

What the journal spool holds: segments of several writers (rolled over at a small
``segment_max_bytes``, so records of one writer span segments), items delivered and
dead-lettered by its consumer, a dead letter re-queued but not yet taken back, an empty
payload, an older and a newer copy of one SOP Instance UID, and the segment of a writer
that was killed: its preallocated zero tail with a torn record in it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from scp.spool import consumer as spool_consumer
from scp.spool import DB_NAME, Spool
from scp.spool.legacy import DELIVERED_LOG, JOURNAL_DIR, segment_paths
from tests.scp.test_spool import fields, payload, read_marked_line, run_child, uids

REPO_ROOT = Path(__file__).resolve().parents[2]
LEGACY_REVISION = "885fc11"
"""The last revision with the journal spool."""
COMMITTED = Path(__file__).parent / "data" / "legacy_spool"

GENERATOR = r'''
import hashlib, json, os, subprocess, sys
from pathlib import Path
from legacyspool.spool import RecordFields, Spool
from legacyspool import spool_journal

root = Path(sys.argv[1])
SR, TS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.1.2.1"


def data(uid, size):
    seed = f"DICM|{uid}|".encode()
    return (seed * (size // len(seed) + 1))[:size]


def put(writer, uid, size, second, ae="LEGACY"):
    received_at = f"2026-01-01T00:{second // 60:02d}:{second % 60:02d}.000000+00:00"
    body = data(uid, size) if size else b""
    item_id = writer.put(RecordFields(uid, SR, TS, ae, received_at), body)
    return {"uid": uid, "received_at": received_at, "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(), "legacy_id": item_id}


if sys.argv[2:] == ["crash"]:  # a second writer that dies without closing its segment
    writer = Spool(root, segment_max_bytes=6000, preallocation_chunk_bytes=4096).writer()
    made = [put(writer, "1.10", 800, 100, "CRASHED"), put(writer, "1.3", 700, 101, "CRASHED"),
            put(writer, "1.11", 0, 102, "CRASHED")]
    print("MADE", json.dumps(made), flush=True)
    os._exit(0)

spool = Spool(root, segment_max_bytes=6000, preallocation_chunk_bytes=4096)
with spool.writer() as writer:
    first = [put(writer, f"1.{n}", [0, 300, 5000, 1500][n % 4], n) for n in range(10)]
with spool.consumer() as consumer:
    items = {item.sop_instance_uid: item for item in consumer.pending()}
    consumer.mark_delivered(items["1.0"])
    consumer.mark_delivered(items["1.5"])
    consumer.dead_letter(items["1.6"], {"reason": "HTTP 422"})
    consumer.dead_letter(items["1.7"], {"reason": "HTTP 400"})
assert spool.requeue([items["1.7"].id]) == [items["1.7"].id]
out = subprocess.run([sys.executable, "-c", CODE, str(root), "crash"], capture_output=True, text=True,
                     check=True).stdout
crashed = json.loads(next(line[5:] for line in out.splitlines() if line.startswith("MADE ")))
# a torn record in the crashed writer's zero tail: its prefix and a little, then zeros
segment = sorted((root / "journal").glob("*.seg"))[-1]
fd = os.open(segment, os.O_RDWR)
end = max(record.end for record in spool_journal.scan_records(fd, 0))
os.pwrite(fd, spool_journal.MAGIC + b"\x01\x00\x00\x00\x40\x00\x00\x00torn", end)
os.close(fd)
by_uid = {entry["uid"]: entry for entry in first}
expected = {
    # journal order; the older copy of 1.3 superseded by the crashed writer's; 1.7 last,
    # taken back from requeue/ when the new consumer first looks
    "pending": [by_uid[uid] for uid in ("1.1", "1.2", "1.4", "1.8", "1.9")] + crashed + [by_uid["1.7"]],
    "superseded": [by_uid["1.3"]],
    "failed": [{"id": items["1.6"].id, "uid": "1.6"}],
    "requeued": [{"id": items["1.7"].id, "uid": "1.7"}],
}
(root / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
'''
"""Writes a journal spool into argv[1] with the journal code (package ``legacyspool``),
and ``expected.json`` beside its files: what the new spool must find in it."""


def legacy_code(into: Path) -> Path | None:
    """The journal spool of LEGACY_REVISION as package ``legacyspool`` under ``into``."""
    package = into / "legacyspool"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in ("spool.py", "spool_journal.py"):
        try:
            shown = subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{LEGACY_REVISION}:scp/{name}"],
                                   capture_output=True, check=False)
        except OSError:
            return None
        if shown.returncode != 0:
            return None
        (package / name).write_bytes(shown.stdout)
    return into


def generate(root: Path, code_dir: Path) -> None:
    """Run :data:`GENERATOR` with the journal code: a journal spool in ``root``."""
    env = {**os.environ, "PYTHONPATH": str(code_dir)}
    script = f"CODE = {GENERATOR!r}\n{GENERATOR}"  # it runs itself again as the crashing writer
    subprocess.run([sys.executable, "-c", script, str(root)], env=env, check=True, cwd=code_dir)


@pytest.fixture(scope="module")
def fresh_legacy_spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A journal spool written just now by the journal code from git."""
    base = tmp_path_factory.mktemp("legacy")
    code_dir = legacy_code(base / "code")
    if code_dir is None:
        pytest.skip(f"git or revision {LEGACY_REVISION} not available")
    generate(base / "spool", code_dir)
    return base / "spool"


@pytest.fixture(params=["committed", "fresh"])
def legacy_spool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A copy of a journal spool (the committed one, or one the journal code wrote now),
    with what it is expected to hold."""
    source = COMMITTED if request.param == "committed" else request.getfixturevalue("fresh_legacy_spool")
    root = tmp_path / "spool"
    shutil.copytree(source, root)
    expected = json.loads((root / "expected.json").read_text())
    (root / "expected.json").unlink()
    yield root, expected


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_migrated(root: Path, expected: dict[str, Any]) -> None:
    """Every pending item once, in order, with its bytes and received_at; the dead letters
    as they were; the journal's files gone."""
    spool = Spool(root)
    with spool.consumer() as consumer:
        items = consumer.pending()
        assert uids(items) == [entry["uid"] for entry in expected["pending"]]
        assert [(item.received_at, item.size, digest(item.read())) for item in items] == [
            (entry["received_at"], entry["size"], entry["sha256"]) for entry in expected["pending"]]
        assert {item.calling_ae for item in items} == {"LEGACY", "CRASHED"}
    assert [(item.id, item.sop_instance_uid) for item in spool.failed()] == [
        (entry["id"], entry["uid"]) for entry in expected["failed"]]
    assert not (root / JOURNAL_DIR).exists() and not (root / DELIVERED_LOG).exists()
    status = spool.status()
    assert (status.pending, status.failed, status.segments) == (len(expected["pending"]), 1, 1)


def test_a_journal_spool_is_migrated_on_first_open(legacy_spool: tuple[Path, dict[str, Any]]) -> None:
    root, expected = legacy_spool
    assert len(segment_paths(root)) >= 3 and (root / DELIVERED_LOG).exists()
    assert sorted(p.name for p in (root / "requeue").iterdir()) == [
        f"{expected['requeued'][0]['id']}.dcm", f"{expected['requeued'][0]['id']}.json"]
    with capture_logs() as logs:
        assert_migrated(root, expected)
    [migrated] = [entry for entry in logs if entry["event"] == "spool_migrated"]
    assert migrated["imported"] == len(expected["pending"]) - 1 + len(expected["superseded"])  # 1.7 is in requeue/
    [superseded] = [entry for entry in logs if entry["event"] == "spool_item_superseded"]
    assert superseded["sop_instance_uid"] == expected["superseded"][0]["uid"]
    assert [entry for entry in logs if entry["log_level"] in ("warning", "error")] == []


def test_the_listener_migrates_before_the_worker_starts(legacy_spool: tuple[Path, dict[str, Any]]) -> None:
    """The daemon opens its writer first: the migration happens there, and new puts go
    after the migrated items."""
    root, expected = legacy_spool
    with Spool(root).writer() as writer:
        assert not (root / JOURNAL_DIR).exists()
        writer.put(fields("9.9"), payload("9.9"))
    with Spool(root).consumer() as consumer:
        pending = uids(consumer.pending())
    migrated = [entry["uid"] for entry in expected["pending"][:-1]]
    assert pending == [*migrated, "9.9", expected["requeued"][0]["uid"]]


def test_old_dead_letters_can_be_requeued(legacy_spool: tuple[Path, dict[str, Any]]) -> None:
    root, expected = legacy_spool
    spool = Spool(root)
    [failed] = expected["failed"]
    assert spool.requeue([failed["id"]]) == [failed["id"]]
    with spool.consumer() as consumer:
        pending = consumer.pending()
        assert uids(pending)[-2:] == [failed["uid"], expected["requeued"][0]["uid"]]  # re-queued in id order
        assert pending[-2].received_at == "2026-01-01T00:00:06.000000+00:00"
        assert pending[-2].read() == payload(failed["uid"], 5000)


MIGRATE_AND_DIE = """
import pathlib, sys
from scp.spool import legacy as spool_legacy
from scp.spool import Spool

where = sys.argv[2]
if where == "after-commit":  # every record its own transaction; die after the 2nd segment committed
    real_unlink, segments = pathlib.Path.unlink, []
    def unlink(self, missing_ok=False):
        if self.suffix == ".seg":
            segments.append(self.name)
            if len(segments) == 2:
                print("DYING", self.name, flush=True)
                sys.stdin.read()
        return real_unlink(self, missing_ok=missing_ok)
    pathlib.Path.unlink = unlink
else:  # die inside the 4th transaction: rows inserted, not committed
    spool_legacy.MIGRATION_CHUNK_BYTES = 1
    real_insert, calls = spool_legacy.insert_items, []
    def insert_items(conn, entries):
        seqs = real_insert(conn, entries)
        calls.append(len(entries))
        if len(calls) == 4:
            print("DYING", len(calls), flush=True)
            sys.stdin.read()
        return seqs
    spool_legacy.insert_items = insert_items
Spool(sys.argv[1]).writer().close()
print("DONE -", flush=True)
"""


@pytest.mark.parametrize("where", ["after-commit", "inside-a-transaction"])
def test_sigkill_during_the_migration_loses_and_duplicates_nothing(
    legacy_spool: tuple[Path, dict[str, Any]], where: str
) -> None:
    root, expected = legacy_spool
    child = run_child(MIGRATE_AND_DIE, str(root), where, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        read_marked_line(child, "DYING")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert (root / JOURNAL_DIR).exists()  # interrupted: what is left is migrated by the next open
    assert_migrated(root, expected)


def test_a_segment_an_old_writer_still_holds_is_migrated_later(
    legacy_spool: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer of the old release still running holds flock on its segment: that one is
    left (and said so), the rest migrated; the consumer takes it once it is free."""
    root, expected = legacy_spool
    held = segment_paths(root)[-1]
    fd = os.open(held, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    monkeypatch.setattr(spool_consumer, "LEGACY_RETRY_S", 0.0)
    try:
        with capture_logs() as logs, Spool(root).consumer() as consumer:
            before = uids(consumer.pending())
            status = Spool(root).status()
            assert status.segments == 2  # spool.db and the held segment
            assert status.pending == len(expected["pending"]) + 1  # the held segment counted, 1.3 twice
            os.close(fd)
            fd = -1
            after = consumer.pending()
    finally:
        if fd >= 0:
            os.close(fd)
    warnings = [entry["event"] for entry in logs if entry["log_level"] in ("warning", "error")]
    assert warnings and set(warnings) == {"spool_legacy_segment_busy"}  # once per attempt
    assert "1.10" not in before and "1.11" not in before  # in the held segment (with the newer 1.3)
    assert sorted(uids(after)) == sorted(entry["uid"] for entry in expected["pending"])
    assert not (root / JOURNAL_DIR).exists()


def test_a_spool_without_journal_is_left_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with capture_logs() as logs, spool.writer() as writer:
        writer.put(fields("1.1"), payload("1.1"))
    assert [entry["event"] for entry in logs] == []
    assert (spool.directory / DB_NAME).exists()


def regenerate() -> None:
    """Write the committed journal spool again (needs git and LEGACY_REVISION)."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        code_dir = legacy_code(Path(scratch) / "code")
        if code_dir is None:
            raise SystemExit(f"git or revision {LEGACY_REVISION} not available")
        shutil.rmtree(COMMITTED, ignore_errors=True)
        generate(COMMITTED, code_dir)
        (COMMITTED / "consumer.lock").unlink(missing_ok=True)
    print(f"wrote {COMMITTED}")


if __name__ == "__main__":
    regenerate()
