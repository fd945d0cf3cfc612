"""``sr2fhir serve``: wire the listener, the spool and the worker process; own their lifetimes.

The main process receives (pynetdicom threads + the spool writer) and does nothing else; the
worker process maps and delivers. On SIGTERM/SIGINT: stop accepting associations, let
in-flight C-STOREs finish (bounded), stop the worker (its deliveries settle or stay queued),
exit 0. A worker that dies unexpectedly is restarted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import structlog

from .config import Settings
from .listener import ListenerPolicy, start_listener
from .spool import Spool
from .worker import PARENT_PID_ENV

__all__ = ["serve", "WorkerProcess"]

log = structlog.get_logger()

DRAIN_TIMEOUT_S = 10.0
WORKER_STOP_TIMEOUT_S = 8.0
WORKER_RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
WORKER_HEALTHY_AFTER_S = 60.0


class WorkerProcess:
    """The forwarder in its own interpreter (``python -m scp.worker``)."""

    def __init__(self, config_path: Path | None) -> None:
        self._config_path = config_path
        self._process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        command = [sys.executable, "-m", "scp.worker"]
        if self._config_path is not None:
            command += ["--config", str(self._config_path)]
        env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
        self._process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
        log.info("worker_spawned", pid=self._process.pid)

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

    spool = Spool(settings.spool.directory, segment_max_bytes=int(settings.spool.segment_max_bytes),
                  retention=settings.spool.retention)
    writer = spool.writer()
    dicom = settings.dicom
    try:
        listener = start_listener(
            host=dicom.host, port=dicom.port, ae_title=dicom.ae_title, writer=writer,
            policy=ListenerPolicy(min_free_bytes=int(settings.spool.min_free_bytes)),
            max_associations=dicom.max_associations, allowed_calling_ae_titles=dicom.allowed_calling_ae_titles,
            require_called_ae_title=dicom.require_called_ae_title, acse_timeout_s=dicom.acse_timeout_s,
            dimse_timeout_s=dicom.dimse_timeout_s, network_timeout_s=dicom.network_timeout_s,
            maximum_pdu_size=dicom.max_pdu_size, tcp_nodelay=dicom.tcp_nodelay,
        )
    except OSError as exc:
        writer.close()
        log.error("listener_not_started", host=dicom.host, port=dicom.port, reason=str(exc))
        print(f"sr2fhir: error: cannot listen on {dicom.host}:{dicom.port} (dicom.host/dicom.port): {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    log.info("listener_started", host=dicom.host, port=listener.port, ae_title=dicom.ae_title,
             spool_directory=str(settings.spool.directory),
             target=str(settings.fhir.base_url) if settings.fhir.base_url else f"outbox {settings.fhir.outbox_directory}")
    worker = WorkerProcess(config_path)
    worker.start()
    try:
        _supervise(worker, stop)
    finally:
        log.info("daemon_stopping", active_associations=listener.active_associations)
        listener.stop(drain_timeout_s=DRAIN_TIMEOUT_S)
        worker.stop()
        writer.close()
        log.info("daemon_stopped", pending=spool.status().pending)
    return 0


def _supervise(worker: WorkerProcess, stop: threading.Event) -> None:
    """Wait for the stop signal; restart the worker (with back-off) if it dies meanwhile."""
    failures = 0
    started = time.monotonic()
    while not stop.wait(0.5):
        status = worker.exited()
        if status is None:
            continue
        if time.monotonic() - started > WORKER_HEALTHY_AFTER_S:
            failures = 0
        delay = WORKER_RESTART_BACKOFF_S[min(failures, len(WORKER_RESTART_BACKOFF_S) - 1)]
        log.error("worker_exited", status=status, restart_in_s=delay)
        failures += 1
        if stop.wait(delay):
            return
        worker.restarts += 1
        worker.start()
        started = time.monotonic()
