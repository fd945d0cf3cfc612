"""The audit observer of the daemon's settle points (:class:`AuditTrail`).

The listener calls it after each C-STORE answer, the forwarder when an item is delivered or
dead-lettered, the daemon at start and stop. It builds the event (:mod:`.audit_events`) and
appends it to the :class:`~.audit_log.AuditLog`; it never raises into its callers.
"""

from __future__ import annotations

from typing import Any

import structlog

from fhir_client import SendResult
from mapping.references import patient_reference

from ..delivery.reasons import DeadLetterReason, HoldReason
from ..spool import SpoolItem
from .audit_events import (
    AuditSource,
    application_event,
    delivery_event,
    hold_event,
    patient_of_bundle,
    received_event,
    resources_written,
)
from .audit_log import AuditLog

__all__ = ["AuditTrail"]

log = structlog.get_logger()


class AuditTrail:
    """Builds and writes the events at the daemon's settle points; never raises into them.

    Listener: ``store_answered(event, status)`` after each C-STORE. Worker:
    ``delivered`` / ``dead_lettered`` / ``deferred`` (the forwarder's observer methods, the
    same as :class:`scp.telemetry.metrics.WorkerMetrics`'), ``hold_started`` / ``hold_ended`` (the
    delivery hold's). Daemon: ``application_started/stopped``.
    ``destination`` is the FHIR base URL (or the outbox's ``file:`` URI).
    """

    def __init__(self, audit_log: AuditLog, source: AuditSource, *, destination: str = "",
                 include_phi: bool = False) -> None:
        self.audit_log = audit_log
        self.source = source
        self.destination = destination
        self.include_phi = include_phi

    def store_answered(self, event: Any, status: int) -> None:
        """EVT_C_STORE answered with ``status`` (``event`` is the pynetdicom event)."""
        try:
            requestor = event.assoc.requestor
            patient = None
            if self.include_phi and status == 0:
                try:
                    patient = patient_reference(event.dataset)
                except Exception:  # noqa: BLE001 - no readable Patient ID: the event goes without it
                    patient = None
            self._write(received_event(
                source=self.source, calling_ae=str(requestor.ae_title).strip(), calling_address=requestor.address,
                sop_instance_uid=str(event.request.AffectedSOPInstanceUID or ""),
                sop_class_uid=str(event.request.AffectedSOPClassUID or ""), status=status,
                occurred=event.timestamp, patient=patient))
        except Exception:  # noqa: BLE001 - auditing must not break the C-STORE answer
            log.exception("audit_event_failed", kind="received")

    def delivered(self, item: SpoolItem, sent: SendResult, bundle: dict[str, Any]) -> None:
        self._delivery(item, None, sent, bundle)

    def dead_lettered(self, item: SpoolItem, reason: DeadLetterReason, sent: SendResult | None = None,
                      bundle: dict[str, Any] | None = None) -> None:
        self._delivery(item, reason, sent, bundle)

    def deferred(self, item: SpoolItem, sent: SendResult | None = None) -> None:
        """Nothing final happened: no event (the item is delivered or dead-lettered later)."""

    def ignored(self, item: SpoolItem, template: str) -> None:
        """Not mapped, nothing written: no event (the receive event stands for the SR)."""

    def superseded(self, predecessor_uid: str, successor_uid: str, resources: int, how: str,
                   sent: SendResult | None = None) -> None:
        """The transaction that retired a replaced report's resources (``after_successor``) is
        a FHIR write: one event, for the replaced SR. ``on_arrival`` is in its own delivery event."""
        if sent is None:
            return
        try:
            written = (resources_written({}, sent.response_bundle, self.destination)
                       if self.destination.startswith("http") else [])
            self._write(delivery_event(
                source=self.source, destination=self.destination, sop_instance_uid=predecessor_uid,
                sop_class_uid="", calling_ae="", result=None, status_code=sent.status_code,
                attempts=sent.attempts, elapsed_s=sent.elapsed_s, written=written))
        except Exception:  # noqa: BLE001 - auditing must not break the forwarder
            log.exception("audit_event_failed", kind="superseded")

    def hold_started(self, reason: HoldReason) -> None:
        self._hold(reason, None)

    def hold_ended(self, reason: HoldReason, held_s: float) -> None:
        self._hold(reason, held_s)

    def _hold(self, reason: HoldReason, held_s: float | None) -> None:
        try:
            self._write(hold_event(source=self.source, destination=self.destination, reason=reason, held_s=held_s))
        except Exception:  # noqa: BLE001 - auditing must not break the forwarder
            log.exception("audit_event_failed", kind="hold")

    def application_started(self) -> None:
        self._write(application_event(source=self.source, started=True))

    def application_stopped(self) -> None:
        self._write(application_event(source=self.source, started=False))

    def _delivery(self, item: SpoolItem, reason: DeadLetterReason | None, sent: SendResult | None,
                  bundle: dict[str, Any] | None) -> None:
        try:
            written: list[str] = []
            if reason is None and bundle is not None and sent is not None and self.destination.startswith("http"):
                written = resources_written(bundle, sent.response_bundle, self.destination)
            patient = patient_of_bundle(bundle) if self.include_phi and bundle is not None else None
            self._write(delivery_event(
                source=self.source, destination=self.destination, sop_instance_uid=item.sop_instance_uid,
                sop_class_uid=item.sop_class_uid, calling_ae=item.calling_ae, result=reason,
                status_code=sent.status_code if sent else None, attempts=sent.attempts if sent else 0,
                elapsed_s=sent.elapsed_s if sent else 0.0, written=written, patient=patient))
        except Exception:  # noqa: BLE001 - auditing must not break the forwarder
            log.exception("audit_event_failed", kind="delivery")

    def _write(self, event: dict[str, Any]) -> None:
        try:
            self.audit_log.write(event)
        except OSError as exc:
            log.error("audit_event_not_written", path=str(self.audit_log.path), reason=str(exc))
