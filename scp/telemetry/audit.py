"""The audit trail: every receive and every FHIR write as a FHIR R5 AuditEvent, one JSON per line.

This module is the public face of the audit trail and re-exports its parts:

* :mod:`.audit_events`: :class:`AuditSource` and the pure builders (:func:`received_event`,
  :func:`delivery_event`, :func:`hold_event`, :func:`application_event`, :func:`resources_written`,
  :func:`patient_of_bundle`); the shape of each event (DICOM PS3.15 A.5 as R5 AuditEvent) is
  described there.
* :mod:`.audit_log`: :class:`AuditLog`, the append-only JSONL file (one ``write(2)`` per line,
  reopened after rotation).
* :mod:`.audit_trail`: :class:`AuditTrail`, which ties the builders and the file to the
  listener's and the forwarder's settle points and never raises into them.
* :mod:`.audit_shipper`: :class:`AuditShipper` and :func:`send_audit_events`
  (``send_to_fhir``: the file's events PUT to the FHIR server from a saved position).
"""

from __future__ import annotations

from .audit_events import (
    OUTCOME_SYSTEM,  # noqa: F401 - importable from here as before, though not in __all__
    OUTCOMES,  # noqa: F401
    SEVERITY_BY_OUTCOME,  # noqa: F401
    AuditSource,
    application_event,
    delivery_event,
    hold_event,
    patient_of_bundle,
    received_event,
    resources_written,
)
from .audit_log import AuditLog
from .audit_shipper import AuditShipper, send_audit_events
from .audit_trail import AuditTrail

__all__ = [
    "AuditLog",
    "AuditShipper",
    "AuditSource",
    "AuditTrail",
    "application_event",
    "delivery_event",
    "hold_event",
    "patient_of_bundle",
    "received_event",
    "resources_written",
    "send_audit_events",
]
