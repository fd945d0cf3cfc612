"""Prometheus metrics of both processes, and how they meet at scrape time.

The main process receives (listener) and serves ``/metrics``; the worker process delivers.
Each side counts in memory; the worker also *publishes* its counts, and the main process adds
them up when scraped::

    main process                                      worker process (one at a time)
    DaemonMetrics  (received, refused, restarts)      WorkerMetrics (delivered, failed, retries,
    SpoolBacklog   (pending, failed: Spool.status())      latencies, FHIR contact state)
    WorkerMetricsStore  <-- reads <spool>/metrics/ <--  overwrites worker-<pid>-<start_ns>.json
                                                        in place after each change

Why not ``prometheus_client``'s multiprocess mode: it is switched on by an environment
variable that must be set before ``prometheus_client`` is first imported and then holds for
the whole interpreter (``values.ValueClass`` is chosen at import), so the mode cannot be given
to an object, a process cannot hold metrics in two directories, and the test process cannot
use it at all once anything imported the library (module state, which we avoid). Only the
worker's numbers cross a process boundary, and they change at most a few hundred times a
second, so one small file per worker process is enough: the whole tally as one JSON record
with a CRC-32, written with one ``pwrite`` (about 35 us per change, all told), read back with
the checksum checked (a torn read is read again; the last good read stands in, so a counter
never appears to go back). Every object gets its directory as an argument, and
``prometheus_client`` is used only where it is plainly right: custom collectors and the text
exposition.

Counters stay monotonic within one daemon run: a restarted worker writes a *new* file (its
name holds pid and start time, so a reused pid cannot overwrite a dead worker's numbers) and
the store adds every file up. When the daemon sees a worker exit it calls
:meth:`WorkerMetricsStore.process_exited`, which folds that worker's file into
``retired.json`` so the directory does not grow with restarts (what ``mark_process_dead``
does for prometheus_client's live gauges). :meth:`WorkerMetricsStore.reset` empties the
directory at daemon start: counters start at zero with each run, as Prometheus expects.

The worker also publishes its **FHIR contact state** here (last time the server gave a final
answer; since when requests fail), which ``scp.telemetry.health`` turns into readiness. No metric
carries patient data: labels are calling AE titles, C-STORE statuses and fixed reasons.
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from fhir_client import SendResult

from ..delivery.reasons import DeadLetterReason
from ..spool import SpoolError, SpoolItem, SpoolStatus

__all__ = [
    "DELIVERY_LATENCY_BUCKETS_S",
    "MAX_CALLING_AE_LABELS",
    "METRICS_DIR",
    "SEND_BUCKETS_S",
    "CachedSpoolStatus",
    "DaemonMetrics",
    "FhirContact",
    "SpoolBacklog",
    "WorkerMetrics",
    "WorkerMetricsStore",
    "build_registry",
    "metrics_directory",
    "render",
]

log = structlog.get_logger()

METRICS_DIR = "metrics"
"""Sub-directory of the spool directory holding the worker's published numbers."""
WORKER_FILE_PREFIX = "worker-"
RETIRED_FILE = "retired.json"
_FILE_SUFFIX = ".json"
_TEMP_SUFFIX = ".tmp"

MAX_CALLING_AE_LABELS = 100
"""Distinct calling AE titles counted by name; later ones count as ``OTHER_CALLING_AE``."""
OTHER_CALLING_AE = "_other"

