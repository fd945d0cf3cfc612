"""``sr2fhir serve`` end to end with real DICOM senders, on 127.0.0.1 and ephemeral ports."""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from scp.cli import main as cli_main
from tests.support import sr_builders as sr
from tests.support.daemon_process import DaemonProcess, write_config

pytestmark = pytest.mark.integration


def report(name: str, **kwargs) -> Dataset:
    group = sr.measurement_group("1410", tracking_identifier=name, finding_site=sr.finding_site_item(sr.LUNG),
                                 measurements=[sr.num_item(sr.LENGTH, 12.5, sr.MM)])
    return pydicom.dcmread(BytesIO(sr.to_part10_bytes(
        sr.measurement_report([group], sop_instance_uid=sr.uid(f"sr:{name}"), **kwargs))))


def send(port: int, *datasets: Dataset, calling: str = "MODALITY", called: str = "SR2FHIR") -> list[int]:
    """C-STORE each dataset over one association with pynetdicom; return the statuses."""
    ae = AE(ae_title=calling)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association was not established"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


@pytest.fixture
def daemon(tmp_path):
    with DaemonProcess(write_config(tmp_path)) as running:
        yield running


def delivered(daemon: DaemonProcess, sop_instance_uid: str, count: int = 1) -> dict:
    return daemon.wait_for("bundle_delivered", lambda e: e.get("sop_instance_uid") == sop_instance_uid, count=count)


