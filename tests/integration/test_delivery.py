"""Delivery to a real FHIR engine on loopback, through a real fault-injecting HTTP proxy."""

from __future__ import annotations

import time
from email.utils import format_datetime
from datetime import UTC, datetime, timedelta

import pytest

from mapping import map_sr
from scp.cli import main as cli_main
from tests.support import sr_builders as sr
from tests.support.daemon_process import DaemonProcess, write_config
from tests.support.fault_proxy import DROP, PASS, FaultProxy, reject_type, status
from tests.integration.test_daemon import report, send

pytestmark = pytest.mark.integration

FAST_RETRY = {"retry": {"initial_backoff_s": 0.05, "max_backoff_s": 0.2, "jitter_s": 0.0, "max_elapsed_s": 120}}


def fhir_config(tmp_path, base_url: str, **fhir):
    return write_config(tmp_path, fhir={"base_url": base_url, **FAST_RETRY, **fhir})


def observation_ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]


def test_delivered_resources_are_on_the_server_and_a_resend_changes_nothing(fresh_fhir_server, tmp_path):
    server = fresh_fhir_server
    datasets = [report(f"deliver-{i}") for i in range(3)]
    with DaemonProcess(fhir_config(tmp_path, server.base_url)) as daemon:
        assert send(daemon.port, *datasets) == [0x0000] * 3
        for ds in datasets:
            event = daemon.wait_for("bundle_delivered", lambda e, uid=ds.SOPInstanceUID: e["sop_instance_uid"] == uid)
            assert event["status_code"] == 200
        counts = {t: server.count(t) for t in ("Observation", "ImagingSelection", "Device", "BodyStructure", "Practitioner")}
        for ds in datasets:
            for resource_id in observation_ids(map_sr(ds).bundle):
                assert server.get("Observation", resource_id) is not None
        assert send(daemon.port, *datasets) == [0x0000] * 3
        daemon.wait_for("bundle_delivered", count=6)
        assert {t: server.count(t) for t in counts} == counts
    group_uid = sr.uid("group:1410:deliver-0")
    found = server.search("Observation", {"identifier": f"urn:dicom:uid|urn:oid:{group_uid}"})
    assert len(found) == 1


def test_conditional_write_mode_creates_each_resource_once(fresh_fhir_server, tmp_path):
    server = fresh_fhir_server
    config = write_config(tmp_path, fhir={"base_url": server.base_url, **FAST_RETRY}, mapping={"write_mode": "conditional"})
    ds = report("conditional")
    with DaemonProcess(config) as daemon:
        assert send(daemon.port, ds) == [0x0000]
        daemon.wait_for("bundle_delivered")
        observations = server.count("Observation")
        assert send(daemon.port, ds) == [0x0000]
        daemon.wait_for("bundle_delivered", count=2)
        assert server.count("Observation") == observations == len(observation_ids(map_sr(ds).bundle))


def test_retries_503_and_dropped_connections_then_delivers(fhir_server, tmp_path):
    ds = report("flaky")
    with FaultProxy(fhir_server.base_url) as proxy:
        proxy.push(status(503), DROP, status(502), PASS)
        with DaemonProcess(fhir_config(tmp_path, proxy.base_url)) as daemon:
            assert send(daemon.port, ds) == [0x0000]
            event = daemon.wait_for("bundle_delivered")
            assert event["attempts"] == 4
        posts = [entry.status for entry in proxy.log if entry.method == "POST"]
    assert posts == [503, "dropped", 502, 200]


def test_retry_after_is_a_lower_bound_seconds_and_http_date(fhir_server, tmp_path):
    ds = report("throttled")
    not_before = (datetime.now(UTC) + timedelta(seconds=6)).replace(microsecond=0)
    with FaultProxy(fhir_server.base_url) as proxy:
        proxy.push(status(429, {"Retry-After": "1"}), status(503, {"Retry-After": format_datetime(not_before, usegmt=True)}),
                   PASS)
        with DaemonProcess(fhir_config(tmp_path, proxy.base_url)) as daemon:
            assert send(daemon.port, ds) == [0x0000]
            daemon.wait_for("bundle_delivered")
        posts = [entry for entry in proxy.log if entry.method == "POST"]
        wall_minus_monotonic = time.time() - time.monotonic()
    assert [p.status for p in posts] == [429, 503, 200]
    # The server's own access log: no request came earlier than Retry-After allowed.
    assert posts[1].timestamp - posts[0].timestamp >= 1.0
    assert posts[2].timestamp + wall_minus_monotonic >= not_before.timestamp()


def test_a_rejected_resource_type_is_dead_lettered_and_redelivered_after_retry(fhir_server, tmp_path, capsys):
    ds = report("rejected")
    with FaultProxy(fhir_server.base_url) as proxy:
        proxy.set_mode(reject_type("BodyStructure", 422, "BodyStructure is not supported here"))
        config = fhir_config(tmp_path, proxy.base_url)
        with DaemonProcess(config) as daemon:
            assert send(daemon.port, ds) == [0x0000]
            rejected = daemon.wait_for("bundle_rejected")
            assert rejected["status_code"] == 422
            assert "BodyStructure is not supported here" in rejected["reason"]
            proxy.set_mode(PASS)  # the server is fixed
            capsys.readouterr()
            assert cli_main(["spool", "retry", "--config", str(config)]) == 0
            delivered = daemon.wait_for("bundle_delivered", lambda e: e["sop_instance_uid"] == ds.SOPInstanceUID)
            assert delivered["status_code"] == 200
    assert fhir_server.search("BodyStructure", {"identifier": f"urn:dicom:uid|urn:oid:{sr.uid('tracking:rejected')}"})


def test_resolve_mode_turns_identifier_references_into_literal_ones(fresh_fhir_server, tmp_path):
    server = fresh_fhir_server
    import httpx

    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3.4", "value": "PID-1"}]}
    created = httpx.post(f"{server.base_url}/Patient", json=patient, headers={"Content-Type": "application/fhir+json"})
    assert created.status_code == 201
    patient_id = created.json()["id"]
    ds = report("resolved")
    with DaemonProcess(fhir_config(tmp_path, server.base_url, reference_mode="resolve")) as daemon:
        assert send(daemon.port, ds) == [0x0000]
        daemon.wait_for("bundle_delivered")
    group_id = next(e["resource"]["id"] for e in map_sr(ds).bundle["entry"]
                    if e["resource"].get("meta", {}).get("profile", [""])[0].endswith("imaging-measurement-group"))
    stored = server.get("Observation", group_id)
    assert stored["subject"]["reference"] == f"Patient/{patient_id}"
    assert stored["subject"]["identifier"]["value"] == "PID-1"
    # No ImagingStudy exists on the server: that reference stays logical.
    assert "reference" not in stored["partOf"][0]
