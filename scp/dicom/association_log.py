"""One canonical log line per association: who, from where, how long, how many stores, how it ended.

Refused associations are logged where they are refused (``association_rejected``); this
covers the accepted ones, from EVT_ACCEPTED to EVT_CONN_CLOSE.

A release is recorded when our A-RELEASE response is handed to the DUL (EVT_ACSE_SENT, in the
association thread, before the response can reach the peer), not only at EVT_RELEASED: that
comes from the association thread after the response is queued, and the DUL thread, woken at
once (:mod:`.prompt_reactors`), may send it, see the peer close the connection and trigger
EVT_CONN_CLOSE first.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import structlog
from pynetdicom import evt
from pynetdicom.pdu_primitives import A_RELEASE

__all__ = ["AssociationLog"]

log = structlog.get_logger()


@dataclass(slots=True)
class _Open:
    started: float
    calling_ae: str
    peer_address: str | None
    stores: int = 0
    refused: int = 0
    ended: str = "closed"  # released | aborted | closed (the connection dropped)


class AssociationLog:
    """pynetdicom event handlers (:meth:`handlers`) plus a store observer for the counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, _Open] = {}

    def handlers(self) -> list[tuple[evt.NotificationEvent, object]]:
        return [(evt.EVT_ACCEPTED, self.accepted), (evt.EVT_ACSE_SENT, self.acse_sent),
                (evt.EVT_RELEASED, self.released), (evt.EVT_ABORTED, self.aborted),
                (evt.EVT_CONN_CLOSE, self.closed)]

    def accepted(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        with self._lock:
            self._open[id(event.assoc)] = _Open(time.monotonic(), requestor.ae_title, requestor.address or None)

    def store_answered(self, event: evt.Event, status: int) -> None:
        with self._lock:
            entry = self._open.get(id(event.assoc))
            if entry is not None:
                entry.stores += 1
                entry.refused += status != 0

    def acse_sent(self, event: evt.Event) -> None:
        primitive = event.primitive
        if isinstance(primitive, A_RELEASE) and primitive.result is not None:  # our response: released
            self._end(event, "released")

    def released(self, event: evt.Event) -> None:
        self._end(event, "released")

    def aborted(self, event: evt.Event) -> None:
        self._end(event, "aborted")

    def closed(self, event: evt.Event) -> None:
        with self._lock:
            entry = self._open.pop(id(event.assoc), None)
        if entry is not None:
            log.info("association_closed", calling_ae=entry.calling_ae, peer_address=entry.peer_address,
                     ended=entry.ended, stores=entry.stores, refused=entry.refused,
                     duration_ms=round((time.monotonic() - entry.started) * 1000, 1))

    def _end(self, event: evt.Event, how: str) -> None:
        with self._lock:
            entry = self._open.get(id(event.assoc))
            if entry is not None and entry.ended == "closed":
                entry.ended = how
