"""The DICOM side: a pynetdicom C-STORE SCP for SR instances that spools before it answers.

``handle_store`` decodes only what the acknowledgement needs (SOP class and instance, and
that there is a content tree), makes the instance durable through the spool writer, and only
then answers Success. Failures are statuses, never exceptions: the handler does not raise.

Who gets in is decided when the A-ASSOCIATE-RQ arrives (:class:`AssociationGate`, bound to
EVT_REQUESTED): the called AE title, the calling AE title and the peer's address against the
allow lists, the association limit and, optionally, the spool's free-space reserve. A refusal
is an A-ASSOCIATE-RJ and one ``association_rejected`` log event.

With TLS, the handshake runs in the connection's own thread (:class:`_AssociationServer`),
bounded by the ACSE timeout, never in the accept loop: a client that fails the handshake or
never starts it is logged (``tls_handshake_failed``) and dropped while the listener goes on
accepting.
"""

from __future__ import annotations

import socket
import ssl
import threading
import weakref
from collections.abc import Iterable, Sequence
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
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from mapping import SR_STORAGE_SOP_CLASSES

from .association_log import AssociationLog
from .part10 import part10_bytes
from ..spool import RecordFields, SpoolError, SpoolFullError, SpoolWriter

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_DOES_NOT_MATCH_SOP_CLASS",
    "NOT_A_STRUCTURED_REPORT",
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
    "SUCCESS",
    "TRANSFER_SYNTAXES",
    "AllowedPeer",
    "AssociationGate",
    "Listener",
    "ListenerPolicy",
    "handle_store",
    "start_listener",
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
        active = sum(1 for other in assoc.ae.active_associations if other.is_acceptor)
        if active > self._max_associations:  # this request's own thread is counted too
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
            data = part10_bytes(event.encoded_dataset(include_meta=False), sop_class_uid=sop_class_uid,
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


# A peer may announce any PDU length; pynetdicom then reads (and buffers) all of it.
UNLIMITED_PDU_CAP_BYTES = 64 * 1024 * 1024
MIN_PDU_CAP_BYTES = 1024 * 1024


def _guard_connection(event: evt.Event, tcp_nodelay: bool, network_timeout_s: float, max_pdu_size: int) -> None:
    """EVT_CONN_OPEN: make a misbehaving peer cost a bounded time and memory.

    - TCP_NODELAY: without it every C-STORE response waits ~40 ms on delayed ACKs.
    - A socket timeout: pynetdicom reads a whole PDU in one blocking loop, so a peer that stops
      in the middle of a PDU would hold its association slot forever (network_timeout_s and
      acse_timeout_s are only checked between PDUs).
    - A cap on the PDU length read: ``dicom.max_pdu_size`` (at least 1 MiB, 64 MiB when 0 =
      unlimited); a peer announcing more is disconnected instead of buffered.
    """
    association_socket = event.assoc.dul.socket
    sock = association_socket.socket if association_socket else None
    if sock is None:
        return
    try:
        if tcp_nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(network_timeout_s)
    except OSError:
        pass
    cap = max(max_pdu_size, MIN_PDU_CAP_BYTES) if max_pdu_size else UNLIMITED_PDU_CAP_BYTES
    receive = association_socket.recv

    def capped_recv(nr_bytes: int) -> bytearray:
        if nr_bytes > cap:
            log.warning("association_aborted", peer_address=_peer(sock), reason=f"PDU of {nr_bytes} bytes announced, "
                        f"over the {cap}-byte limit (dicom.max_pdu_size)")
            raise OSError(f"PDU length {nr_bytes} over the limit of {cap} bytes")
        return receive(nr_bytes)

    association_socket.recv = capped_recv


def _peer(sock: socket.socket) -> str | None:
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return None


_TLS_REASONS = {
    "WRONG_VERSION_NUMBER": "not TLS (plain DICOM or another protocol?)",
    "HTTP_REQUEST": "not TLS (an HTTP request)",
    "UNSUPPORTED_PROTOCOL": "TLS version below 1.2 offered",
    "TLSV1_ALERT_PROTOCOL_VERSION": "TLS version below 1.2 offered",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
    "NO_SHARED_CIPHER": "no cipher suite in common",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust our certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client does not accept our certificate",
}


def _tls_failure(exc: BaseException, timeout_s: float) -> str:
    """Why a TLS handshake failed, in a few words plus OpenSSL's reason code when there is one."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate rejected: {exc.verify_message}"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError)):
        return "connection closed during the TLS handshake"
    if isinstance(exc, ssl.SSLError):
        code = str(exc.reason or exc.library or "TLS error")
        return f"{_TLS_REASONS[code]} ({code})" if code in _TLS_REASONS else code
    if isinstance(exc, TimeoutError):
        return f"no TLS handshake within {timeout_s:g} s"
    return type(exc).__name__


class _AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the TLS handshake moved out of the accept loop.

    ``AssociationServer.get_request`` wraps accepted sockets with the default
    ``do_handshake_on_connect=True``, so one client that connects and sends nothing (or
    dribbles a handshake) would hold the accept loop, and every other sender, indefinitely.
    Here accepting only wraps; the handshake runs in the connection's thread, bounded by
    ``handshake_timeout_s``.
    """

    handshake_timeout_s: float = 30.0
    daemon_threads = True  # a client stuck in its handshake must not hold up process exit

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if not self.ssl_context:
            return client, address
        client.settimeout(self.handshake_timeout_s)
        try:
            wrapped = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError):
            client.close()
            raise
        return wrapped, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
                request.settimeout(None)  # as pynetdicom's own sockets: blocking, reads after select()
            except (OSError, ValueError) as exc:
                log.warning("tls_handshake_failed", peer_address=str(client_address[0]),
                            reason=_tls_failure(exc, self.handshake_timeout_s))
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


