"""Amended and corrected reports: retire the resources of the SRs a delivered SR replaces.

An SR whose Predecessor Documents Sequence (0040,A360) names earlier SRs replaces them. Once
its Bundle is accepted, the predecessors' Observations and ImagingSelections (R4: the ``Basic``
that carries an ImagingSelection) that it does not carry itself are written again with status
``entered-in-error``, so that no FHIR client sees both versions as current. Why
``entered-in-error`` and not a DELETE: it is what FHIR defines for "this should not have been
current", it keeps the resources (and their history) for audit and provenance, it is undone by
writing the report again, and references from other resources (a DiagnosticReport, a later
comparison) keep resolving. Shared resources (Devices, Practitioners, BodyStructures keyed on
their content) are never touched: other reports point at them.

How (see docs/RELIABILITY.md, "Amended and corrected reports"):

- every delivered SR is recorded in ``spool.db`` with the entries a successor may have to
  rewrite (:func:`retirable_entries`), in the commit that settles its item
  (:mod:`scp.spool.registry`);
- a successor records one supersession per predecessor in that same commit: ``pending`` when
  the predecessor was delivered (carried out right after, and after a restart if the worker
  died before), ``awaiting`` when not;
- a predecessor that arrives after its successor (or is sent again) goes out with those
  resources already retired (:func:`retire_in_bundle`): the end state is the same.

The pure functions here work on transaction Bundles of every write mode; :class:`Supersessions`
does the I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import simplejson
import structlog
from structlog.contextvars import bound_contextvars

from fhir_client import Outcome, SendResult
from mapping import serialize
from mapping.bundle import URI_SYSTEM, identifier_query
from mapping.r4.imaging_selection import is_selection_basic

from ..spool import DeliveredReport, SpoolConsumer, SpoolError, Supersession

__all__ = [
    "ENTERED_IN_ERROR",
    "SupersessionObserver",
    "Supersessions",
    "carried_keys",
    "delivered_report",
    "entry_key",
    "retirable_entries",
    "retire_in_bundle",
    "retirement_bundle",
]

log = structlog.get_logger()

ENTERED_IN_ERROR = "entered-in-error"
_STATUS_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ImagingSelection.status"
RETRY_AFTER_S = 30.0
"""How long a supersession that could not be sent (no final answer) waits for its next try."""
PRUNE_INTERVAL_S = 3600.0
"""How often the registry is pruned of reports older than ``spool.remember_delivered_days``."""
PRUNE_BATCH = 500
"""Rows deleted per prune transaction (bounded: the listener waits for the write lock)."""


def _is_report_resource(resource: dict[str, Any]) -> bool:
    """An Observation or ImagingSelection (R4: its ``Basic``): what one report owns."""
    kind = resource.get("resourceType")
    return kind in ("Observation", "ImagingSelection") or (kind == "Basic" and is_selection_basic(resource))


def entry_key(entry: dict[str, Any]) -> str:
    """``Type/<deterministic id>`` of an entry in any write mode (the conditional modes key on
    the ``urn:ietf:rfc:3986`` identifier ``urn:uuid:<id>``), else its request URL."""
    resource = entry.get("resource") or {}
    kind = resource.get("resourceType", "")
    if isinstance(resource.get("id"), str):
        return f"{kind}/{resource['id']}"
    for identifier in resource.get("identifier") or ():
        value = identifier.get("value") if isinstance(identifier, dict) else None
        if identifier.get("system") == URI_SYSTEM and isinstance(value, str) and value.startswith("urn:uuid:"):
            return f"{kind}/{value.removeprefix('urn:uuid:')}"
    request = entry.get("request") or {}
    return f"{kind}/{request.get('ifNoneExist') or request.get('url', '')}"


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for child in value.values():
            yield from _strings(child)
    elif isinstance(value, list):
        for child in value:
            yield from _strings(child)


def retirable_entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries of a delivered Bundle that a successor may have to rewrite: its
    Observations and ImagingSelections, plus (conditional write modes, where references are
    the entries' ``urn:uuid:`` fullUrls) every entry they reference, so that the rewrite is a
    transaction whose references resolve. Bundle order (referenced entries first)."""
    entries = [entry for entry in bundle.get("entry") or () if isinstance(entry, dict)]
    by_url = {entry.get("fullUrl"): index for index, entry in enumerate(entries) if entry.get("fullUrl")}
    wanted = {index for index, entry in enumerate(entries) if _is_report_resource(entry.get("resource") or {})}
    todo = list(wanted)
    while todo:
        for text in _strings(entries[todo.pop()].get("resource")):
            index = by_url.get(text)
            if index is not None and index not in wanted:
                wanted.add(index)
                todo.append(index)
    return [entries[index] for index in sorted(wanted)]