DELIVERY_LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
"""Seconds from received (spooled) to delivered: sub-second normally, hours after an outage."""
SEND_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds of one delivery (``FhirClient.send``: every attempt and wait of one Bundle)."""

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# name -> (help text, label name, label values shown from the start); counters get a ``_total`` suffix.
_WORKER_COUNTERS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "sr2fhir_bundles_delivered": ("SR instances delivered (FHIR transaction answered 2xx, or written to the outbox).",
                                  None, ()),
    "sr2fhir_bundles_failed": ("SR instances dead-lettered to spool/failed/, by reason.", "reason",
                               get_args(DeadLetterReason)),
    "sr2fhir_bundles_deferred": ("Deliveries left pending for a later try (shutdown, outbox not writable).", None, ()),
    "sr2fhir_fhir_retries": ("FHIR requests retried after a transport error, 408, 429 or 5xx.", None, ()),
}
_WORKER_HISTOGRAMS = {
    "sr2fhir_delivery_latency_seconds": ("Seconds from receiving an SR to its delivery.", DELIVERY_LATENCY_BUCKETS_S),
    "sr2fhir_send_duration_seconds": (("Seconds of one delivery: a FHIR send with every attempt and wait, "
                                       "or an outbox write."), SEND_BUCKETS_S),
}


def metrics_directory(spool_directory: Path) -> Path:
    """Where the worker publishes its numbers: ``<spool>/metrics``."""
    return spool_directory / METRICS_DIR


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class FhirContact:
    """What the worker last heard from the FHIR server (Unix times in seconds).

    ``last_success_at``: the last final answer (2xx, or a permanent 4xx: the server is there).
    ``failing_since``: the first transport error or retryable status after that, else None.
    """

    last_success_at: float | None = None
    failing_since: float | None = None

    def succeeded(self, now: float) -> FhirContact:
        return FhirContact(last_success_at=now, failing_since=None)

    def failed(self, now: float) -> FhirContact:
        return FhirContact(self.last_success_at, self.failing_since if self.failing_since is not None else now)

    def merge(self, other: FhirContact) -> FhirContact:
        """Combine the states of two worker processes (which ran one after the other)."""
        successes = [t for t in (self.last_success_at, other.last_success_at) if t is not None]
        last_success = max(successes, default=None)
        failures = [t for t in (self.failing_since, other.failing_since)
                    if t is not None and (last_success is None or t > last_success)]
        return FhirContact(last_success, min(failures, default=None))


@dataclass(slots=True)
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int]  # per bucket, not cumulative; the last one is +Inf
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> _Histogram:
        return cls(bounds, [0] * (len(bounds) + 1))

    def observe(self, value: float) -> None:
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))
        self.counts[index] += 1
        self.total += value

    def add(self, other: _Histogram) -> None:
        if other.bounds != self.bounds:
            return  # written by another version of the daemon: not comparable, left out
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def cumulative(self) -> list[tuple[str, float]]:
        buckets, running = [], 0
        for bound, count in zip([*self.bounds, float("inf")], self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return buckets


LabelKey = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class _Tally:
    """The numbers of one worker process (or the sum of several): plain data, JSON round trip."""

    counters: dict[str, dict[LabelKey, float]] = field(default_factory=dict)
    histograms: dict[str, _Histogram] = field(default_factory=dict)
    fhir: FhirContact = FhirContact()

    def inc(self, name: str, labels: LabelKey = (), amount: float = 1.0) -> None:
        series = self.counters.setdefault(name, {})
        series[labels] = series.get(labels, 0.0) + amount

    def observe(self, name: str, value: float) -> None:
        self.histograms.setdefault(name, _Histogram.empty(_WORKER_HISTOGRAMS[name][1])).observe(value)

    def add(self, other: _Tally) -> None:
        for name, series in other.counters.items():
            for labels, value in series.items():
                self.inc(name, labels, value)
        for name, histogram in other.histograms.items():
            if name in self.histograms:
                self.histograms[name].add(histogram)
            else:
                self.histograms[name] = _Histogram(histogram.bounds, list(histogram.counts), histogram.total)
        self.fhir = self.fhir.merge(other.fhir)

    def to_json(self) -> dict[str, Any]:
        return {
            "counters": {name: [[dict(labels), value] for labels, value in series.items()]
                         for name, series in self.counters.items()},
            "histograms": {name: {"bounds": list(h.bounds), "counts": h.counts, "sum": h.total}
                           for name, h in self.histograms.items()},
            "fhir": {"last_success_at": self.fhir.last_success_at, "failing_since": self.fhir.failing_since},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Tally:
        tally = cls()
        for name, series in data.get("counters", {}).items():
            for labels, value in series:
                tally.inc(name, tuple(sorted((str(k), str(v)) for k, v in labels.items())), float(value))
        for name, h in data.get("histograms", {}).items():
            tally.histograms[name] = _Histogram(tuple(float(b) for b in h["bounds"]), [int(c) for c in h["counts"]],
                                                float(h["sum"]))
        fhir = data.get("fhir") or {}
        tally.fhir = FhirContact(fhir.get("last_success_at"), fhir.get("failing_since"))
        return tally


def _encode(tally: _Tally) -> bytes:
    """``<crc32 hex> <json>\n``: the checksum lets a reader tell a torn read from a record."""
    payload = json.dumps(tally.to_json(), separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def _decode(data: bytes) -> _Tally | None:
    """The tally in ``data``, or None when it is not one whole record (torn, or foreign)."""
    head, _, rest = data.partition(b" ")
    payload = rest.rstrip(b" \n")
    try:
        if len(head) != 8 or int(head, 16) != zlib.crc32(payload):
            return None
        return _Tally.from_json(json.loads(payload))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_atomically(path: Path, record: bytes) -> None:
    """Replace ``path`` (temp file + rename; no fsync: these numbers need to survive a process
    kill, not a power cut, and a new daemon run resets them anyway)."""
    temp = path.with_name(f".{path.name}{_TEMP_SUFFIX}")
    temp.write_bytes(record)
    os.replace(temp, path)


# --------------------------------------------------------------------------- worker side


class WorkerMetrics:
    """The worker's counters, latency histograms and FHIR contact state.

    Publishes them to ``<directory>/worker-<pid>-<start_ns>.json`` after every change, by
    overwriting the file in place with one ``pwrite`` (about a microsecond; a rename per
    change costs 0.3-0.5 ms on ext4), padded to the longest record so far; the record's
    checksum lets the reader retry a torn read. Create one per worker process. Every method
    is safe to call from the forwarder: it never raises (a file that cannot be written is
    logged, and the numbers are kept for the next write).
    The method names match the forwarder's settle points; :meth:`wrap_sleep` hooks the FHIR
    client's retry waits.
    """

    def __init__(self, directory: Path, *, clock: Clock = time.time, pid: int | None = None) -> None:
        self._clock = clock
        self._tally = _Tally()
        self._lock = threading.Lock()
        self._write_failed = False
        self._fd: int | None = None
        self._size = 0
        pid = os.getpid() if pid is None else pid
        self.path = directory / f"{WORKER_FILE_PREFIX}{pid}-{time.time_ns()}{_FILE_SUFFIX}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # reported by the first publish
        self._publish()

    def close(self) -> None:
        """Close the file (what it holds stays counted)."""
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
            latency = _seconds_since(item.received_at, now)
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
            record = _encode(self._tally)
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


def _seconds_since(timestamp: str | None, now: float) -> float | None:
    if not timestamp:
        return None
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, now - moment.timestamp())


# --------------------------------------------------------------------------- main process


class WorkerMetricsStore:
    """The main process's view of ``<spool>/metrics``: every worker's numbers, added up.

    A prometheus_client collector (register it in a registry) and the source of the FHIR
    contact state for readiness. Thread-safe (scrapes come from HTTP threads).
    """

    READ_ATTEMPTS = 3

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._last_good: dict[Path, _Tally] = {}

    def reset(self) -> None:
        """Start a daemon run from zero: remove every published file. Call before the worker starts."""
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            for path in self.directory.iterdir():
                if path.is_file() and path.name.endswith((_FILE_SUFFIX, _TEMP_SUFFIX)):
                    path.unlink(missing_ok=True)
            self._last_good.clear()

    def process_exited(self, pid: int) -> None:
        """Fold the files of a worker that has exited into ``retired.json`` (keeps counting,
        keeps the directory small). Call after the exit was observed, before a restart."""
        with self._lock:
            files = sorted(self.directory.glob(f"{WORKER_FILE_PREFIX}{pid}-*{_FILE_SUFFIX}"))
            if not files:
                return
            retired = self._read(self.directory / RETIRED_FILE) or _Tally()
            for path in files:
                tally = self._read(path)
                if tally is not None:
                    retired.add(tally)
            try:
                _write_atomically(self.directory / RETIRED_FILE, _encode(retired))
            except OSError as exc:
                log.warning("metrics_not_retired", pid=pid, reason=str(exc))
                return  # the files stay and are still counted
            self._last_good.pop(self.directory / RETIRED_FILE, None)
            for path in files:
                path.unlink(missing_ok=True)
                self._last_good.pop(path, None)

    def tally(self) -> _Tally:
        """The sum over ``retired.json`` and every live or dead worker's file."""
        total = _Tally()
        with self._lock:
            paths = [self.directory / RETIRED_FILE, *sorted(self.directory.glob(f"{WORKER_FILE_PREFIX}*{_FILE_SUFFIX}"))]
            for path in paths:
                tally = self._read(path)
                if tally is not None:
                    total.add(tally)
        return total

    def fhir_contact(self) -> FhirContact:
        """The FHIR contact state the worker(s) reported (for readiness)."""
        return self.tally().fhir

    def collect(self) -> Iterator[Metric]:
        tally = self.tally()
        for name, (help_text, label, label_values) in _WORKER_COUNTERS.items():
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
        for name, (help_text, bounds) in _WORKER_HISTOGRAMS.items():
            histogram = tally.histograms.get(name) or _Histogram.empty(bounds)
            yield HistogramMetricFamily(name, help_text, buckets=histogram.cumulative(), sum_value=histogram.total)
        yield GaugeMetricFamily("sr2fhir_fhir_last_success_timestamp_seconds",
                                "Unix time of the FHIR server's last final answer (0: none yet).",
                                value=tally.fhir.last_success_at or 0.0)
        yield GaugeMetricFamily("sr2fhir_fhir_failing_since_timestamp_seconds",
                                "Unix time since which FHIR requests fail without a final answer (0: not failing).",
                                value=tally.fhir.failing_since or 0.0)

    def _read(self, path: Path) -> _Tally | None:
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
            tally = _decode(data)
            if tally is not None:
                self._last_good[path] = tally
                return tally
        else:
            log.warning("metrics_file_unreadable", path=str(path), reason="no whole record")
        return self._last_good.get(path)


