"""The audit trail: R5 AuditEvents (checked with validate-ig), no PHI by default, the JSONL file
(written from many threads, rotated), a real C-STORE, and shipping the events to FHIR."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from structlog.testing import capture_logs

from fhir_client import FhirClient, FhirSettings, Outcome, RetrySettings, SendResult
from mapping import MappingOptions, map_sr, serialize
from scp.config import AuditSettings
from scp.delivery.reasons import HoldReason
from scp.telemetry.audit import (
    AuditLog,
    AuditShipper,
    AuditSource,
    AuditTrail,
    application_event,
    delivery_event,
    hold_event,
    patient_of_bundle,
    received_event,
    resources_written,
)
from scp.telemetry.metrics import DaemonMetrics
from tests.support.conformance import assert_conformant
from tests.fhir_client.fakes import BASE_URL, make_client
from tests.scp.test_metrics import Item, scrape, value
from tests.support.sr_builders import COMPREHENSIVE_SR, LENGTH, MM, measurement_group, measurement_report, num_item, uid

PATIENT_ID = "PID-SECRET-4711"
PATIENT_NAME = "Geheim^Gertrud"
SOURCE = AuditSource(ae_title="SR2FHIR", host="bridge.example.org")
WHEN = datetime(2024, 3, 1, 10, 15, tzinfo=UTC)


@pytest.fixture(scope="module")
def report() -> tuple[Any, dict[str, Any]]:
    """A TID 1500 SR with a recognisable Patient ID and name, and its mapped Bundle."""
    group = measurement_group(measurements=[num_item(LENGTH, 12.5, MM)])
    ds = measurement_report([group], patient_id=PATIENT_ID, patient_name=PATIENT_NAME, sop_instance_uid=uid("audit-sr"))
    return ds, map_sr(ds, MappingOptions()).bundle


def store_event(ds: Any, *, calling_ae: str = "MODALITY", address: str = "10.1.2.3") -> SimpleNamespace:
    """The parts of a pynetdicom EVT_C_STORE event the audit reads."""
    return SimpleNamespace(
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title=calling_ae, address=address)),
        request=SimpleNamespace(AffectedSOPInstanceUID=ds.SOPInstanceUID, AffectedSOPClassUID=ds.SOPClassUID),
        timestamp=datetime(2024, 3, 1, 11, 0, 0), dataset=ds)


def delivered_result(bundle: dict[str, Any]) -> SendResult:
    response = {"resourceType": "Bundle", "type": "transaction-response",
                "entry": [{"response": {"status": "201 Created", "location": f"{e['request']['url']}/_history/1"}}
                          for e in bundle["entry"]]}
    return SendResult(Outcome.DELIVERED, 200, None, "HTTP 200 OK", 2, 0.5, response)


def append_lines(path: str, name: str, count: int, start: Any) -> None:
    """A child process appending ``count`` long lines from two threads."""
    audit_log = AuditLog(Path(path))
    start.wait()

    def write(first: int) -> None:
        for n in range(first, count, 2):
            audit_log.write({"id": f"{name}-{n}", "pad": "y" * 9000})

    threads = [threading.Thread(target=write, args=(first,)) for first in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    audit_log.close()


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def trail_events(tmp_path: Path, report, *, include_phi: bool) -> list[dict[str, Any]]:
    ds, bundle = report
    path = tmp_path / f"audit-{include_phi}.jsonl"
    trail = AuditTrail(AuditLog(path), SOURCE, destination=BASE_URL, include_phi=include_phi)
    item = Item(sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID)
    trail.application_started()
    trail.store_answered(store_event(ds), 0x0000)
    trail.store_answered(store_event(ds), 0xA700)
    trail.delivered(item, delivered_result(bundle), bundle)
    trail.dead_lettered(item, "rejected", SendResult(Outcome.REJECTED, 422, None, "HTTP 422", 1, 0.1), bundle)
    trail.dead_lettered(item, "unmappable")
    trail.deferred(item)  # nothing final: no event
    hold = HoldReason("unauthorized", 401, "HTTP 401 Unauthorized: expired token for Secret^Patient", WHEN.timestamp())
    trail.hold_started(hold)
    trail.hold_ended(hold, 120.0)
    trail.application_stopped()
    trail.audit_log.close()
    return read_lines(path)


class TestAuditEvents:
    @pytest.mark.conformance
    def test_every_kind_of_event_is_valid_r5(self, tmp_path: Path, report) -> None:
        events = trail_events(tmp_path, report, include_phi=False) + trail_events(tmp_path, report, include_phi=True)
        events += [
            received_event(source=SOURCE, calling_ae="X", calling_address=None, sop_instance_uid="",
                           sop_class_uid="", status=0xC210, occurred=WHEN),
            delivery_event(source=SOURCE, destination="file:///var/lib/sr2fhir/outbox", sop_instance_uid="1.2.3",
                           sop_class_uid=COMPREHENSIVE_SR, calling_ae="CT", result=None, elapsed_s=0.01),
            delivery_event(source=SOURCE, destination="", sop_instance_uid="1.2.3", sop_class_uid="",
                           calling_ae="", result="retries_exhausted", status_code=503, attempts=40),
        ]
        assert len(events) == 21
        assert_conformant({f"event-{n}": event for n, event in enumerate(events)}, tmp_path)

    def test_received_event(self, report) -> None:
        ds, _ = report
        event = received_event(source=SOURCE, calling_ae="MODALITY", calling_address="10.1.2.3",
                               sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID, status=0,
                               occurred=WHEN, recorded=WHEN, event_id="e1")
        assert event["id"] == "e1"
        assert event["category"][0]["coding"][0]["code"] == "110104"
        assert event["action"] == "C"
        assert event["occurredDateTime"] == event["recorded"] == "2024-03-01T10:15:00.000Z"
        assert event["outcome"]["code"]["code"] == "0"
        caller, us = event["agent"]
        assert (caller["who"]["display"], caller["requestor"], caller["networkString"]) == ("MODALITY", True, "10.1.2.3")
        assert caller["type"]["coding"][0]["code"] == "110153"
        assert (us["who"]["identifier"]["value"], us["requestor"]) == ("SR2FHIR", False)
        assert event["entity"][0]["what"]["identifier"]["value"] == f"urn:oid:{ds.SOPInstanceUID}"

    @pytest.mark.parametrize(("status", "outcome"), [(0x0000, "0"), (0xB000, "0"), (0xA700, "12"), (0xC210, "8"),
                                                     (0xA900, "8"), (0xC2FF, "8")])
    def test_c_store_status_to_outcome(self, status: int, outcome: str) -> None:
        event = received_event(source=SOURCE, calling_ae="A", calling_address=None, sop_instance_uid="1.2",
                               sop_class_uid=COMPREHENSIVE_SR, status=status, occurred=WHEN)
        assert event["outcome"]["code"]["code"] == outcome
        assert event["outcome"]["detail"] == [{"text": f"C-STORE answered 0x{status:04X}"}]

    def test_delivery_event_names_what_was_written_where(self, report) -> None:
        ds, bundle = report
        written = resources_written(bundle, delivered_result(bundle).response_bundle, BASE_URL)
        assert len(written) == len(bundle["entry"])
        event = delivery_event(source=SOURCE, destination=BASE_URL, sop_instance_uid=ds.SOPInstanceUID,
                               sop_class_uid=ds.SOPClassUID, calling_ae="MODALITY", result=None, status_code=200,
                               attempts=2, elapsed_s=0.5, written=written, recorded=WHEN)
        assert event["code"]["coding"][0]["code"] == "transaction"
        assert event["occurredPeriod"] == {"start": "2024-03-01T10:14:59.500Z", "end": "2024-03-01T10:15:00.000Z"}
        destination = event["agent"][1]
        assert destination["networkUri"] == BASE_URL and destination["type"]["coding"][0]["code"] == "110152"
        references = [e["what"]["reference"] for e in event["entity"][1:]]
        assert references == written
        assert all(ref.startswith(f"{BASE_URL}/") and ref.endswith("/_history/1") for ref in references)
        assert {e["what"]["type"] for e in event["entity"][1:]} >= {"ImagingSelection", "Observation"}
        sr_details = {d["type"]["coding"][0]["code"]: d["valueString"] for d in event["entity"][0]["detail"]}
        assert sr_details == {"110181": ds.SOPClassUID, "110119": "MODALITY"}

    def test_written_falls_back_to_the_put_urls(self, report) -> None:
        _, bundle = report
        written = resources_written(bundle, None, BASE_URL + "/")
        assert written == [f"{BASE_URL}/{entry['request']['url']}" for entry in bundle["entry"]]

    def test_no_phi_by_default(self, tmp_path: Path, report) -> None:
        text = json.dumps(trail_events(tmp_path, report, include_phi=False))
        for secret in (PATIENT_ID, "Geheim", "Gertrud"):
            assert secret not in text
        _, bundle = report
        assert PATIENT_ID in serialize(bundle).decode()  # the test data does carry it

    def test_include_phi_adds_the_patient_id_only(self, tmp_path: Path, report) -> None:
        events = trail_events(tmp_path, report, include_phi=True)
        received = [e for e in events if e["category"][0]["coding"][0]["code"] == "110104"]
        assert received[0]["patient"]["identifier"]["value"] == PATIENT_ID
        assert "patient" not in received[1]  # refused: the dataset is not read for it
        delivered = [e for e in events if e["code"]["coding"][0]["code"] == "transaction"]
        assert delivered[0]["patient"]["identifier"]["value"] == PATIENT_ID
        assert any(e["role"]["coding"][0]["code"] == "1" for e in delivered[0]["entity"])
        assert "Gertrud" not in json.dumps(events)  # names never, not even with include_phi

    def test_patient_of_bundle(self, report) -> None:
        _, bundle = report
        assert patient_of_bundle(bundle)["identifier"]["value"] == PATIENT_ID
        assert patient_of_bundle({"entry": []}) is None

    def test_hold_events_name_the_status_and_the_problem_but_no_server_words(self) -> None:
        hold = HoldReason("forbidden", 403, "HTTP 403 Forbidden: scope lacks Observation for Secret^Patient",
                          WHEN.timestamp())
        held = hold_event(source=SOURCE, destination=BASE_URL, reason=hold)
        resumed = hold_event(source=SOURCE, destination=BASE_URL, reason=hold, held_s=7200.0)
        assert [e["code"]["coding"][0]["code"] for e in (held, resumed)] == ["delivery-held", "delivery-resumed"]
        assert [e["outcome"]["code"]["code"] for e in (held, resumed)] == ["8", "0"]
        assert held["outcome"]["detail"][0]["text"] == ("delivery held: FHIR server answers 403 (forbidden); "
                                                        "received SRs are kept")
        assert resumed["outcome"]["detail"][0]["text"] == "delivery resumed after 7200 s held (FHIR server answers 403)"
        assert held["occurredDateTime"] == "2024-03-01T10:15:00.000Z"
        assert resumed["occurredPeriod"]["start"] == "2024-03-01T10:15:00.000Z"
        assert held["agent"][1]["networkUri"] == BASE_URL
        assert "Secret" not in json.dumps([held, resumed])

    def test_application_events(self) -> None:
        start = application_event(source=SOURCE, started=True, recorded=WHEN)
        stop = application_event(source=SOURCE, started=False, recorded=WHEN)
        assert [e["code"]["coding"][0]["code"] for e in (start, stop)] == ["110120", "110121"]
        assert start["category"][0]["coding"][0]["code"] == "110100" and start["action"] == "E"


class TestAuditLog:
    def test_lines_from_many_threads_never_interleave(self, tmp_path: Path) -> None:
        path = tmp_path / "audit" / "trail.jsonl"
        audit_log = AuditLog(path)
        threads, per_thread = 8, 200
        padding = "x" * 6000  # longer than PIPE_BUF and than one page
        start = threading.Barrier(threads)

        def write(thread: int) -> None:
            start.wait()
            for n in range(per_thread):
                audit_log.write({"resourceType": "AuditEvent", "id": f"{thread}-{n}", "pad": padding})

        workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        audit_log.close()
        lines = read_lines(path)  # every line is one whole JSON object
        assert len(lines) == threads * per_thread
        assert {line["id"] for line in lines} == {f"{t}-{n}" for t in range(threads) for n in range(per_thread)}
        assert all(line["pad"] == padding for line in lines)
        for t in range(threads):  # and each thread's lines in its order
            mine = [int(line["id"].split("-")[1]) for line in lines if line["id"].startswith(f"{t}-")]
            assert mine == sorted(mine)

    def test_two_processes_append_to_one_file(self, tmp_path: Path) -> None:
        """The listener (main process) and the worker write the same file."""
        path = tmp_path / "trail.jsonl"
        spawn = multiprocessing.get_context("spawn")
        start = spawn.Barrier(3)
        children = [spawn.Process(target=append_lines, args=(str(path), name, 300, start)) for name in ("main", "worker")]
        for child in children:
            child.start()
        start.wait()
        for child in children:
            child.join()
            assert child.exitcode == 0
        lines = read_lines(path)
        assert sorted(line["id"] for line in lines) == sorted(f"{name}-{n}" for name in ("main", "worker")
                                                              for n in range(300))

    def test_a_rotated_file_is_followed_by_a_new_one(self, tmp_path: Path) -> None:
        path = tmp_path / "trail.jsonl"
        audit_log = AuditLog(path)
        audit_log.write({"id": "before"})
        path.rename(tmp_path / "trail.jsonl.1")  # logrotate's "create" mode
        audit_log.write({"id": "after"})
        audit_log.close()
        assert read_lines(tmp_path / "trail.jsonl.1") == [{"id": "before"}]
        assert read_lines(path) == [{"id": "after"}]

    def test_a_retiring_transaction_is_one_event_for_the_replaced_sr(self, tmp_path: Path, report) -> None:
        _, bundle = report
        trail = AuditTrail(AuditLog(tmp_path / "trail.jsonl"), SOURCE, destination=BASE_URL)
        trail.superseded(uid("replaced"), uid("replacing"), 3, "after_successor", delivered_result(bundle))
        trail.superseded(uid("replaced"), uid("replacing"), 3, "on_arrival")  # in its own delivery event
        trail.ignored(Item(), "2000")  # nothing written: the receive event stands for it
        trail.audit_log.close()
        [event] = [json.loads(line) for line in (tmp_path / "trail.jsonl").read_text().splitlines()]
        assert event["code"]["coding"][0]["code"] == "transaction" and event["outcome"]["code"]["code"] == "0"
        assert event["entity"][0]["what"]["identifier"]["value"] == f"urn:oid:{uid('replaced')}"
        assert len(event["entity"]) == 1 + len(bundle["entry"])

    def test_a_trail_that_cannot_write_logs_and_goes_on(self, tmp_path: Path, report) -> None:
        ds, _ = report
        (tmp_path / "blocked").write_text("a file where the directory should be")
        trail = AuditTrail(AuditLog(tmp_path / "blocked" / "trail.jsonl"), SOURCE, destination=BASE_URL)
        with capture_logs() as logs:
            trail.store_answered(store_event(ds), 0)
            trail.dead_lettered(Item(), "unmappable")
        assert [entry["event"] for entry in logs] == ["audit_event_not_written"] * 2

    def test_settings(self) -> None:
        assert AuditSettings().path == Path("audit/sr2fhir-audit.jsonl")
        assert AuditSettings().include_phi is False
        with pytest.raises(ValueError, match="needs audit.path"):
            AuditSettings(path=None, send_to_fhir=True)


def test_a_real_c_store_is_audited_and_counted(tmp_path: Path, report) -> None:
    """Through pynetdicom's real EVT_C_STORE event (the attribute paths the trail reads)."""
    ds, _ = report
    path = tmp_path / "trail.jsonl"
    trail = AuditTrail(AuditLog(path), SOURCE, destination=BASE_URL)
    metrics = DaemonMetrics()

    def handle_store(event: evt.Event) -> int:
        status = 0x0000
        trail.store_answered(event, status)
        metrics.store_answered(event, status)
        return status

    scp = AE(ae_title="SR2FHIR")
    scp.add_supported_context(COMPREHENSIVE_SR, ExplicitVRLittleEndian)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        scu = AE(ae_title="MODALITY")
        scu.add_requested_context(COMPREHENSIVE_SR, ExplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SR2FHIR")
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
    finally:
        server.shutdown()
    (event,) = read_lines(path)
    caller = event["agent"][0]
    assert (caller["who"]["display"], caller["networkString"]) == ("MODALITY", "127.0.0.1")
    assert event["entity"][0]["what"]["identifier"]["value"] == f"urn:oid:{ds.SOPInstanceUID}"
    assert event["outcome"]["code"]["code"] == "0"
    assert PATIENT_ID not in json.dumps(event)
    assert value(scrape(metrics), "sr2fhir_instances_received_total", calling_ae="MODALITY") == 1


# --------------------------------------------------------------------------- send_to_fhir


class FakeServer:
    """Answers transactions like a FHIR server; ``answers`` queues statuses (default 200)."""

    def __init__(self) -> None:
        self.bundles: list[dict[str, Any]] = []
        self.answers: list[int] = []
        self.reject_ids: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        bundle = json.loads(request.content)
        self.bundles.append(bundle)
        status = self.answers.pop(0) if self.answers else 200
        if any(e["resource"]["id"] in self.reject_ids for e in bundle["entry"]):
            status = 422
        if status != 200:
            return httpx.Response(status, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response",
                                         "entry": [{"response": {"status": "201 Created"}} for _ in bundle["entry"]]})

    def shipped_ids(self, only_accepted: bool = True) -> list[str]:
        return [e["resource"]["id"] for b in self.bundles for e in b["entry"]
                if not (only_accepted and e["resource"]["id"] in self.reject_ids)]


