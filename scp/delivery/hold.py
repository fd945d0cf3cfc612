"""Holding the whole queue while the FHIR endpoint itself is wrong (:class:`DeliveryHold`).

A failure that is the endpoint's (:attr:`fhir_client.Outcome.ENDPOINT`: 401 after the token
refresh, 403, a wrong base URL, TLS, an HTML page instead of FHIR, a token endpoint that refuses
us; the table is in :mod:`fhir_client.results`) would happen to every SR alike. Instead of
dead-lettering each of them, the forwarder keeps the item pending and the hold takes over::

    RUNNING --an item comes back ENDPOINT-------------------------> HELD     delivery_held
    HELD    --probe (GET [base]/metadata) fails--------------------> HELD     next probe after a backoff
    HELD    --probe answers-------------------------------------------> TRIAL
    TRIAL   --the trial item (oldest pending) comes back ENDPOINT---> HELD     it becomes a suspect
    TRIAL   --the server answers about the trial item's content------> RUNNING  delivery_resumed
    HELD, TRIAL --an item still in flight from before is answered----> RUNNING  delivery_resumed

While held the forwarder starts no item; ingest goes on (the spool fills, and
``spool.min_free_bytes`` still protects the disk). Probes back off like retries:
``initial_backoff_s`` doubling up to ``max_backoff_s`` (``fhir.retry``), plus jitter, at least
:data:`MIN_PROBE_INTERVAL_S`. One ``delivery_held`` line when the hold begins and one
``delivery_resumed`` when it ends; observers (metrics: the shared tally file; audit trail) are
told at the same two moments, before the line is logged.

**Why a trial**: a probe shows only that ``GET`` works. An endpoint that refuses ``POST`` alone
(405 at a proxy, a missing write scope: 403) would otherwise resume and hold again at every
probe; with one trial Bundle the hold lasts, and is logged, once.

**Suspects**: an item whose trial came back ENDPOINT while ``/metadata`` answered may be refused
for itself (a firewall rule that matches its content answers 403 like a missing scope does).
Later trials take it last. If, after another item's trial succeeded, it is refused for an
endpoint reason once more, :meth:`DeliveryHold.endpoint_failed` says to dead-letter it as its
own fault instead of holding the queue again: one such SR cannot stop the queue for good.

**Retry budget**: held time costs none. An ENDPOINT answer is final at once in the client (not
retried), the item stays pending, and its next ``send()`` after the hold starts a new
``fhir.retry.max_elapsed_s`` budget.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from fhir_client import SendResult

from ..common.times import Clock
from .reasons import HoldReason

__all__ = ["MIN_PROBE_INTERVAL_S", "DeliveryHold", "HoldObserver", "HoldState", "Probe", "ProbeBackoff"]

log = structlog.get_logger()

MIN_PROBE_INTERVAL_S = 0.5
"""Probes never come closer together than this, whatever ``fhir.retry`` says."""

Probe = Callable[[], Awaitable[str | None]]
"""Ask the endpoint whether it answers (``GET [base]/metadata``): None if it does, else why not."""

_Item = TypeVar("_Item")


class HoldState(enum.Enum):
    RUNNING = "running"
    HELD = "held"
    TRIAL = "trial"


class HoldObserver(Protocol):
    """Told when a hold begins and ends (:class:`scp.telemetry.metrics.WorkerMetrics`,
    :class:`scp.telemetry.audit.AuditTrail`). Implementations never raise."""

    def hold_started(self, reason: HoldReason) -> None: ...

    def hold_ended(self, reason: HoldReason, held_s: float) -> None: ...


@dataclass(frozen=True, slots=True)
class ProbeBackoff:
    """``initial_s`` doubling per failed probe up to ``max_s``, plus up to ``jitter_s``, capped at
    ``max_s`` and at least ``min_s`` (the retry policy's shape: ``fhir.retry``'s knobs)."""

    initial_s: float
    max_s: float
    jitter_s: float
    min_s: float = MIN_PROBE_INTERVAL_S

    def delay(self, failures: int, rng: random.Random) -> float:
        backoff = min(self.initial_s * 2.0 ** min(failures, 32), self.max_s) + rng.uniform(0, self.jitter_s)
        return max(self.min_s, min(backoff, self.max_s))


class DeliveryHold:
    """The hold's state machine; the forwarder (one event loop, no threads) drives it.

    The forwarder asks :meth:`admit` which fresh items it may start, tells :meth:`started`
    before it starts one, and reports each result: :meth:`endpoint_failed` for an ENDPOINT
    answer (True: dead-letter the item as its own fault, see the module docstring),
    :meth:`settled` for anything else. While :attr:`state` is HELD it waits
    :meth:`seconds_to_probe` and calls :meth:`probe`. ``clock`` is monotonic (backoff, hold
    duration), ``wall_clock`` Unix time (when the hold began, for people).
    """

    def __init__(self, probe: Probe, backoff: ProbeBackoff, *, observers: Sequence[HoldObserver] = (),
                 clock: Clock = time.monotonic, wall_clock: Clock = time.time, rng: random.Random | None = None) -> None:
        self._probe = probe
        self._backoff = backoff
        self._observers = tuple(observers)
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng if rng is not None else random.Random()
        self.state = HoldState.RUNNING
        self.reason: HoldReason | None = None
        self.suspects: set[str] = set()
        """Items whose trial came back ENDPOINT while ``/metadata`` answered."""
        self.trial: str | None = None
        """The item being tried (TRIAL only)."""
        self.probes_failed = 0
        self._held_at = 0.0
        self._next_probe_at = 0.0
        self._last_probe_failure: str | None = None

    @property
    def held(self) -> bool:
        """True while no ordinary delivery may start (HELD or TRIAL)."""
        return self.state is not HoldState.RUNNING

    # -- what the forwarder asks --------------------------------------------------------

    def admit(self, candidates: Sequence[_Item], key: Callable[[_Item], str]) -> list[_Item]:
        """Of ``candidates`` (pending items, oldest first; ``key`` gives an item's id), those
        that may start now: all while RUNNING; none while HELD or while a trial is out; in
        TRIAL the oldest one that is not a suspect (else the oldest suspect)."""
        if self.state is HoldState.RUNNING:
            return list(candidates)
        if self.state is HoldState.HELD or self.trial is not None:
            return []
        ordered = sorted(candidates, key=lambda item: key(item) in self.suspects)  # stable: oldest first
        return ordered[:1]

    def may_start(self) -> bool:
        """Whether one more item may start now (checked again right before each start)."""
        return self.state is HoldState.RUNNING or (self.state is HoldState.TRIAL and self.trial is None)

    def started(self, item_id: str) -> bool:
        """The forwarder starts ``item_id`` now; True when it is the trial."""
        if self.state is HoldState.TRIAL and self.trial is None:
            self.trial = item_id
            log.debug("delivery_hold_trial", spool_id=item_id)
            return True
        return False

    def seconds_to_probe(self) -> float:
        """How long until the next probe is due (HELD); 0 when it is due now."""
        return max(0.0, self._next_probe_at - self._clock())

    async def probe(self) -> bool:
        """Probe the endpoint now (HELD only); True when it answered (TRIAL comes next)."""
        if self.state is not HoldState.HELD:
            return False
        try:
            failure = await self._probe()
        except Exception as exc:  # noqa: BLE001 - a probe that breaks counts as "not yet"
            failure = f"{type(exc).__name__}: {exc}"
        if self.state is not HoldState.HELD:  # resumed meanwhile by an answer to an item in flight
            return failure is None
        if failure is None:
            self.state, self.trial = HoldState.TRIAL, None
            log.debug("delivery_hold_probe_answered")
            return True
        self.probes_failed += 1
        self._schedule_probe()
        if failure != self._last_probe_failure:  # what changed, not every probe
            log.info("delivery_hold_probe_failed", reason=failure, probes_failed=self.probes_failed,
                     next_probe_in_s=round(self.seconds_to_probe(), 1))
            self._last_probe_failure = failure
        return False

    def nothing_to_try(self) -> None:
        """TRIAL, and nothing is pending or in flight: there is nothing left to hold."""
        if self.state is HoldState.TRIAL and self.trial is None:
            self._end()

    # -- what the forwarder reports -----------------------------------------------------------

    def endpoint_failed(self, item_id: str, sent: SendResult) -> bool:
        """``item_id`` came back ENDPOINT. Returns True when it must be dead-lettered as its
        own fault (a suspect refused again after the endpoint took another Bundle); otherwise
        it stays pending, and the hold begins (RUNNING) or goes on."""
        if self.state is HoldState.RUNNING:
            if item_id in self.suspects:
                self.suspects.discard(item_id)
                return True
            self._begin(sent)
            return False
        if self.state is HoldState.TRIAL and item_id == self.trial:
            self.trial = None
            self.suspects.add(item_id)
            self.state = HoldState.HELD
            self.probes_failed += 1
            self._schedule_probe()
            log.debug("delivery_hold_trial_failed", spool_id=item_id, status_code=sent.status_code)
        return False

    def settled(self, item_id: str, *, answered: bool) -> None:
        """``item_id`` ended otherwise; ``answered``: the server gave a final answer about its
        content (delivered, or rejected for itself), which shows the endpoint works."""
        if answered:
            self.suspects.discard(item_id)
        if self.state is HoldState.RUNNING:
            return
        if item_id == self.trial:
            self.trial = None  # not answered (e.g. unmappable): the next trial takes another item
        if answered:
            self._end()

    # -- transitions ----------------------------------------------------------------------

    def _begin(self, sent: SendResult) -> None:
        problem = str(sent.endpoint_problem) if sent.endpoint_problem is not None else "unknown"
        reason = HoldReason.of(problem, sent.status_code, sent.diagnostics, since=self._wall_clock())
        self.state, self.reason, self.trial = HoldState.HELD, reason, None
        self._held_at = self._clock()
        self.probes_failed = 0
        self._last_probe_failure = None
        self._schedule_probe()
        for observer in self._observers:
            observer.hold_started(reason)
        log.warning("delivery_held", problem=reason.problem, status_code=reason.status_code, reason=reason.detail,
                    since=reason.since_iso(), next_probe_in_s=round(self.seconds_to_probe(), 1))

    def _end(self) -> None:
        reason, held_s = self.reason, self._clock() - self._held_at
        self.state, self.reason, self.trial = HoldState.RUNNING, None, None
        assert reason is not None
        for observer in self._observers:
            observer.hold_ended(reason, held_s)
        log.info("delivery_resumed", problem=reason.problem, status_code=reason.status_code, held_s=round(held_s, 1),
                 probes_failed=self.probes_failed)

    def _schedule_probe(self) -> None:
        self._next_probe_at = self._clock() + self._backoff.delay(self.probes_failed, self._rng)
