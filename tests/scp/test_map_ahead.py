"""Mapping ahead while delivery waits (scp.delivery.prepared): the Bundles prepared during an
outage are the ones mapping at delivery gives, for the right release only, within their bound;
and the forwarder prepares the backlog while the queue is held or every send waits to retry.

Real spools and real mapping; the FHIR side is a scripted peer (the hold's ``Endpoint``) or a
real :class:`fhir_client.FhirClient` on an ``httpx.MockTransport`` whose answers the test
switches. Synchronisation is on events the peers set, never on sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
from structlog.testing import capture_logs

from fhir_client import RetrySettings, SendResult
from mapping import MappingOptions, map_sr, serialize
from scp.delivery.forwarder import FhirDelivery, run_forwarder
from scp.delivery.hold import DeliveryHold, ProbeBackoff
from scp.delivery.prepared import PreparedBundles, RetryWaits
from scp.spool import RecordFields, Spool, SpoolItem
from tests.fhir_client.fakes import fhir_json, fhir_settings, make_client, transaction_response
from tests.scp.test_hold import DELIVERED, EXPLICIT_LE, SR_CLASS, UNAUTHORIZED, Endpoint, Recorder, Settled, \
    fill_spool
from tests.scp.test_convert_same_output import _unmapped_document
from tests.support import sr_builders as sr

R5 = MappingOptions()


def pending(spool: Spool) -> list[SpoolItem]:
    consumer = spool.consumer()
    consumer.open()
    try:
        return consumer.pending()
    finally:
        consumer.close()


def mapped_now(item: SpoolItem, release: str = "r5") -> bytes:
    options = R5.model_copy(update={"fhir_version": release})
    return serialize(map_sr(pydicom.dcmread(BytesIO(item.read())), options).bundle)


def test_a_prepared_result_is_the_bundle_mapping_at_delivery_gives_and_is_used_once(tmp_path: Path) -> None:
    spool, _ = fill_spool(tmp_path / "spool", 5)
    items = pending(spool)
    prepared = PreparedBundles(R5, max_bytes=10 * 2**20)
    assert prepared.prepare(items, "r5", budget_s=60) == 5
    assert len(prepared) == 5 and prepared.bytes == sum(len(mapped_now(item)) for item in items)
    for item in items:
        result = prepared.take(item.id, "r5")
        assert result is not None and serialize(result.bundle) == mapped_now(item)
        assert prepared.take(item.id, "r5") is None  # used once
    assert len(prepared) == 0 and prepared.bytes == 0


def test_a_result_prepared_for_r5_serves_r4_as_mapping_for_r4_would_and_not_the_other_way(tmp_path: Path) -> None:
    """``fhir.version: auto`` maps ahead for R5 until the server said; an R4 server gets the R4 form."""
    spool, _ = fill_spool(tmp_path / "spool", 3)
    first, second, third = pending(spool)
    prepared = PreparedBundles(R5, max_bytes=10 * 2**20)
    prepared.prepare([first, second], "r5", budget_s=60)
    result = prepared.take(first.id, "r4")
    assert result is not None and serialize(result.bundle) == mapped_now(first, "r4") != mapped_now(first)
    assert len(prepared) == 1
    assert prepared.prepare([second, third], "r4", budget_s=60) == 2  # the release is known now: R4 ahead
    result = prepared.take(second.id, "r4")
    assert result is not None and serialize(result.bundle) == mapped_now(second, "r4")
    assert prepared.take(third.id, "r5") is None  # an R4 result cannot serve R5: mapped again in its turn
    assert len(prepared) == 0


def test_preparing_stops_once_the_bound_is_reached(tmp_path: Path) -> None:
    spool, _ = fill_spool(tmp_path / "spool", 6)
    items = pending(spool)
    one = len(mapped_now(items[0]))
    prepared = PreparedBundles(R5, max_bytes=int(one * 2.5))
    assert prepared.prepare(items, "r5", budget_s=60) == 3  # the third crosses the bound
    assert prepared.full and prepared.prepare(items, "r5", budget_s=60) == 0
    prepared.take(items[0].id, "r5")
    assert not prepared.full and prepared.prepare(items, "r5", budget_s=60) == 1
    off = PreparedBundles(R5, max_bytes=0)
    assert off.full and off.prepare(items, "r5") == 0


def test_a_slice_ends_when_its_time_is_up_after_at_least_one_item(tmp_path: Path) -> None:
    spool, _ = fill_spool(tmp_path / "spool", 4)
    items = pending(spool)
    ticks = itertools.count()
    prepared = PreparedBundles(R5, max_bytes=10 * 2**20, clock=lambda: float(next(ticks)))
    assert prepared.prepare(items, "r5", budget_s=0.5) == 1  # each look at the clock is a second later
    assert prepared.prepare(items, "r5", budget_s=0.5) == 1  # the next one, not the first again
    assert len(prepared) == 2


def test_unmappable_items_are_not_kept_and_results_of_items_no_longer_pending_are_dropped(tmp_path: Path) -> None:
    spool, _ = fill_spool(tmp_path / "spool", 3)
    bad = _unmapped_document()
    with spool.writer() as writer:
        writer.put(RecordFields(bad.SOPInstanceUID, SR_CLASS, EXPLICIT_LE, "TEST"), sr.to_part10_bytes(bad))
    items = pending(spool)
    prepared = PreparedBundles(R5, max_bytes=10 * 2**20)
    assert prepared.prepare(items, "r5", budget_s=60) == 3
    assert prepared.take(items[3].id, "r5") is None  # its own turn maps it and says why it fails
    before = prepared.bytes
    assert prepared.prepare(items[1:], "r5", budget_s=60) == 0  # the first was settled meanwhile
    assert len(prepared) == 2 and prepared.bytes < before
    assert prepared.take(items[0].id, "r5") is None


def test_retry_waits_counts_the_waits_in_progress() -> None:
    async def scenario() -> list[int]:
        waits = RetryWaits()
        release = asyncio.Event()

        async def blocked_sleep(delay: float) -> None:
            await release.wait()

        sleep = waits.wrap(blocked_sleep)
        tasks = [asyncio.create_task(sleep(1.0)) for _ in range(3)]
        await asyncio.sleep(0)  # the three tasks start their waits
        seen = [waits.waiting]
        release.set()
        await asyncio.gather(*tasks)
        return [*seen, waits.waiting]

    assert asyncio.run(scenario()) == [3, 0]


class RecordingEndpoint(Endpoint):
    """The hold's scripted endpoint, also keeping the bytes of every Bundle sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bodies: dict[str, bytes] = {}

    def known_release(self) -> str:
        return "r5"

    async def deliver(self, bundle: dict[str, Any], sop_instance_uid: str, *, progress=None) -> SendResult:
        self.bodies[sop_instance_uid] = serialize(bundle)
        return await super().deliver(bundle, sop_instance_uid, progress=progress)


