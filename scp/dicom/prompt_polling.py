"""Prompt polling: an association's DUL thread that looks often while the peer is busy.

pynetdicom's DUL thread (:class:`pynetdicom.dul.DULServiceProvider`) polls its socket for
the peer's PDUs and its queue for the PDUs the association thread wants sent, sleeping
``_run_loop_delay`` (1 ms) after each look that found nothing. A C-STORE crosses that sleep
twice, the request in and the response out, so on one association about a third of each
~3 ms exchange is spent asleep with the request or the answer waiting.

:class:`PromptDUL` sleeps :data:`BUSY_DELAY_S` instead while the peer is busy (a PDU read
within the last :data:`BUSY_WINDOW_S`) and pynetdicom's own delay once it has been quiet
for longer: polling that often costs about a quarter of a core, which a burst of C-STOREs
repays and an association left open and idle must not pay (pynetdicom's 1 ms delay
already costs it about 5 %). :func:`poll_delay` is the rule.

It relies on two internals of pynetdicom 3: ``_run_loop_delay``, read before each sleep,
and ``_is_transport_event``, true when the DUL read a PDU.
``tests/scp/test_prompt_polling.py`` checks both against the installed pynetdicom.
"""

from __future__ import annotations

import time

from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider

__all__ = ["BUSY_DELAY_S", "BUSY_WINDOW_S", "PromptDUL", "make_prompt", "poll_delay", "poll_promptly"]

BUSY_DELAY_S = 0.00002
"""The DUL thread's sleep between idle looks while the peer is busy (with the kernel's
timer slack and the loop's own work, a look about every 0.1 ms)."""

BUSY_WINDOW_S = 0.02
"""How long after the peer's last PDU it counts as busy: a sender on one association sends
its next request within a round trip of our answer."""


def poll_delay(now: float, last_read: float, idle_delay: float) -> float:
    """The sleep before the DUL thread's next look: :data:`BUSY_DELAY_S` when a PDU was
    read at most :data:`BUSY_WINDOW_S` before ``now`` (``time.monotonic()`` seconds), else
    ``idle_delay``; never more than ``idle_delay``."""
    return min(BUSY_DELAY_S, idle_delay) if now - last_read <= BUSY_WINDOW_S else idle_delay


class PromptDUL(DULServiceProvider):
    """A DUL service provider whose idle sleep follows :func:`poll_delay`; made from
    pynetdicom's own by :func:`make_prompt`, never constructed directly."""

    _idle_delay: float
    _last_read: float

    @property  # type: ignore[override]
    def _run_loop_delay(self) -> float:
        return poll_delay(time.monotonic(), self._last_read, self._idle_delay)

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        self._idle_delay = value

    def _is_transport_event(self) -> bool:
        read = super()._is_transport_event()
        if read:
            self._last_read = time.monotonic()
        return read


def make_prompt(dul: DULServiceProvider) -> PromptDUL:
    """Make an association's DUL service provider, before its thread starts, a
    :class:`PromptDUL` (the same object): pynetdicom's delay becomes its idle delay, and the
    peer counts as busy from now (it has just connected and is about to send)."""
    idle_delay = float(dul.__dict__.pop("_run_loop_delay", 0.001))
    dul.__class__ = PromptDUL
    assert isinstance(dul, PromptDUL)
    dul._idle_delay = idle_delay
    dul._last_read = time.monotonic()
    return dul


def poll_promptly(event: evt.Event) -> None:
    """EVT_CONN_OPEN (bound by :func:`scp.dicom.server.start_listener`): :func:`make_prompt`
    on the new association's DUL, which pynetdicom starts only after this event."""
    make_prompt(event.assoc.dul)
