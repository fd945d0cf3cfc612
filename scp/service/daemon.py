"""``sr2fhir serve``: wire the listener, the spool and the worker process; own their lifetimes.

The main process receives (pynetdicom threads + the spool writer) and does nothing else; the
worker process maps and delivers. On SIGTERM/SIGINT: stop accepting associations, let
in-flight C-STOREs finish (bounded), stop the worker (its deliveries settle or stay queued),
exit 0. A worker that dies unexpectedly is restarted.

Under systemd (``Type=notify``, see :mod:`scp.service.systemd` and ``deploy/sr2fhir.service``) the
supervise loop is the health loop: ``READY=1`` once the port is bound and the spool open,
``WATCHDOG=1`` every tick while the listener's acceptor thread runs and the worker's
heartbeat moves, ``STATUS=`` with the backlog (and a delivery hold: ``delivery held: FHIR server
answers 401 since 02:13``), ``STOPPING=1`` on shutdown. Only this process
notifies: the worker is started without the ``NOTIFY_SOCKET``/``WATCHDOG_*`` variables.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from ..telemetry.audit import AuditLog, AuditSource, AuditTrail
from ..config import Settings
from ..dicom.tls import server_ssl_context
from ..telemetry.health import HealthServer, Readiness
from ..dicom.acceptor import ForwardedStore, StoreAnswerObserver
from ..dicom.listener import Listener, StoreObserver, start_listener
from ..telemetry.metrics import (
    CachedSpoolStatus,
    DaemonMetrics,
    SpoolBacklog,
    WorkerMetricsStore,
    build_registry,
    metrics_directory,
    render,
)
from ..spool import Spool, open_spool
from .listener_options import listener_options
from .listener_pool import ListenerPool
from .systemd import Notifier, ProgressCheck, Sampler, ServiceMonitor, without_notify_env
from .worker import PARENT_PID_ENV, heartbeat_path

__all__ = ["WorkerProcess", "serve"]

log = structlog.get_logger()

DRAIN_TIMEOUT_S = 10.0
WORKER_STOP_TIMEOUT_S = 8.0
WORKER_RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
WORKER_HEALTHY_AFTER_S = 60.0
WORKER_STALE_AFTER_S = 60.0
"""The worker's heartbeat unchanged this long (while it runs) withholds the systemd watchdog."""
STATUS_INTERVAL_S = 5.0
"""How often the backlog (and a delivery hold) in systemd's STATUS= line is refreshed."""


class WorkerProcess:
    """The forwarder in its own interpreter (``python -m scp.service.worker``)."""

    def __init__(self, config_path: Path | None) -> None:
        self._config_path = config_path
        self._process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        command = [sys.executable, "-m", "scp.service.worker"]
        if self._config_path is not None:
            command += ["--config", str(self._config_path)]
        # The worker must never talk to systemd (NotifyAccess=main would drop it anyway).
        env = {**without_notify_env(os.environ), PARENT_PID_ENV: str(os.getpid())}
        self._process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
        log.info("worker_spawned", pid=self._process.pid)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def exited(self) -> int | None:
        """The exit status if the worker has ended, else None."""
        return None if self._process is None else self._process.poll()

    def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait (bounded), then SIGKILL."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("worker_killed", pid=self._process.pid, reason=f"no exit within {timeout_s} s of SIGTERM")
            self._process.kill()
            self._process.wait()


