"""Amended and corrected reports against real FHIR servers: the replaced report's Observations and
ImagingSelections end ``entered-in-error``, the replacing report's stay current, whatever the order
of arrival, across a restart of the daemon, in every write mode, in R5 and R4.

Every assertion reads the server's state back (read by id, or search by the key identifier in the
conditional write modes).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from fhir_client import FhirClient, FhirSettings, RetrySettings
from mapping import MappingOptions, map_sr
from mapping.bundle import URI_SYSTEM
from mapping.r4.imaging_selection import is_selection_basic
from scp.delivery.forwarder import FhirDelivery, ForwarderStats, process_item
from scp.delivery.supersession import ENTERED_IN_ERROR, Supersessions, entry_key
from scp.spool import Spool
from tests.fhir_server.fixtures import fhir_server  # noqa: F401 - pytest fixture
from tests.hapi_server.fixtures import hapi_r4, hapi_r5  # noqa: F401 - pytest fixtures
from tests.integration.test_daemon import send
from tests.integration.test_observability import metric
from tests.scp.test_supersession import STATUS_EXTENSION, report, spooled
from tests.support.daemon_process import DaemonProcess, write_config
from tests.support.fault_proxy import DROP, PASS, FaultProxy, Hold

pytestmark = pytest.mark.integration

FAST_RETRY = {"retry": {"initial_backoff_s": 0.05, "max_backoff_s": 0.2, "jitter_s": 0.0, "max_elapsed_s": 120}}
CURRENT = {"final", "available"}


def report_entries(ds: Dataset, options: MappingOptions) -> list[dict]:
    return [e for e in map_sr(ds, options).bundle["entry"]
            if e["resource"]["resourceType"] in ("Observation", "ImagingSelection") or is_selection_basic(e["resource"])]


def status_of(resource: dict[str, Any]) -> str:
    if resource["resourceType"] == "Basic":
        return next(e["valueCode"] for e in resource["extension"] if e["url"] == STATUS_EXTENSION)
    return resource["status"]


def stored_statuses(server, ds: Dataset, options: MappingOptions) -> dict[str, str]:
    """entry key -> status on the server of each Observation / ImagingSelection ``ds`` maps to."""
    found = {}
    for entry in report_entries(ds, options):
        kind, resource_id = entry_key(entry).split("/", 1)
        if options.write_mode == "put":
            resource = server.get(kind, resource_id)
            assert resource is not None, f"{kind}/{resource_id} is not on the server"
        else:
            [resource] = server.search(kind, {"identifier": f"{URI_SYSTEM}|urn:uuid:{resource_id}"})
        found[f"{kind}/{resource_id}"] = status_of(resource)
    assert found
    return found


def assert_replaced(server, old: Dataset, new: Dataset, options: MappingOptions = MappingOptions()) -> None:
    assert set(stored_statuses(server, old, options).values()) == {ENTERED_IN_ERROR}
    assert set(stored_statuses(server, new, options).values()) <= CURRENT


# -- the forwarder with the loopback FHIR server, every write mode ------------------------------


def forward_all(spool: Spool, base_url: str, options: MappingOptions) -> list[str]:
    async def run() -> list[str]:
        settings = FhirSettings(base_url=base_url, retry=RetrySettings(max_attempts=3, initial_backoff_s=0,
                                                                       jitter_s=0))
        async with FhirClient(settings) as client:
            delivery = FhirDelivery(client, version="r5")
            with spool.consumer() as consumer:
                stop = asyncio.Event()
                supersessions = Supersessions(consumer, delivery, stop)
                return [await process_item(item, consumer, delivery, options, stop, ForwarderStats(),
                                           supersessions=supersessions) for item in consumer.pending()]

    return asyncio.run(run())


@pytest.mark.parametrize("write_mode", ["put", "conditional", "conditional-update"])
@pytest.mark.parametrize("order", ["in_order", "successor_first"])
def test_the_replaced_report_is_entered_in_error_on_the_server(fhir_server, tmp_path, write_mode, order):  # noqa: F811
    options = MappingOptions(write_mode=write_mode)
    old = report(f"srv-{write_mode}-{order}-old")
    new = report(f"srv-{write_mode}-{order}-new", predecessors=(old.SOPInstanceUID,), length=14.0)
    spool = Spool(tmp_path / "spool")
    first, second = (old, new) if order == "in_order" else (new, old)
    spooled(spool, first)
    assert forward_all(spool, fhir_server.base_url, options) == ["delivered"]
    spooled(spool, second)
    assert forward_all(spool, fhir_server.base_url, options) == ["delivered"]
    assert_replaced(fhir_server, old, new, options)


def test_a_predecessor_sent_again_stays_entered_in_error(fhir_server, tmp_path):  # noqa: F811
    old = report("srv-again-old")
    new = report("srv-again-new", predecessors=(old.SOPInstanceUID,))
    spool = Spool(tmp_path / "spool")
    spooled(spool, old, new)
    forward_all(spool, fhir_server.base_url, MappingOptions())
    spooled(spool, old)  # the sender sends the replaced report once more
    assert forward_all(spool, fhir_server.base_url, MappingOptions()) == ["delivered"]
    assert_replaced(fhir_server, old, new)


# -- the real daemon ----------------------------------------------------------------------------


def daemon_config(tmp_path, base_url: str, **fhir):
    return write_config(tmp_path, fhir={"base_url": base_url, **FAST_RETRY, **fhir})


def superseded(daemon: DaemonProcess, old: Dataset, new: Dataset) -> dict:
    return daemon.wait_for("report_superseded", lambda e: (e["predecessor_uid"], e["successor_uid"])
                           == (old.SOPInstanceUID, new.SOPInstanceUID))


def test_daemon_in_order_and_successor_first(fhir_server, tmp_path):  # noqa: F811
    old = report("d-old")
    new = report("d-new", predecessors=(old.SOPInstanceUID,))
    late_old = report("d-late-old")
    early_new = report("d-early-new", predecessors=(late_old.SOPInstanceUID,))
    config = write_config(tmp_path, fhir={"base_url": fhir_server.base_url, **FAST_RETRY}, health={"port": 0})
    with DaemonProcess(config) as daemon:
        metrics_url = f"http://127.0.0.1:{daemon.wait_for('health_endpoint_started')['port']}/metrics"
        assert send(daemon.port, old) == [0x0000]
        daemon.wait_for("bundle_delivered", lambda e: e["sop_instance_uid"] == old.SOPInstanceUID)
        assert send(daemon.port, new, early_new) == [0x0000, 0x0000]
        event = superseded(daemon, old, new)
        assert event["how"] == "after_successor" and event["resources_retired"] == len(report_entries(old, MappingOptions()))
        unknown = daemon.wait_for("report_predecessor_unknown", lambda e: e["successor_uid"] == early_new.SOPInstanceUID)
        assert unknown["predecessor_uid"] == late_old.SOPInstanceUID
        assert send(daemon.port, late_old) == [0x0000]
        assert superseded(daemon, late_old, early_new)["how"] == "on_arrival"
        text = httpx.get(metrics_url).text
        assert metric(text, "sr2fhir_reports_superseded_total", how="after_successor") == 1
        assert metric(text, "sr2fhir_reports_superseded_total", how="on_arrival") == 1
    assert_replaced(fhir_server, old, new)
    assert_replaced(fhir_server, late_old, early_new)


def test_daemon_restart_between_predecessor_and_successor(fhir_server, tmp_path):  # noqa: F811
    old = report("r-old")
    new = report("r-new", predecessors=(old.SOPInstanceUID,))
    config = daemon_config(tmp_path, fhir_server.base_url)
    with DaemonProcess(config) as daemon:
        assert send(daemon.port, old) == [0x0000]
        daemon.wait_for("bundle_delivered", lambda e: e["sop_instance_uid"] == old.SOPInstanceUID)
    with DaemonProcess(config) as daemon:  # what was delivered is remembered in spool.db
        assert send(daemon.port, new) == [0x0000]
        superseded(daemon, old, new)
    assert_replaced(fhir_server, old, new)


def test_daemon_worker_killed_before_the_retiring_transaction_carries_it_out_after_restart(fhir_server,  # noqa: F811
                                                                                           tmp_path):
    old = report("k-old")
    new = report("k-new", predecessors=(old.SOPInstanceUID,))
    held = Hold()
    with FaultProxy(fhir_server.base_url) as proxy:
        proxy.push(PASS, PASS, held)  # the predecessor, the successor, then the retiring transaction is held
        with DaemonProcess(daemon_config(tmp_path, proxy.base_url)) as daemon:
            assert send(daemon.port, old) == [0x0000]
            daemon.wait_for("bundle_delivered", lambda e: e["sop_instance_uid"] == old.SOPInstanceUID)
            assert send(daemon.port, new) == [0x0000]
            assert held.arrived.wait(60), "the retiring transaction never came"
            (spawned,) = daemon.named("worker_spawned")
            os.kill(spawned["pid"], signal.SIGKILL)  # the successor is settled, its predecessor not yet retired
            daemon.wait_for("worker_exited")
            held.release(DROP)
            daemon.wait_for("worker_started", count=2)
            assert superseded(daemon, old, new)["how"] == "after_successor"
        posts = [json.loads(entry.body) for entry in proxy.log if entry.method == "POST"]
    assert len(posts) == 4  # predecessor, successor, the retiring transaction dropped, then sent again
    assert posts[2] == posts[3]
    assert_replaced(fhir_server, old, new)


def test_daemon_successor_of_a_report_never_delivered_is_current(fhir_server, tmp_path):  # noqa: F811
    ghost = report("never-old")
    new = report("never-new", predecessors=(ghost.SOPInstanceUID,))
    with DaemonProcess(daemon_config(tmp_path, fhir_server.base_url)) as daemon:
        assert send(daemon.port, new) == [0x0000]
        daemon.wait_for("report_predecessor_unknown", lambda e: e["successor_uid"] == new.SOPInstanceUID)
        assert not daemon.named("report_superseded")
    assert set(stored_statuses(fhir_server, new, MappingOptions()).values()) <= CURRENT
    assert all(fhir_server.get(*entry_key(e).split("/", 1)) is None for e in report_entries(ghost, MappingOptions()))


# -- HAPI FHIR JPA, R5 and R4 -------------------------------------------------------------------


@pytest.mark.parametrize("release", ["r5", "r4"])
def test_hapi_in_order_and_successor_first(request, tmp_path, release):
    server = request.getfixturevalue(f"hapi_{release}")
    options = MappingOptions(fhir_version=release)
    old = report(f"hapi-{release}-old")
    new = report(f"hapi-{release}-new", predecessors=(old.SOPInstanceUID,))
    late_old = report(f"hapi-{release}-late-old")
    early_new = report(f"hapi-{release}-early-new", predecessors=(late_old.SOPInstanceUID,))
    config = daemon_config(tmp_path, server.base_url, server="hapi", version="auto")
    with DaemonProcess(config) as daemon:
        assert send(daemon.port, old, early_new) == [0x0000, 0x0000]
        daemon.wait_for("bundle_delivered", count=2, timeout_s=300)
        assert send(daemon.port, new, late_old) == [0x0000, 0x0000]
        superseded(daemon, old, new)
        superseded(daemon, late_old, early_new)
        assert not daemon.named("bundle_rejected") and not daemon.named("report_supersession_failed")
    if release == "r4":
        assert any(e["resource"]["resourceType"] == "Basic" for e in report_entries(old, options))
    assert_replaced(server, old, new, options)
    assert_replaced(server, late_old, early_new, options)
