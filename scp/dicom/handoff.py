"""The channel between the daemon's acceptor and one association process.

One ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair per association process (message boundaries
kept, file descriptors passed with ``SCM_RIGHTS``). Messages are :mod:`marshal`-encoded
tuples (the peer is our own child on an unnamed socket pair, so nothing else can write to
it; marshal costs a few microseconds where JSON costs tens):

daemon -> association process
    ``("conn", conn_id, peer_address_tuple, over_limit)`` with the accepted TCP socket attached.
association process -> daemon
    ``("ready",)``: it serves (sent once, after its listener started);
    ``("closed", conn_id)``: that connection ended (its slot counts no more);
    ``("store", calling_ae, calling_address, sop_instance_uid, sop_class_uid, status, occurred_iso, patient)``:
    one C-STORE answered (metrics and audit are kept by the daemon);
    ``("log", method_name, event_dict)``: one log event, rendered by the daemon's own logging.
"""

from __future__ import annotations

import marshal
import socket
import threading
from typing import Any

__all__ = ["MAX_MESSAGE_BYTES", "Channel", "HandedConnections", "channel_pair", "plain"]

MAX_MESSAGE_BYTES = 256 * 1024
"""A log event is cut to fit (see :meth:`Channel.send`); nothing else comes near."""


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(daemon's end, association process's end), both blocking and close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class Channel:
    """One end of the socket pair; ``send``/``receive`` are safe from several threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock

    def fileno(self) -> int:
        return self.socket.fileno()

    def send(self, message: tuple[Any, ...], fd: int | None = None) -> None:
        """Send one message (and ``fd``). Raises OSError when the other end is gone."""
        data = marshal.dumps(message)
        if len(data) > MAX_MESSAGE_BYTES:
            data = marshal.dumps(message[:2] + (repr(message[2:])[:MAX_MESSAGE_BYTES // 2],))
        socket.send_fds(self.socket, [data], [] if fd is None else [fd])

    def receive(self) -> tuple[tuple[Any, ...] | None, socket.socket | None]:
        """(message, passed socket or None); (None, None) when the other end closed."""
        data, fds, _flags, _address = socket.recv_fds(self.socket, MAX_MESSAGE_BYTES, 1)
        passed = socket.socket(fileno=fds[0]) if fds else None
        if not data:
            if passed is not None:
                passed.close()
            return None, None
        return marshal.loads(data), passed  # noqa: S302 - our own child on an unnamed socket pair

    def close(self) -> None:
        self.socket.close()


def plain(value: Any) -> Any:
    """``value`` as something marshal takes (str for anything unusual), for log events."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


class HandedConnections:
    """The association process's side: connections arrive from the channel, not from ``accept``.

    Tracks each connection from its arrival to its end so the daemon hears ``("closed", id)``
    exactly once per connection, and keeps the acceptor's over-the-limit verdict for the
    association gate (:meth:`over_limit`).
    """

    def __init__(self, channel: Channel, address: tuple[Any, ...], ended: threading.Event | None = None) -> None:
        self.channel = channel
        self.address = address
        self.ended = threading.Event() if ended is None else ended
        """Set when the daemon closed the channel (it stopped or died)."""
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Any, int, bool]] = {}
        self._open: dict[int, tuple[int, bool]] = {}

    def receive(self) -> tuple[socket.socket, tuple[Any, ...], int, bool]:
        """The next handed-over connection: (socket, peer address, id, over the limit).
        Raises OSError when the channel closed (and sets :attr:`ended`)."""
        message, sock = self.channel.receive()
        if message is None:
            self.ended.set()
            raise OSError("the daemon closed the association channel")
        if message[0] != "conn" or sock is None:
            if sock is not None:
                sock.close()
            raise OSError(f"unexpected message on the association channel: {message[0]!r}")
        return sock, tuple(message[2]), int(message[1]), bool(message[3])

    def arrived(self, request: Any, conn_id: int, over_limit: bool) -> None:
        """``request`` (the socket pynetdicom will use) is connection ``conn_id``."""
        with self._lock:
            self._pending[id(request)] = (request, conn_id, over_limit)

    def opened(self, event: Any) -> None:
        """EVT_CONN_OPEN: the association now owns the connection."""
        sock = event.assoc.dul.socket.socket
        with self._lock:
            entry = self._pending.pop(id(sock), None)
            if entry is not None:
                self._open[id(event.assoc)] = entry[1:]

    def over_limit(self, assoc: Any) -> bool:
        """Whether the acceptor counted this association's connection over ``max_associations``."""
        with self._lock:
            entry = self._open.get(id(assoc))
        return entry is not None and entry[1]

    def closed(self, event: Any) -> None:
        """EVT_CONN_CLOSE: tell the daemon the slot is free."""
        with self._lock:
            entry = self._open.pop(id(event.assoc), None)
        if entry is not None:
            self.done(entry[0])

    def never_opened(self, request: Any) -> None:
        """After a connection's thread: if no association took it (TLS handshake failed), it ended."""
        with self._lock:
            entry = self._pending.pop(id(request), None)
        if entry is not None:
            self.done(entry[1])

    def done(self, conn_id: int) -> None:
        try:
            self.channel.send(("closed", conn_id))
        except OSError:
            pass  # the daemon is gone; it no longer counts anything
