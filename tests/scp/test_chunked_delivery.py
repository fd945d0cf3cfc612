"""Delivery in several transactions: chunks in order, progress kept in the spool, resumed after
a retry or a restart, deleted with the item; the spool's schema upgrade that holds it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from fhir_client import FhirSettings, Outcome, RetrySettings
from mapping import MappingOptions, map_sr
from scp.delivery.chunked import SpoolProgress, bundle_digest, send_in_chunks
from scp.delivery.forwarder import FhirDelivery, ForwarderStats, process_item
from scp.spool import RecordFields, Spool
from scp.spool.db import DB_NAME, SCHEMA_VERSION
from tests.fhir_client.fakes import BASE_URL, fhir_json, make_client, operation_outcome
from tests.support import sr_builders as sr

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
SETTINGS = FhirSettings(base_url=BASE_URL, retry=RetrySettings(max_attempts=2, initial_backoff_s=0, jitter_s=0))


class Server:
    """Answers transactions with one ``201`` per entry, except the requests (1-based) in
    ``answers``; records every Bundle posted."""

    def __init__(self, answers: dict[int, httpx.Response] | None = None) -> None:
        self.answers = answers or {}
        self.bundles: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        bundle = json.loads(request.content)
        self.bundles.append(bundle)
        answer = self.answers.get(len(self.bundles))
        if answer is not None:
            return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)
        return fhir_json(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "201 Created", "location": entry["request"]["url"]}} for entry in bundle["entry"]]})

    def full_urls(self) -> list[list[str]]:
        return [[entry["fullUrl"] for entry in bundle["entry"]] for bundle in self.bundles]


class MemoryProgress:
    def __init__(self, saved: tuple[str, int] | None = None) -> None:
        self.saved = saved
        self.history: list[int] = []

    def load(self) -> tuple[str, int] | None:
        return self.saved

    def save(self, digest: str, chunks_done: int) -> None:
        self.saved = (digest, chunks_done)
        self.history.append(chunks_done)


def chain(count: int) -> dict[str, Any]:
    """A put-mode Bundle of ``count`` Observations, each referencing the one before."""
    entries = []
    for index in range(count):
        resource: dict[str, Any] = {"resourceType": "Observation", "id": f"o{index}"}
        if index:
            resource["hasMember"] = [{"reference": f"Observation/o{index - 1}"}]
        entries.append({"fullUrl": f"urn:uuid:o{index}", "resource": resource,
                        "request": {"method": "PUT", "url": f"Observation/o{index}"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def run(coroutine):
    return asyncio.run(coroutine)


async def send(server: Server, bundle: dict[str, Any], max_entries: int, progress=None):
    client, _ = make_client(server, settings=SETTINGS)
    async with client:
        return await send_in_chunks(client, bundle, max_entries, progress)


# -- send_in_chunks ---------------------------------------------------------------------------


def test_chunks_go_in_order_and_each_is_recorded_and_logged():
    server, progress = Server(), MemoryProgress()
    with capture_logs() as logs:
        sent = run(send(server, chain(7), 3, progress))
    assert sent.outcome is Outcome.DELIVERED and sent.attempts == 3
    assert server.full_urls() == [["urn:uuid:o0", "urn:uuid:o1", "urn:uuid:o2"],
                                  ["urn:uuid:o3", "urn:uuid:o4", "urn:uuid:o5"], ["urn:uuid:o6"]]
    assert progress.history == [1, 2, 3] and progress.saved[0] == bundle_digest(chain(7), 3)
    lines = [(e["chunk"], e["chunks"], e["entries"]) for e in logs if e["event"] == "bundle_chunk_delivered"]
    assert lines == [(1, 3, 3), (2, 3, 3), (3, 3, 1)]
    assert [e["response"]["location"] for e in sent.response_bundle["entry"]] == [f"Observation/o{i}" for i in range(7)]


def test_a_recorded_progress_skips_the_acknowledged_chunks():
    server = Server()
    progress = MemoryProgress((bundle_digest(chain(7), 3), 2))
    sent = run(send(server, chain(7), 3, progress))
    assert sent.outcome is Outcome.DELIVERED
    assert server.full_urls() == [["urn:uuid:o6"]]
    assert progress.history == [3]


def test_every_chunk_acknowledged_already_sends_nothing():
    server = Server()
    sent = run(send(server, chain(4), 2, MemoryProgress((bundle_digest(chain(4), 2), 2))))
    assert sent.outcome is Outcome.DELIVERED and sent.attempts == 0 and server.bundles == []


@pytest.mark.parametrize("changed", ["bundle", "limit"])
def test_another_bundle_or_limit_starts_from_the_first_chunk(changed):
    server = Server()
    bundle, limit = chain(7), 3
    progress = MemoryProgress((bundle_digest(bundle, limit), 2))
    if changed == "bundle":
        bundle["entry"][0]["resource"]["status"] = "final"
    else:
        limit = 4
    run(send(server, bundle, limit, progress))
    assert server.full_urls()[0][0] == "urn:uuid:o0"


def test_a_rejected_chunk_stops_the_delivery_and_says_which_chunk():
    server = Server({2: fhir_json(422, operation_outcome("Observation.status: required"))})
    progress = MemoryProgress()
    sent = run(send(server, chain(7), 3, progress))
    assert sent.outcome is Outcome.REJECTED and sent.status_code == 422
    assert sent.diagnostics.startswith("chunk 2/3: HTTP 422")
    assert len(server.bundles) == 2 and progress.history == [1]


def test_a_circle_larger_than_the_limit_is_rejected_without_a_request():
    bundle = chain(3)
    bundle["entry"][0]["resource"]["hasMember"] = [{"reference": "Observation/o2"}]
    server = Server()
    sent = run(send(server, bundle, 2))
    assert sent.outcome is Outcome.REJECTED and server.bundles == []
    assert "set fhir.max_entries_per_request to at least 3" in sent.diagnostics


def test_fhir_delivery_splits_only_bundles_over_the_limit():
    async def go(bundle, limit):
        server = Server()
        client, _ = make_client(server, settings=SETTINGS)
        async with client:
            await FhirDelivery(client, max_entries_per_request=limit).deliver(bundle, "1.2.3")
        return server.full_urls()

    assert len(run(go(chain(5), None))) == 1
    assert len(run(go(chain(5), 5))) == 1
    assert len(run(go(chain(5), 2))) == 3


# -- progress in the spool --------------------------------------------------------------------


def spool_with_reports(tmp_path, count: int = 1, n_groups: int = 4) -> tuple[Spool, list]:
    spool = Spool(tmp_path / "spool")
    datasets = []
    with spool.writer() as writer:
        for index in range(count):
            ds = sr.measurement_report([sr.measurement_group("1410", tracking_identifier=f"t{index}.{g}",
                                                              measurements=[sr.num_item(sr.LENGTH, 1.0 + g, sr.MM)])
                                        for g in range(n_groups)], sop_instance_uid=sr.uid(f"chunked:{index}"))
            writer.put(RecordFields(ds.SOPInstanceUID, SR_CLASS, EXPLICIT_LE, "TEST"), sr.to_part10_bytes(ds))
            datasets.append(ds)
    return spool, datasets


def test_progress_is_kept_per_item_and_goes_with_it(tmp_path):
    spool, _ = spool_with_reports(tmp_path, count=3)
    with spool.consumer() as consumer:
        first, second, third = consumer.pending()
        assert consumer.progress(first) is None
        consumer.record_progress(first, "abc", 1)
        consumer.record_progress(first, "abc", 2)
        consumer.record_progress(second, "def", 1)
        consumer.record_progress(third, "ghi", 1)
        assert consumer.progress(first) == ("abc", 2) and consumer.progress(second) == ("def", 1)
        consumer.settle(first)
        consumer.dead_letter(second, {"reason": "test"})
        assert consumer.progress(first) is None and consumer.progress(second) is None
        consumer.record_progress(first, "abc", 3)  # gone: nothing is recorded
        assert consumer.progress(first) is None
    with spool.consumer() as consumer:  # durable across reopening
        (item,) = consumer.pending()
        assert consumer.progress(item) == ("ghi", 1)
    with sqlite3.connect(tmp_path / "spool" / DB_NAME) as conn:
        assert conn.execute("SELECT seq FROM progress").fetchall() == [(item.seq,)]


def test_progress_of_a_superseded_copy_is_deleted(tmp_path):
    spool, datasets = spool_with_reports(tmp_path)
    with spool.consumer() as consumer:
        (old,) = consumer.pending()
        consumer.record_progress(old, "abc", 1)
        with spool.writer() as writer:
            writer.put(RecordFields(datasets[0].SOPInstanceUID, SR_CLASS, EXPLICIT_LE, "TEST"),
                       sr.to_part10_bytes(datasets[0]))
        (new,) = consumer.pending()
        assert new.seq != old.seq and consumer.progress(new) is None
    with sqlite3.connect(tmp_path / "spool" / DB_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM progress").fetchall() == [(0,)]


def test_a_version_1_spool_is_upgraded_in_place(tmp_path):
    spool, _ = spool_with_reports(tmp_path, count=2)
    path = tmp_path / "spool" / DB_NAME
    with sqlite3.connect(path) as conn:  # what the previous release wrote
        for table in ("progress", "delivered_reports", "supersessions"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    with spool.consumer() as consumer:
        items = consumer.pending()
        assert len(items) == 2
        consumer.record_progress(items[0], "abc", 1)
        assert consumer.progress(items[0]) == ("abc", 1)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchall() == [(SCHEMA_VERSION,)] == [(3,)]
    conn.close()


def test_a_spool_of_a_later_version_is_refused(tmp_path):
    from scp.spool import SpoolError

    spool, _ = spool_with_reports(tmp_path)
    with sqlite3.connect(tmp_path / "spool" / DB_NAME) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SpoolError, match=f"version {SCHEMA_VERSION + 1}"):
        spool.consumer().open()


# -- process_item: a retry resumes, the settled item leaves no progress -------------------------


@pytest.mark.parametrize("write_mode", ["put", "conditional", "conditional-update"])
def test_an_item_interrupted_between_chunks_resumes_where_it_stopped(tmp_path, write_mode):
    spool, (ds,) = spool_with_reports(tmp_path, n_groups=4)
    options = MappingOptions(write_mode=write_mode)
    bundle = map_sr(ds, options).bundle
    limit = 3
    assert len(bundle["entry"]) > 3 * limit

    async def deliver_once(server: Server):
        client, _ = make_client(server, settings=SETTINGS)
        async with client:
            with spool.consumer() as consumer:
                (item,) = consumer.pending()
                settled = await process_item(item, consumer, FhirDelivery(client, max_entries_per_request=limit, version="r5"),
                                             options, asyncio.Event(), ForwarderStats())
                return settled, consumer.progress(item)

    # The third chunk meets a server that is down: retries spent, shutdown set -> deferred.
    down = Server({3: fhir_json(503), 4: fhir_json(503)})

    async def interrupted():
        client, _ = make_client(down, settings=SETTINGS)
        stop = asyncio.Event()
        stop.set()
        async with client:
            with spool.consumer() as consumer:
                (item,) = consumer.pending()
                settled = await process_item(item, consumer, FhirDelivery(client, max_entries_per_request=limit, version="r5"),
                                             options, stop, ForwarderStats())
                return settled, consumer.progress(item)

    settled, progress = run(interrupted())
    assert settled == "deferred" and progress == (bundle_digest(bundle, limit), 2)
    up = Server()
    settled, progress = run(deliver_once(up))
    assert settled == "delivered" and progress is None
    sent_first = [u for b in down.bundles[:2] for u in (e["fullUrl"] for e in b["entry"])]
    sent_then = [u for b in up.bundles for u in (e["fullUrl"] for e in b["entry"])]
    assert sorted(sent_first + sent_then) == sorted(e["fullUrl"] for e in bundle["entry"])  # each once
    with spool.consumer() as consumer:
        assert consumer.pending() == []
    with sqlite3.connect(tmp_path / "spool" / DB_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM progress").fetchall() == [(0,)]


def test_spool_progress_never_raises(tmp_path):
    spool, _ = spool_with_reports(tmp_path)
    consumer = spool.consumer()
    consumer.open()
    (item,) = consumer.pending()
    consumer.close()
    progress = SpoolProgress(consumer, item)  # closed consumer: every call fails inside
    with capture_logs() as logs:
        assert progress.load() is None
        progress.save("abc", 1)
    assert [e["event"] for e in logs] == ["bundle_progress_unreadable", "bundle_progress_not_recorded"]


def test_the_outbox_ignores_progress(tmp_path):
    from scp.delivery.forwarder import OutboxDelivery

    bundle = chain(3)
    sent = run(OutboxDelivery(tmp_path / "outbox").deliver(bundle, "1.2.3", progress=MemoryProgress()))
    assert sent.outcome is Outcome.DELIVERED
    assert json.loads((tmp_path / "outbox" / "1.2.3.json").read_text())["entry"] == bundle["entry"]


def test_a_refusal_naming_the_entry_limit_is_dead_lettered_with_the_setting_to_change(tmp_path):
    spool, _ = spool_with_reports(tmp_path)
    # Medplum's words (fhir-router batch.ts) for a transaction of more than 50 updates.
    server = Server({1: fhir_json(400, operation_outcome("Transaction contains more update operations than allowed"))})

    async def go():
        client, _ = make_client(server, settings=SETTINGS)
        async with client:
            with spool.consumer() as consumer:
                (item,) = consumer.pending()
                return await process_item(item, consumer, FhirDelivery(client, version="r5"), MappingOptions(), asyncio.Event(),
                                          ForwarderStats())

    assert run(go()) == "dead_lettered"
    (sidecar,) = (tmp_path / "spool" / "failed").glob("*.json")
    reason = json.loads(sidecar.read_text())["reason"]
    assert reason.startswith("rejected by the FHIR server: HTTP 400")
    assert "to fix: the server limits the entries of a transaction: set fhir.max_entries_per_request" in reason
