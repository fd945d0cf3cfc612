"""The forwarder: take spooled SRs oldest first, map them, deliver them, settle them.

Runs in the worker process (``scp.service.worker``), never in the listener's interpreter. Each item
ends in exactly one place: delivered (``settle``), dead-lettered with its reason
(``dead_letter``), or still pending (a shutdown interrupted it, or the FHIR endpoint itself is
wrong and the queue is held: :mod:`.hold`; it is picked up again later). Delivery is idempotent
(deterministic ids), so an item delivered twice after a crash changes nothing on the server. A
Bundle sent as several transactions (``fhir.max_entries_per_request``, :mod:`.chunked`) records
each acknowledged chunk in the spool, so its next delivery resumes after them.

An SR that is none of the documents sr2fhir maps (:class:`mapping.UnsupportedTemplate`) is
acknowledged, counted and dropped (``ignored``) with ``mapping.unmapped: ignore`` (the
default), dead-lettered with ``dead-letter``. An amended or corrected SR retires the resources
of the SRs it replaces once it is delivered (:mod:`.supersession`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from typing import Any, Literal, Protocol

import pydicom
import structlog
from structlog.contextvars import bound_contextvars

from fhir_client import Outcome, SendResult
from mapping import MappingError, MappingOptions, UnsupportedTemplate, map_sr

from ..common.waiting import wait_or_timeout
from .chunked import SpoolProgress
from .hold import DeliveryHold, HoldState
from .prepared import PreparedBundles, RetryWaits
from .reasons import DeadLetterReason
from .supersession import Supersessions, delivered_report
from .targets import Delivery, FhirDelivery, OutboxDelivery, resolve_logical_references
from ..spool import SpoolConsumer, SpoolItem

__all__ = ["Delivery", "DeliveryObserver", "OutboxDelivery", "FhirDelivery", "ForwarderStats", "Settlement",
           "UnmappedPolicy", "run_forwarder", "process_item", "resolve_logical_references", "template_label"]

log = structlog.get_logger()

MAP_AHEAD_LOOK = 64
"""Mapping ahead looks at this many pending items beyond those in flight and mapped already."""

DEFERRED_RETRY_S = 30.0
"""How long an item whose delivery could not even be attempted (e.g. outbox disk full) waits."""

UnmappedPolicy = Literal["ignore", "dead-letter"]
"""``mapping.unmapped``: what happens to an SR that is none of the documents sr2fhir maps."""

FAULT_OF_REASON: dict[DeadLetterReason, str] = {"unmappable": "mapping", "rejected": "content",
                                                "retries_exhausted": "transient"}
"""The sidecar's ``fault``: whose fault a dead letter is (never the endpoint's: those are held)."""


class DeliveryObserver(Protocol):
    """Told how each item was settled (:class:`scp.telemetry.metrics.WorkerMetrics`,
    :class:`scp.telemetry.audit.AuditTrail`). Implementations never raise."""

    def delivered(self, item: SpoolItem, sent: SendResult, bundle: dict[str, Any]) -> None: ...

    def dead_lettered(self, item: SpoolItem, reason: DeadLetterReason, sent: SendResult | None = None,
                      bundle: dict[str, Any] | None = None) -> None: ...

    def deferred(self, item: SpoolItem, sent: SendResult | None = None) -> None: ...

    def ignored(self, item: SpoolItem, template: str) -> None:
        """An SR none of whose templates sr2fhir maps was dropped (``mapping.unmapped: ignore``);
        ``template`` is :func:`template_label`'s."""

    def superseded(self, predecessor_uid: str, successor_uid: str, resources: int, how: str,
                   sent: SendResult | None = None) -> None:
        """``resources`` of the report ``predecessor_uid`` were retired (``entered-in-error``)
        because ``successor_uid`` replaces it; ``how``: ``after_successor`` (a transaction of
        their own, answered by ``sent``) or ``on_arrival`` (the predecessor came second)."""


@dataclass(slots=True)
class ForwarderStats:
    """Counters of one forwarder run (for logs, health and tests)."""

    delivered: int = 0
    failed: int = 0
    deferred: int = 0
    held: int = 0
    ignored: int = 0


Settlement = Literal["delivered", "dead_lettered", "deferred", "held", "ignored"]
"""How :func:`process_item` left an item: done, in ``failed/``, or still pending (deferred: try
it again later; held: the endpoint is wrong, the queue waits for it), or dropped (ignored: an
SR sr2fhir does not map, ``mapping.unmapped: ignore``)."""

MAX_TEMPLATE_LABEL = 8
"""A template label longer than this is "other" (metric labels stay few and short)."""


def template_label(template: str | None) -> str:
    """The ``template`` label of ``sr2fhir_unmapped_total``: the Template Identifier when it is
    a short number (``"2000"``), ``"none"`` when the SR names none, else ``"other"`` (a sender
    must not be able to make labels up)."""
    if not template:
        return "none"
    return template if template.isdigit() and len(template) <= MAX_TEMPLATE_LABEL else "other"