class DaemonMetrics:
    """The main process's own counters: C-STOREs answered, worker restarts.

    A prometheus_client collector; thread-safe (pynetdicom calls the store handler from one
    thread per association). Calling AE titles become labels up to
    :data:`MAX_CALLING_AE_LABELS` distinct ones (an open listener must not let a sender grow
    the label set without bound); later titles count as ``_other``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._worker_restarts = 0

    def store_answered(self, event: Any, status: int) -> None:
        """EVT_C_STORE answered with ``status`` (``event``: the pynetdicom event). Success
        counts as received, per calling AE title; anything else as refused, per status."""
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        with self._lock:
            if status == 0x0000:
                label = calling_ae if calling_ae in self._received or len(self._received) < MAX_CALLING_AE_LABELS \
                    else OTHER_CALLING_AE
                self._received[label] = self._received.get(label, 0) + 1
            else:
                label = f"0x{status:04X}"
                self._refused[label] = self._refused.get(label, 0) + 1

    def worker_restarted(self) -> None:
        with self._lock:
            self._worker_restarts += 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            received, refused, restarts = dict(self._received), dict(self._refused), self._worker_restarts
        family = CounterMetricFamily("sr2fhir_instances_received", "SR instances received and spooled (C-STORE Success), "
                                     "by calling AE title.", labels=["calling_ae"])
        for calling_ae, count in sorted(received.items()):
            family.add_metric([calling_ae], count)
        yield family
        family = CounterMetricFamily("sr2fhir_instances_refused", "C-STOREs answered with a failure status, by status.",
                                     labels=["status"])
        for status, count in sorted(refused.items()):
            family.add_metric([status], count)
        yield family
        yield CounterMetricFamily("sr2fhir_worker_restarts", "Times the worker process was restarted after it died.",
                                  value=restarts)


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
        age = _seconds_since(status.oldest_pending_received_at, self._clock())
        yield GaugeMetricFamily("sr2fhir_spool_oldest_pending_age_seconds",
                                "Age of the oldest instance waiting for delivery (0: none).", value=age or 0.0)


class CachedSpoolStatus:
    """:meth:`scp.spool.Spool.status` at most once per ``max_age_s``, for probes and scrapes.

    ``status()`` scans the journal in the listener's interpreter (about 16 ms per 1,000
    pending items on the development VM), so ``/readyz`` and ``/metrics`` share one answer
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


def build_registry(*collectors: object) -> CollectorRegistry:
    """A private registry (not prometheus_client's global one) holding ``collectors``,
    e.g. ``build_registry(daemon_metrics, worker_store, SpoolBacklog(spool.status))``."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)  # type: ignore[arg-type]
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format (version 0.0.4) of ``registry``."""
    return generate_latest(registry)

