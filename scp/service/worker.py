"""The worker process: runs the forwarder off the listener's interpreter.

Started by the daemon as ``python -m scp.service.worker [--config FILE]``. It dies with its parent
(PR_SET_PDEATHSIG), holds the spool's consumer lock (so two workers never deliver the same
item), and stops cleanly on SIGTERM/SIGINT: in-flight deliveries finish or stay pending.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from fhir_client import FhirClient
from mapping import serialize

from ..telemetry.audit import AuditLog, AuditShipper, AuditSource, AuditTrail
from ..config import ConfigError, Settings, load_settings
from ..delivery.forwarder import (
    Delivery,
    DeliveryObserver,
    FhirDelivery,
    ForwarderStats,
    OutboxDelivery,
    run_forwarder,
)
from ..delivery.hold import DeliveryHold, HoldObserver, ProbeBackoff
from ..delivery.prepared import RetryWaits
from ..telemetry.logs import configure_logging
from ..telemetry.metrics import WorkerMetrics, metrics_directory
from ..spool import SpoolLockedError, open_spool

__all__ = ["main", "PARENT_PID_ENV", "Heartbeat", "heartbeat_path"]

log = structlog.get_logger()

PARENT_PID_ENV = "SR2FHIR_PARENT_PID"
_PR_SET_PDEATHSIG = 1
EXIT_LOCKED = 3
WORKER_NICENESS = 10


HEARTBEAT_FILE = "worker.heartbeat"


def heartbeat_path(spool_directory: Path) -> Path:
    """The file whose mtime says when the worker's forwarding loop last turned."""
    return spool_directory / HEARTBEAT_FILE


class Heartbeat:
    """Touch the heartbeat file at most once a second (the daemon's watchdog reads its age)."""

    def __init__(self, path: Path, min_interval_s: float = 1.0) -> None:
        self.path = path
        self.min_interval_s = min_interval_s
        self._last = 0.0

    def beat(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.min_interval_s:
            self.path.touch()
            self._last = now


def lower_priority() -> None:
    """Receiving comes first: senders wait on the C-STORE latency, delivery may lag a burst.

    SCHED_IDLE runs the worker only on CPU time nobody else wants (on 2 cores, sharing the
    CPU with the listener cut ingest by a third); where that is not allowed, nice 10.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(WORKER_NICENESS)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: fall back to the parent-pid check below
        pass
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):
        sys.exit(0)  # the parent died before prctl took effect


async def forward(settings: Settings) -> int:
    """Open the spool's consumer side and forward until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    spool = open_spool(settings.spool)
    consumer = spool.consumer()
    try:
        consumer.open()
    except SpoolLockedError as exc:
        log.error("worker_not_started", reason=str(exc))
        return EXIT_LOCKED
    metrics = WorkerMetrics(metrics_directory(settings.spool.directory))
    observers: list[DeliveryObserver] = [metrics]
    hold_observers: list[HoldObserver] = [metrics]
    audit = settings.audit
    audit_log = AuditLog(audit.path) if audit.path is not None else None
    if audit_log is not None:
        destination = (str(settings.fhir.base_url) if settings.fhir.base_url is not None
                       else settings.fhir.outbox_directory.as_uri())
        trail = AuditTrail(audit_log, AuditSource(settings.dicom.ae_title), destination=destination,
                           include_phi=audit.include_phi)
        observers.append(trail)
        hold_observers.append(trail)
    try:
        heartbeat = Heartbeat(heartbeat_path(settings.spool.directory))

        retry_waits = RetryWaits()
        options = settings.mapping.options().model_copy(
            update={"r4_imaging_selection": settings.fhir.r4_imaging_selection})

        async def forward_to(delivery: Delivery, hold: DeliveryHold | None = None) -> ForwarderStats:
            return await run_forwarder(
                consumer, delivery, options, stop, concurrency=settings.forwarder.concurrency,
                poll_interval_s=settings.forwarder.poll_interval_s, batch_size=settings.forwarder.batch_size,
                on_tick=heartbeat.beat, observers=observers, hold=hold, unmapped=settings.mapping.unmapped,
                remember_delivered_s=settings.spool.remember_delivered_days * 86400.0,
                map_ahead_bytes=int(settings.forwarder.map_ahead_mb * 2**20), retry_waits=retry_waits,
            )

        if settings.fhir.base_url is None:
            log.info("worker_started", target="outbox", outbox_directory=str(settings.fhir.outbox_directory))
            stats = await forward_to(OutboxDelivery(settings.fhir.outbox_directory, settings.fhir.version))
        else:
            fhir = settings.fhir
            # mapping.serialize: the client's default bytes, written several times faster.
            async with FhirClient(settings.fhir, shutdown=stop, sleep=retry_waits.wrap(metrics.wrap_sleep(asyncio.sleep)),
                                  encode=serialize) as client:
                # Logged once the client exists: building it (TLS trust store, httpcore's
                # import) takes a few hundred ms of CPU, and "started" means ready to deliver.
                log.info("worker_started", target="fhir", base_url=str(fhir.base_url), server=fhir.server,
                         fhir_version=fhir.version, write_mode=fhir.write_mode,
                         max_entries_per_request=fhir.max_entries_per_request)
                delivery = FhirDelivery(client, settings.fhir.reference_mode,
                                        settings.fhir.max_entries_per_request, settings.fhir.version)
                retry = settings.fhir.retry
                hold = DeliveryHold(delivery.probe, ProbeBackoff(retry.initial_backoff_s, retry.max_backoff_s,
                                                                 retry.jitter_s), observers=hold_observers)
                shipping = None
                if audit.send_to_fhir and audit.path is not None:
                    shipper = AuditShipper(audit.path, batch_size=audit.send_batch_size)
                    shipping = asyncio.create_task(shipper.run(client, stop, interval_s=audit.send_interval_s,
                                                               paused=_audit_paused(hold, delivery)))
                stats = await forward_to(delivery, hold)
                if shipping is not None:
                    await shipping
        log.info("worker_stopped", delivered=stats.delivered, failed=stats.failed, deferred=stats.deferred,
                 held=stats.held, ignored=stats.ignored)
    finally:
        consumer.close()
        metrics.close()
        if audit_log is not None:
            audit_log.close()
    return 0


def _audit_paused(hold: DeliveryHold, delivery: FhirDelivery) -> Callable[[], bool]:
    """When the audit shipper must wait: delivery is held, the release is not known yet, or the
    server speaks R4 (the trail is R5 AuditEvents: they stay in ``audit.path``, said once)."""
    told = False

    def paused() -> bool:
        nonlocal told
        release = delivery.versions.release
        if release == "r4" and not told:
            told = True
            log.warning("audit_not_sent_to_fhir", reason="the FHIR server speaks R4 and the audit trail holds "
                        "FHIR R5 AuditEvents; they stay in audit.path")
        return hold.held or release != "r5"

    return paused


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the worker process."""
    die_with_parent()
    lower_priority()
    parser = argparse.ArgumentParser(prog="sr2fhir-worker")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"sr2fhir worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log)
    return asyncio.run(forward(settings))


if __name__ == "__main__":
    sys.exit(main())
