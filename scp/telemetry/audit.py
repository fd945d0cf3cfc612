"""The audit trail: every receive and every FHIR write as a FHIR R5 AuditEvent, one JSON per line.

Shape (DICOM PS3.15 A.5 audit messages expressed as R5 AuditEvent, as RESTful ATNA takes them):

=====================  ===============================================  ======  ==========================
event                  category / code                                  action  agents
=====================  ===============================================  ======  ==========================
instance received      DCM 110104 DICOM Instances Transferred (both)    C       caller: 110153 Source
                                                                                (requestor, IP); us: 110152
Bundle written         audit-event-type ``rest`` + DCM 110106 Export /  C       us: 110153 Source
                       restful-interaction ``transaction``                      (requestor); FHIR server:
                                                                                110152 Destination (URL)
daemon start / stop    DCM 110100 Application Activity /                E       us: 110150 Application
                       DCM 110120 Application Start, 110121 Stop
=====================  ===============================================  ======  ==========================

``outcome.code`` uses the DICOM outcome codes (THO ``audit-event-outcome``): 0 success, 4 minor,
8 serious (refused instance, rejected or undeliverable Bundle), 12 major failure (we are out
of resources). Entities: the SR by SOP Instance UID (``urn:dicom:uid``, role 3 Report, SOP
Class UID as detail, and for a write the calling AE as DCM 110119), each FHIR resource
written as an absolute URL (role 4 Domain Resource), the server base URL as the destination
agent's ``networkUri``. **No patient data** unless ``include_phi``: only then the SR's Patient
ID (as the logical Patient reference the mapping builds) goes into ``patient`` and a role-1
entity. Server diagnostics never go in (servers echo resource content); the HTTP status does.

The builders (:func:`received_event`, :func:`delivery_event`, :func:`application_event`) are
pure and return dicts. :class:`AuditLog` appends lines; :class:`AuditTrail` ties both to the
listener's and the forwarder's settle points and never raises into them.

**The file.** One ``write(2)`` per line on an ``O_APPEND`` descriptor, so lines from the
listener's threads and from the worker process never interleave (local file systems apply an
append as one step; a lock orders this process's threads too). Not fsynced per line: the
kernel keeps what was written when the process dies, and only a power cut loses the last
seconds of lines, while an fsync per event would double the cost of every C-STORE (the spool
already spends one on the instance itself, which is the record that matters). Rotation is
left to logrotate (``create`` or ``copytruncate``) or to a journald/syslog shipper: before
each line the path is checked and reopened when it was moved away.

**send_to_fhir.** :class:`AuditShipper` runs in the worker: it follows the file from a saved
position and PUTs its AuditEvents (``AuditEvent/<id>``, so a retry after a lost answer
creates nothing twice) in transaction Bundles through :class:`fhir_client.FhirClient`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from fhir_client import FhirClient, FhirClientError, Outcome, SendResult
from mapping.coding import DCM_SYSTEM
from mapping.references import patient_reference

from ..delivery.reasons import DeadLetterReason
from ..spool import SpoolItem

__all__ = [
    "AuditLog",
    "AuditShipper",
    "AuditSource",
    "AuditTrail",
    "application_event",
    "delivery_event",
    "patient_of_bundle",
    "received_event",
    "resources_written",
    "send_audit_events",
]

log = structlog.get_logger()

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
    agents = [_our_agent(source, codes.DCM.SourceRoleID, requestor=True)]
    if destination:
        agents.append({"type": _concept(codes.DCM.DestinationRoleID),
                       "who": {"identifier": {"system": "urn:ietf:rfc:3986", "value": destination}},
                       "requestor": False, "networkUri": destination})
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
    server sent them (with versions), else the ``PUT`` request URLs; conditional ``POST``s
    without a response are not known and left out."""
    base = base_url.rstrip("/")
    locations = [entry.get("response", {}).get("location") for entry in (response_bundle or {}).get("entry", [])
                 if isinstance(entry, dict)]
    if not any(locations):
        locations = [entry["request"]["url"] for entry in bundle.get("entry", [])
                     if entry.get("request", {}).get("method") == "PUT"]
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


# --------------------------------------------------------------------------- the file


class AuditLog:
    """Appends AuditEvents to ``path``, one compact JSON object per line; thread-safe.

    Opened on first write (parent directories created, mode 0640 since events may carry PHI
    with ``include_phi``); reopened when the path was rotated away. ``write`` raises
    ``OSError`` when the line cannot be written.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None

    def write(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        with self._lock:
            fd = self._open()
            view = memoryview(line)
            while view:  # one write(2) unless the disk fills mid-line
                view = view[os.write(fd, view):]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _open(self) -> int:
        if self._fd is not None:
            try:
                current = os.stat(self.path)
                mine = os.fstat(self._fd)
                if (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                    return self._fd
            except FileNotFoundError:
                pass
            os.close(self._fd)  # rotated away: continue in a new file under the path
            self._fd = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return self._fd


class AuditTrail:
    """Builds and writes the events at the daemon's settle points; never raises into them.

    Listener: ``store_answered(event, status)`` after each C-STORE. Worker:
    ``delivered`` / ``dead_lettered`` / ``deferred`` (the forwarder's observer methods, the
    same as :class:`scp.telemetry.metrics.WorkerMetrics`'). Daemon: ``application_started/stopped``.
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


# --------------------------------------------------------------------------- send_to_fhir


async def send_audit_events(client: FhirClient, events: Sequence[dict[str, Any]]) -> SendResult:
    """PUT ``events`` as one transaction (``AuditEvent/<id>``: idempotent; POST without id)."""
    entries = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": event,
                "request": {"method": "PUT", "url": f"AuditEvent/{event['id']}"} if event.get("id")
                else {"method": "POST", "url": "AuditEvent"}}
               for event in events]
    return await client.send({"resourceType": "Bundle", "type": "transaction", "entry": entries})