def test_pynetdicom_scu_store_is_acknowledged_spooled_and_written_to_the_outbox(daemon, tmp_path):
    ds = report("scu")
    assert send(daemon.port, ds) == [0x0000]
    spooled = daemon.wait_for("sr_spooled", lambda e: e["sop_instance_uid"] == ds.SOPInstanceUID)
    assert spooled["calling_ae"] == "MODALITY"
    delivered(daemon, ds.SOPInstanceUID)
    bundle = json.loads((tmp_path / "outbox" / f"{ds.SOPInstanceUID}.json").read_text(encoding="utf-8"))
    assert bundle["type"] == "transaction"
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} >= {"Observation", "Device", "BodyStructure"}


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is not installed (scripts/test.sh installs it)")
def test_dcmtk_storescu_sends_several_files(daemon, tmp_path):
    files = []
    for name in ("a", "b", "c"):
        path = tmp_path / f"{name}.dcm"
        report(f"dcmtk-{name}").save_as(path, enforce_file_format=True)
        files.append(path)
    proc = subprocess.run(
        ["storescu", "-R", "-aet", "PACS", "-aec", "SR2FHIR", "127.0.0.1", str(daemon.port), *map(str, files)],
        env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("a", "b", "c"):
        event = delivered(daemon, sr.uid(f"sr:dcmtk-{name}"))
        assert event["resources"] > 0
    assert {e["calling_ae"] for e in daemon.named("sr_spooled")} == {"PACS"}


def test_verification_is_answered(daemon):
    ae = AE(ae_title="ECHO")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", daemon.port, ae_title="SR2FHIR")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0x0000
    assoc.release()


def test_non_sr_sop_classes_are_not_accepted_at_negotiation(daemon):
    ae = AE(ae_title="CT")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", daemon.port, ae_title="SR2FHIR")
    assert assoc.is_established
    accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
    rejected = {str(c.abstract_syntax) for c in assoc.rejected_contexts}
    assoc.release()
    assert accepted == {Verification}
    assert rejected == {CTImageStorage}


def test_wrong_called_ae_title_is_rejected(daemon):
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(sr.COMPREHENSIVE_SR)
    assoc = ae.associate("127.0.0.1", daemon.port, ae_title="SOMEONE_ELSE")
    assert assoc.is_rejected


def test_an_sr_without_content_gets_a_failure_status_and_the_daemon_keeps_serving(daemon):
    no_content = report("no-content")
    del no_content.ContentSequence
    assert send(daemon.port, no_content) == [0xC211]
    refused = daemon.wait_for("sr_refused")
    assert refused["sop_instance_uid"] == no_content.SOPInstanceUID and refused["status"] == 0xC211
    good = report("after-bad")
    assert send(daemon.port, good) == [0x0000]
    delivered(daemon, good.SOPInstanceUID)
    assert not (daemon.config.parent / "outbox" / f"{no_content.SOPInstanceUID}.json").exists()


def test_sigterm_exits_0_and_a_restart_binds_the_same_port(tmp_path):
    first = DaemonProcess(write_config(tmp_path)).start()
    port = first.port
    ds = report("before-restart")
    assert send(port, ds) == [0x0000]
    delivered(first, ds.SOPInstanceUID)
    assert first.terminate() == 0
    assert first.named("daemon_stopped")
    second = DaemonProcess(write_config(tmp_path, dicom={"port": port}))
    with second:
        assert second.port == port
        ds = report("after-restart")
        assert send(port, ds) == [0x0000]
        delivered(second, ds.SOPInstanceUID)


def test_sigkill_of_the_daemon_takes_the_worker_down(tmp_path):
    daemon = DaemonProcess(write_config(tmp_path)).start()
    worker_pid = daemon.wait_for("worker_spawned")["pid"]
    pidfd = os.pidfd_open(worker_pid)
    try:
        daemon.kill()
        ready, _, _ = select.select([pidfd], [], [], 20)  # readable when the worker has exited
        assert ready, f"worker {worker_pid} still running 20 s after its parent was killed"
    finally:
        os.close(pidfd)


def test_backlog_survives_a_down_fhir_server_and_a_restart(tmp_path):
    # Nothing listens on the FHIR port: every delivery is retried, nothing is lost.
    unreachable = write_config(tmp_path, fhir={"base_url": "http://127.0.0.1:9/fhir"})
    datasets = [report(f"backlog-{i}") for i in range(3)]
    with DaemonProcess(unreachable) as daemon:
        assert send(daemon.port, *datasets) == [0x0000] * 3
        daemon.wait_for("sr_spooled", count=3)
        status = daemon.terminate()
    assert status == 0
    # The backlog stays spooled ...
    assert cli_main(["spool", "status", "--config", str(unreachable)]) == 0
    # ... and is delivered once a target is there.
    with DaemonProcess(write_config(tmp_path)) as daemon:
        for ds in datasets:
            delivered(daemon, ds.SOPInstanceUID)
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == sorted(f"{d.SOPInstanceUID}.json" for d in datasets)


def test_unmappable_sr_is_dead_lettered_listed_and_requeued(tmp_path, capsys):
    config = write_config(tmp_path, mapping={"unmapped": "dead-letter"})
    not_tid1500 = report("not-1500")
    not_tid1500.ConceptNameCodeSequence[0].CodeValue = "18748-4"
    not_tid1500.ConceptNameCodeSequence[0].CodingSchemeDesignator = "LN"
    del not_tid1500.ContentTemplateSequence
    with DaemonProcess(config) as daemon:
        assert send(daemon.port, not_tid1500) == [0x0000]  # acknowledged: it is a readable SR
        rejected = daemon.wait_for("bundle_rejected", lambda e: e["sop_instance_uid"] == not_tid1500.SOPInstanceUID)
        assert "is not a document sr2fhir maps" in rejected["reason"]
        capsys.readouterr()
        assert cli_main(["spool", "failed", "--config", str(config)]) == 0
        listing = capsys.readouterr().out
        assert not_tid1500.SOPInstanceUID in listing and "not a document sr2fhir maps" in listing
        assert cli_main(["spool", "retry", "--config", str(config)]) == 0
        daemon.wait_for("bundle_rejected", lambda e: e["sop_instance_uid"] == not_tid1500.SOPInstanceUID, count=2)
    sidecars = list((tmp_path / "spool" / "failed").glob("*.json"))
    assert len(sidecars) == 1
    sidecar = json.loads(sidecars[0].read_text(encoding="utf-8"))
    assert sidecar["sop_instance_uid"] == not_tid1500.SOPInstanceUID
    assert sidecar["reason"].startswith("mapping failed: 1: document title (LN,18748-4)")
    assert Path(sidecars[0]).with_suffix(".dcm").exists()


def test_free_space_below_the_reserve_refuses_the_association(tmp_path):
    config = write_config(tmp_path, spool={"min_free_bytes": "1000 TiB"})
    with DaemonProcess(config) as daemon:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(sr.COMPREHENSIVE_SR)
        assoc = ae.associate("127.0.0.1", daemon.port, ae_title="SR2FHIR")
        assert assoc.is_rejected
        refused = daemon.wait_for("association_rejected")
        assert refused["reason"] == "free disk space below spool.min_free_bytes" and refused["transient"] is True
    assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").iterdir())


def test_the_same_sop_instance_received_twice_is_delivered_idempotently(daemon, tmp_path):
    ds = report("twice")
    assert send(daemon.port, ds, ds) == [0x0000, 0x0000]
    delivered(daemon, ds.SOPInstanceUID)
    assert [p.name for p in (tmp_path / "outbox").iterdir()] == [f"{ds.SOPInstanceUID}.json"]


def test_one_canonical_line_per_association(daemon):
    first, second = report("assoc-a"), report("assoc-b")
    assert send(daemon.port, first, second, calling="MODALITY") == [0x0000, 0x0000]
    closed = daemon.wait_for("association_closed")
    assert closed["calling_ae"] == "MODALITY" and closed["peer_address"] == "127.0.0.1"
    assert closed["ended"] == "released" and closed["stores"] == 2 and closed["refused"] == 0
    assert isinstance(closed["duration_ms"], int | float) and math.isfinite(closed["duration_ms"])
