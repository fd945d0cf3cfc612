"""Association admission: who may open an association with the SCP, and how a refusal is said.

Owns :class:`ListenerPolicy` (the knobs shared with the C-STORE handler), the allow lists
(:class:`AllowedPeer`, built from any :class:`PeerRule` such as ``config.DicomPeer``) and
:class:`AssociationGate`, bound to EVT_REQUESTED and EVT_REJECTED: the called AE title, the
calling AE title and the peer's address against the allow lists, the association limit and,
optionally, the spool's free-space reserve. A refusal is an A-ASSOCIATE-RJ with the PS3.8
result, source and diagnostic that fit, and one ``association_rejected`` log event.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any, Protocol

import structlog
from pynetdicom import evt
from pynetdicom.association import Association

from ..spool import SpoolWriter

__all__ = ["AllowedPeer", "AssociationGate", "ListenerPolicy", "PeerRule"]

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class ListenerPolicy:
    """The knobs ``handle_store`` and the association checks need."""

    min_free_bytes: int = 0


class PeerRule(Protocol):
    """What ``start_listener(allowed_peers=...)`` reads from each entry (e.g. ``config.DicomPeer``)."""

    @property
    def ae_title(self) -> str: ...

    @property
    def addresses(self) -> Sequence[Any]: ...


@dataclass(frozen=True, slots=True)
class AllowedPeer:
    """A calling AE title allowed in from these addresses/networks only."""

    ae_title: str
    addresses: tuple[IPv4Network | IPv6Network, ...]

    @classmethod
    def of(cls, rule: PeerRule) -> AllowedPeer:
        return cls(rule.ae_title.strip(), tuple(ip_network(str(address)) for address in rule.addresses))


# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, diagnostic.
_PERMANENT, _TRANSIENT = 0x01, 0x02
_SERVICE_USER, _SERVICE_PROVIDER_ACSE, _SERVICE_PROVIDER_PRESENTATION = 0x01, 0x02, 0x03
_CALLING_AE_NOT_RECOGNISED, _CALLED_AE_NOT_RECOGNISED = 0x03, 0x07
_NO_REASON = 0x01
_TEMPORARY_CONGESTION, _LOCAL_LIMIT_EXCEEDED = 0x01, 0x02

# Why pynetdicom itself rejected (a request the gate let through), by (source, diagnostic).
_BUILTIN_REASONS = {
    (_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED): "calling AE title not allowed",
    (_SERVICE_USER, _CALLED_AE_NOT_RECOGNISED): "called AE title is not ours",
    (_SERVICE_PROVIDER_PRESENTATION, _LOCAL_LIMIT_EXCEEDED): "too many associations (dicom.max_associations)",
    (_SERVICE_PROVIDER_PRESENTATION, _TEMPORARY_CONGESTION): "temporary congestion",
}


@dataclass(frozen=True, slots=True)
class _Rejection:
    result: int
    source: int
    diagnostic: int
    reason: str


def _as_address(text: str) -> IPv4Address | IPv6Address | None:
    try:
        address = ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # an IPv4 client of a dual-stack ("::") listener
    return address


class AssociationGate:
    """Admission of association requests (EVT_REQUESTED), and their rejection log (EVT_REJECTED).

    Checked in this order: the called AE title (``require_called_ae_title``); the calling
    AE title against ``allowed_calling_ae_titles`` (any address) and ``allowed_peers``
    (listed addresses only), unless both are empty; ``max_associations``; and, with
    ``check_free_space``, the spool's free space against ``policy.min_free_bytes``. The
    first failure answers A-ASSOCIATE-RJ: permanent for who the caller is, transient for
    capacity. A check that fails unexpectedly rejects (transient) rather than admits.
    ``over_limit`` (an association process) replaces the local association count with the
    daemon acceptor's verdict, which counts every process's connections.
    """

    def __init__(
        self,
        *,
        ae_title: str,
        require_called_ae_title: bool,
        allowed_calling_ae_titles: Iterable[str],
        allowed_peers: Iterable[AllowedPeer],
        max_associations: int,
        writer: SpoolWriter,
        policy: ListenerPolicy,
        check_free_space: bool,
        over_limit: Callable[[Association], bool] | None = None,
    ) -> None:
        self._ae_title = ae_title.strip()
        self._require_called = require_called_ae_title
        self._anywhere = frozenset(title.strip() for title in allowed_calling_ae_titles)
        peers: dict[str, list[IPv4Network | IPv6Network]] = {}
        for peer in allowed_peers:
            peers.setdefault(peer.ae_title, []).extend(peer.addresses)
        self._peers = {title: tuple(networks) for title, networks in peers.items()}
        self._restricted = bool(self._anywhere or self._peers)
        self._max_associations = max_associations
        self._writer = writer
        self._policy = policy
        self._check_free_space = check_free_space
        self._over_limit = over_limit
        self._reasons: weakref.WeakKeyDictionary[Association, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @property
    def allowed_titles(self) -> list[str]:
        """Every calling AE title that may get in from somewhere (empty = anyone)."""
        return sorted(self._anywhere | set(self._peers))

    def check(self, assoc: Association) -> _Rejection | None:
        """The reason to reject this association request, or None to let negotiation go on."""
        request = assoc.requestor.primitive
        calling = str(request.calling_ae_title or "").strip()
        called = str(request.called_ae_title or "").strip()
        if self._require_called and called != self._ae_title:
            return _Rejection(_PERMANENT, _SERVICE_USER, _CALLED_AE_NOT_RECOGNISED, "called AE title is not ours")
        if self._restricted and calling not in self._anywhere:
            networks = self._peers.get(calling)
            if networks is None:
                return _Rejection(_PERMANENT, _SERVICE_USER, _CALLING_AE_NOT_RECOGNISED,
                                  "calling AE title not allowed")
            address = _as_address(assoc.requestor.address)
            if address is None or not any(address in network for network in networks):
                return _Rejection(_PERMANENT, _SERVICE_USER, _CALLING_AE_NOT_RECOGNISED,
                                  "calling AE title not allowed from this address")
        if self._over_limit is not None:  # an association process: the daemon's acceptor counts them all
            over = self._over_limit(assoc)
        else:  # this request's own thread is counted too
            over = sum(1 for other in assoc.ae.active_associations if other.is_acceptor) > self._max_associations
        if over:
            return _Rejection(_TRANSIENT, _SERVICE_PROVIDER_PRESENTATION, _LOCAL_LIMIT_EXCEEDED,
                              f"too many associations (dicom.max_associations is {self._max_associations})")
        if (self._check_free_space and self._policy.min_free_bytes
                and self._writer.free_bytes() < self._policy.min_free_bytes):
            self._writer.release_space()  # let the consumer reclaim what is already delivered
            return _Rejection(_TRANSIENT, _SERVICE_PROVIDER_PRESENTATION, _TEMPORARY_CONGESTION,
                              "free disk space below spool.min_free_bytes")
        return None

    def on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED: reject here (A-ASSOCIATE-RJ) or let pynetdicom negotiate."""
        assoc = event.assoc
        try:
            rejection = self.check(assoc)
        except Exception:  # noqa: BLE001 - fail closed, and say why
            log.exception("association_check_failed", peer_address=_peer_address(assoc))
            rejection = _Rejection(_TRANSIENT, _SERVICE_PROVIDER_ACSE, _NO_REASON, "association check failed")
        if rejection is None:
            return
        with self._lock:
            self._reasons[assoc] = rejection.reason
        # What pynetdicom's ACSE does for its own rejections; run_reactor then skips negotiation.
        assoc.acse.send_reject(rejection.result, rejection.source, rejection.diagnostic)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def on_rejected(self, event: evt.Event) -> None:
        """EVT_REJECTED: one ``association_rejected`` event per refusal, ours or pynetdicom's."""
        assoc = event.assoc
        with self._lock:
            reason = self._reasons.pop(assoc, None)
        response = assoc.acceptor.primitive
        if reason is None:
            key = (getattr(response, "result_source", None), getattr(response, "diagnostic", None))
            reason = _BUILTIN_REASONS.get(key, "rejected by pynetdicom")
        request = assoc.requestor.primitive
        log.warning(
            "association_rejected",
            calling_ae=str(getattr(request, "calling_ae_title", "") or "").strip(),
            called_ae=str(getattr(request, "called_ae_title", "") or "").strip(),
            peer_address=_peer_address(assoc),
            reason=reason,
            transient=getattr(response, "result", None) == _TRANSIENT,
        )


def _peer_address(assoc: Association) -> str | None:
    try:
        return assoc.requestor.address
    except Exception:  # noqa: BLE001 - no address info (not from a socket)
        return None
