"""``dicom.listener_processes`` > 1: the daemon accepts, association processes serve.

Real daemons (``sr2fhir serve``) and real pynetdicom SCUs on loopback; synchronised on the
daemon's log events. The acceptor hands each connection to the process serving the fewest,
ties to the lowest index, so which process serves which association is known.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import httpx
import pydicom
import pytest
from pynetdicom import AE

from tests.support import sr_builders as sr
from tests.support.daemon_process import DaemonProcess, write_config


def two_processes(tmp_path, *, health: bool = False, **dicom):
    """A config with two listener processes on an ephemeral loopback port (and the health
    endpoint on one too when ``health``)."""
    return write_config(tmp_path, dicom={"host": "127.0.0.1", "port": 0, "ae_title": "SR2FHIR",
                                         "listener_processes": 2, **dicom},
                        **({"health": {"host": "127.0.0.1", "port": 0}} if health else {}))


def associate(port: int, calling: str):
    ae = AE(ae_title=calling)
    ae.add_requested_context(sr.COMPREHENSIVE_SR)
    return ae.associate("127.0.0.1", port, ae_title="SR2FHIR")


def report(name: str):
    group = sr.measurement_group("1410", tracking_identifier=name, finding_site=sr.finding_site_item(sr.LUNG),
                                 measurements=[sr.num_item(sr.LENGTH, 12.5, sr.MM)])
    return pydicom.dcmread(BytesIO(sr.to_part10_bytes(
        sr.measurement_report([group], sop_instance_uid=sr.uid(f"processes:{name}")))))


def store(assoc, name: str) -> tuple[str, int]:
    ds = report(name)
    status = assoc.send_c_store(ds)
    return str(ds.SOPInstanceUID), int(getattr(status, "Status", -1))


def metric(base: str, line_start: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics")


def test_max_associations_is_exact_across_processes(tmp_path):
    with DaemonProcess(two_processes(tmp_path, max_associations=3)) as daemon:
        daemon.wait_for("association_process_started", count=2)
        held = [associate(daemon.port, f"HOLD{n}") for n in range(3)]
        assert all(assoc.is_established for assoc in held)
        extra = associate(daemon.port, "EXTRA")
        assert extra.is_rejected
        rejected = daemon.wait_for("association_rejected", lambda e: e["calling_ae"] == "EXTRA")
        assert rejected["reason"] == "too many associations (dicom.max_associations is 3)"
        assert rejected["transient"] is True
        held.pop().release()
        daemon.wait_for("association_closed", lambda e: e["calling_ae"] == "HOLD2")
        again = associate(daemon.port, "AGAIN")  # the freed slot is free across processes too
        assert again.is_established
        for assoc in [*held, again]:
            assoc.release()
        closed = daemon.wait_for("association_closed", lambda e: e["calling_ae"] in {"HOLD0", "HOLD1", "AGAIN"},
                                 count=3)
        assert closed
        served_by = {e["calling_ae"]: e["listener_process"] for e in daemon.named("association_closed")}
        assert set(served_by.values()) == {0, 1}, served_by


def test_stores_on_two_processes_are_counted_once_each_in_one_metrics_view(tmp_path):
    config = two_processes(tmp_path, health=True)
    with DaemonProcess(config) as daemon:
        base = f"http://127.0.0.1:{daemon.wait_for('health_endpoint_started')['port']}"
        first, second = associate(daemon.port, "PACS"), associate(daemon.port, "PACS")
        statuses = [store(first, f"a{n}")[1] for n in range(3)] + [store(second, f"b{n}")[1] for n in range(4)]
        assert statuses == [0] * 7
        first.release()
        second.release()
        daemon.wait_for("association_closed", count=2)
        assert {e["listener_process"] for e in daemon.named("association_closed")} == {0, 1}
        assert {e["listener_process"] for e in daemon.named("sr_spooled")} == {0, 1}
        assert metric(base, 'sr2fhir_instances_received_total{calling_ae="PACS"}') == 7
        daemon.wait_for("bundle_delivered", count=7)


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is not installed (scripts/test.sh installs it)")
def test_concurrent_dcmtk_and_pynetdicom_associations_are_each_stored_once_on_both_processes(tmp_path):
    config = two_processes(tmp_path, health=True)
    batches = {f"DCMTK{n}": [f"dcmtk{n}-{i}" for i in range(6)] for n in range(3)}
    files: dict[str, list[str]] = {}
    for calling, names in batches.items():
        files[calling] = []
        for name in names:
            path = tmp_path / f"{name}.dcm"
            report(name).save_as(path, enforce_file_format=True)
            files[calling].append(str(path))
    with DaemonProcess(config) as daemon:
        base = f"http://127.0.0.1:{daemon.wait_for('health_endpoint_started')['port']}"
        daemon.wait_for("association_process_started", count=2)

        def dcmtk(calling: str) -> list[str]:
            proc = subprocess.run(["storescu", "-R", "-aet", calling, "-aec", "SR2FHIR", "127.0.0.1",
                                   str(daemon.port), *files[calling]],
                                  env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return [str(report(name).SOPInstanceUID) for name in batches[calling]]

        def pynetdicom(calling: str) -> list[str]:
            assoc = associate(daemon.port, calling)
            assert assoc.is_established
            stored = [store(assoc, f"{calling}-{i}") for i in range(6)]
            assoc.release()
            assert [status for _, status in stored] == [0] * 6
            return [uid for uid, _ in stored]

        held = associate(daemon.port, "HOLD")  # on process 0: the next connection goes to process 1
        assert held.is_established
        with ThreadPoolExecutor(max_workers=5) as pool:
            futures = [pool.submit(dcmtk, calling) for calling in batches]
            futures += [pool.submit(pynetdicom, calling) for calling in ("SCU0", "SCU1")]
            sent = [uid for future in futures for uid in future.result(timeout=120)]
        held.release()
        assert len(set(sent)) == 30
        daemon.wait_for("bundle_delivered", lambda e: e["sop_instance_uid"] in sent, count=30)
        assert Counter(e["sop_instance_uid"] for e in daemon.named("sr_spooled")) == Counter(sent)  # once each
        daemon.wait_for("association_closed", lambda e: e["calling_ae"] == "HOLD")
        assert {e["listener_process"] for e in daemon.named("association_closed")} == {0, 1}
        received = sum(metric(base, f'sr2fhir_instances_received_total{{calling_ae="{calling}"}}')
                       for calling in [*batches, "SCU0", "SCU1"])
        assert received == 30


def test_a_killed_association_process_is_restarted_and_no_acknowledged_instance_is_lost(tmp_path):
    config = two_processes(tmp_path, health=True)
    with DaemonProcess(config) as daemon:
        base = f"http://127.0.0.1:{daemon.wait_for('health_endpoint_started')['port']}"
        victim = daemon.wait_for("association_process_spawned", lambda e: e["index"] == 0)["pid"]
        acknowledged = []
        doomed = associate(daemon.port, "PACS")  # the first connection goes to process 0
        for n in range(5):
            uid, status = store(doomed, f"before{n}")
            assert status == 0
            acknowledged.append(uid)
        os.kill(victim, signal.SIGKILL)
        exited = daemon.wait_for("association_process_exited", lambda e: e["pid"] == victim)
        assert exited["status"] == -signal.SIGKILL
        daemon.wait_for("association_process_spawned", lambda e: e["index"] == 0 and e["pid"] != victim)
        doomed.abort()  # its connection went with the process; the sender would retry what it did not get answered
        survivors = [associate(daemon.port, "PACS") for _ in range(2)]  # one on each process
        for n, assoc in enumerate(survivors):
            uid, status = store(assoc, f"after{n}")
            assert status == 0
            acknowledged.append(uid)
            assoc.release()
        delivered = daemon.wait_for("bundle_delivered", lambda e: e["sop_instance_uid"] in acknowledged,
                                    count=len(acknowledged))
        assert delivered
        assert metric(base, 'sr2fhir_instances_received_total{calling_ae="PACS"}') == len(acknowledged)
        assert metric(base, "sr2fhir_association_process_restarts_total") == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_drains_the_association_processes_and_exits_0(tmp_path, signum):
    with DaemonProcess(two_processes(tmp_path)) as daemon:
        daemon.wait_for("association_process_started", count=2)
        pids = [e["pid"] for e in daemon.named("association_process_spawned")]
        daemon.process.send_signal(signum)
        assert daemon.process.wait(timeout=30) == 0
        assert len(daemon.named("association_process_stopped")) == 2
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