async def process_item(
    item: SpoolItem,
    consumer: SpoolConsumer,
    delivery: Delivery,
    options: MappingOptions,
    stop: asyncio.Event,
    stats: ForwarderStats,
    observers: Sequence[DeliveryObserver] = (),
    hold: DeliveryHold | None = None,
    *,
    unmapped: UnmappedPolicy = "ignore",
    supersessions: Supersessions | None = None,
    prepared: PreparedBundles | None = None,
) -> Settlement:
    """Map and deliver one spooled item and settle it; never raises for bad input.

    An answer that is the endpoint's fault (:attr:`Outcome.ENDPOINT`) leaves the item pending
    and is reported to ``hold`` (which may begin holding the queue); without a hold the item
    is deferred. ``unmapped``: an SR that is none of the documents sr2fhir maps is dropped
    (``ignore``) or dead-lettered. ``supersessions`` (one is made when not given) retires
    what the item replaces once it is delivered, and the item's own resources when a
    delivered SR replaces it. ``prepared``: where a result mapped ahead of time may wait.
    """
    if supersessions is None:
        supersessions = Supersessions(consumer, delivery, stop, observers=observers)
    with bound_contextvars(sop_instance_uid=item.sop_instance_uid, spool_id=item.id):
        start = time.monotonic()
        release = await delivery.release()
        if isinstance(release, SendResult):  # the server's FHIR version is not known: nothing to map for yet
            return _endpoint_answer(consumer, item, stats, release, observers, hold)
        if release != options.fhir_version:
            options = options.model_copy(update={"fhir_version": release})
        try:
            result = prepared.take(item.id, release) if prepared is not None else None
            if result is None:
                result = map_sr(pydicom.dcmread(BytesIO(item.read())), options)
        except UnsupportedTemplate as exc:
            if unmapped == "ignore":
                return _ignore(consumer, item, stats, exc, observers)
            return _dead_letter(consumer, item, stats, reason="unmappable", detail=f"mapping failed: {exc}",
                                observers=observers)
        except MappingError as exc:
            return _dead_letter(consumer, item, stats, reason="unmappable", detail=f"mapping failed: {exc}",
                                observers=observers)
        except Exception as exc:  # noqa: BLE001 - the per-item boundary: dead-letter, go on
            return _dead_letter(consumer, item, stats, reason="unmappable",
                                detail=f"unreadable SR: {type(exc).__name__}: {str(exc)[:300]}", observers=observers)
        for note in result.skipped:
            log.info("mapping_item_skipped", content_path=note.path, concept=note.concept, reason=note.reason)
        bundle, retired_for, retired = supersessions.retire_on_arrival(item.sop_instance_uid, result.bundle)
        try:
            sent = await delivery.deliver(bundle, item.sop_instance_uid, progress=SpoolProgress(consumer, item))
        except Exception as exc:  # noqa: BLE001 - e.g. outbox disk full: keep it pending
            log.error("bundle_deferred", reason=f"{type(exc).__name__}: {exc}")
            return _defer(item, stats, None, observers)
        duration_ms = round((time.monotonic() - start) * 1000, 1)
        if sent.outcome in (Outcome.DELIVERED, Outcome.REJECTED) and hold is not None:
            hold.settled(item.id, answered=True)  # the server answered about the content: the endpoint works
        if sent.outcome is Outcome.DELIVERED:
            # The registry row goes in the commit that removes the item: a successor is never
            # settled without the supersessions it starts on record (carried out after a crash).
            started = consumer.settle(item, report=delivered_report(item.sop_instance_uid, bundle,
                                                                     result.predecessors, retired_for))
            stats.delivered += 1
            for observer in observers:
                observer.delivered(item, sent, bundle)
            log.info("bundle_delivered", attempts=sent.attempts, status_code=sent.status_code,
                     resources=len(bundle["entry"]), duration_ms=duration_ms,
                     **({"predecessor_uids": list(result.predecessors)} if result.predecessors else {}))
            if retired_for:
                supersessions.superseded_on_arrival(item.sop_instance_uid, retired_for, retired)
            await supersessions.carry_out(started)
            return "delivered"
        if sent.outcome is Outcome.REJECTED:
            return _dead_letter(consumer, item, stats, reason="rejected", sent=sent, bundle=bundle,
                                detail=f"rejected by the FHIR server: {sent.diagnostics}", observers=observers)
        if sent.outcome is Outcome.ENDPOINT:
            return _endpoint_answer(consumer, item, stats, sent, observers, hold, bundle)
        if stop.is_set():
            log.info("bundle_deferred", attempts=sent.attempts, reason="shutdown")
            return _defer(item, stats, sent, observers)  # interrupted by shutdown: pending for the next start
        return _dead_letter(consumer, item, stats, reason="retries_exhausted", sent=sent, bundle=bundle,
                            detail=f"retries exhausted: {sent.diagnostics}", observers=observers)