def carried_keys(bundle: dict[str, Any]) -> list[str]:
    """The keys (:func:`entry_key`) of the report resources a Bundle writes itself."""
    return sorted({entry_key(e) for e in bundle.get("entry") or () if _is_report_resource(e.get("resource") or {})})


def _retired(resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` with status ``entered-in-error`` (R4 Basic: its status extension)."""
    if resource.get("resourceType") != "Basic":
        return {**resource, "status": ENTERED_IN_ERROR}
    extensions = [ext for ext in resource.get("extension") or () if ext.get("url") != _STATUS_EXTENSION]
    return {**resource, "extension": [{"url": _STATUS_EXTENSION, "valueCode": ENTERED_IN_ERROR}, *extensions]}


def _updating_request(entry: dict[str, Any]) -> dict[str, Any]:
    """The request that replaces the entry's resource on the server: its own PUT, or for a
    conditional create (which would not change an existing resource) a conditional update on
    the identifier it was created under."""
    request = entry.get("request") or {}
    if request.get("method") != "POST":
        return dict(request)
    resource = entry["resource"]
    key = str(request.get("ifNoneExist", "")).removeprefix("identifier=")
    for identifier in resource.get("identifier") or ():
        if f"{identifier.get('system')}|{identifier.get('value')}" == key:
            return {"method": "PUT", "url": f"{resource['resourceType']}?{identifier_query(identifier)}"}
    return dict(request)  # no key to update on: written as before (cannot happen for mapped resources)


def retire_in_bundle(bundle: dict[str, Any], carried: set[str]) -> tuple[dict[str, Any], int]:
    """``bundle`` (a predecessor arriving after its successor) with its report resources
    that are not in ``carried`` retired; returns it and how many. Conditional creates of
    retired resources become conditional updates, so that a copy already on the server is
    retired too. The request URLs are otherwise unchanged."""
    entries, retired = [], 0
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") or {}
        if _is_report_resource(resource) and entry_key(entry) not in carried:
            entry = {**entry, "resource": _retired(resource), "request": _updating_request(entry)}
            retired += 1
        entries.append(entry)
    return {**bundle, "entry": entries}, retired


def retirement_bundle(entries: Sequence[dict[str, Any]], carried: set[str]) -> tuple[dict[str, Any], int]:
    """The transaction that retires a delivered predecessor: its recorded entries with the
    report resources not in ``carried`` set to ``entered-in-error``. Those ``carried`` are
    the successor's now: left out (``PUT``) or only created if missing (conditional modes,
    where other entries may reference them). Returns the Bundle and how many it retires."""
    out, retired = [], 0
    for entry in entries:
        resource = entry.get("resource") or {}
        if _is_report_resource(resource) and entry_key(entry) in carried:
            request = entry.get("request") or {}
            if "?" not in str(request.get("url", "")) and request.get("method") == "PUT":
                continue
            identifier = next((i for i in resource.get("identifier") or () if i.get("system") == URI_SYSTEM), None)
            if identifier is None:
                continue
            entry = {**entry, "request": {"method": "POST", "url": resource["resourceType"],
                                          "ifNoneExist": f"identifier={identifier['system']}|{identifier['value']}"}}
        elif _is_report_resource(resource):
            entry = {**entry, "resource": _retired(resource), "request": _updating_request(entry)}
            retired += 1
        out.append(entry)
    return {"resourceType": "Bundle", "type": "transaction", "entry": out}, retired


def delivered_report(sop_instance_uid: str, bundle: dict[str, Any], predecessors: Sequence[str],
                     retired_for: Sequence[str] = ()) -> DeliveredReport:
    """What the registry records for a delivered Bundle (the entries as sent)."""
    return DeliveredReport(
        sop_instance_uid=sop_instance_uid,
        entries=serialize({"entry": retirable_entries(bundle)}),
        delivered_us=time.time_ns() // 1000,
        predecessors=tuple(predecessors),
        carried=simplejson.dumps(carried_keys(bundle)).encode(),
        retired_for=tuple(retired_for),
    )


def _carried_union(supersessions: Iterable[Supersession]) -> set[str]:
    keys: set[str] = set()
    for supersession in supersessions:
        keys.update(simplejson.loads(supersession.carried))
    return keys


class _Delivery(Protocol):
    async def deliver(self, bundle: dict[str, Any], sop_instance_uid: str, *, progress: Any = None) -> SendResult: ...


class SupersessionObserver(Protocol):
    """Told when a predecessor's resources were retired (metrics, audit); never raises."""

    def superseded(self, predecessor_uid: str, successor_uid: str, resources: int, how: str,
                   sent: SendResult | None = None) -> None: ...


class Supersessions:
    """Carries out recorded supersessions with a delivery target; one per forwarder.

    :meth:`retire_on_arrival` before a Bundle is sent, :meth:`carry_out` after a successor
    was settled, :meth:`housekeeping` from the forwarder's loop (what a crash left
    ``pending``, supersessions whose sending failed, pruning the registry).
    """

    def __init__(self, consumer: SpoolConsumer, delivery: _Delivery, stop: asyncio.Event, *,
                 observers: Sequence[SupersessionObserver] = (), remember_s: float = 365 * 86400.0) -> None:
        self.consumer = consumer
        self.delivery = delivery
        self.stop = stop
        self.observers = observers
        self.remember_s = remember_s
        self._in_flight: set[tuple[str, str]] = set()
        self._next_sweep = 0.0
        self._next_prune = 0.0

    def retire_on_arrival(self, sop_instance_uid: str, bundle: dict[str, Any]
                          ) -> tuple[dict[str, Any], list[str], int]:
        """``bundle`` with its resources retired if a delivered SR replaces it; returns the
        Bundle to send, the successors whose supersession it carries out, and how many
        resources it retires."""
        try:
            successors = self.consumer.supersessions_of(sop_instance_uid)
        except SpoolError as exc:  # sent as it is; the supersession stays recorded and is carried out later
            log.error("supersession_lookup_failed", error=str(exc))
            return bundle, [], 0
        if not successors:
            return bundle, [], 0
        retired_bundle, retired = retire_in_bundle(bundle, _carried_union(successors))
        names = [s.successor_uid for s in successors]
        log.info("report_superseded_on_arrival", predecessor_uid=sop_instance_uid, successor_uids=names,
                 resources_retired=retired)
        return retired_bundle, names, retired

    def superseded_on_arrival(self, sop_instance_uid: str, successors: Sequence[str], resources: int) -> None:
        """The Bundle :meth:`retire_on_arrival` made was delivered: tell the observers."""
        for successor in successors:
            log.info("report_superseded", predecessor_uid=sop_instance_uid, successor_uid=successor,
                     resources_retired=resources, how="on_arrival")
            for observer in self.observers:
                _notify(observer, sop_instance_uid, successor, resources, "on_arrival", None)

    async def carry_out(self, supersessions: Sequence[Supersession]) -> None:
        """Retire the predecessors of the just settled successor (its ``pending`` rows);
        ``awaiting`` ones wait for their predecessor, logged once here."""
        for supersession in supersessions:
            if supersession.state == "awaiting":
                log.info("report_predecessor_unknown", predecessor_uid=supersession.predecessor_uid,
                         successor_uid=supersession.successor_uid,
                         reason="never delivered here, or forgotten (spool.remember_delivered_days); "
                                "retired if it arrives later")
        predecessors = [s.predecessor_uid for s in supersessions if s.state == "pending"]
        if predecessors:
            await self._run(self._pending(predecessors))

    async def housekeeping(self) -> None:
        """Carry out ``pending`` supersessions (left by a crash, or not sent before) every
        :data:`RETRY_AFTER_S`, and prune the registry every :data:`PRUNE_INTERVAL_S`."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + RETRY_AFTER_S
            await self._run(self._pending(None))
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_INTERVAL_S
            self.prune()

    def prune(self) -> int:
        """Forget reports delivered more than ``remember_s`` ago, in bounded transactions."""
        before_us = int((time.time() - self.remember_s) * 1_000_000)
        removed = 0
        try:
            while True:
                step = self.consumer.forget_delivered(before_us, PRUNE_BATCH)
                removed += step
                if step < PRUNE_BATCH:
                    break
        except SpoolError as exc:
            log.warning("registry_prune_failed", error=str(exc))
        if removed:
            log.info("registry_pruned", rows=removed)
        return removed

    def _pending(self, predecessors: list[str] | None) -> list[Supersession]:
        try:
            return self.consumer.pending_supersessions(64, predecessors)
        except SpoolError as exc:
            log.error("supersession_lookup_failed", error=str(exc))
            return []

    async def _run(self, supersessions: Sequence[Supersession]) -> None:
        for supersession in supersessions:
            if self.stop.is_set():
                return
            key = (supersession.predecessor_uid, supersession.successor_uid)
            if key in self._in_flight:
                continue
            self._in_flight.add(key)
            try:
                with bound_contextvars(sop_instance_uid=supersession.successor_uid):
                    await self._retire(supersession)
            except Exception:  # noqa: BLE001 - stays pending, tried again; the forwarder goes on
                log.exception("report_supersession_deferred", predecessor_uid=supersession.predecessor_uid,
                              successor_uid=supersession.successor_uid)
            finally:
                self._in_flight.discard(key)

    async def _retire(self, supersession: Supersession) -> None:
        assert supersession.entries is not None
        entries = simplejson.loads(supersession.entries, use_decimal=True)["entry"]
        # Every successor that carries some of them keeps them (normally none: ids are per report).
        carried = _carried_union(self.consumer.supersessions_of(supersession.predecessor_uid))
        bundle, retired = retirement_bundle(entries, carried)
        name = f"{supersession.successor_uid}.supersedes.{supersession.predecessor_uid}"
        try:
            sent = await self.delivery.deliver(bundle, name) if retired else None
        except Exception as exc:  # noqa: BLE001 - e.g. outbox disk full: stays pending
            log.error("report_supersession_deferred", predecessor_uid=supersession.predecessor_uid,
                      reason=f"{type(exc).__name__}: {exc}")
            return
        if sent is not None and sent.outcome is Outcome.REJECTED:
            self._settle(supersession, "failed")
            log.error("report_supersession_failed", predecessor_uid=supersession.predecessor_uid,
                      successor_uid=supersession.successor_uid, status_code=sent.status_code,
                      reason=f"rejected by the FHIR server: {sent.diagnostics}")
            return
        if sent is not None and sent.outcome is not Outcome.DELIVERED:
            log.warning("report_supersession_deferred", predecessor_uid=supersession.predecessor_uid,
                        successor_uid=supersession.successor_uid, status_code=sent.status_code,
                        reason=sent.diagnostics)
            return  # pending: tried again by housekeeping
        self._settle(supersession, "done")
        log.info("report_superseded", predecessor_uid=supersession.predecessor_uid,
                 successor_uid=supersession.successor_uid, resources_retired=retired, how="after_successor",
                 attempts=sent.attempts if sent else 0)
        for observer in self.observers:
            _notify(observer, supersession.predecessor_uid, supersession.successor_uid, retired, "after_successor",
                    sent)

    def _settle(self, supersession: Supersession, state: str) -> None:
        try:
            self.consumer.settle_supersession(supersession, state)  # type: ignore[arg-type]
        except SpoolError as exc:  # stays pending: carried out again, harmlessly (same PUTs)
            log.error("supersession_not_recorded", error=str(exc))


def _notify(observer: SupersessionObserver, predecessor: str, successor: str, resources: int, how: str,
            sent: SendResult | None) -> None:
    observer.superseded(predecessor, successor, resources, how, sent)
