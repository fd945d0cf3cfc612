"""The worker's metric files in ``<spool>/metrics``, as the main process reads them.

Owns the directory's layout (``worker-<pid>-<start_ns>.json`` per worker process, plus
``retired.json`` for exited ones), its atomic rewrite, and :class:`WorkerMetricsStore`: the
main process's collector that adds every file up (re-reading torn records, keeping the last
good one), folds exited workers into ``retired.json``, resets the directory at daemon start
and reports the FHIR contact state and the delivery hold for readiness and status lines. The worker side that writes the files is
:mod:`.metrics_worker`; the record format is :mod:`.metrics_tally`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import structlog
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..common.files import write_atomically
from ..delivery.reasons import HoldReason
from .metrics_tally import WORKER_COUNTERS, WORKER_HISTOGRAMS, FhirContact, Histogram, Tally, decode_tally, encode_tally

__all__ = [
    "FILE_SUFFIX",
    "METRICS_DIR",
    "RETIRED_FILE",
    "TEMP_SUFFIX",
    "WORKER_FILE_PREFIX",
    "WorkerMetricsStore",
    "metrics_directory",
]

log = structlog.get_logger()

METRICS_DIR = "metrics"
"""Sub-directory of the spool directory holding the worker's published numbers."""
WORKER_FILE_PREFIX = "worker-"
RETIRED_FILE = "retired.json"
FILE_SUFFIX = ".json"
TEMP_SUFFIX = ".tmp"


def metrics_directory(spool_directory: Path) -> Path:
    """Where the worker publishes its numbers: ``<spool>/metrics``."""
    return spool_directory / METRICS_DIR


class WorkerMetricsStore:
    """The main process's view of ``<spool>/metrics``: every worker's numbers, added up.

    A prometheus_client collector (register it in a registry) and the source of the FHIR
    contact state for readiness. Thread-safe (scrapes come from HTTP threads).
    """

    READ_ATTEMPTS = 3

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._last_good: dict[Path, Tally] = {}

    def reset(self) -> None:
        """Start a daemon run from zero: remove every published file. Call before the worker starts."""
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            for path in self.directory.iterdir():
                if path.is_file() and path.name.endswith((FILE_SUFFIX, TEMP_SUFFIX)):
                    path.unlink(missing_ok=True)
            self._last_good.clear()

    def process_exited(self, pid: int) -> None:
        """Fold the files of a worker that has exited into ``retired.json`` (keeps counting,
        keeps the directory small). Call after the exit was observed, before a restart."""
        with self._lock:
            files = sorted(self.directory.glob(f"{WORKER_FILE_PREFIX}{pid}-*{FILE_SUFFIX}"))
            if not files:
                return
            retired = self._read(self.directory / RETIRED_FILE) or Tally()
            for path in files:
                tally = self._read(path)
                if tally is not None:
                    retired.add(tally)
            retired.hold = None  # an exited worker holds nothing
            try:
                write_atomically(self.directory / RETIRED_FILE, encode_tally(retired), sync=False)
            except OSError as exc:
                log.warning("metrics_not_retired", pid=pid, reason=str(exc))
                return  # the files stay and are still counted
            self._last_good.pop(self.directory / RETIRED_FILE, None)
            for path in files:
                path.unlink(missing_ok=True)
                self._last_good.pop(path, None)

    def tally(self) -> Tally:
        """The sum over ``retired.json`` and every live or dead worker's file."""
        total = Tally()
        with self._lock:
            paths = [self.directory / RETIRED_FILE, *sorted(self.directory.glob(f"{WORKER_FILE_PREFIX}*{FILE_SUFFIX}"))]
            for path in paths:
                tally = self._read(path)
                if tally is not None:
                    total.add(tally)
        return total

    def fhir_contact(self) -> FhirContact:
        """The FHIR contact state the worker(s) reported (for readiness)."""
        return self.tally().fhir

    def delivery_hold(self) -> HoldReason | None:
        """Why the worker holds delivery, or None (for readiness and status lines)."""
        return self.tally().hold

    def collect(self) -> Iterator[Metric]:
        tally = self.tally()
        for name, (help_text, label, label_values) in WORKER_COUNTERS.items():
            series = tally.counters.get(name, {})
            if label is None:
                yield CounterMetricFamily(name, help_text, value=series.get((), 0.0))
                continue
            values = {value: 0.0 for value in label_values}
            for labels, count in series.items():
                key = dict(labels).get(label, "")
                values[key] = values.get(key, 0.0) + count
            family = CounterMetricFamily(name, help_text, labels=[label])
            for value, count in values.items():
                family.add_metric([value], count)
            yield family
        for name, (help_text, bounds) in WORKER_HISTOGRAMS.items():
            histogram = tally.histograms.get(name) or Histogram.empty(bounds)
            yield HistogramMetricFamily(name, help_text, buckets=histogram.cumulative(), sum_value=histogram.total)
        yield GaugeMetricFamily("sr2fhir_fhir_last_success_timestamp_seconds",
                                "Unix time of the FHIR server's last final answer (0: none yet).",
                                value=tally.fhir.last_success_at or 0.0)
        yield GaugeMetricFamily("sr2fhir_fhir_failing_since_timestamp_seconds",
                                "Unix time since which FHIR requests fail without a final answer (0: not failing).",
                                value=tally.fhir.failing_since or 0.0)
        hold = tally.hold
        yield GaugeMetricFamily("sr2fhir_delivery_held", "1 while delivery is held because the FHIR endpoint itself "
                                "is wrong (credentials, URL, TLS, not FHIR), else 0.", value=0.0 if hold is None else 1.0)
        yield GaugeMetricFamily("sr2fhir_delivery_held_since_timestamp_seconds",
                                "Unix time the current delivery hold began (0: not held).",
                                value=0.0 if hold is None else hold.since)
        reason = GaugeMetricFamily("sr2fhir_delivery_hold_reason", "Why delivery is held (1, only while held): "
                                   "the endpoint problem and the HTTP status that began the hold.",
                                   labels=["problem", "status_code"])
        if hold is not None:
            reason.add_metric([hold.problem, str(hold.status_code) if hold.status_code is not None else ""], 1.0)
        yield reason

    def _read(self, path: Path) -> Tally | None:
        """The file's tally; a torn read (the worker writing just then) is read again, and
        after that the last good read stands in, so counters never appear to go back."""
        for _ in range(self.READ_ATTEMPTS):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
            except OSError as exc:
                log.warning("metrics_file_unreadable", path=str(path), reason=str(exc))
                break
            tally = decode_tally(data)
            if tally is not None:
                self._last_good[path] = tally
                return tally
        else:
            log.warning("metrics_file_unreadable", path=str(path), reason="no whole record")
        return self._last_good.get(path)
