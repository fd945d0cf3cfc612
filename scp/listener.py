"""The DICOM side: a pynetdicom C-STORE SCP for SR instances that spools before it answers.

``handle_store`` decodes only what the acknowledgement needs (SOP class and instance, and
that there is a content tree), makes the instance durable through the spool writer, and only
then answers Success. Failures are statuses, never exceptions: the handler does not raise.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from mapping import SR_STORAGE_SOP_CLASSES

from .spool import RecordFields, SpoolError, SpoolFullError, SpoolWriter

__all__ = [
    "SUCCESS",
    "OUT_OF_RESOURCES",
    "DATASET_DOES_NOT_MATCH_SOP_CLASS",
    "CANNOT_UNDERSTAND",
    "NOT_A_STRUCTURED_REPORT",
    "PROCESSING_FAILURE",
    "TRANSFER_SYNTAXES",
    "ListenerPolicy",
    "Listener",
    "handle_store",
]

log = structlog.get_logger()

# C-STORE statuses (PS3.4 B.2.3, Table B.2-1).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (spool full or unwritable)
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # Error: Data Set does not match SOP Class
CANNOT_UNDERSTAND = 0xC210  # Error: Cannot understand (the dataset could not be decoded)
NOT_A_STRUCTURED_REPORT = 0xC211  # Error: an SR class without an SR content tree
PROCESSING_FAILURE = 0xC2FF  # Error: anything unexpected in the handler (it never raises)

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]

_CONTENT_SEQUENCE = 0x0040A730


@dataclass(frozen=True, slots=True)
class ListenerPolicy:
    """The knobs ``handle_store`` and the association checks need."""

    min_free_bytes: int = 0


def handle_store(event: evt.Event, writer: SpoolWriter, policy: ListenerPolicy) -> int:
    """EVT_C_STORE: check the dataset is a readable SR, spool it durably, then answer.

    Returns a C-STORE status; never raises (pynetdicom would turn an exception into a
    generic failure and we want specific ones).
    """
    calling_ae = event.assoc.requestor.ae_title
    request_uid = str(event.request.AffectedSOPInstanceUID or "")
    try:
        try:
            ds = event.dataset
            sop_class_uid = str(ds.SOPClassUID)
            sop_instance_uid = str(ds.SOPInstanceUID)
        except Exception as exc:  # noqa: BLE001 - any decode failure is "cannot understand"
            log.warning("sr_refused", calling_ae=calling_ae, sop_instance_uid=request_uid,
                        status=CANNOT_UNDERSTAND, reason=f"dataset not decodable: {type(exc).__name__}")
            return CANNOT_UNDERSTAND
        if sop_class_uid != str(event.request.AffectedSOPClassUID) or sop_instance_uid != request_uid:
            log.warning("sr_refused", calling_ae=calling_ae, sop_instance_uid=request_uid,
                        status=DATASET_DOES_NOT_MATCH_SOP_CLASS,
                        reason="SOP Class/Instance UID in the dataset differ from the request")
            return DATASET_DOES_NOT_MATCH_SOP_CLASS
        if sop_class_uid not in SR_STORAGE_SOP_CLASSES or _CONTENT_SEQUENCE not in ds:
            log.warning("sr_refused", calling_ae=calling_ae, sop_instance_uid=sop_instance_uid,
                        status=NOT_A_STRUCTURED_REPORT, reason="no SR content tree (Content Sequence)")
            return NOT_A_STRUCTURED_REPORT
        if policy.min_free_bytes and writer.free_bytes() < policy.min_free_bytes:
            log.error("sr_refused", calling_ae=calling_ae, sop_instance_uid=sop_instance_uid,
                      status=OUT_OF_RESOURCES, reason="free disk space below spool.min_free_bytes")
            return OUT_OF_RESOURCES
        fields = RecordFields(
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            calling_ae=calling_ae,
        )
        try:
            item_id = writer.put(fields, event.encoded_dataset(include_meta=True))
        except SpoolFullError as exc:
            log.error("sr_refused", calling_ae=calling_ae, sop_instance_uid=sop_instance_uid,
                      status=OUT_OF_RESOURCES, reason=str(exc))
            return OUT_OF_RESOURCES
        except SpoolError as exc:
            log.error("sr_refused", calling_ae=calling_ae, sop_instance_uid=sop_instance_uid,
                      status=OUT_OF_RESOURCES, reason=str(exc))
            return OUT_OF_RESOURCES
        log.info("sr_spooled", calling_ae=calling_ae, sop_instance_uid=sop_instance_uid, spool_id=item_id)
        return SUCCESS
    except Exception:  # noqa: BLE001 - the boundary: a status, never a crash
        log.exception("sr_store_failed", calling_ae=calling_ae, sop_instance_uid=request_uid)
        return PROCESSING_FAILURE


def _set_tcp_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: without TCP_NODELAY every C-STORE response waits ~40 ms on delayed ACKs."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class Listener:
    """The running SCP: starts non-blocking, stops accepting, then drains."""

    def __init__(self, ae: AE) -> None:
        self._ae = ae
        self._server: ThreadedAssociationServer | None = None
        self._idle = threading.Condition()

    def _serve(self, host: str, port: int, handlers: list) -> None:
        ended = [(event, self._association_ended) for event in (evt.EVT_RELEASED, evt.EVT_ABORTED, evt.EVT_CONN_CLOSE)]
        self._server = self._ae.start_server((host, port), block=False, evt_handlers=[*handlers, *ended])

    @property
    def port(self) -> int:
        """The bound TCP port (useful with port 0)."""
        return int(self._server.server_address[1])

    @property
    def active_associations(self) -> int:
        return len(self._server.active_associations)

    def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop accepting, let in-flight associations finish (bounded), then abort the rest."""
        self._server.shutdown()  # stops serve_forever and closes the listening socket
        with self._idle:
            self._idle.wait_for(lambda: not self._server.active_associations, timeout=drain_timeout_s)
        self._ae.shutdown()

    def _association_ended(self, _event: evt.Event) -> None:
        with self._idle:
            self._idle.notify_all()


def start_listener(
    *,
    host: str,
    port: int,
    ae_title: str,
    writer: SpoolWriter,
    policy: ListenerPolicy = ListenerPolicy(),
    max_associations: int = 16,
    allowed_calling_ae_titles: Iterable[str] = (),
    require_called_ae_title: bool = True,
    acse_timeout_s: float = 30,
    dimse_timeout_s: float = 30,
    network_timeout_s: float = 60,
    maximum_pdu_size: int = 0,
    tcp_nodelay: bool = True,
) -> Listener:
    """Bind the SCP and serve in background threads; returns once the port is bound."""
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = max_associations
    ae.acse_timeout = acse_timeout_s
    ae.dimse_timeout = dimse_timeout_s
    ae.network_timeout = network_timeout_s
    ae.maximum_pdu_size = maximum_pdu_size
    ae.require_called_aet = require_called_ae_title
    allowed = [title for title in allowed_calling_ae_titles]
    if allowed:
        ae.require_calling_aet = allowed
    for sop_class in sorted(SR_STORAGE_SOP_CLASSES):
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
    listener = Listener(ae)
    handlers: list = [(evt.EVT_C_STORE, handle_store, [writer, policy])]
    if tcp_nodelay:
        handlers.append((evt.EVT_CONN_OPEN, _set_tcp_nodelay))
    listener._serve(host, port, handlers)
    return listener
