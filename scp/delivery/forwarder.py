"""The forwarder: take spooled SRs oldest first, map them, deliver them, settle them.

Runs in the worker process (``scp.service.worker``), never in the listener's interpreter. Each item
ends in exactly one place: delivered (``settle``), dead-lettered with its reason
(``dead_letter``), or still pending (a shutdown interrupted it, or the FHIR endpoint itself is
wrong and the queue is held: :mod:`.hold`; it is picked up again later). Delivery is idempotent
(deterministic ids), so an item delivered twice after a crash changes nothing on the server. A
Bundle sent as several transactions (``fhir.max_entries_per_request``, :mod:`.chunked`) records
each acknowledged chunk in the spool, so its next delivery resumes after them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any, Literal, Protocol

import pydicom
import structlog
from structlog.contextvars import bound_contextvars

from fhir_client import FhirClient, Outcome, SendResult
from mapping import MappingError, MappingOptions, map_sr, serialize

from ..common.files import write_atomically
from ..common.waiting import wait_or_timeout
from .chunked import DeliveryProgress, SpoolProgress, send_in_chunks
from .hold import DeliveryHold, HoldState
from .reasons import DeadLetterReason
from .versions import FhirRelease, VersionResolver
from ..spool import SpoolConsumer, SpoolItem

__all__ = ["Delivery", "DeliveryObserver", "OutboxDelivery", "FhirDelivery", "ForwarderStats", "Settlement",
           "run_forwarder", "process_item"]

log = structlog.get_logger()

DEFERRED_RETRY_S = 30.0
"""How long an item whose delivery could not even be attempted (e.g. outbox disk full) waits."""

FAULT_OF_REASON: dict[DeadLetterReason, str] = {"unmappable": "mapping", "rejected": "content",
                                                "retries_exhausted": "transient"}
"""The sidecar's ``fault``: whose fault a dead letter is (never the endpoint's: those are held)."""


class Delivery(Protocol):
    """Where Bundles go: a FHIR server, or the outbox folder.

    ``progress`` is where a delivery in several transactions records how far it got, so that
    the next delivery of the same item resumes there (:mod:`.chunked`); a target that
    delivers in one step ignores it.
    """

    async def release(self) -> FhirRelease | SendResult:
        """The FHIR release to write (``r4``/``r5``), or why it is not known yet (ENDPOINT)."""
        ...

    async def deliver(self, bundle: dict[str, Any], sop_instance_uid: str, *,
                      progress: DeliveryProgress | None = None) -> SendResult: ...


class DeliveryObserver(Protocol):
    """Told how each item was settled (:class:`scp.telemetry.metrics.WorkerMetrics`,
    :class:`scp.telemetry.audit.AuditTrail`). Implementations never raise."""

    def delivered(self, item: SpoolItem, sent: SendResult, bundle: dict[str, Any]) -> None: ...

    def dead_lettered(self, item: SpoolItem, reason: DeadLetterReason, sent: SendResult | None = None,
                      bundle: dict[str, Any] | None = None) -> None: ...

    def deferred(self, item: SpoolItem, sent: SendResult | None = None) -> None: ...


class OutboxDelivery:
    """Embedded default without a FHIR server: each Bundle as ``<SOP Instance UID>.json``.

    Written atomically and durably (temp file, fsync, rename, fsync of the directory), so a
    crash never leaves a half Bundle under the final name.
    """

    def __init__(self, directory: Path, version: str = "auto") -> None:
        self.directory = directory
        self.version: FhirRelease = "r4" if version == "r4" else "r5"  # no server to ask: auto is R5
        directory.mkdir(parents=True, exist_ok=True)

    async def release(self) -> FhirRelease:
        return self.version

    async def deliver(self, bundle: dict[str, Any], sop_instance_uid: str, *,
                      progress: DeliveryProgress | None = None) -> SendResult:
        start = time.monotonic()
        target = self.directory / f"{sop_instance_uid}.json"
        data = serialize(bundle, indent=2) + b"\n"
        write_atomically(target, data)
        return SendResult(Outcome.DELIVERED, None, None, f"written to {target}", 1, time.monotonic() - start)


class FhirDelivery:
    """Deliver with :class:`fhir_client.FhirClient` (retries, Retry-After, auth).

    With ``reference_mode="resolve"``, logical references (``type`` + ``identifier``: Patient,
    ImagingStudy, ServiceRequest) become literal ones when the server holds exactly one
    match for ``system|value``; the client caches the look-ups. Identifiers without a
    ``system`` are never looked up (see :func:`resolve_logical_references`). This happens
    before the first attempt, so every retry sends the same bytes.

    With ``max_entries_per_request``, a Bundle with more entries goes as several transactions
    in order, resuming after those ``progress`` recorded (:func:`.chunked.send_in_chunks`).
    """

    def __init__(self, client: FhirClient, reference_mode: str = "logical",
                 max_entries_per_request: int | None = None, version: str = "auto") -> None:
        self.client = client
        self.reference_mode = reference_mode
        self.max_entries_per_request = max_entries_per_request
        self.versions = VersionResolver(client, version)

    async def release(self) -> FhirRelease | SendResult:
        return await self.versions.resolve()

    async def deliver(self, bundle: dict[str, Any], sop_instance_uid: str, *,
                      progress: DeliveryProgress | None = None) -> SendResult:
        if self.reference_mode == "resolve":
            await resolve_logical_references(bundle, self.client)
        limit = self.max_entries_per_request
        if limit is not None and len(bundle.get("entry") or ()) > limit:
            return await send_in_chunks(self.client, bundle, limit, progress)
        return await self.client.send(bundle)

    async def probe(self) -> str | None:
        """The hold's probe: ``GET [base]/metadata`` with the configured auth, once. None when
        it answers a CapabilityStatement, else why not."""
        try:
            await self.client.get_metadata()
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            return f"{type(exc).__name__}: {exc}"
        return None


async def resolve_logical_references(bundle: dict[str, Any], client: FhirClient) -> None:
    """Add ``reference: Type/id`` to every logical reference the server can resolve uniquely.

    A reference whose identifier has no ``system`` (e.g. a Patient ID whose issuer is not a
    URI, kept only in ``identifier.assigner``) stays logical and is not searched for: the
    value alone could match another issuer's patient. One ``reference_left_logical`` line
    is logged per distinct such identifier in the Bundle.
    """
    resolved: dict[tuple[str, str, str], str | None] = {}
    left_logical: set[tuple[str, Any]] = set()
    for reference in _logical_references(bundle):
        identifier = reference["identifier"]
        system = identifier.get("system")
        if not isinstance(system, str) or not system:
            unresolved = (reference["type"], identifier["value"])
            if unresolved not in left_logical:
                left_logical.add(unresolved)
                log.info("reference_left_logical", resource_type=reference["type"], reason="identifier has no system")
            continue
        key = (reference["type"], system, identifier["value"])
        if key not in resolved:
            try:
                resolved[key] = await client.resolve_reference(*key)
            except Exception as exc:  # noqa: BLE001 - lookup failed: keep the logical reference
                log.warning("reference_not_resolved", resource_type=key[0], reason=f"{type(exc).__name__}: {exc}")
                resolved[key] = None
        if resolved[key] is not None:
            reference["reference"] = resolved[key]


def _logical_references(value: Any):
    if isinstance(value, dict):
        if "reference" not in value and isinstance(value.get("type"), str) and isinstance(value.get("identifier"), dict) \
                and "value" in value["identifier"]:
            yield value
            return
        for child in value.values():
            yield from _logical_references(child)
    elif isinstance(value, list):
        for child in value:
            yield from _logical_references(child)


@dataclass(slots=True)
class ForwarderStats:
    """Counters of one forwarder run (for logs, health and tests)."""

    delivered: int = 0
    failed: int = 0
    deferred: int = 0
    held: int = 0


Settlement = Literal["delivered", "dead_lettered", "deferred", "held"]
"""How :func:`process_item` left an item: done, in ``failed/``, or still pending (deferred: try
it again later; held: the endpoint is wrong, the queue waits for it)."""


async def process_item(
    item: SpoolItem,
    consumer: SpoolConsumer,
    delivery: Delivery,
    options: MappingOptions,
    stop: asyncio.Event,
    stats: ForwarderStats,
    observers: Sequence[DeliveryObserver] = (),
    hold: DeliveryHold | None = None,
) -> Settlement:
    """Map and deliver one spooled item and settle it; never raises for bad input.

    An answer that is the endpoint's fault (:attr:`Outcome.ENDPOINT`) leaves the item pending
    and is reported to ``hold`` (which may begin holding the queue); without a hold the item
    is deferred.
    """
    with bound_contextvars(sop_instance_uid=item.sop_instance_uid, spool_id=item.id):
        start = time.monotonic()
        release = await delivery.release()
        if isinstance(release, SendResult):  # the server's FHIR version is not known: nothing to map for yet
            return _endpoint_answer(consumer, item, stats, release, observers, hold)
        if release != options.fhir_version:
            options = options.model_copy(update={"fhir_version": release})
        try:
            result = map_sr(pydicom.dcmread(BytesIO(item.read())), options)
        except MappingError as exc:
            return _dead_letter(consumer, item, stats, reason="unmappable", detail=f"mapping failed: {exc}",
                                observers=observers)
        except Exception as exc:  # noqa: BLE001 - the per-item boundary: dead-letter, go on
            return _dead_letter(consumer, item, stats, reason="unmappable",
                                detail=f"unreadable SR: {type(exc).__name__}: {str(exc)[:300]}", observers=observers)
        for note in result.skipped:
            log.info("mapping_item_skipped", content_path=note.path, concept=note.concept, reason=note.reason)
        try:
            sent = await delivery.deliver(result.bundle, item.sop_instance_uid,
                                          progress=SpoolProgress(consumer, item))
        except Exception as exc:  # noqa: BLE001 - e.g. outbox disk full: keep it pending
            log.error("bundle_deferred", reason=f"{type(exc).__name__}: {exc}")
            return _defer(item, stats, None, observers)
        duration_ms = round((time.monotonic() - start) * 1000, 1)
        if sent.outcome in (Outcome.DELIVERED, Outcome.REJECTED) and hold is not None:
            hold.settled(item.id, answered=True)  # the server answered about the content: the endpoint works
        if sent.outcome is Outcome.DELIVERED:
            consumer.settle(item)
            stats.delivered += 1
            for observer in observers:
                observer.delivered(item, sent, result.bundle)
            log.info("bundle_delivered", attempts=sent.attempts, status_code=sent.status_code,
                     resources=len(result.bundle["entry"]), duration_ms=duration_ms)
            return "delivered"
        if sent.outcome is Outcome.REJECTED:
            return _dead_letter(consumer, item, stats, reason="rejected", sent=sent, bundle=result.bundle,
                                detail=f"rejected by the FHIR server: {sent.diagnostics}", observers=observers)
        if sent.outcome is Outcome.ENDPOINT:
            return _endpoint_answer(consumer, item, stats, sent, observers, hold, result.bundle)
        if stop.is_set():
            log.info("bundle_deferred", attempts=sent.attempts, reason="shutdown")
            return _defer(item, stats, sent, observers)  # interrupted by shutdown: pending for the next start
        return _dead_letter(consumer, item, stats, reason="retries_exhausted", sent=sent, bundle=result.bundle,
                            detail=f"retries exhausted: {sent.diagnostics}", observers=observers)


def _endpoint_answer(consumer: SpoolConsumer, item: SpoolItem, stats: ForwarderStats, sent: SendResult,
                     observers: Sequence[DeliveryObserver], hold: DeliveryHold | None,
                     bundle: dict[str, Any] | None = None) -> Settlement:
    """The endpoint itself is wrong (``sent`` is ENDPOINT): hold the queue, or defer without a hold.

    ``bundle`` is None when nothing was sent (the server's FHIR version is not known yet); only an
    SR that was sent can be the one the hold names as refused for itself, and be dead-lettered.
    """
    if hold is None:
        log.warning("bundle_deferred", attempts=sent.attempts, status_code=sent.status_code, reason=sent.diagnostics)
        return _defer(item, stats, sent, observers)
    if hold.endpoint_failed(item.id, sent) and bundle is not None:
        return _dead_letter(consumer, item, stats, reason="rejected", sent=sent, bundle=bundle,
                            detail=("rejected by the FHIR server for this SR only (refused again after the "
                                    f"server accepted other SRs): {sent.diagnostics}"), observers=observers)
    stats.held += 1
    log.debug("bundle_held", attempts=sent.attempts, status_code=sent.status_code, problem=str(sent.endpoint_problem))
    return "held"


def _defer(item: SpoolItem, stats: ForwarderStats, sent: SendResult | None,
           observers: Sequence[DeliveryObserver]) -> Settlement:
    stats.deferred += 1
    for observer in observers:
        observer.deferred(item, sent)
    return "deferred"


def _dead_letter(consumer: SpoolConsumer, item: SpoolItem, stats: ForwarderStats, *, reason: DeadLetterReason,
                 detail: str, sent: SendResult | None = None, bundle: dict[str, Any] | None = None,
                 observers: Sequence[DeliveryObserver] = ()) -> Settlement:
    """Move ``item`` to ``failed/`` for ``reason``; ``detail`` is the sidecar's human-readable reason."""
    sidecar = {
        "reason": detail,
        "fault": FAULT_OF_REASON[reason],
        "sop_instance_uid": item.sop_instance_uid,
        "sop_class_uid": item.sop_class_uid,
        "calling_ae": item.calling_ae,
        "received_at": item.received_at,
        "failed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "http_status": sent.status_code if sent else None,
        "operation_outcome": sent.operation_outcome if sent else None,
        "attempts": sent.attempts if sent else 0,
    }
    consumer.dead_letter(item, sidecar)
    stats.failed += 1
    for observer in observers:
        observer.dead_lettered(item, reason, sent, bundle)
    log.warning("bundle_rejected", reason=detail, status_code=sidecar["http_status"], attempts=sidecar["attempts"])
    return "dead_lettered"


async def run_forwarder(
    consumer: SpoolConsumer,
    delivery: Delivery,
    options: MappingOptions,
    stop: asyncio.Event,
    *,
    concurrency: int = 4,
    poll_interval_s: float = 0.2,
    batch_size: int = 32,
    on_idle: Callable[[], Awaitable[None]] | None = None,
    on_tick: Callable[[], None] | None = None,
    observers: Sequence[DeliveryObserver] = (),
    hold: DeliveryHold | None = None,
) -> ForwarderStats:
    """Forward until ``stop`` is set; in-flight items finish (or stay pending) before return.

    ``on_tick`` runs every ``poll_interval_s`` in a task of its own: the worker's heartbeat.
    With ``hold`` (a FHIR target), an answer that is the endpoint's fault holds the queue: no
    item starts, the hold's probe runs when due, then one trial item, then everything again.
    """
    stats = ForwarderStats()
    slots = asyncio.Semaphore(concurrency)
    in_flight: dict[str, asyncio.Task[None]] = {}
    not_before: dict[str, float] = {}  # deferred items wait before their next try

    async def run(item: SpoolItem) -> None:
        settled: Settlement | None = None
        try:
            settled = await process_item(item, consumer, delivery, options, stop, stats, observers, hold)
        finally:
            if settled == "deferred":
                not_before[item.id] = time.monotonic() + DEFERRED_RETRY_S
            else:
                not_before.pop(item.id, None)
            if hold is not None and settled != "held":
                hold.settled(item.id, answered=False)  # frees a trial slot; answers were reported already
            in_flight.pop(item.id, None)
            slots.release()

    ticker = asyncio.create_task(_tick(on_tick, stop, poll_interval_s)) if on_tick is not None else None
    while not stop.is_set():
        consumer.ingest_requeued()
        if hold is not None and hold.state is HoldState.HELD:
            await _probe_when_due(hold, stop, poll_interval_s)
            continue
        now = time.monotonic()
        fresh = [i for i in consumer.pending(batch_size + len(in_flight) + len(not_before))
                 if i.id not in in_flight and not_before.get(i.id, 0.0) <= now]
        admitted = fresh[:batch_size] if hold is None else hold.admit(fresh[:batch_size], key=lambda i: i.id)
        for item in admitted:
            await slots.acquire()
            if stop.is_set() or (hold is not None and not hold.may_start()):
                slots.release()
                break
            if hold is not None:
                hold.started(item.id)
            in_flight[item.id] = asyncio.create_task(run(item))
        if hold is not None and not fresh and not in_flight:
            hold.nothing_to_try()
        if not admitted:
            if not fresh and on_idle is not None and not in_flight:
                await on_idle()
            await wait_or_timeout(stop, poll_interval_s)
        elif len(in_flight) >= concurrency:
            await asyncio.wait(list(in_flight.values()), return_when=asyncio.FIRST_COMPLETED)
    if in_flight:
        await asyncio.gather(*in_flight.values(), return_exceptions=True)
    if ticker is not None:
        await ticker
    return stats


async def _probe_when_due(hold: DeliveryHold, stop: asyncio.Event, poll_interval_s: float) -> None:
    """Wait for the hold's next probe (at most ``poll_interval_s``, so re-queued items and
    answers to items in flight are still seen), then probe; a stop cuts either short."""
    wait_s = hold.seconds_to_probe()
    if wait_s > 0:
        await wait_or_timeout(stop, min(wait_s, poll_interval_s))
        return
    probing = asyncio.ensure_future(hold.probe())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({probing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (probing, stopping):
            task.cancel()
        await asyncio.gather(probing, stopping, return_exceptions=True)


async def _tick(on_tick: Callable[[], None], stop: asyncio.Event, interval_s: float) -> None:
    """Call ``on_tick`` every ``interval_s`` while the event loop runs (the worker's heartbeat).

    A task of its own: the forwarding loop may wait long on deliveries (a FHIR outage with
    every slot retrying) without being stuck; only a blocked event loop stops the beat.
    """
    while not stop.is_set():
        on_tick()
        await wait_or_timeout(stop, interval_s)
