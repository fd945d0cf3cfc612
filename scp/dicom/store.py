"""The C-STORE handler: check the SR, make it durable in the spool, and only then answer.

``handle_store`` reads only what the acknowledgement needs (SOP class and instance, and
that there is a content tree: from the element headers, :mod:`.sr_peek`), packs the
instance as Part 10, puts it through the spool writer, and only then answers Success.
Failures are statuses (0xA700 when the spool is full or unwritable, 0xA900, 0xC210, 0xC211,
0xC2FF), never exceptions: the handler does not raise. Each answer is told to the :class:`StoreObserver` instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import structlog
from pynetdicom import evt

from mapping import SR_STORAGE_SOP_CLASSES

from ..spool import RecordFields, SpoolError, SpoolFullError, SpoolWriter
from .admission import ListenerPolicy
from .part10 import part10_bytes
from .sr_peek import MalformedDataset, SrPeek, peek_sr

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_DOES_NOT_MATCH_SOP_CLASS",
    "NOT_A_STRUCTURED_REPORT",
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
    "SUCCESS",
    "StoreObserver",
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

_CONTENT_SEQUENCE = 0x0040A730


class StoreObserver(Protocol):
    """Told each C-STORE answer (:class:`scp.telemetry.metrics.DaemonMetrics`, :class:`scp.telemetry.audit.AuditTrail`);
    called in the association's thread, never raises."""

    def store_answered(self, event: evt.Event, status: int) -> None: ...


def handle_store(event: evt.Event, writer: SpoolWriter, policy: ListenerPolicy,
                 observers: Sequence[StoreObserver] = ()) -> int:
    """EVT_C_STORE: check the dataset is a readable SR, spool it durably, then answer.

    Returns a C-STORE status; never raises (pynetdicom would turn an exception into a
    generic failure and we want specific ones). ``observers`` hear every answer.
    """
    status = _store(event, writer, policy)
    for observer in observers:
        observer.store_answered(event, status)
    return status


def _store(event: evt.Event, writer: SpoolWriter, policy: ListenerPolicy) -> int:
    calling_ae = event.assoc.requestor.ae_title
    request_uid = str(event.request.AffectedSOPInstanceUID or "")
    try:
        encoded = event.encoded_dataset(include_meta=False)
        try:
            peek = _peek(event, encoded)
        except Exception as exc:  # noqa: BLE001 - any decode failure is "cannot understand"
            log.warning("sr_refused", calling_ae=calling_ae, sop_instance_uid=request_uid,
                        status=CANNOT_UNDERSTAND, reason=f"dataset not decodable: {type(exc).__name__}")
            return CANNOT_UNDERSTAND
        sop_class_uid, sop_instance_uid = peek.sop_class_uid, peek.sop_instance_uid
        if sop_class_uid != str(event.request.AffectedSOPClassUID) or sop_instance_uid != request_uid:
            log.warning("sr_refused", calling_ae=calling_ae, sop_instance_uid=request_uid,
                        status=DATASET_DOES_NOT_MATCH_SOP_CLASS,
                        reason="SOP Class/Instance UID in the dataset differ from the request")
            return DATASET_DOES_NOT_MATCH_SOP_CLASS
        if sop_class_uid not in SR_STORAGE_SOP_CLASSES or not peek.has_content_sequence:
            log.warning("sr_refused", calling_ae=calling_ae, sop_instance_uid=sop_instance_uid,
                        status=NOT_A_STRUCTURED_REPORT, reason="no SR content tree (Content Sequence)")
            return NOT_A_STRUCTURED_REPORT
        if policy.min_free_bytes and writer.free_bytes() < policy.min_free_bytes:
            writer.release_space()
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
            data = part10_bytes(encoded, sop_class_uid=sop_class_uid,
                                sop_instance_uid=sop_instance_uid, transfer_syntax_uid=fields.transfer_syntax_uid)
            item_id = writer.put(fields, data)
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


def _peek(event: evt.Event, encoded: bytes) -> SrPeek:
    """The UIDs and Content Sequence presence: from the element headers
    (:func:`~.sr_peek.peek_sr`) for little-endian, non-deflated datasets; from pydicom's
    decode otherwise, and for what the header walk finds malformed or without a UID (so
    nothing pydicom reads is refused). Raises when neither can read the dataset."""
    syntax = event.context.transfer_syntax
    if syntax.is_little_endian and not syntax.is_deflated:
        try:
            peek = peek_sr(encoded, implicit_vr=syntax.is_implicit_VR)
            if peek.sop_class_uid and peek.sop_instance_uid:
                return peek
        except MalformedDataset:
            pass
    ds = event.dataset
    return SrPeek(str(ds.SOPClassUID), str(ds.SOPInstanceUID), _CONTENT_SEQUENCE in ds)
