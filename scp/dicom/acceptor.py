"""The daemon's acceptor: one listening socket, connections handed to association processes.

With ``dicom.listener_processes`` > 1 the daemon itself only accepts. Each accepted TCP
connection goes, over that process's :class:`~scp.dicom.handoff.Channel`, to the association
process serving the fewest connections (``SO_REUSEPORT`` was not used: the kernel spreads
connections by a hash of the peer's address and port, so 4 associations on 2 processes often
land 3 + 1 or 4 + 0; and each process would then count only its own associations).

Because every connection passes through here, the limits stay global and exact: the
acceptor counts open connections across all processes and marks a connection that exceeds
``dicom.max_associations`` as over the limit; its association process then answers the
A-ASSOCIATE-RQ with a transient A-ASSOCIATE-RJ (local limit exceeded), as a single process
does. A connection counts until its process says it closed, or the process dies.

The same thread reads what association processes send back: C-STORE answers (given to the
daemon's store observers: metrics, audit) and log events (re-emitted through the daemon's
logging, so there is one log stream).
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from .handoff import Channel

__all__ = ["Acceptor", "ForwardedStore", "StoreAnswerObserver"]

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class ForwardedStore:
    """One C-STORE answer as an association process reports it."""

    calling_ae: str
    calling_address: str | None
    sop_instance_uid: str
    sop_class_uid: str
    status: int
    occurred: datetime
    patient: dict[str, Any] | None


StoreAnswerObserver = Callable[[ForwardedStore], None]


@dataclass(slots=True)
class _Slot:
    index: int
    channel: Channel
    pid: int
    connections: set[int] = field(default_factory=set)
    ready: bool = False


class Acceptor:
    """Accepts on ``(host, port)`` in a thread and distributes connections to attached slots."""

    def __init__(self, host: str, port: int, *, max_associations: int,
                 store_observers: Sequence[StoreAnswerObserver] = ()) -> None:
        family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        self._listening = socket.socket(family, kind, proto)
        try:
            self._listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listening.bind(address)
            self._listening.listen(128)
        except OSError:
            self._listening.close()
            raise
        self.address: tuple[Any, ...] = self._listening.getsockname()
        self._max = max_associations
        self._observers = list(store_observers)
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._slots: dict[int, _Slot] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listening, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._accepting = True
        self._stopped = False
        self._next_id = 0
        self._thread = threading.Thread(target=self._run, name="sr2fhir-acceptor", daemon=True)

    @property
    def port(self) -> int:
        return int(self.address[1])

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        """The accept thread runs (the watchdog's and readiness's listener check)."""
        return self._thread.is_alive() and self._accepting

    @property
    def active_associations(self) -> int:
        with self._lock:
            return sum(len(slot.connections) for slot in self._slots.values())

    def attach(self, index: int, channel: Channel, pid: int) -> None:
        """Serve through this association process from now on (a restart replaces the slot)."""
        with self._lock:
            self._slots[index] = _Slot(index, channel, pid)
        self._wake()

    def wait_ready(self, count: int, timeout_s: float) -> bool:
        """Block until ``count`` attached processes said they serve (bounded); whether they did."""
        with self._ready:
            return self._ready.wait_for(lambda: sum(slot.ready for slot in self._slots.values()) >= count,
                                        timeout=timeout_s)

    def stop_accepting(self) -> None:
        """Close the listening socket; connections already handed over go on."""
        self._accepting = False
        self._wake()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (after the association processes ended, so their last messages are read)."""
        self._stopped = True
        self._wake()
        self._thread.join(timeout_s)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _run(self) -> None:
        registered: dict[int, Channel] = {}
        try:
            while True:
                with self._lock:
                    current = {slot.index: slot.channel for slot in self._slots.values()}
                for index, channel in list(registered.items()):
                    if current.get(index) is not channel:  # ended or replaced
                        self._selector.unregister(channel.socket)
                        channel.close()
                        del registered[index]
                for index, channel in current.items():
                    if index not in registered:
                        self._selector.register(channel.socket, selectors.EVENT_READ, index)
                        registered[index] = channel
                if not self._accepting and self._listening.fileno() >= 0:
                    self._selector.unregister(self._listening)
                    self._listening.close()
                final = self._stopped  # one last pass: what the ended processes still said
                for key, _mask in self._selector.select(0 if final else None):
                    if key.data == "wake":
                        self._wake_r.recv(4096)
                    elif key.data is None:
                        if self._accepting:
                            self._accept()
                    else:
                        self._read(key.data, registered[key.data])
                if final and not self._drain_pending(registered):
                    return
        except Exception:
            log.exception("acceptor_failed")
            raise
        finally:
            if self._listening.fileno() >= 0:
                self._listening.close()

    def _drain_pending(self, registered: dict[int, Channel]) -> bool:
        """Whether a channel still has something to read (after stop)."""
        return any(key.data not in (None, "wake") for key, _ in self._selector.select(0)) and bool(registered)

    def _accept(self) -> None:
        try:
            conn, peer = self._listening.accept()
        except OSError:
            return
        try:
            while True:
                with self._lock:
                    if not self._slots:
                        log.warning("association_aborted", peer_address=str(peer[0]),
                                    reason="no association process running (restarting)")
                        return
                    total = sum(len(slot.connections) for slot in self._slots.values())
                    slot = min(self._slots.values(), key=lambda s: (len(s.connections), s.index))
                    conn_id = self._next_id
                    self._next_id += 1
                    slot.connections.add(conn_id)
                try:
                    slot.channel.send(("conn", conn_id, list(peer), total >= self._max), conn.fileno())
                    return
                except OSError:  # that process just died: forget it, try another
                    self._detach(slot.index, slot.channel)
        finally:
            conn.close()  # the association process holds its own copy

    def _detach(self, index: int, channel: Channel) -> None:
        with self._lock:
            slot = self._slots.get(index)
            if slot is not None and slot.channel is channel:
                del self._slots[index]

    def _read(self, index: int, channel: Channel) -> None:
        try:
            message, passed = channel.receive()
        except OSError:
            message, passed = None, None
        if passed is not None:
            passed.close()
        if message is None:  # the process ended: its connections went with it (closed at the loop's top)
            self._detach(index, channel)
            return
        kind = message[0]
        if kind == "ready":
            with self._ready:
                slot = self._slots.get(index)
                if slot is not None and slot.channel is channel:
                    slot.ready = True
                    self._ready.notify_all()
        elif kind == "closed":
            with self._lock:
                slot = self._slots.get(index)
                if slot is not None:
                    slot.connections.discard(message[1])
        elif kind == "store":
            answer = ForwardedStore(message[1], message[2], message[3], message[4], message[5],
                                    datetime.fromisoformat(message[6]), message[7])
            for observer in self._observers:
                try:
                    observer(answer)
                except Exception:  # noqa: BLE001 - an observer never stops the acceptor
                    log.exception("store_observer_failed")
        elif kind == "log":
            _emit(message[1], message[2], index)


def _emit(method_name: str, event_dict: dict[str, Any], index: int) -> None:
    """Re-emit an association process's log event through this process's logging, with
    ``listener_process`` (its index) added."""
    event = str(event_dict.pop("event", ""))
    event_dict.setdefault("listener_process", index)
    method = getattr(log, method_name if method_name in {"debug", "info", "warning", "error", "critical"}
                     else "info")
    method(event, **event_dict)