def _ignore(consumer: SpoolConsumer, item: SpoolItem, stats: ForwarderStats, exc: UnsupportedTemplate,
            observers: Sequence[DeliveryObserver]) -> Settlement:
    """Drop an SR that is none of the documents sr2fhir maps: one log line, a count, no dead letter.

    The title is a coded concept (``(DCM,113701) 'X-Ray Radiation Dose Report'``), not patient data.
    """
    consumer.settle(item, "ignored")
    stats.ignored += 1
    label = template_label(exc.template)
    for observer in observers:
        observer.ignored(item, label)
    log.info("sr_not_mapped", template=exc.template, title=exc.title, sop_class_uid=item.sop_class_uid,
             reason="none of the documents sr2fhir maps (mapping.unmapped: ignore)")
    return "ignored"


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
    unmapped: UnmappedPolicy = "ignore",
    remember_delivered_s: float = 365 * 86400.0,
    map_ahead_bytes: int = 0,
    retry_waits: RetryWaits | None = None,
) -> ForwarderStats:
    """Forward until ``stop`` is set; in-flight items finish (or stay pending) before return.

    Between looks at the spool it carries out supersessions left ``pending`` (a crash between
    a successor's delivery and the retirement of its predecessor, a retirement not sent yet)
    and prunes the registry of reports delivered more than ``remember_delivered_s`` ago.

    ``on_tick`` runs every ``poll_interval_s`` in a task of its own: the worker's heartbeat.
    With ``hold`` (a FHIR target), an answer that is the endpoint's fault holds the queue: no
    item starts, the hold's probe runs when due, then one trial item, then everything again.

    While the queue is held, or every item in flight waits to retry (``retry_waits`` counts
    the FHIR client's waits), the next pending items are mapped ahead, up to
    ``map_ahead_bytes`` of Bundles (:mod:`.prepared`), so the drain after an outage mostly sends.
    """
    stats = ForwarderStats()
    slots = asyncio.Semaphore(concurrency)
    in_flight: dict[str, asyncio.Task[None]] = {}
    not_before: dict[str, float] = {}  # deferred items wait before their next try
    supersessions = Supersessions(consumer, delivery, stop, observers=observers, remember_s=remember_delivered_s)
    prepared = PreparedBundles(options, map_ahead_bytes) if map_ahead_bytes > 0 else None

    def map_ahead() -> int:
        """Map a slice of the items after those in flight (see :mod:`.prepared`); how many."""
        if prepared is None or prepared.full:
            return 0
        release = delivery.known_release() or prepared.default_release
        waiting = consumer.pending(len(prepared) + len(in_flight) + MAP_AHEAD_LOOK)
        return prepared.prepare([item for item in waiting if item.id not in in_flight], release)

    async def wait_for_a_slot() -> None:
        """Until an item in flight ends; while every one of them waits to retry (the server is
        down or throttles), map the next items ahead instead of idling."""
        while in_flight and not stop.is_set():
            if retry_waits is not None and retry_waits.waiting >= len(in_flight) and map_ahead():
                if any(task.done() for task in in_flight.values()):
                    return
                await asyncio.sleep(0)  # let the tasks and the heartbeat run between slices
                continue
            done, _ = await asyncio.wait(list(in_flight.values()), timeout=poll_interval_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if done:
                return

    async def run(item: SpoolItem) -> None:
        settled: Settlement | None = None
        try:
            settled = await process_item(item, consumer, delivery, options, stop, stats, observers, hold,
                                         unmapped=unmapped, supersessions=supersessions, prepared=prepared)
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
    housekeeping: asyncio.Task[None] | None = None
    while not stop.is_set():
        consumer.ingest_requeued()
        if hold is not None and hold.state is HoldState.HELD:
            if hold.seconds_to_probe() > 0 and map_ahead():
                await asyncio.sleep(0)  # let the heartbeat and the signal handlers run between slices
                continue
            await _probe_when_due(hold, stop, poll_interval_s)
            continue
        now = time.monotonic()
        fresh = [i for i in consumer.pending(batch_size + len(in_flight) + len(not_before))
                 if i.id not in in_flight and not_before.get(i.id, 0.0) <= now]
        admitted = fresh[:batch_size] if hold is None else hold.admit(fresh[:batch_size], key=lambda i: i.id)
        for item in admitted:
            if slots.locked():
                await wait_for_a_slot()
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
            if not fresh and not in_flight:
                if housekeeping is None or housekeeping.done():  # in a task: a send may retry for long
                    housekeeping = asyncio.create_task(supersessions.housekeeping())
                if on_idle is not None:
                    await on_idle()
            await wait_or_timeout(stop, poll_interval_s)
        elif len(in_flight) >= concurrency:
            await wait_for_a_slot()
    if in_flight:
        await asyncio.gather(*in_flight.values(), return_exceptions=True)
    if housekeeping is not None:
        await asyncio.gather(housekeeping, return_exceptions=True)
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
