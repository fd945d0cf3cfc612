"""Outage and overload of the FHIR side: nothing acknowledged is lost, Retry-After is obeyed,
rejected SRs are dead-lettered with the server's words and come back with ``spool retry``.

Real peers only: ``sr2fhir serve`` as a subprocess, pynetdicom senders, the loopback FHIR
server (``fhir_server``, shared by the session: assertions are about what each test adds) behind
:class:`tests.support.fault_proxy.FaultProxy`, whose access log is the server-side truth for timing.

The outage test takes about 70 s (``SR2FHIR_OUTAGE_S`` shortens the outage; deselect it with
``-k "not down_for"``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter

import pytest
from pydicom.dataset import Dataset

from mapping import map_sr
from scp.cli import main as cli_main
from scp.spool import Spool
from tests.support.daemon_process import DaemonProcess, write_config
from tests.support.fault_proxy import DROP, PASS, FaultProxy, reject_type, status
from tests.integration.test_hostile_input import good_sr, store, wait_outcome

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("SR2FHIR_OUTAGE_S", "60"))
RECOVERY_RETRY = {"initial_backoff_s": 0.2, "max_backoff_s": 2.0, "jitter_s": 0.2, "max_elapsed_s": 900}
"""Backoff capped at 2 s (+0.2 s jitter): a recovered server is seen within seconds."""


def fhir_config(tmp_path, base_url: str, **retry):
    return write_config(tmp_path, fhir={"base_url": base_url, "retry": {**RECOVERY_RETRY, **retry}})


def resource_keys(datasets: list[Dataset]) -> set[tuple[str, str]]:
    """(resourceType, id) of every resource the Bundles of ``datasets`` write."""
    return {(e["resource"]["resourceType"], e["resource"]["id"]) for ds in datasets for e in map_sr(ds).bundle["entry"]}


def missing_on_server(server, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
    by_type: dict[str, set[str]] = {}
    for resource_type, resource_id in keys:
        by_type.setdefault(resource_type, set()).add(resource_id)
    missing = set()
    for resource_type, ids in by_type.items():
        stored = {r["id"] for r in server.search(resource_type, {"_elements": "id"})}
        missing |= {(resource_type, i) for i in ids - stored}
    return missing


class PacedSender(threading.Thread):
    """One SR per association every ``interval_s`` until stopped (bounded by ``max_count``)."""

    def __init__(self, port: int, prefix: str, interval_s: float, max_count: int) -> None:
        super().__init__(daemon=True)
        self.port, self.prefix, self.interval_s, self.max_count = port, prefix, interval_s, max_count
        self.stop = threading.Event()
        self.sent: list[Dataset] = []
        self.statuses: list[int] = []
        self.latencies_s: list[float] = []

    def run(self) -> None:
        for index in range(self.max_count):
            if self.stop.is_set():
                return
            ds = good_sr(f"{self.prefix}-{index}")
            started = time.monotonic()
            code = store(self.port, [ds], calling="OUTAGE")[0]
            self.latencies_s.append(time.monotonic() - started)
            self.sent.append(ds)
            self.statuses.append(code)
            self.stop.wait(self.interval_s)


@pytest.mark.soak
def test_fhir_server_down_for_60_s_srs_are_acknowledged_meanwhile_and_all_delivered_after(fhir_server, tmp_path):
    with FaultProxy(fhir_server.base_url) as proxy:
        config = fhir_config(tmp_path, proxy.base_url)
        with DaemonProcess(config) as daemon:
            before = [good_sr("outage-before-0"), good_sr("outage-before-1")]
            assert store(daemon.port, before) == [0x0000] * 2
            for ds in before:
                assert wait_outcome(daemon, ds.SOPInstanceUID)["event"] == "bundle_delivered"
            # Down: first half a reverse proxy answering 503 for a dead backend, second half
            # connections cut without an answer (the host itself is gone).
            proxy.set_mode(status(503))
            sender = PacedSender(daemon.port, "outage", interval_s=0.5, max_count=int(OUTAGE_S * 4) + 10)
            down_at = time.monotonic()
            sender.start()
            time.sleep(OUTAGE_S / 2)
            proxy.set_mode(DROP)
            time.sleep(OUTAGE_S / 2)
            sender.stop.set()
            sender.join(timeout=60)
            assert not sender.is_alive()
            delivered_during_outage = len(daemon.named("bundle_delivered")) - len(before)
            proxy.set_mode(PASS)
            recovered_at = time.monotonic()
            assert sender.statuses and sender.statuses == [0x0000] * len(sender.statuses), Counter(sender.statuses)
            outcomes = [wait_outcome(daemon, ds.SOPInstanceUID, timeout_s=180) for ds in sender.sent]
            drain_s = time.monotonic() - recovered_at
            assert daemon.process.poll() is None
        posts = [entry for entry in proxy.log if entry.method == "POST"]
    assert delivered_during_outage == 0
    assert [o["event"] for o in outcomes] == ["bundle_delivered"] * len(sender.sent)
    assert not missing_on_server(fhir_server, resource_keys(sender.sent))
    refused_while_down = Counter(p.status for p in posts if p.timestamp < recovered_at and p.timestamp >= down_at)
    print(f"\nFHIR server down {time.monotonic() - down_at - drain_s:.0f} s: {len(sender.sent)} SRs acknowledged meanwhile "
          f"(max C-STORE {max(sender.latencies_s) * 1000:.0f} ms); answers while down {dict(refused_while_down)}; "
          f"all delivered {drain_s:.1f} s after recovery (max attempts {max(o['attempts'] for o in outcomes)})")


def test_srs_waiting_out_an_outage_are_mapped_ahead_then_all_delivered(fhir_server, tmp_path):
    """While every Bundle in flight waits to retry, the worker maps the rest of the backlog
    (``forwarder.map_ahead_mb``); once the server answers, those are delivered as they are."""
    with FaultProxy(fhir_server.base_url) as proxy:
        proxy.set_mode(status(503))
        config = write_config(tmp_path, fhir={"base_url": proxy.base_url, "retry": RECOVERY_RETRY},
                              log={"format": "json", "level": "debug"})
        with DaemonProcess(config) as daemon:
            datasets = [good_sr(f"ahead-{i}") for i in range(12)]
            assert store(daemon.port, datasets) == [0x0000] * 12
            # forwarder.concurrency (4) are in flight, retrying; the other 8 are mapped meanwhile
            daemon.wait_for("mapped_ahead", lambda e: e["prepared"] >= 8)
            assert not daemon.named("bundle_delivered")
            proxy.set_mode(PASS)
            outcomes = [wait_outcome(daemon, ds.SOPInstanceUID) for ds in datasets]
    assert [o["event"] for o in outcomes] == ["bundle_delivered"] * 12
    assert not missing_on_server(fhir_server, resource_keys(datasets))


def test_a_429_storm_with_retry_after_is_obeyed_per_bundle_then_everything_is_delivered(fhir_server, tmp_path):
    datasets = [good_sr(f"throttle-{i}") for i in range(10)]
    with FaultProxy(fhir_server.base_url) as proxy:
        proxy.push(*[status(429, {"Retry-After": "2"})] * 20)
        with DaemonProcess(fhir_config(tmp_path, proxy.base_url)) as daemon:
            assert store(daemon.port, datasets) == [0x0000] * len(datasets)
            outcomes = [wait_outcome(daemon, ds.SOPInstanceUID, timeout_s=120) for ds in datasets]
        posts = [entry for entry in proxy.log if entry.method == "POST"]
    assert [o["event"] for o in outcomes] == ["bundle_delivered"] * len(datasets)
    throttled = [i for i, p in enumerate(posts) if p.status == 429]
    assert len(throttled) == 20
    early = []
    for i in throttled:
        retry = next((p for p in posts[i + 1:] if p.body == posts[i].body), None)
        assert retry is not None, "a throttled Bundle was never sent again"
        waited = retry.timestamp - posts[i].responded
        if waited < 2.0:
            early.append(round(waited, 3))
    assert not early, f"retries earlier than Retry-After: 2 (seconds after the 429): {early}"
    assert Counter(p.status for p in posts) == {429: 20, 200: len(datasets)}
    assert not missing_on_server(fhir_server, resource_keys(datasets))


def test_a_rejected_resource_type_dead_letters_those_srs_only_and_spool_retry_redelivers_them(
        fhir_server, tmp_path, capsys):
    text = "ImagingSelection is not supported by this server"
    with_selection = [good_sr(f"reject-sel-{i}") for i in range(3)]
    without = [good_sr(f"reject-plain-{i}", with_selection=False) for i in range(3)]
    assert all(any(e["resource"]["resourceType"] == "ImagingSelection" for e in map_sr(ds).bundle["entry"])
               for ds in with_selection)
    assert not resource_keys(without) & {k for k in resource_keys(without) if k[0] == "ImagingSelection"}
    with FaultProxy(fhir_server.base_url) as proxy:
        proxy.set_mode(reject_type("ImagingSelection", 422, text))
        config = fhir_config(tmp_path, proxy.base_url)
        with DaemonProcess(config) as daemon:
            interleaved = [ds for pair in zip(with_selection, without, strict=True) for ds in pair]
            assert store(daemon.port, interleaved) == [0x0000] * len(interleaved)
            for ds in with_selection:
                rejected = wait_outcome(daemon, ds.SOPInstanceUID)
                assert rejected["event"] == "bundle_rejected" and rejected["status_code"] == 422
                assert text in rejected["reason"]
            for ds in without:
                assert wait_outcome(daemon, ds.SOPInstanceUID)["event"] == "bundle_delivered"
            sidecars = [json.loads(p.read_text("utf-8")) for p in (tmp_path / "spool" / "failed").glob("*.json")]
            assert sorted(s["sop_instance_uid"] for s in sidecars) == sorted(ds.SOPInstanceUID for ds in with_selection)
            for sidecar in sidecars:
                assert sidecar["http_status"] == 422 and text in sidecar["reason"]
                assert sidecar["operation_outcome"]["issue"][0]["diagnostics"] == text
            assert Spool(tmp_path / "spool").status().failed == len(with_selection)
            assert not missing_on_server(fhir_server, resource_keys(without))
            assert missing_on_server(fhir_server, resource_keys(with_selection))
            proxy.set_mode(PASS)  # the server is fixed
            capsys.readouterr()
            assert cli_main(["spool", "retry", "--config", str(config)]) == 0
            for ds in with_selection:
                daemon.wait_for("bundle_delivered", lambda e, uid=ds.SOPInstanceUID: e["sop_instance_uid"] == uid)
        assert Spool(tmp_path / "spool").status().failed == 0
    assert not missing_on_server(fhir_server, resource_keys(with_selection))