class _AE(AE):
    """An AE whose non-blocking servers are :class:`_AssociationServer`."""

    def make_server(self, address: Any, *args: Any, server_class: Any = None, **kwargs: Any) -> Any:
        if server_class is ThreadedAssociationServer:
            server_class = _AssociationServer
        server = super().make_server(address, *args, server_class=server_class, **kwargs)
        if isinstance(server, _AssociationServer) and self.acse_timeout:
            server.handshake_timeout_s = self.acse_timeout
        return server


class Listener:
    """The running SCP: starts non-blocking, stops accepting, then drains."""

    def __init__(self, ae: AE) -> None:
        self._ae = ae
        self._server: ThreadedAssociationServer | None = None
        self._idle = threading.Condition()

    def _serve(self, host: str, port: int, handlers: list, ssl_context: ssl.SSLContext | None = None) -> None:
        ended = [(event, self._association_ended) for event in (evt.EVT_RELEASED, evt.EVT_ABORTED, evt.EVT_CONN_CLOSE)]
        server = self._ae.start_server((host, port), block=False, evt_handlers=[*handlers, *ended],
                                       ssl_context=ssl_context)
        if not isinstance(server, _AssociationServer):  # pynetdicom changed how it makes servers
            server.shutdown()
            raise RuntimeError(  # noqa: TRY004 - not a caller's type error
                "pynetdicom did not use sr2fhir's association server class; refusing to "
                "run TLS handshakes in the accept loop")
        self._server = server

    @property
    def tls(self) -> bool:
        """True when the listener only speaks TLS."""
        return self._server is not None and self._server.ssl_context is not None

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
    allowed_peers: Iterable[PeerRule] = (),
    require_called_ae_title: bool = True,
    acse_timeout_s: float = 30,
    dimse_timeout_s: float = 30,
    network_timeout_s: float = 60,
    maximum_pdu_size: int = 0,
    tcp_nodelay: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    reject_associations_below_min_free: bool = False,
    store_observers: Sequence[StoreObserver] = (),
) -> Listener:
    """Bind the SCP and serve in background threads; returns once the port is bound.

    ``allowed_calling_ae_titles`` may call from anywhere, each of ``allowed_peers``
    (``.ae_title``, ``.addresses``: IP addresses or networks, objects or strings) only from
    its addresses; both empty = anyone. ``ssl_context``: a server-side context (see
    :func:`scp.dicom.tls.server_ssl_context`); the port then speaks TLS only.
    ``reject_associations_below_min_free``: refuse associations (transient A-ASSOCIATE-RJ)
    while the spool has less than ``policy.min_free_bytes`` free, besides answering
    C-STOREs 0xA700 then.
    """
    if ssl_context is not None and ssl_context.minimum_version < ssl.TLSVersion.TLSv1_2:
        raise ValueError("the DICOM listener's TLS context must not allow versions below TLS 1.2")
    ae = _AE(ae_title=ae_title)
    ae.maximum_associations = max_associations
    ae.acse_timeout = acse_timeout_s
    ae.dimse_timeout = dimse_timeout_s
    ae.network_timeout = network_timeout_s
    ae.maximum_pdu_size = maximum_pdu_size
    ae.require_called_aet = require_called_ae_title
    gate = AssociationGate(
        ae_title=ae_title,
        require_called_ae_title=require_called_ae_title,
        allowed_calling_ae_titles=allowed_calling_ae_titles,
        allowed_peers=[AllowedPeer.of(rule) for rule in allowed_peers],
        max_associations=max_associations,
        writer=writer,
        policy=policy,
        check_free_space=reject_associations_below_min_free,
    )
    if gate.allowed_titles:
        ae.require_calling_aet = gate.allowed_titles  # a backstop: the gate decides first
    for sop_class in sorted(SR_STORAGE_SOP_CLASSES):
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
    associations = AssociationLog()
    listener = Listener(ae)
    handlers: list = [
        (evt.EVT_REQUESTED, gate.on_requested),
        (evt.EVT_REJECTED, gate.on_rejected),
        (evt.EVT_C_STORE, handle_store, [writer, policy, [*store_observers, associations]]),
        *associations.handlers(),
    ]
    handlers.append((evt.EVT_CONN_OPEN, _guard_connection, [tcp_nodelay, network_timeout_s, maximum_pdu_size]))
    listener._serve(host, port, handlers, ssl_context)
    return listener