class AuditShipper:
    """Follows the audit file and sends its events to the FHIR server, in order, once each.

    The position (file identity and byte offset) is kept in ``<path>.fhir-position`` and
    advanced only after the server took a batch, so events survive FHIR outages and worker
    restarts. A rotated file is read to its end before the new one is started. A batch the
    server rejects is retried event by event; events it still rejects are skipped and logged
    (by id), so one bad line cannot stop the trail.
    """

    def __init__(self, path: Path, *, batch_size: int = 100) -> None:
        self.path = path
        self.position_path = path.with_name(path.name + ".fhir-position")
        self.batch_size = batch_size
        self._fd: int | None = None
        self._offset = 0

    async def run(self, client: FhirClient, stop: asyncio.Event, *, interval_s: float = 5.0) -> None:
        """Send until ``stop`` is set; looks for new lines every ``interval_s`` when idle."""
        try:
            while not stop.is_set():
                try:
                    shipped = await self.ship_once(client)
                except (OSError, ValueError, FhirClientError) as exc:  # e.g. file unreadable: try again later
                    log.error("audit_events_not_sent", reason=f"{type(exc).__name__}: {exc}")
                    shipped = 0
                if shipped == 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=interval_s)
                    except TimeoutError:
                        pass
        finally:
            self.close()

    async def ship_once(self, client: FhirClient) -> int:
        """Send the next batch; the number of events the server took (0: none waiting, or
        the server is unavailable and the batch stays for the next call)."""
        events, end = self._next_batch()
        if not events:
            if end > self._offset:
                self._commit(end)  # only unreadable or foreign lines: step over them
            return 0
        result = await send_audit_events(client, events)
        if result.outcome is Outcome.DEFERRED:
            log.warning("audit_events_deferred", events=len(events), status_code=result.status_code)
            return 0
        taken = len(events)
        if result.outcome is Outcome.REJECTED:
            taken = 0
            for event in events:
                single = await send_audit_events(client, [event])
                if single.outcome is Outcome.DEFERRED:
                    return taken  # position not advanced: the whole batch is sent again (idempotent PUTs)
                if single.outcome is Outcome.REJECTED:
                    log.error("audit_event_rejected", audit_event_id=event.get("id"), status_code=single.status_code)
                else:
                    taken += 1
        self._commit(end)
        return taken

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _next_batch(self) -> tuple[list[dict[str, Any]], int]:
        for _ in range(2):  # the current file, then (after a rotation) the new one
            fd = self._ensure_open()
            if fd is None:
                return [], 0
            events, end = self._read_events(fd)
            if events or end != self._offset:
                return events, end
            if not self._rotated():
                return [], end
            self.close()  # drained the old file: continue with the one now at the path
            self._fd = self._open(resume=False)
        return [], self._offset

    def _read_events(self, fd: int) -> tuple[list[dict[str, Any]], int]:
        if os.fstat(fd).st_size < self._offset:
            log.warning("audit_file_truncated", path=str(self.path))  # copytruncate: start over
            self._offset = 0
        events: list[dict[str, Any]] = []
        end = self._offset
        size = 1 << 20
        while len(events) < self.batch_size:
            chunk = os.pread(fd, size, end)
            lines = chunk.split(b"\n")[:-1]  # the part after the last newline is not complete yet
            if not lines:
                if len(chunk) < size:
                    break
                size *= 2  # one line longer than the chunk
                continue
            for line in lines:
                end += len(line) + 1
                try:
                    event = json.loads(line)
                except ValueError:
                    log.error("audit_line_unreadable", path=str(self.path), offset=end - len(line) - 1)
                    continue
                if isinstance(event, dict) and event.get("resourceType") == "AuditEvent":
                    events.append(event)
                if len(events) >= self.batch_size:
                    break
        return events, end

    def _ensure_open(self) -> int | None:
        if self._fd is None:
            self._fd = self._open(resume=True)
        return self._fd

    def _open(self, *, resume: bool) -> int | None:
        """Open the file at the path: at the saved position when ``resume`` and it is the
        same file, else at its start."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        stat = os.fstat(fd)
        saved = self._load_position() if resume else None
        self._offset = 0
        if saved and (saved.get("inode"), saved.get("device")) == (stat.st_ino, stat.st_dev):
            self._offset = int(saved.get("offset", 0))
        elif saved and saved.get("offset"):
            log.warning("audit_position_lost", path=str(self.path),
                        reason="the file was replaced while the worker was not running")
        return fd

    def _rotated(self) -> bool:
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self._fd) if self._fd is not None else None
        return mine is not None and (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev)

    def _commit(self, end: int) -> None:
        self._offset = end
        self._save_position()

    def _save_position(self) -> None:
        if self._fd is None:
            return
        stat = os.fstat(self._fd)
        temp = self.position_path.with_name(f".{self.position_path.name}.tmp")
        temp.write_text(json.dumps({"inode": stat.st_ino, "device": stat.st_dev, "offset": self._offset}))
        os.replace(temp, self.position_path)

    def _load_position(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.position_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