def write_events(path: Path, ids: list[str]) -> None:
    audit_log = AuditLog(path)
    for event_id in ids:
        audit_log.write(application_event(source=SOURCE, started=True, event_id=event_id))
    audit_log.close()


def ship(shipper: AuditShipper, server: FakeServer) -> int:
    async def go() -> int:
        client, _ = make_client(server)
        async with client:
            return await shipper.ship_once(client)

    return asyncio.run(go())


class TestAuditShipper:
    def test_sends_in_order_with_idempotent_puts_and_resumes_after_a_restart(self, tmp_path: Path) -> None:
        path = tmp_path / "trail.jsonl"
        write_events(path, ["a", "b", "c", "d", "e"])
        server = FakeServer()
        shipper = AuditShipper(path, batch_size=2)
        assert [ship(shipper, server) for _ in range(4)] == [2, 2, 1, 0]
        assert server.shipped_ids() == ["a", "b", "c", "d", "e"]
        assert [e["request"] for e in server.bundles[0]["entry"]] == [
            {"method": "PUT", "url": "AuditEvent/a"}, {"method": "PUT", "url": "AuditEvent/b"}]
        shipper.close()

        write_events(path, ["f"])
        restarted = AuditShipper(path, batch_size=2)  # the worker restarted: picks up from the saved position
        assert ship(restarted, server) == 1
        assert server.shipped_ids()[-1] == "f"
        assert server.shipped_ids().count("a") == 1

    def test_an_unavailable_server_keeps_the_batch(self, tmp_path: Path) -> None:
        path = tmp_path / "trail.jsonl"
        write_events(path, ["a", "b"])
        server = FakeServer()
        server.answers = [503] * 5  # every attempt of the first send (fhir_settings: 5 attempts)
        shipper = AuditShipper(path)
        with capture_logs() as logs:
            assert ship(shipper, server) == 0
        assert logs[-1]["event"] == "audit_events_deferred"
        assert ship(shipper, server) == 2
        assert server.shipped_ids()[-2:] == ["a", "b"]

    def test_an_endpoint_refusal_keeps_the_batch_and_skips_nothing(self, tmp_path: Path) -> None:
        path = tmp_path / "trail.jsonl"
        write_events(path, ["a", "b"])
        server = FakeServer()
        server.answers = [401]  # a token the server stopped accepting: the endpoint's fault
        shipper = AuditShipper(path)
        with capture_logs() as logs:
            assert ship(shipper, server) == 0
        assert [entry["event"] for entry in logs] == ["audit_events_deferred"]
        assert ship(shipper, server) == 2
        assert server.shipped_ids() == ["a", "b", "a", "b"]  # the refused batch, then sent again

    def test_a_rejected_event_is_skipped_not_blocking(self, tmp_path: Path) -> None:
        path = tmp_path / "trail.jsonl"
        write_events(path, ["a", "bad", "c"])
        server = FakeServer()
        server.reject_ids = {"bad"}
        shipper = AuditShipper(path)
        with capture_logs() as logs:
            assert ship(shipper, server) == 2  # batch rejected, then one by one
        assert [entry["audit_event_id"] for entry in logs if entry["event"] == "audit_event_rejected"] == ["bad"]
        assert ship(shipper, server) == 0

    def test_follows_a_rotation_and_steps_over_broken_lines(self, tmp_path: Path) -> None:
        path = tmp_path / "trail.jsonl"
        write_events(path, ["a"])
        server = FakeServer()
        shipper = AuditShipper(path, batch_size=10)
        assert ship(shipper, server) == 1
        write_events(path, ["b"])  # written before the rotation, not yet shipped
        path.rename(tmp_path / "trail.jsonl.1")
        with path.open("w") as f:
            f.write("{broken\n")
        write_events(path, ["c"])
        assert ship(shipper, server) == 1  # the rest of the old file first
        with capture_logs() as logs:
            assert ship(shipper, server) == 1  # then the new one, the broken line skipped
        assert [entry["event"] for entry in logs] == ["audit_line_unreadable"]
        assert server.shipped_ids() == ["a", "b", "c"]

    def test_run_until_stopped(self, tmp_path: Path) -> None:
        path = tmp_path / "trail.jsonl"
        write_events(path, ["a", "b", "c"])
        server = FakeServer()

        async def go() -> None:
            stop = asyncio.Event()
            client, _ = make_client(lambda request: (stop.set(), server(request))[1])
            async with client:
                await AuditShipper(path).run(client, stop, interval_s=3600)

        asyncio.run(go())
        assert server.shipped_ids() == ["a", "b", "c"]


