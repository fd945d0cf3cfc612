"""The DICOM side's public face: a pynetdicom C-STORE SCP for SR instances that spools before it answers.

A facade only; the code lives in one module per concept:

- :mod:`scp.dicom.admission`: who gets in (:class:`ListenerPolicy`, :class:`AllowedPeer`,
  :class:`AssociationGate`) and the A-ASSOCIATE-RJ that refuses the others;
- :mod:`scp.dicom.store`: the C-STORE handler (:func:`handle_store`, :class:`StoreObserver`)
  and its statuses;
- :mod:`scp.dicom.server`: the AE, its presentation contexts and connection guard, TLS, and
  the running :class:`Listener` (:func:`start_listener`).
"""

from __future__ import annotations

from .admission import AllowedPeer, AssociationGate, ListenerPolicy, PeerRule
from .server import (
    MIN_PDU_CAP_BYTES,
    TRANSFER_SYNTAXES,
    UNLIMITED_PDU_CAP_BYTES,
    Listener,
    start_listener,
)
from .store import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    NOT_A_STRUCTURED_REPORT,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
    StoreObserver,
    handle_store,
)

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_DOES_NOT_MATCH_SOP_CLASS",
    "MIN_PDU_CAP_BYTES",
    "NOT_A_STRUCTURED_REPORT",
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
    "SUCCESS",
    "TRANSFER_SYNTAXES",
    "UNLIMITED_PDU_CAP_BYTES",
    "AllowedPeer",
    "AssociationGate",
    "Listener",
    "ListenerPolicy",
    "PeerRule",
    "StoreObserver",
    "handle_store",
    "start_listener",
]
