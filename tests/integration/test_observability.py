"""The running daemon's health endpoint, metrics, audit trail and logs, with real peers."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon_process import DaemonProcess, write_config
from tests.support.fault_proxy import DROP, PASS, FaultProxy
from tests.integration.test_daemon import report, send

pytestmark = pytest.mark.integration


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_health_metrics_and_audit_for_a_delivered_sr(tmp_path):
    config = write_config(tmp_path, health={"port": 0})
    ds = report("observed", patient_name="Secret^Patient", patient_id="PID-SECRET")
    with DaemonProcess(config) as daemon:
        port = daemon.wait_for("health_endpoint_started")["port"]
        base = f"http://127.0.0.1:{port}"
        assert send(daemon.port, ds) == [0x0000]
        daemon.wait_for("bundle_delivered")
        assert httpx.get(f"{base}/healthz").status_code == 200
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200, ready.text
        text = httpx.get(f"{base}/metrics").text
        assert metric(text, "sr2fhir_instances_received_total", calling_ae="MODALITY") == 1
        assert metric(text, "sr2fhir_bundles_delivered_total") == 1
        assert metric(text, "sr2fhir_delivery_latency_seconds_count") == 1
        assert daemon.terminate() == 0
    audit_lines = (tmp_path / "audit" / "sr2fhir-audit.jsonl").read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in audit_lines]
    assert all(e["resourceType"] == "AuditEvent" for e in events)
    kinds = [(e["code"]["coding"][0]["code"], e["outcome"]["code"]["code"]) for e in events]
    # application start, the C-STORE received, the Bundle written (outbox), application stop
    assert kinds == [("110120", "0"), ("110104", "0"), ("transaction", "0"), ("110121", "0")], kinds
    # No patient data anywhere: not in the log lines, not in the audit trail.
    everything = "\n".join(json.dumps(e) for e in daemon.events) + "\n".join(daemon.other_lines) + "\n".join(audit_lines)
    assert "PID-SECRET" not in everything and "Secret" not in everything


def test_readiness_flips_when_the_fhir_server_is_unreachable(fhir_server, tmp_path):
    ds = report("unready")
    with FaultProxy(fhir_server.base_url) as proxy:
        proxy.set_mode(DROP)
        retry = {"initial_backoff_s": 0.3, "max_backoff_s": 0.3, "jitter_s": 0.0, "max_elapsed_s": 120}
        config = write_config(tmp_path, health={"port": 0, "readiness": {"fhir_unreachable_after_s": 0.5}},
                              fhir={"base_url": proxy.base_url, "retry": retry})
        with DaemonProcess(config) as daemon:
            base = f"http://127.0.0.1:{daemon.wait_for('health_endpoint_started')['port']}"
            assert httpx.get(f"{base}/readyz").status_code == 200
            assert send(daemon.port, ds) == [0x0000]
            # Retries are >= 0.3 s apart: the third comes >= 0.9 s after the first failure.
            daemon.wait_for("fhir_request_retried", count=3)
            unready = httpx.get(f"{base}/readyz")
            assert unready.status_code == 503
            assert "FHIR" in unready.text
            proxy.set_mode(PASS)
            daemon.wait_for("bundle_delivered")
            assert httpx.get(f"{base}/readyz").status_code == 200