@pytest.mark.integration
def test_events_are_accepted_by_a_real_r5_server(fhir_server, tmp_path: Path, report) -> None:
    """Deliver a mapped Bundle, audit it from the server's real answer, ship the trail there."""
    ds, bundle = report
    path = tmp_path / "trail.jsonl"
    settings = FhirSettings(base_url=fhir_server.base_url, retry=RetrySettings(max_attempts=1))
    trail = AuditTrail(AuditLog(path), SOURCE, destination=fhir_server.base_url)

    async def go() -> None:
        async with FhirClient(settings) as client:
            sent = await client.send(bundle)
            assert sent.outcome is Outcome.DELIVERED, sent.diagnostics
            trail.store_answered(store_event(ds), 0)
            trail.delivered(Item(sop_instance_uid=ds.SOPInstanceUID), sent, bundle)
            trail.audit_log.close()
            shipper = AuditShipper(path)
            assert await shipper.ship_once(client) == 2
            shipper.close()

    asyncio.run(go())
    events = read_lines(path)
    stored = fhir_server.get("AuditEvent", events[1]["id"])
    assert stored is not None
    written = [e["what"]["reference"] for e in stored["entity"][1:]]
    assert len(written) == len(bundle["entry"])
    resource_type, resource_id = written[0].removeprefix(fhir_server.base_url + "/").split("/")[:2]
    assert fhir_server.get(resource_type, resource_id) is not None


def test_audit_lines_are_compact_json_whatever_the_encoder(tmp_path):
    # orjson writes the events; what it refuses (a 70-bit integer, a non-string key) still
    # arrives as one JSON line, as the standard library writes it.
    audit_log = AuditLog(tmp_path / "audit.jsonl")
    audit_log.write({"id": "plain", "text": "Läsion 肺", "n": 1.5})
    audit_log.write({"id": "big", "n": 2 ** 70})
    audit_log.write({"id": "keys", 7: "seven"})
    lines = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    assert lines[0] == '{"id":"plain","text":"Läsion 肺","n":1.5}'.encode()
    assert [json.loads(line) for line in lines[1:]] == [{"id": "big", "n": 2 ** 70}, {"id": "keys", "7": "seven"}]
