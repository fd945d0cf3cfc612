"""The worker process's metrics: :class:`WorkerMetrics` counts deliveries and publishes them.

Owns the worker side of the cross-process metrics: the forwarder's settle points (delivered,
dead-lettered, deferred, FHIR retry waits) turned into counters, latency histograms and the
FHIR contact state, and the in-place ``pwrite`` of the worker's own file in ``<spool>/metrics``
after every change. The main process reads these files with
:class:`.metrics_store.WorkerMetricsStore`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import structlog

from fhir_client import SendResult

from ..common.times import Clock, Sleep
from ..delivery.reasons import DeadLetterReason, HoldReason
from ..spool import SpoolItem
from .metrics_store import FILE_SUFFIX, WORKER_FILE_PREFIX
from .metrics_tally import Tally, encode_tally, seconds_since

__all__ = ["WorkerMetrics"]

log = structlog.get_logger()



class WorkerMetrics:
    """The worker's counters, latency histograms and FHIR contact state.

    Publishes them to ``<directory>/worker-<pid>-<start_ns>.json`` after every change, by
    overwriting the file in place with one ``pwrite`` (about a microsecond; a rename per
    change costs 0.3-0.5 ms on ext4), padded to the longest record so far; the record's
    checksum lets the reader retry a torn read. Create one per worker process. Every method
    is safe to call from the forwarder: it never raises (a file that cannot be written is
    logged, and the numbers are kept for the next write).
    The method names match the forwarder's settle points and the hold's
    (:class:`scp.delivery.hold.HoldObserver`); :meth:`wrap_sleep` hooks the FHIR client's retry waits.
    """

    def __init__(self, directory: Path, *, clock: Clock = time.time, pid: int | None = None) -> None:
        self._clock = clock
        self._tally = Tally()
        self._lock = threading.Lock()
        self._write_failed = False
        self._fd: int | None = None
        self._size = 0
        pid = os.getpid() if pid is None else pid
        self.path = directory / f"{WORKER_FILE_PREFIX}{pid}-{time.time_ns()}{FILE_SUFFIX}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # reported by the first publish
        self._publish()

    def close(self) -> None:
        """Close the file (what it holds stays counted; a worker that stops holds nothing)."""
        if self._tally.hold is not None:
            with self._lock:
                self._tally.hold = None
            self._publish()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # -- the forwarder's settle points (the same methods as scp.telemetry.audit.AuditTrail) ----------

    def delivered(self, item: SpoolItem, sent: SendResult, bundle: object = None) -> None:
        """A Bundle was delivered: count it, its latency since the SR was received, and the
        send duration; the server answered, so FHIR contact is fine."""
        now = self._clock()
        with self._lock:
            self._tally.inc("sr2fhir_bundles_delivered")
            latency = seconds_since(item.received_at, now)
            if latency is not None:
                self._tally.observe("sr2fhir_delivery_latency_seconds", latency)
            self._tally.observe("sr2fhir_send_duration_seconds", max(0.0, sent.elapsed_s))
            self._tally.fhir = self._tally.fhir.succeeded(now)
        self._publish()

    def dead_lettered(self, item: SpoolItem, reason: DeadLetterReason, sent: SendResult | None = None,
                      bundle: object = None) -> None:
        """An item went to ``failed/``. A rejection is a server answer (contact is fine);
        exhausted retries mean the server is still failing."""
        now = self._clock()
        with self._lock:
            self._tally.inc("sr2fhir_bundles_failed", (("reason", reason),))
            if sent is not None:
                self._tally.observe("sr2fhir_send_duration_seconds", max(0.0, sent.elapsed_s))
            if reason == "rejected":
                self._tally.fhir = self._tally.fhir.succeeded(now)
            elif reason == "retries_exhausted":
                self._tally.fhir = self._tally.fhir.failed(now)
        self._publish()

    def deferred(self, item: SpoolItem, sent: SendResult | None = None) -> None:
        """An item stays pending (shutdown, or the outbox could not be written)."""
        with self._lock:
            self._tally.inc("sr2fhir_bundles_deferred")
        self._publish()

    def ignored(self, item: SpoolItem, template: str) -> None:
        """An SR sr2fhir does not map was dropped; ``template`` is already a bounded label."""
        with self._lock:
            self._tally.inc("sr2fhir_unmapped", (("template", template),))
        self._publish()

    def superseded(self, predecessor_uid: str, successor_uid: str, resources: int, how: str,
                   sent: SendResult | None = None) -> None:
        """A replaced report's resources were retired (:mod:`scp.delivery.supersession`)."""
        with self._lock:
            self._tally.inc("sr2fhir_reports_superseded", (("how", how),))
        self._publish()

    # -- the delivery hold (scp.delivery.hold.HoldObserver) ------------------------------------

    def hold_started(self, reason: HoldReason) -> None:
        """Delivery is held: publish why and since when (readiness, /metrics, status lines)."""
        with self._lock:
            self._tally.inc("sr2fhir_delivery_holds")
            self._tally.hold = reason
        self._publish()

    def hold_ended(self, reason: HoldReason, held_s: float) -> None:
        with self._lock:
            self._tally.hold = None
        self._publish()

    def retry_wait(self) -> None:
        """The FHIR client is about to wait before retrying: count it, note the failure."""
        now = self._clock()
        with self._lock:
            self._tally.inc("sr2fhir_fhir_retries")
            self._tally.fhir = self._tally.fhir.failed(now)
        self._publish()

    def wrap_sleep(self, sleep: Sleep) -> Sleep:
        """A ``sleep`` for ``FhirClient(..., sleep=...)``: the client calls it only between a
        failed attempt and its retry, so each call is one retry and a sign of trouble."""

        async def sleep_and_count(delay: float) -> None:
            self.retry_wait()
            await sleep(delay)

        return sleep_and_count

    # -- publishing --------------------------------------------------------------------

    def _publish(self) -> None:
        with self._lock:
            record = encode_tally(self._tally)
            self._size = max(self._size, len(record))
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                os.pwrite(self._fd, record.ljust(self._size), 0)
            except OSError as exc:
                if not self._write_failed:  # once per streak, not once per delivery
                    log.warning("metrics_not_published", path=str(self.path), reason=str(exc))
                self._write_failed = True
            else:
                self._write_failed = False
