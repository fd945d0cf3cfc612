"""The main process's own metrics and the Prometheus exposition of all of them.

Owns :class:`DaemonMetrics` (C-STOREs received per calling AE title, refused per status,
worker restarts), :func:`build_registry` (a private registry of collectors: these, the
worker store of :mod:`.metrics_store`, the spool backlog of :mod:`.metrics_spool`) and
:func:`render` (the text format served at ``/metrics``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric

__all__ = ["MAX_CALLING_AE_LABELS", "OTHER_CALLING_AE", "DaemonMetrics", "build_registry", "render"]

MAX_CALLING_AE_LABELS = 100
"""Distinct calling AE titles counted by name; later ones count as ``OTHER_CALLING_AE``."""
OTHER_CALLING_AE = "_other"


class DaemonMetrics:
    """The main process's own counters: C-STOREs answered (by this process's listener, or
    reported by every association process: :meth:`count_answer`), worker and association
    process restarts.

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
        self._process_restarts = 0

    def store_answered(self, event: Any, status: int) -> None:
        """EVT_C_STORE answered with ``status`` (``event``: the pynetdicom event). Success
        counts as received, per calling AE title; anything else as refused, per status."""
        self.count_answer(str(event.assoc.requestor.ae_title).strip(), status)

    def count_answer(self, calling_ae: str, status: int) -> None:
        """One C-STORE answered (also those an association process reports)."""
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

    def association_process_restarted(self) -> None:
        with self._lock:
            self._process_restarts += 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            received, refused, restarts = dict(self._received), dict(self._refused), self._worker_restarts
            process_restarts = self._process_restarts
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
        yield CounterMetricFamily("sr2fhir_association_process_restarts", "Times an association process "
                                  "(dicom.listener_processes > 1) was restarted after it died.", value=process_restarts)


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
