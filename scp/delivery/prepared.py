"""SRs mapped ahead while delivery waits on an outage (:class:`PreparedBundles`).

While the queue is held (:mod:`.hold`), or every Bundle in flight waits to retry (the server
refuses connections, answers 503, throttles: :class:`RetryWaits` counts those waits), the
forwarder starts nothing new, SRs keep arriving, and the CPU the worker maps with sits idle.
The forwarder spends that time mapping the oldest pending items, so that once the server
answers the drain mostly sends: on a small machine the worker and a local FHIR server share the
cores, and mapping was about a third of the worker's CPU per SR.

A prepared result is used at most once, only for the item it was mapped from (an item's bytes
never change under its id) and only for the FHIR release it was mapped for: ``fhir.version:
auto`` expects the release the server gave last, or the mapping default (R5) before its first
answer. An R5 result serves an R4 server through the same conversion ``map_sr`` applies
(:func:`mapping.report.r4_form`). Mapping is deterministic, so a prepared Bundle is the one
mapping the item at delivery would give. A mapping that fails is not kept: the item fails
again in its turn and is dead-lettered or ignored there, as it would have been.

Kept in memory only (a worker restart maps again), up to ``max_bytes`` of serialised Bundles
(``forwarder.map_ahead_mb``); the Python objects take about three times that.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from io import BytesIO

import pydicom
import structlog

from mapping import MappingError, MappingOptions, MappingResult, map_sr, r4_form, serialize

from ..common.times import Clock
from ..spool import SpoolItem

__all__ = ["PREPARE_SLICE_S", "PreparedBundles", "RetryWaits"]

log = structlog.get_logger()

PREPARE_SLICE_S = 0.1
"""Mapping ahead stops after this long (once at least one item is mapped: one large report may
take longer), so the event loop answers between slices."""


class PreparedBundles:
    """Mapping results made ahead of delivery, by item id; bounded by ``max_bytes``."""

    def __init__(self, options: MappingOptions, max_bytes: int, *, clock: Clock = time.monotonic) -> None:
        self._options = {release: options.model_copy(update={"fhir_version": release}) for release in ("r4", "r5")}
        self._default_release = options.fhir_version
        self.max_bytes = max_bytes
        self._clock = clock
        self._results: dict[str, tuple[str, MappingResult, int]] = {}  # id -> (release, result, JSON bytes)
        self._unmappable: set[str] = set()  # failed once: not tried again ahead of its turn
        self.bytes = 0
        """Serialised size of the results held."""

    @property
    def default_release(self) -> str:
        """The release to map for while the server's is not known (``fhir.version: auto``)."""
        return self._default_release

    def __len__(self) -> int:
        return len(self._results)

    @property
    def full(self) -> bool:
        """Whether no more may be prepared (or mapping ahead is off: ``max_bytes`` 0)."""
        return self.bytes >= self.max_bytes

    def prepare(self, pending: Iterable[SpoolItem], release: str, budget_s: float = PREPARE_SLICE_S) -> int:
        """Map the items of ``pending`` (oldest first) not prepared yet, for ``release``, until
        ``budget_s`` has passed (at least one is mapped) or :attr:`full`; returns how many were
        mapped. Results of items no longer in ``pending`` (delivered, superseded, dead-lettered
        meanwhile) are dropped first."""
        items = list(pending)
        self._forget_all_but({item.id for item in items})
        deadline = self._clock() + budget_s
        mapped = 0
        options = self._options[release]
        for item in items:
            if self.full or (mapped and self._clock() >= deadline):
                break
            held = self._results.get(item.id)
            if item.id in self._unmappable or (held is not None and held[0] == release):
                continue
            try:
                result = map_sr(pydicom.dcmread(BytesIO(item.read())), options)
                size = len(serialize(result.bundle))
            except Exception:  # noqa: BLE001 - its own turn reports why (dead letter, ignored)
                self._unmappable.add(item.id)
                continue
            self._drop(item.id)
            self._results[item.id] = (release, result, size)
            self.bytes += size
            mapped += 1
        if mapped:
            log.debug("mapped_ahead", items=mapped, prepared=len(self._results), prepared_bytes=self.bytes)
        return mapped

    def take(self, item_id: str, release: str) -> MappingResult | None:
        """The result prepared for ``item_id`` in ``release`` (then no longer held), or None.
        One prepared for R5 serves R4 too, through the conversion ``map_sr`` itself applies."""
        self._unmappable.discard(item_id)
        held = self._drop(item_id)
        if held is None:
            return None
        prepared_for, result, _ = held
        if prepared_for == release:
            return result
        if prepared_for == "r5" and release == "r4":
            try:
                return r4_form(result, self._options["r4"])
            except MappingError:
                return None  # mapped again in its turn, which says why
        return None

    def _drop(self, item_id: str) -> tuple[str, MappingResult, int] | None:
        held = self._results.pop(item_id, None)
        if held is not None:
            self.bytes -= held[2]
        return held

    def _forget_all_but(self, ids: set[str]) -> None:
        for item_id in [i for i in self._results if i not in ids]:
            self._drop(item_id)
        self._unmappable &= ids


class RetryWaits:
    """Counts the FHIR client's retry waits in progress: :meth:`wrap` the ``sleep`` it is given
    (it sleeps only between a failed attempt and its retry). When every item in flight is
    waiting, the forwarder has nothing to do but map ahead."""

    def __init__(self) -> None:
        self.waiting = 0

    def wrap(self, sleep: Callable[[float], Awaitable[None]]) -> Callable[[float], Awaitable[None]]:
        async def counted(delay: float) -> None:
            self.waiting += 1
            try:
                await sleep(delay)
            finally:
                self.waiting -= 1

        return counted