def mapped_ahead(logs: list[dict[str, Any]]) -> int:
    return sum(entry["items"] for entry in logs if entry["event"] == "mapped_ahead")


def run_logged(scenario: Callable[[list[dict[str, Any]]], Awaitable[None]]) -> list[dict[str, Any]]:
    """Run ``scenario(logs)`` with the log lines captured into ``logs``; return them."""
    with capture_logs() as logs:
        asyncio.run(scenario(logs))
    return logs


async def stopped(stop: asyncio.Event, forwarder: asyncio.Task[Any], consumer: Any) -> None:
    stop.set()
    await asyncio.wait_for(forwarder, 30)
    consumer.close()


def test_while_the_queue_is_held_the_backlog_is_mapped_ahead_and_delivered_as_mapped(tmp_path: Path) -> None:
    spool, uids = fill_spool(tmp_path / "spool", 12)
    expected = {item.sop_instance_uid: mapped_now(item) for item in pending(spool)}
    endpoint = RecordingEndpoint(lambda uid: UNAUTHORIZED)

    async def scenario(logs: list[dict[str, Any]]) -> None:
        recorder, settled = Recorder(), Settled(len(uids))
        # Probes 50 ms apart: time between them to map ahead.
        hold = DeliveryHold(endpoint.probe, ProbeBackoff(initial_s=0.05, max_s=0.05, jitter_s=0.0, min_s=0.0),
                            observers=[recorder])
        consumer = spool.consumer()
        consumer.open()
        stop = asyncio.Event()
        task = asyncio.create_task(run_forwarder(consumer, endpoint, R5, stop, concurrency=4, poll_interval_s=0.01,
                                                 hold=hold, observers=[settled], map_ahead_bytes=2**20))
        try:
            await asyncio.wait_for(recorder.started.wait(), 30)
            for _ in range(200):  # mapping ahead runs between probes (bounded: 200 probes)
                if mapped_ahead(logs) >= len(uids):
                    break
                endpoint.probed.clear()
                await asyncio.wait_for(endpoint.probed.wait(), 30)
            assert hold.held and not endpoint.bodies.keys() - set(uids[:4])  # nothing sent while held
            endpoint.mode, endpoint.probe_ok = (lambda uid: DELIVERED), True
            await asyncio.wait_for(settled.done.wait(), 30)
        finally:
            await stopped(stop, task, consumer)

    logs = run_logged(scenario)
    assert mapped_ahead(logs) == 12  # the four sent before the hold too: they came back
    assert endpoint.bodies == expected
    assert spool.status().pending == 0 and spool.status().failed == 0


