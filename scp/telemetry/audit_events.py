"""The pure builders of FHIR R5 AuditEvent resources: received, delivered / dead-lettered, delivery
held / resumed, application.

Owns :class:`AuditSource` (who we are in the events), the builders :func:`received_event`,
:func:`delivery_event`, :func:`hold_event` and :func:`application_event`, and the helpers that pick their
contents out of a transaction (:func:`resources_written`, :func:`patient_of_bundle`). No I/O:
every function returns a dict.

Shape (DICOM PS3.15 A.5 audit messages expressed as R5 AuditEvent, as RESTful ATNA takes them):

=====================  ===============================================  ======  ==========================
event                  category / code                                  action  agents
=====================  ===============================================  ======  ==========================
instance received      DCM 110104 DICOM Instances Transferred (both)    C       caller: 110153 Source
                                                                                (requestor, IP); us: 110152
Bundle written         audit-event-type ``rest`` + DCM 110106 Export /  C       us: 110153 Source
                       restful-interaction ``transaction``                      (requestor); FHIR server:
                                                                                110152 Destination (URL)
delivery held /        audit-event-type ``rest`` + DCM 110106 Export /  E       as for a written Bundle
resumed                :data:`HOLD_SYSTEM` ``delivery-held`` /
                       ``delivery-resumed``
daemon start / stop    DCM 110100 Application Activity /                E       us: 110150 Application
                       DCM 110120 Application Start, 110121 Stop
=====================  ===============================================  ======  ==========================

A hold (the FHIR endpoint itself is wrong: :mod:`scp.delivery.hold`) is one event when it begins
(outcome 8: nothing is delivered; ``occurredDateTime``) and one when it ends (outcome 0;
``occurredPeriod`` of the hold); no event per SR kept meanwhile.

``outcome.code`` uses the DICOM outcome codes (THO ``audit-event-outcome``): 0 success, 4 minor,
8 serious (refused instance, rejected or undeliverable Bundle), 12 major failure (we are out
of resources). Entities: the SR by SOP Instance UID (``urn:dicom:uid``, role 3 Report, SOP
Class UID as detail, and for a write the calling AE as DCM 110119), each FHIR resource
written as an absolute URL (role 4 Domain Resource), the server base URL as the destination
agent's ``networkUri``. **No patient data** unless ``include_phi``: only then the SR's Patient
ID (as the logical Patient reference the mapping builds) goes into ``patient`` and a role-1
entity. Server diagnostics never go in (servers echo resource content); the HTTP status does.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydicom.sr.codedict import codes as _pydicom_codes
from pydicom.sr.coding import Code

from mapping.coding import DCM_SYSTEM

from ..delivery.reasons import DeadLetterReason, HoldReason


class _CachedCodes:
    """``codes.DCM.X`` looked up once: pydicom's lookup costs ~25 µs, a received event
    (one per C-STORE, written before the answer) needs five."""

    def __init__(self, scheme: Any) -> None:
        self._scheme = scheme

    def __getattr__(self, name: str) -> Code:
        code = getattr(self._scheme, name)
        setattr(self, name, code)
        return code


class _Codes:
    DCM = _CachedCodes(_pydicom_codes.DCM)


codes = _Codes()

__all__ = [
    "OUTCOMES",
    "OUTCOME_SYSTEM",
    "SEVERITY_BY_OUTCOME",
    "AuditSource",
    "application_event",
    "delivery_event",
    "hold_event",
    "patient_of_bundle",
    "received_event",
    "resources_written",
]

OUTCOME_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
OUTCOMES = {0: "Success", 4: "Minor failure", 8: "Serious failure", 12: "Major failure"}
SEVERITY_BY_OUTCOME = {0: "informational", 4: "warning", 8: "error", 12: "critical"}
_AUDIT_EVENT_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                     "display": "RESTful Operation"}
_TRANSACTION = {"system": "http://hl7.org/fhir/restful-interaction", "code": "transaction", "display": "transaction"}
_APPLICATION_SERVER = {"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                       "display": "Application Server"}
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_ROLE_PATIENT = {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"}
_ROLE_REPORT = {"system": _OBJECT_ROLE, "code": "3", "display": "Report"}
_ROLE_DOMAIN_RESOURCE = {"system": _OBJECT_ROLE, "code": "4", "display": "Domain Resource"}
HOLD_SYSTEM = "urn:sr2fhir:audit-event"
"""Our codes for the hold events (no DICOM or FHIR code says "delivery paused")."""
_OUT_OF_RESOURCES = range(0xA700, 0xA800)
_WARNINGS = range(0xB000, 0xC000)


@dataclass(frozen=True, slots=True)
class AuditSource:
    """Who we are in the events: our AE title and host (the audit source and our agent)."""

    ae_title: str
    host: str = field(default_factory=socket.gethostname)
    name: str = "sr2fhir"


# --------------------------------------------------------------------------- builders (pure)


def received_event(*, source: AuditSource, calling_ae: str, calling_address: str | None, sop_instance_uid: str,
                   sop_class_uid: str, status: int, occurred: datetime, recorded: datetime | None = None,
                   patient: dict[str, Any] | None = None, event_id: str | None = None) -> dict[str, Any]:
    """DCM 110104 "DICOM Instances Transferred" as received by us, with the C-STORE status
    we answered. ``patient`` (a logical Patient reference) only when PHI is allowed."""
    outcome = 0 if status == 0 or status in _WARNINGS else 12 if status in _OUT_OF_RESOURCES else 8
    caller = {"type": _concept(codes.DCM.SourceRoleID),
              "who": {"identifier": {"value": calling_ae}, "display": calling_ae}, "requestor": True}
    if calling_address:
        caller["networkString"] = calling_address
    entities = [_sr_entity(sop_instance_uid, sop_class_uid)] if sop_instance_uid else []
    return _event(
        event_id, recorded,
        category=[_concept(codes.DCM.DICOMInstancesTransferred)],
        code=_concept(codes.DCM.DICOMInstancesTransferred),
        action="C",
        occurred={"occurredDateTime": _instant(occurred)},
        outcome=outcome, outcome_text=f"C-STORE answered 0x{status:04X}",
        agents=[caller, _our_agent(source, codes.DCM.DestinationRoleID, requestor=False)],
        source=source, entities=entities, patient=patient,
    )


def delivery_event(*, source: AuditSource, destination: str, sop_instance_uid: str, sop_class_uid: str,
                   calling_ae: str, result: DeadLetterReason | None, status_code: int | None = None,
                   attempts: int = 0, elapsed_s: float = 0.0, written: Sequence[str] = (),
                   recorded: datetime | None = None, patient: dict[str, Any] | None = None,
                   event_id: str | None = None) -> dict[str, Any]:
    """A transaction written (``result=None``) or given up (a dead-letter reason) at
    ``destination`` (the FHIR base URL, or the outbox as a ``file:`` URI). ``written``: the
    absolute URLs of the resources the server reported (see :func:`resources_written`)."""
    recorded = recorded or datetime.now(UTC)
    started = datetime.fromtimestamp(recorded.timestamp() - max(0.0, elapsed_s), UTC)
    http = f"HTTP {status_code}" if status_code is not None else "no HTTP answer"
    text = {
        None: f"delivered ({http}, {attempts} attempt(s))",
        "rejected": f"rejected by the destination ({http}); dead-lettered",
        "retries_exhausted": f"not accepted after {attempts} attempt(s), last {http}; dead-lettered",
        "unmappable": "not written: the SR could not be mapped to FHIR; dead-lettered",
    }[result]
    agents = [_our_agent(source, codes.DCM.SourceRoleID, requestor=True), *_destination_agents(destination)]
    sr = _sr_entity(sop_instance_uid, sop_class_uid)
    if calling_ae:
        sr.setdefault("detail", []).append({"type": _concept(codes.DCM.StationAETitle), "valueString": calling_ae})
    entities = [sr, *({"what": _reference_of_url(url), "role": {"coding": [_ROLE_DOMAIN_RESOURCE]}} for url in written)]
    return _event(
        event_id, recorded,
        category=[{"coding": [_AUDIT_EVENT_TYPE]}, _concept(codes.DCM.Export)],
        code={"coding": [_TRANSACTION]},
        action="C",
        occurred={"occurredPeriod": {"start": _instant(started), "end": _instant(recorded)}},
        outcome=0 if result is None else 8, outcome_text=text,
        agents=agents,
        source=source, entities=entities, patient=patient,
    )


def hold_event(*, source: AuditSource, destination: str, reason: HoldReason, held_s: float | None = None,
               recorded: datetime | None = None, event_id: str | None = None) -> dict[str, Any]:
    """Delivery to ``destination`` held for ``reason`` (``held_s`` None) or resumed after
    ``held_s`` seconds. The text names the HTTP status and the problem, never server words."""
    recorded = recorded or datetime.now(UTC)
    since = datetime.fromtimestamp(reason.since, UTC)
    if held_s is None:
        code, display = "delivery-held", "Delivery held"
        text = f"delivery held: {reason.headline()} ({reason.problem}); received SRs are kept"
        occurred: dict[str, Any] = {"occurredDateTime": _instant(since)}
    else:
        code, display = "delivery-resumed", "Delivery resumed"
        text = f"delivery resumed after {held_s:.0f} s held ({reason.headline()})"
        occurred = {"occurredPeriod": {"start": _instant(since), "end": _instant(recorded)}}
    return _event(
        event_id, recorded,
        category=[{"coding": [_AUDIT_EVENT_TYPE]}, _concept(codes.DCM.Export)],
        code={"coding": [{"system": HOLD_SYSTEM, "code": code, "display": display}]},
        action="E",
        occurred=occurred,
        outcome=8 if held_s is None else 0, outcome_text=text,
        agents=[_our_agent(source, codes.DCM.SourceRoleID, requestor=True), *_destination_agents(destination)],
        source=source, entities=[], patient=None,
    )


def _destination_agents(destination: str) -> list[dict[str, Any]]:
    if not destination:
        return []
    return [{"type": _concept(codes.DCM.DestinationRoleID),
             "who": {"identifier": {"system": "urn:ietf:rfc:3986", "value": destination}},
             "requestor": False, "networkUri": destination}]


def application_event(*, source: AuditSource, started: bool, recorded: datetime | None = None,
                      event_id: str | None = None) -> dict[str, Any]:
    """DCM 110100 "Application Activity": the daemon started (110120) or stopped (110121)."""
    recorded = recorded or datetime.now(UTC)
    return _event(
        event_id, recorded,
        category=[_concept(codes.DCM.ApplicationActivity)],
        code=_concept(codes.DCM.ApplicationStart if started else codes.DCM.ApplicationStop),
        action="E",
        occurred={"occurredDateTime": _instant(recorded)},
        outcome=0, outcome_text="started" if started else "stopped",
        agents=[_our_agent(source, codes.DCM.Application, requestor=False)],
        source=source, entities=[], patient=None,
    )


def resources_written(bundle: dict[str, Any], response_bundle: dict[str, Any] | None, base_url: str) -> list[str]:
    """Absolute URLs of what a transaction wrote: the response's ``location``s when the
    server sent them (with versions), else the ``PUT Type/id`` request URLs; conditional
    writes without a response are not known and left out."""
    base = base_url.rstrip("/")
    locations = [entry.get("response", {}).get("location") for entry in (response_bundle or {}).get("entry", [])
                 if isinstance(entry, dict)]
    if not any(locations):
        locations = [entry["request"]["url"] for entry in bundle.get("entry", [])
                     if entry.get("request", {}).get("method") == "PUT" and "?" not in entry["request"]["url"]]
    return [loc if "://" in loc else f"{base}/{loc.lstrip('/')}" for loc in locations if isinstance(loc, str) and loc]


def patient_of_bundle(bundle: dict[str, Any]) -> dict[str, Any] | None:
    """The Patient reference the mapped resources carry (``subject``), or None. PHI."""
    for entry in bundle.get("entry", []):
        subject = entry.get("resource", {}).get("subject")
        if isinstance(subject, dict) and (subject.get("type") == "Patient"
                                          or str(subject.get("reference", "")).startswith("Patient/")):
            return dict(subject)
    return None


def _event(event_id: str | None, recorded: datetime | None, *, category: list[dict[str, Any]],
           code: dict[str, Any], action: str, occurred: dict[str, Any], outcome: int, outcome_text: str,
           agents: list[dict[str, Any]], source: AuditSource, entities: list[dict[str, Any]],
           patient: dict[str, Any] | None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": event_id or str(uuid.uuid4()),
        "category": category,
        "code": code,
        "action": action,
        "severity": SEVERITY_BY_OUTCOME[outcome],
        **occurred,
        "recorded": _instant(recorded or datetime.now(UTC)),
        "outcome": {"code": {"system": OUTCOME_SYSTEM, "code": str(outcome), "display": OUTCOMES[outcome]},
                    "detail": [{"text": outcome_text}]},
        "agent": agents,
        "source": {"observer": _us(source), "type": [{"coding": [_APPLICATION_SERVER]}]},
    }
    if patient is not None:
        event["patient"] = patient
        entities = [*entities, {"what": patient, "role": {"coding": [_ROLE_PATIENT]}}]
    if entities:
        event["entity"] = entities
    return event


def _concept(code: Code) -> dict[str, Any]:
    return {"coding": [{"system": DCM_SYSTEM, "code": code.value, "display": code.meaning}]}


def _us(source: AuditSource) -> dict[str, Any]:
    return {"identifier": {"value": source.ae_title}, "display": f"{source.name} {source.ae_title}@{source.host}"}


def _our_agent(source: AuditSource, role: Code, *, requestor: bool) -> dict[str, Any]:
    return {"type": _concept(role), "who": _us(source), "requestor": requestor, "networkString": source.host}


def _sr_entity(sop_instance_uid: str, sop_class_uid: str) -> dict[str, Any]:
    entity: dict[str, Any] = {"what": {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{sop_instance_uid}"}},
                              "role": {"coding": [_ROLE_REPORT]}}
    if sop_class_uid:
        entity["detail"] = [{"type": _concept(codes.DCM.SOPClassUID), "valueString": sop_class_uid}]
    return entity


def _reference_of_url(url: str) -> dict[str, Any]:
    """``{reference, type}`` for ``.../Type/id[/_history/n]``."""
    parts = url.split("/")
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    resource_type = parts[-2] if len(parts) >= 2 and parts[-2][:1].isupper() else None
    return {"reference": url, "type": resource_type} if resource_type else {"reference": url}


def _instant(moment: datetime) -> str:
    """A FHIR instant in UTC with milliseconds; a naive datetime is taken as local time."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
