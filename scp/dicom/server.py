"""The listener's lifecycle: set up the AE, bind the port, guard each connection, stop and drain.

:func:`start_listener` builds the AE (SR storage and Verification presentation contexts,
timeouts, association limit, maximum PDU size), binds the admission gate
(:mod:`scp.dicom.admission`) and the C-STORE handler (:mod:`scp.dicom.store`), and serves in
background threads; :class:`Listener` is the running SCP. Each accepted connection gets
TCP_NODELAY, a socket timeout and a cap on the PDU length read (EVT_CONN_OPEN), and its two
pynetdicom threads wake when there is work instead of polling every 1 ms
(:mod:`scp.dicom.prompt_reactors`).

With TLS, the handshake runs in the connection's own thread (:class:`_AssociationServer`),
bounded by the ACSE timeout, never in the accept loop: a client that fails the handshake or
never starts it is logged (``tls_handshake_failed``) and dropped while the listener goes on
accepting.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterable, Sequence
from typing import Any

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

from ..spool import SpoolWriter
from .admission import AllowedPeer, AssociationGate, ListenerPolicy, PeerRule
from .association_log import AssociationLog
from .handoff import HandedConnections
from .prompt_reactors import install as install_prompt_reactors
from .prompt_reactors import wake_promptly
from .store import StoreObserver, handle_store

__all__ = [
    "MIN_PDU_CAP_BYTES",
    "TRANSFER_SYNTAXES",
    "UNLIMITED_PDU_CAP_BYTES",
    "Listener",
    "start_listener",
]

log = structlog.get_logger()

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]


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
        return self._wrapped(client), address

    def _wrapped(self, client: socket.socket) -> socket.socket:
        if not self.ssl_context:
            return client
        client.settimeout(self.handshake_timeout_s)
        try:
            return self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError):
            client.close()
            raise

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


class _HandoffServer(_AssociationServer):
    """An association process's server: connections come from the daemon's acceptor over a
    channel (:class:`HandedConnections`), not from ``accept``; the rest is unchanged.

    The channel's socket stands in for the listening socket (``serve_forever`` selects on it),
    and is not closed with the server: the daemon still hears the last connections end.
    """

    handed: HandedConnections

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.close()  # the TCP socket socketserver made; never bound
        self.handed = self.ae.handed  # type: ignore[attr-defined]
        self.socket = self.handed.channel.socket
        self.server_address = self.handed.address

    def server_activate(self) -> None:
        pass

    def server_close(self) -> None:
        pass

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address, conn_id, over_limit = self.handed.receive()
        try:
            request = self._wrapped(client)
        except (OSError, ValueError):
            self.handed.done(conn_id)
            raise
        self.handed.arrived(request, conn_id, over_limit)
        return request, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.handed.never_opened(request)


class _AE(AE):
    """An AE whose non-blocking servers are :class:`_AssociationServer` (:class:`_HandoffServer`
    when ``handed`` is set: an association process)."""

    handed: HandedConnections | None = None

    def make_server(self, address: Any, *args: Any, server_class: Any = None, **kwargs: Any) -> Any:
        if server_class is ThreadedAssociationServer:
            server_class = _AssociationServer if self.handed is None else _HandoffServer
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
    policy: ListenerPolicy = ListenerPolicy(),  # noqa: B008 - a frozen dataclass
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
    handed: HandedConnections | None = None,
) -> Listener:
    """Bind the SCP and serve in background threads; returns once the port is bound.

    ``allowed_calling_ae_titles`` may call from anywhere, each of ``allowed_peers``
    (``.ae_title``, ``.addresses``: IP addresses or networks, objects or strings) only from
    its addresses; both empty = anyone. ``ssl_context``: a server-side context (see
    :func:`scp.dicom.tls.server_ssl_context`); the port then speaks TLS only.
    ``reject_associations_below_min_free``: refuse associations (transient A-ASSOCIATE-RJ)
    while the spool has less than ``policy.min_free_bytes`` free, besides answering
    C-STOREs 0xA700 then. ``handed``: serve connections the daemon's acceptor hands over
    (an association process, see :mod:`scp.dicom.acceptor`) instead of binding ``host:port``;
    the acceptor then decides who is over ``max_associations``.
    """
    if ssl_context is not None and ssl_context.minimum_version < ssl.TLSVersion.TLSv1_2:
        raise ValueError("the DICOM listener's TLS context must not allow versions below TLS 1.2")
    ae = _AE(ae_title=ae_title)
    ae.handed = handed
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
        over_limit=None if handed is None else handed.over_limit,
    )
    if gate.allowed_titles:
        ae.require_calling_aet = gate.allowed_titles  # a backstop: the gate decides first
    for sop_class in sorted(SR_STORAGE_SOP_CLASSES):
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
    associations = AssociationLog()
    listener = Listener(ae)
    # The acceptor hears a connection's end before its association_closed line (tests and
    # operators who saw the line may connect again at once).
    handlers: list = [] if handed is None else [(evt.EVT_CONN_OPEN, handed.opened), (evt.EVT_CONN_CLOSE, handed.closed)]
    handlers += [
        (evt.EVT_REQUESTED, gate.on_requested),
        (evt.EVT_REJECTED, gate.on_rejected),
        (evt.EVT_C_STORE, handle_store, [writer, policy, [*store_observers, associations]]),
        *associations.handlers(),
    ]
    handlers.append((evt.EVT_CONN_OPEN, _guard_connection, [tcp_nodelay, network_timeout_s, maximum_pdu_size]))
    handlers.append((evt.EVT_CONN_OPEN, wake_promptly))
    install_prompt_reactors()
    listener._serve(host, port, handlers, ssl_context)
    return listener