def serve(settings: Settings, config_path: Path | None) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit status."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    spool = open_spool(settings.spool)
    writer = spool.writer()
    dicom = settings.dicom
    ssl_context = server_ssl_context(dicom.tls)  # before the try: an SSLError is an OSError too
    worker_metrics = WorkerMetricsStore(metrics_directory(settings.spool.directory))
    worker_metrics.reset()  # counters start at zero with each run; before the worker starts
    daemon_metrics = DaemonMetrics()
    audit_log = AuditLog(settings.audit.path) if settings.audit.path is not None else None
    audit = (AuditTrail(audit_log, AuditSource(dicom.ae_title), include_phi=settings.audit.include_phi)
             if audit_log is not None else None)
    store_observers: list[StoreObserver] = [daemon_metrics, *([audit] if audit is not None else [])]
    processes = dicom.listener_process_count()
    try:
        listener: Listener | ListenerPool
        if processes > 1:
            listener = ListenerPool(host=dicom.host, port=dicom.port, count=processes,
                                    max_associations=dicom.max_associations, config_path=config_path,
                                    store_observers=_answer_observers(daemon_metrics, audit))
            listener.start()
        else:
            listener = start_listener(
                host=dicom.host, port=dicom.port, writer=writer, ssl_context=ssl_context,
                **listener_options(settings),
                store_observers=store_observers,
            )
    except OSError as exc:
        writer.close()
        log.error("listener_not_started", host=dicom.host, port=dicom.port, reason=str(exc))
        print(f"sr2fhir: error: cannot listen on {dicom.host}:{dicom.port} (dicom.host/dicom.port): {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    log.info("listener_started", host=dicom.host, port=listener.port, ae_title=dicom.ae_title, processes=processes,
             spool_directory=str(settings.spool.directory),
             target=str(settings.fhir.base_url) if settings.fhir.base_url else f"outbox {settings.fhir.outbox_directory}")
    listener_alive = listener.alive if isinstance(listener, ListenerPool) else _acceptor_alive()
    health = ProgressCheck(listener_alive=listener_alive, heartbeat=heartbeat_path(settings.spool.directory),
                    stale_after_s=settings.health.worker_stale_after_s)
    endpoint: HealthServer | None = None
    if settings.health.port is not None:
        spool_status = CachedSpoolStatus(spool.status)
        registry = build_registry(daemon_metrics, worker_metrics, SpoolBacklog(spool_status))
        readiness = Readiness(settings.health.readiness, listener_up=listener_alive,
                              fhir_contact=worker_metrics.fhir_contact, spool_status=spool_status,
                              stopping=stop.is_set, delivery_hold=worker_metrics.delivery_hold)
        endpoint = HealthServer(settings.health.host, settings.health.port, readiness, lambda: render(registry))
        try:
            endpoint.start()
        except OSError as exc:
            listener.stop(drain_timeout_s=0)
            writer.close()
            log.error("health_endpoint_not_started", host=settings.health.host, port=settings.health.port,
                      reason=str(exc))
            print(f"sr2fhir: error: cannot listen on {settings.health.host}:{settings.health.port} "
                  f"(health.host/health.port): {exc.strerror or exc}", file=sys.stderr)
            return 1
        log.info("health_endpoint_started", host=settings.health.host, port=endpoint.port)
    if audit is not None:
        audit.application_started()
    monitor = ServiceMonitor(Notifier(), health, Sampler(lambda: _backlog(spool, worker_metrics), STATUS_INTERVAL_S))
    worker = WorkerProcess(config_path)
    worker.start()
    monitor.worker_spawned()
    monitor.ready(f"listening on {dicom.host}:{listener.port}")
    try:
        _supervise(worker, stop, monitor, worker_metrics, daemon_metrics,
                   listener if isinstance(listener, ListenerPool) else None)
    finally:
        monitor.stopping()
        log.info("daemon_stopping", active_associations=listener.active_associations)
        listener.stop(drain_timeout_s=DRAIN_TIMEOUT_S)
        worker.stop()
        writer.close()
        if audit is not None:
            audit.application_stopped()
        if audit_log is not None:
            audit_log.close()
        if endpoint is not None:
            endpoint.stop()  # last: /readyz answers 503 "shutting down" during the drain
        log.info("daemon_stopped", pending=spool.status().pending)
    return 0


def _supervise(worker: WorkerProcess, stop: threading.Event, monitor: ServiceMonitor,
               worker_metrics: WorkerMetricsStore, daemon_metrics: DaemonMetrics, pool: ListenerPool | None = None) -> None:
    """Until the stop signal: restart the worker (with back-off) and association processes
    (``pool``) if they die, and tick the monitor (watchdog, status) every ``monitor.tick_s``,
    also while a restart is pending."""
    failures = 0
    started = time.monotonic()
    restart_at: float | None = None
    while not stop.wait(monitor.tick_s):
        now = time.monotonic()
        if restart_at is None and (status := worker.exited()) is not None:
            if now - started > WORKER_HEALTHY_AFTER_S:
                failures = 0
            delay = WORKER_RESTART_BACKOFF_S[min(failures, len(WORKER_RESTART_BACKOFF_S) - 1)]
            log.error("worker_exited", status=status, restart_in_s=delay)
            if worker.pid is not None:
                worker_metrics.process_exited(worker.pid)
            failures += 1
            restart_at = now + delay
        elif restart_at is not None and now >= restart_at:
            worker.restarts += 1
            worker.start()
            daemon_metrics.worker_restarted()
            monitor.worker_spawned()
            started, restart_at = now, None
        if pool is not None:
            for _ in range(pool.check()):
                daemon_metrics.association_process_restarted()
        monitor.tick(worker_running=restart_at is None)


def _answer_observers(metrics: DaemonMetrics, audit: AuditTrail | None) -> list[StoreAnswerObserver]:
    """What the daemon does with each C-STORE answer an association process reports."""
    observers: list[StoreAnswerObserver] = [lambda answer: metrics.count_answer(answer.calling_ae, answer.status)]
    if audit is not None:
        def audited(answer: ForwardedStore) -> None:
            audit.received(calling_ae=answer.calling_ae, calling_address=answer.calling_address,
                           sop_instance_uid=answer.sop_instance_uid, sop_class_uid=answer.sop_class_uid,
                           status=answer.status, occurred=answer.occurred, patient=answer.patient)
        observers.append(audited)
    return observers


def _acceptor_alive() -> Callable[[], bool]:
    """Whether pynetdicom's acceptor (its non-blocking server runs ``serve_forever`` in a thread
    named ``AcceptorServer@<time>``; one listener per process) is still running."""
    acceptor = next((t for t in threading.enumerate() if t.name.startswith("AcceptorServer@")), None)
    if acceptor is None:
        log.warning("watchdog_listener_unchecked", reason="pynetdicom's AcceptorServer thread not found")
        return lambda: True
    return acceptor.is_alive



def _backlog(spool: Spool, worker_metrics: WorkerMetricsStore) -> str:
    """``3 pending, 0 failed``, and while delivery is held
    ``; delivery held: FHIR server answers 401 since 02:13``."""
    try:
        status = spool.status()
        text = f"{status.pending} pending, {status.failed} failed"
    except Exception as exc:  # noqa: BLE001 - a status line must never stop the daemon
        text = f"unknown ({type(exc).__name__}: {exc})"
    hold = worker_metrics.delivery_hold()
    return text if hold is None else f"{text}; {hold.status_line()}"
