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
answer; since when requests fail) and its **delivery hold** (why and since when it holds the
queue because the FHIR endpoint itself is wrong, :mod:`scp.delivery.hold`), which
``scp.telemetry.health`` turns into readiness and the daemon into its systemd status line. No metric
carries patient data: labels are calling AE titles, C-STORE statuses and fixed reasons.

This module is the public face; the parts live beside it, one concept each:
:mod:`.metrics_tally` (what the worker counts, the tally and its record format),
:mod:`.metrics_store` (the files in ``<spool>/metrics`` and :class:`WorkerMetricsStore`),
:mod:`.metrics_worker` (:class:`WorkerMetrics`), :mod:`.metrics_spool` (:class:`SpoolBacklog`,
:class:`CachedSpoolStatus`) and :mod:`.metrics_daemon` (:class:`DaemonMetrics`,
:func:`build_registry`, :func:`render`).
"""

from __future__ import annotations

from .metrics_daemon import MAX_CALLING_AE_LABELS, DaemonMetrics, build_registry, render
from .metrics_spool import CachedSpoolStatus, SpoolBacklog
from .metrics_store import METRICS_DIR, WorkerMetricsStore, metrics_directory
from .metrics_tally import DELIVERY_LATENCY_BUCKETS_S, SEND_BUCKETS_S, FhirContact
from .metrics_worker import WorkerMetrics

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
