"""Associations whose two pynetdicom threads wake when there is work instead of polling.

An association accepted by pynetdicom runs two threads, and each sleeps 1 ms whenever it
finds nothing to do:

- the DUL thread (:class:`pynetdicom.dul.DULServiceProvider`) reads the peer's PDUs and
  sends the ones queued for it, sleeping ``_run_loop_delay`` after each look that found
  nothing;
- the association thread (:class:`pynetdicom.association.Association`) takes each decoded
  DIMSE message off its queue and runs the handler, sleeping 1 ms before every look.

A C-STORE crosses three of those sleeps (request read, message handled, answer sent), so on
one association about half of each ~3 ms exchange was spent asleep with work waiting, and
polling more often costs CPU and the GIL that the handler needs. Here instead:

- :class:`PromptDUL` waits, before each of its sleeps, until the socket is readable or a PDU
  is queued for sending (the queue, a :class:`WakingQueue`, wakes it through a socket pair),
  for at most :data:`LONGEST_WAIT_S`, then sleeps 0 s (on Linux with a timer slack of 1 µs,
  so that costs microseconds, not the default 50 µs slack);
- the association thread's 1 ms sleep waits on its message queue instead, for the same
  1 ms at most (:func:`install`).

What the reactors check besides their queues and socket (kill flags, the ARTIM and idle
timers, all in seconds) is still seen within those waits, so an association may take up to
10 ms longer to end. Only associations made prompt here (:func:`make_prompt`, on
EVT_CONN_OPEN) change; any other pynetdicom association in the process keeps its sleeps.

It relies on internals of pynetdicom 3: the DUL reactor sleeps ``_run_loop_delay`` and
sends what ``to_provider_queue.put`` queued; the association reactor calls
``time.sleep(0.001)`` through its module's ``time``, then takes messages off
``dimse.msg_queue``. ``tests/scp/test_prompt_reactors.py`` checks them against the installed
pynetdicom.
"""

from __future__ import annotations

import ctypes
import queue
import select
import socket
import ssl
import sys
import threading
import time
import types
from typing import Any

import pynetdicom.association
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

__all__ = ["LONGEST_WAIT_S", "PromptDUL", "WakingQueue", "install", "make_prompt", "wake_promptly"]

LONGEST_WAIT_S = 0.01
"""The longest the DUL thread waits for work before it looks round anyway (pynetdicom: 1 ms)."""

ASSOCIATION_REACTOR_SLEEP_S = 0.001
"""The association reactor's sleep before each look (pynetdicom 3's constant)."""

_PR_SET_TIMERSLACK = 29  # prctl(2)
_TIMER_SLACK_NS = 1000


class WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that also writes a byte to ``wake`` on each put (a full or closed socket
    is ignored: the reader is then awake already, or gone)."""

    def __init__(self, wake: socket.socket) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        try:
            self._wake.send(b"\0")
        except OSError:
            pass


class PromptDUL(DULServiceProvider):
    """A DUL service provider that waits for work (see the module); made from pynetdicom's
    own by :func:`make_prompt`, never constructed directly."""

    _idle_delay: float
    _woken: socket.socket
    _waker: socket.socket

    @property  # type: ignore[override]
    def _run_loop_delay(self) -> float:
        if threading.current_thread() is not self:  # the association thread, waiting for this one to end
            return self._idle_delay
        self.wait_for_work(LONGEST_WAIT_S)
        return 0.0

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        self._idle_delay = value

    def wait_for_work(self, timeout: float) -> None:
        """Return once the peer's socket is readable (or holds decrypted TLS data), a PDU
        is queued for sending, or ``timeout`` seconds have passed."""
        association_socket = self.socket
        sock = association_socket.socket if association_socket is not None else None
        if not self.to_provider_queue.empty():
            return
        if sock is None:
            time.sleep(timeout)
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        try:
            readable, _, _ = select.select([sock, self._woken], [], [], timeout)
        except (OSError, ValueError):  # the socket closed meanwhile: the reactor will see it
            return
        if self._woken in readable:
            try:
                self._woken.recv(4096)
            except OSError:
                pass

    def run(self) -> None:
        """The thread: pynetdicom's reactor, then the wake-up sockets closed."""
        _reduce_timer_slack()
        try:
            super().run()
        finally:
            self._waker.close()
            self._woken.close()


def _reduce_timer_slack() -> None:
    """Ask Linux for a 1 µs timer slack for the calling thread (the default 50 µs makes
    every ``time.sleep(0)`` of the reactor cost about 0.1 ms on a VM); elsewhere nothing."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, _TIMER_SLACK_NS, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def make_prompt(dul: DULServiceProvider) -> PromptDUL:
    """Make an association's DUL service provider a :class:`PromptDUL` (the same object),
    before its thread starts: its send queue becomes a :class:`WakingQueue` (holding
    whatever was queued already), and pynetdicom's delay what other threads waiting for it
    to end sleep between looks. The association's own reactor then waits on its message
    queue too, once :func:`install` has run."""
    idle_delay = float(dul.__dict__.pop("_run_loop_delay", 0.001))
    woken, waker = socket.socketpair()
    woken.setblocking(False)
    waker.setblocking(False)
    sending = WakingQueue(waker)
    while True:
        try:
            sending.put(dul.to_provider_queue.get_nowait())
        except queue.Empty:
            break
    dul.__class__ = PromptDUL
    assert isinstance(dul, PromptDUL)
    dul._idle_delay = idle_delay
    dul._woken, dul._waker = woken, waker
    dul.to_provider_queue = sending
    return dul


class _ReactorTime(types.ModuleType):
    """``pynetdicom.association``'s ``time``: the real module, except that the reactor's
    1 ms sleep in the thread of an association with a :class:`PromptDUL` waits on that
    association's DIMSE message queue instead (returning as soon as a message is there)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        if (seconds == ASSOCIATION_REACTOR_SLEEP_S and isinstance(thread, Association)
                and isinstance(thread.dul, PromptDUL)):
            messages = thread.dimse.msg_queue
            with messages.not_empty:  # holds messages.mutex: hence _qsize(), not qsize()
                if not messages._qsize():
                    messages.not_empty.wait(seconds)
            return
        time.sleep(seconds)


_install_lock = threading.Lock()


def install() -> None:
    """Give ``pynetdicom.association`` the :class:`_ReactorTime` module (once per process;
    associations without a :class:`PromptDUL` sleep exactly as before)."""
    with _install_lock:
        if not isinstance(pynetdicom.association.time, _ReactorTime):
            pynetdicom.association.time = _ReactorTime("time")  # type: ignore[assignment]


def wake_promptly(event: evt.Event) -> None:
    """EVT_CONN_OPEN (bound by :func:`scp.dicom.server.start_listener`, which calls
    :func:`install`): :func:`make_prompt` on the new association's DUL, which pynetdicom
    starts only after this event."""
    make_prompt(event.assoc.dul)
