"""Nothing acknowledged is lost, nothing is duplicated: SIGKILL the daemon while SRs stream in."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from pynetdicom import AE

from mapping import map_sr
from tests.support.daemon_process import DaemonProcess, write_config
from tests.integration.test_daemon import report
from tests.integration.test_delivery import FAST_RETRY

pytestmark = pytest.mark.integration

SR_COUNT = 240
BATCH = 4  # SRs per association
KILL_AFTER = (50, 110, 170)  # acknowledged counts at which the daemon is SIGKILLed


class Sender(threading.Thread):
    """Sends every SR until it is acknowledged, surviving the daemon's deaths."""

    def __init__(self, datasets, port_ready: threading.Event, port: list[int]) -> None:
        super().__init__(daemon=True)
        self.datasets = datasets
        self.port_ready = port_ready
        self.port = port
        self.acknowledged: list[str] = []
        self.progress = threading.Condition()
        self.failures = 0

    def run(self) -> None:
        remaining = list(self.datasets)
        while remaining:
            if not self.port_ready.wait(timeout=60):
                return
            batch = remaining[:BATCH]
            ae = AE(ae_title="CRASHTEST")
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
            ae.add_requested_context(batch[0].SOPClassUID)
            try:
                assoc = ae.associate("127.0.0.1", self.port[0], ae_title="SR2FHIR")
                if not assoc.is_established:
                    raise ConnectionError("association not established")
                for ds in batch:
                    response = assoc.send_c_store(ds)
                    if not response or int(response.Status) != 0x0000:
                        raise ConnectionError("no success status")
                    with self.progress:
                        self.acknowledged.append(ds.SOPInstanceUID)
                        self.progress.notify_all()
                    remaining.remove(ds)
                assoc.release()
            except (ConnectionError, OSError, RuntimeError, ValueError, AttributeError):
                self.failures += 1
                self.port_ready.clear()  # wait for the test to bring the daemon back
                with self.progress:
                    self.progress.notify_all()

    def wait_acknowledged(self, count: int, timeout_s: float = 120) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: len(self.acknowledged) >= count or not self.is_alive(),
                                          timeout=timeout_s), f"only {len(self.acknowledged)} acknowledged"


def test_sigkill_while_receiving_loses_and_duplicates_nothing(fresh_fhir_server, tmp_path):
    server = fresh_fhir_server
    datasets = [report(f"crash-{i}") for i in range(SR_COUNT)]
    config = write_config(tmp_path, fhir={"base_url": server.base_url, **FAST_RETRY})
    daemons = [DaemonProcess(config).start()]
    port = [daemons[0].port]
    config = write_config(tmp_path, dicom={"port": port[0]}, fhir={"base_url": server.base_url, **FAST_RETRY})
    port_ready = threading.Event()
    port_ready.set()
    sender = Sender(datasets, port_ready, port)
    sender.start()
    try:
        for threshold in KILL_AFTER:
            sender.wait_acknowledged(threshold)
            daemons[-1].kill()  # SIGKILL: no chance to flush or say goodbye
            daemons.append(DaemonProcess(config).start())
            port_ready.set()
        sender.join(timeout=300)
        assert not sender.is_alive(), "sender did not finish"
        acknowledged = set(sender.acknowledged)
        assert acknowledged == {ds.SOPInstanceUID for ds in datasets}
        final = daemons[-1]
        delivered_earlier = {e["sop_instance_uid"] for d in daemons[:-1] for e in d.named("bundle_delivered")}
        for uid in sorted(acknowledged - delivered_earlier):
            final.wait_for("bundle_delivered", lambda e, uid=uid: e["sop_instance_uid"] == uid, timeout_s=120)
    finally:
        for daemon in daemons:
            daemon.__exit__(None, None, None)

    assert sender.failures >= len(KILL_AFTER)  # the kills really interrupted the stream
    expected: dict[str, set[str]] = {}
    for ds in datasets:
        for entry in map_sr(ds).bundle["entry"]:
            expected.setdefault(entry["resource"]["resourceType"], set()).add(entry["resource"]["id"])
    for resource_type, ids in expected.items():
        stored = [r["id"] for r in server.search(resource_type, {"_count": "1000"})]
        duplicates = [i for i, n in Counter(stored).items() if n > 1]
        assert not duplicates, f"{resource_type}: duplicated ids {duplicates[:5]}"
        assert set(stored) == ids, (f"{resource_type}: {len(ids - set(stored))} missing, "
                                    f"{len(set(stored) - ids)} unexpected")
    # Exactly once by business identifier too: one group Observation per group Observation UID.
    group_uids = [ds.ContentSequence[4].ContentSequence[0].ObservationUID for ds in datasets]
    for uid in group_uids[:: SR_COUNT // 12]:
        assert len(server.search("Observation", {"identifier": f"urn:dicom:uid|urn:oid:{uid}"})) == 1
