"""Spool backlog metrics of the main process: gauges and a shared, briefly cached status.

Owns :class:`SpoolBacklog` (pending, pending bytes, dead letters and oldest pending age from
:meth:`scp.spool.Spool.status`, read at scrape time) and :class:`CachedSpoolStatus` (one
``status()`` answer shared by ``/readyz`` and ``/metrics`` for a few seconds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import structlog
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from ..spool import SpoolError, SpoolStatus
from ..common.times import Clock
from .metrics_tally import seconds_since

__all__ = ["CachedSpoolStatus", "SpoolBacklog"]

log = structlog.get_logger()


class SpoolBacklog:
    """Backlog gauges from :meth:`scp.spool.Spool.status`, read at scrape time."""

    def __init__(self, status: Callable[[], SpoolStatus], *, clock: Clock = time.time) -> None:
        self._status = status
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        try:
            status = self._status()
        except (SpoolError, OSError) as exc:
            log.warning("spool_status_failed", reason=str(exc))
            return
        yield GaugeMetricFamily("sr2fhir_spool_pending", "SR instances waiting for delivery.", value=status.pending)
        yield GaugeMetricFamily("sr2fhir_spool_pending_bytes", "Bytes of the instances waiting for delivery.",
                                value=status.pending_bytes)
        yield GaugeMetricFamily("sr2fhir_spool_failed", "Dead letters in spool/failed/.", value=status.failed)
        age = seconds_since(status.oldest_pending_received_at, self._clock())
        yield GaugeMetricFamily("sr2fhir_spool_oldest_pending_age_seconds",
                                "Age of the oldest instance waiting for delivery (0: none).", value=age or 0.0)


class CachedSpoolStatus:
    """:meth:`scp.spool.Spool.status` at most once per ``max_age_s``, for probes and scrapes.

    ``status()`` queries the spool database in the listener's interpreter (about 19 ms for
    10,000 pending items on the development VM), so ``/readyz`` and ``/metrics`` share one answer
    for a few seconds instead of each paying for it. Thread-safe; errors are not cached.
    """

    def __init__(self, status: Callable[[], SpoolStatus], *, max_age_s: float = 5.0,
                 clock: Clock = time.monotonic) -> None:
        self._status = status
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, SpoolStatus] | None = None

    def __call__(self) -> SpoolStatus:
        with self._lock:
            now = self._clock()
            if self._cached is None or now - self._cached[0] >= self._max_age_s:
                self._cached = (now, self._status())
            return self._cached[1]
