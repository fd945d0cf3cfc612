"""``fhir.version: auto`` with the real daemon: a FHIR server that is down at start stops no ingest.

The loopback FHIR server (R5) sits behind the fault proxy, which first drops every connection:
the daemon acknowledges every SR (the listener never asks the server anything), the worker holds
delivery with the reason ``unreachable`` instead of dead-lettering, and once the proxy lets
requests through, the version is read from ``/metadata`` and everything is delivered.
"""

from __future__ import annotations

import pytest

from tests.integration.test_daemon import report, send
from tests.support.daemon_process import DaemonProcess, write_config
from tests.support.fault_proxy import DROP, PASS, FaultProxy

pytestmark = pytest.mark.integration

RETRY = {"initial_backoff_s": 0.05, "max_backoff_s": 0.2, "jitter_s": 0.0, "max_elapsed_s": 60}


def test_a_server_down_at_start_holds_delivery_and_ingest_goes_on(fresh_fhir_server, tmp_path):
    datasets = [report(f"auto-down-{i}") for i in range(5)]
    with FaultProxy(fresh_fhir_server.base_url) as proxy:
        proxy.set_mode(DROP)
        config = write_config(tmp_path, fhir={"base_url": proxy.base_url, "version": "auto", "retry": RETRY})
        with DaemonProcess(config) as daemon:
            assert send(daemon.port, *datasets) == [0x0000] * len(datasets)  # ingest does not wait for the server
            held = daemon.wait_for("delivery_held")
            assert held["problem"] == "unreachable"
            daemon.wait_for("delivery_hold_probe_failed")
            assert daemon.named("bundle_delivered") == [] and daemon.named("bundle_rejected") == []
            proxy.set_mode(PASS)
            daemon.wait_for("bundle_delivered", count=len(datasets), timeout_s=60)
            assert [e["fhir_version"] for e in daemon.named("fhir_version_resolved")] == ["r5"]
            assert daemon.named("bundle_rejected") == []
            daemon.wait_for("delivery_resumed")
    assert all(e.path.endswith("/metadata") for e in proxy.log if e.method == "GET")  # version and probes only
