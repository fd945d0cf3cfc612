"""The worker's numbers as plain data: what is counted, how it adds up, how it is written down.

Owns the worker's metric definitions (counter and histogram names, help texts, buckets), the
:class:`FhirContact` state, the delivery hold (:class:`scp.delivery.reasons.HoldReason`, or none),
the :class:`Tally` that holds one worker process's numbers (or the
sum of several) with its histograms, and the record format of a tally file
(:func:`encode_tally` / :func:`decode_tally`: ``<crc32 hex> <json>``). No files, no
processes: :mod:`.metrics_worker` writes these records and :mod:`.metrics_store` reads them.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any, get_args

from ..common.times import epoch_seconds
from ..delivery.reasons import DeadLetterReason, HoldReason

__all__ = [
    "DELIVERY_LATENCY_BUCKETS_S",
    "SEND_BUCKETS_S",
    "WORKER_COUNTERS",
    "WORKER_HISTOGRAMS",
    "FhirContact",
    "Histogram",
    "LabelKey",
    "Tally",
    "decode_tally",
    "encode_tally",
    "seconds_since",
]

DELIVERY_LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
"""Seconds from received (spooled) to delivered: sub-second normally, hours after an outage."""
SEND_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds of one delivery (``FhirClient.send``: every attempt and wait of one Bundle)."""


# name -> (help text, label name, label values shown from the start); counters get a ``_total`` suffix.
WORKER_COUNTERS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "sr2fhir_bundles_delivered": ("SR instances delivered (FHIR transaction answered 2xx, or written to the outbox).",
                                  None, ()),
    "sr2fhir_bundles_failed": ("SR instances dead-lettered to spool/failed/, by reason.", "reason",
                               get_args(DeadLetterReason)),
    "sr2fhir_bundles_deferred": ("Deliveries left pending for a later try (shutdown, outbox not writable).", None, ()),
    "sr2fhir_fhir_retries": ("FHIR requests retried after a transport error, 408, 429 or 5xx.", None, ()),
    "sr2fhir_delivery_holds": ("Times delivery was held because the FHIR endpoint itself was wrong.", None, ()),
    "sr2fhir_unmapped": (("SR instances acknowledged and dropped because they are none of the documents sr2fhir "
                          "maps (mapping.unmapped: ignore), by Template Identifier ('none': not given; 'other': "
                          "not a short number)."), "template", ()),
    "sr2fhir_reports_superseded": (("Replaced reports (Predecessor Documents Sequence of an amended or corrected "
                                    "SR) whose Observations and ImagingSelections were set to entered-in-error; "
                                    "how: after_successor (a transaction of their own) or on_arrival (the "
                                    "replaced report came after its successor)."), "how",
                                   ("after_successor", "on_arrival")),
}
WORKER_HISTOGRAMS = {
    "sr2fhir_delivery_latency_seconds": ("Seconds from receiving an SR to its delivery.", DELIVERY_LATENCY_BUCKETS_S),
    "sr2fhir_send_duration_seconds": (("Seconds of one delivery: a FHIR send with every attempt and wait, "
                                       "or an outbox write."), SEND_BUCKETS_S),
}


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
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int]  # per bucket, not cumulative; the last one is +Inf
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, [0] * (len(bounds) + 1))

    def observe(self, value: float) -> None:
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))
        self.counts[index] += 1
        self.total += value

    def add(self, other: Histogram) -> None:
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
class Tally:
    """The numbers of one worker process (or the sum of several): plain data, JSON round trip.

    ``hold`` is the delivery hold the worker is in, or None; summed over several files, the
    most recent hold stands (only one worker runs at a time, and an exited one holds nothing:
    :meth:`.metrics_store.WorkerMetricsStore.process_exited` drops its hold).
    """

    counters: dict[str, dict[LabelKey, float]] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    fhir: FhirContact = FhirContact()
    hold: HoldReason | None = None

    def inc(self, name: str, labels: LabelKey = (), amount: float = 1.0) -> None:
        series = self.counters.setdefault(name, {})
        series[labels] = series.get(labels, 0.0) + amount

    def observe(self, name: str, value: float) -> None:
        self.histograms.setdefault(name, Histogram.empty(WORKER_HISTOGRAMS[name][1])).observe(value)

    def add(self, other: Tally) -> None:
        for name, series in other.counters.items():
            for labels, value in series.items():
                self.inc(name, labels, value)
        for name, histogram in other.histograms.items():
            if name in self.histograms:
                self.histograms[name].add(histogram)
            else:
                self.histograms[name] = Histogram(histogram.bounds, list(histogram.counts), histogram.total)
        self.fhir = self.fhir.merge(other.fhir)
        if other.hold is not None and (self.hold is None or other.hold.since >= self.hold.since):
            self.hold = other.hold

    def to_json(self) -> dict[str, Any]:
        return {
            "counters": {name: [[dict(labels), value] for labels, value in series.items()]
                         for name, series in self.counters.items()},
            "histograms": {name: {"bounds": list(h.bounds), "counts": h.counts, "sum": h.total}
                           for name, h in self.histograms.items()},
            "fhir": {"last_success_at": self.fhir.last_success_at, "failing_since": self.fhir.failing_since},
            "hold": self.hold.to_json() if self.hold is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        tally = cls()
        for name, series in data.get("counters", {}).items():
            for labels, value in series:
                tally.inc(name, tuple(sorted((str(k), str(v)) for k, v in labels.items())), float(value))
        for name, h in data.get("histograms", {}).items():
            tally.histograms[name] = Histogram(tuple(float(b) for b in h["bounds"]), [int(c) for c in h["counts"]],
                                               float(h["sum"]))
        fhir = data.get("fhir") or {}
        tally.fhir = FhirContact(fhir.get("last_success_at"), fhir.get("failing_since"))
        tally.hold = HoldReason.from_json(data.get("hold"))
        return tally


def encode_tally(tally: Tally) -> bytes:
    """``<crc32 hex> <json>\n``: the checksum lets a reader tell a torn read from a record."""
    payload = json.dumps(tally.to_json(), separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def decode_tally(data: bytes) -> Tally | None:
    """The tally in ``data``, or None when it is not one whole record (torn, or foreign)."""
    head, _, rest = data.partition(b" ")
    payload = rest.rstrip(b" \n")
    try:
        if len(head) != 8 or int(head, 16) != zlib.crc32(payload):
            return None
        return Tally.from_json(json.loads(payload))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def seconds_since(timestamp: str | None, now: float) -> float | None:
    """Seconds from the ISO-8601 ``timestamp`` (naive means UTC) to the Unix time ``now``, at
    least 0; None when there is no timestamp or it cannot be read. Delivery latency and spool
    backlog age are measured with it."""
    moment = epoch_seconds(timestamp)
    return None if moment is None else max(0.0, now - moment)
