"""``mapping.unmapped``: an SR that is none of the documents sr2fhir maps, through the real daemon."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.test_daemon import report, send
from tests.integration.test_observability import metric
from tests.support.daemon_process import DaemonProcess, write_config

pytestmark = pytest.mark.integration


def test_by_default_an_unmapped_sr_is_acknowledged_counted_logged_and_dropped(tmp_path):
    unmapped = report("unmapped-default")  # a radiology report titled in LOINC, no template: not ours
    unmapped.ConceptNameCodeSequence[0].CodeValue = "18748-4"
    unmapped.ConceptNameCodeSequence[0].CodingSchemeDesignator = "LN"
    del unmapped.ContentTemplateSequence
    mapped = report("mapped-after-it")
    with DaemonProcess(write_config(tmp_path, health={"port": 0})) as daemon:
        base = f"http://127.0.0.1:{daemon.wait_for('health_endpoint_started')['port']}"
        assert send(daemon.port, unmapped, mapped) == [0x0000, 0x0000]
        line = daemon.wait_for("sr_not_mapped", lambda e: e["sop_instance_uid"] == unmapped.SOPInstanceUID)
        assert line["template"] is None and line["title"] == "(LN,18748-4) 'Imaging Measurement Report'"
        daemon.wait_for("bundle_delivered", lambda e: e["sop_instance_uid"] == mapped.SOPInstanceUID)
        text = httpx.get(f"{base}/metrics").text
        assert metric(text, "sr2fhir_unmapped_total", template="none") == 1
        assert metric(text, "sr2fhir_bundles_delivered_total") == 1
        assert not daemon.named("bundle_rejected")
    assert list((tmp_path / "spool" / "failed").iterdir()) == []
    assert [p.name for p in (tmp_path / "outbox").iterdir()] == [f"{mapped.SOPInstanceUID}.json"]