def test_while_every_send_waits_to_retry_the_next_items_are_mapped_ahead(tmp_path: Path) -> None:
    """The server refuses connections (transient: retried, not held) until the test lets it answer."""
    spool, uids = fill_spool(tmp_path / "spool", 16)
    expected = {item.sop_instance_uid: mapped_now(item) for item in pending(spool)}
    bodies: list[bytes] = []
    state = {"refused": 0, "up": False}

    async def scenario(logs: list[dict[str, Any]]) -> None:
        backlog_mapped = asyncio.Event()

        def server(request: httpx.Request) -> httpx.Response:
            if not state["up"]:
                state["refused"] += 1
                if mapped_ahead(logs) >= len(uids) - 4:
                    backlog_mapped.set()
                raise httpx.ConnectError("connection refused", request=request)
            bodies.append(request.content)
            return fhir_json(200, transaction_response(*["201 Created"] * len(json.loads(request.content)["entry"])))

        waits = RetryWaits()
        retry = RetrySettings(max_attempts=0, initial_backoff_s=0.01, max_backoff_s=0.02, jitter_s=0,
                              max_elapsed_s=120)
        client, _ = make_client(server, settings=fhir_settings(retry=retry),
                                sleep=waits.wrap(asyncio.sleep), encode=serialize)
        settled = Settled(len(uids))
        consumer = spool.consumer()
        consumer.open()
        stop = asyncio.Event()
        async with client:
            task = asyncio.create_task(run_forwarder(
                consumer, FhirDelivery(client, version="r5"), R5, stop, concurrency=4, poll_interval_s=0.01,
                observers=[settled], map_ahead_bytes=2**20, retry_waits=waits))
            try:
                await asyncio.wait_for(backlog_mapped.wait(), 30)
                assert not bodies and state["refused"] >= 4
                state["up"] = True
                await asyncio.wait_for(settled.done.wait(), 30)
            finally:
                await stopped(stop, task, consumer)

    logs = run_logged(scenario)
    assert mapped_ahead(logs) == 12  # all but the four in flight, which were mapped when they started
    assert sorted(bodies) == sorted(expected.values())
    assert spool.status().pending == 0 and spool.status().failed == 0
