"""The HTTP health endpoint: ``/healthz``, ``/readyz`` and ``/metrics`` for probes and Prometheus.

Runs in the main process in background threads (stdlib ``ThreadingHTTPServer``), loopback by
default. It knows nothing of DICOM or FHIR: it is handed two callables, one answering "ready?"
with a reason and one rendering the metrics. :class:`Readiness` is the daemon's answer:

* not ready while the daemon is stopping or the DICOM listener does not accept associations;
* not ready while delivery is held because the FHIR endpoint itself is wrong (401, 403, a wrong
  base URL, TLS, no FHIR: :mod:`scp.delivery.hold`), as the worker reports it through the
  metrics directory;
* not ready when FHIR requests have been failing (transport errors, 408, 429, 5xx) for longer
  than ``fhir_unreachable_after_s``, as the worker reports it through the metrics directory
  (:class:`scp.telemetry.metrics.FhirContact`);
* not ready when the backlog is over ``max_pending`` items or its oldest item is older than
  ``max_oldest_pending_age_s``.

``/healthz`` answers 200 while the process can answer at all. Bodies are small JSON documents
(or the Prometheus text format) holding counts, times and fixed reasons, never patient data.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import structlog

from ..common.times import Clock, epoch_seconds
from ..config import ReadinessSettings
from ..delivery.reasons import HoldReason
from .metrics import FhirContact
from ..spool import SpoolError, SpoolStatus

__all__ = ["METRICS_CONTENT_TYPE", "HealthServer", "Readiness"]

log = structlog.get_logger()

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_JSON = "application/json"
REQUEST_TIMEOUT_S = 10.0
"""A probe connection idle for longer is closed (no thread is held by a stalled client)."""



@dataclass(frozen=True)
class Readiness:
    """The daemon's readiness check: call it for ``(ready, reason)``.

    ``listener_up`` says whether the DICOM listener accepts associations; ``fhir_contact``
    gives the worker's FHIR contact state (:meth:`scp.telemetry.metrics.WorkerMetricsStore.fhir_contact`);
    ``spool_status`` is :meth:`scp.spool.Spool.status`; ``stopping`` is true once shutdown
    began; ``delivery_hold`` says why delivery is held, if it is
    (:meth:`scp.telemetry.metrics.WorkerMetricsStore.delivery_hold`). ``clock`` is Unix time
    (injectable for tests).
    """

    settings: ReadinessSettings
    listener_up: Callable[[], bool]
    fhir_contact: Callable[[], FhirContact]
    spool_status: Callable[[], SpoolStatus]
    stopping: Callable[[], bool] = lambda: False
    clock: Clock = time.time
    delivery_hold: Callable[[], HoldReason | None] = lambda: None

    def __call__(self) -> tuple[bool, str]:
        reasons = [reason for check in (self._daemon, self._hold, self._fhir, self._backlog) if (reason := check())]
        return (not reasons, "; ".join(reasons) if reasons else "ready")

    def _hold(self) -> str | None:
        hold = self.delivery_hold()
        if hold is None:
            return None
        held_s = max(0.0, self.clock() - hold.since)
        return (f"delivery held since {hold.since_iso()} ({held_s:.0f} s): {hold.headline()} "
                f"({hold.problem}); SRs are received and kept")

    def _daemon(self) -> str | None:
        if self.stopping():
            return "shutting down"
        if not self.listener_up():
            return "DICOM listener is not accepting associations"
        return None

    def _fhir(self) -> str | None:
        contact = self.fhir_contact()
        if contact.failing_since is None:
            return None
        failing_s = self.clock() - contact.failing_since
        limit = self.settings.fhir_unreachable_after_s
        if failing_s <= limit:
            return None
        since = datetime.fromtimestamp(contact.failing_since, UTC).isoformat(timespec="seconds")
        return f"FHIR server failing since {since} ({failing_s:.0f} s > {limit:g} s)"

    def _backlog(self) -> str | None:
        settings = self.settings
        if settings.max_pending is None and settings.max_oldest_pending_age_s is None:
            return None
        try:
            status = self.spool_status()
        except (SpoolError, OSError) as exc:
            return f"spool status unavailable: {type(exc).__name__}"
        if settings.max_pending is not None and status.pending > settings.max_pending:
            return f"backlog of {status.pending} pending > {settings.max_pending}"
        if settings.max_oldest_pending_age_s is not None and status.oldest_pending_received_at:
            oldest = epoch_seconds(status.oldest_pending_received_at)
            if oldest is None:
                return None
            age_s = self.clock() - oldest
            if age_s > settings.max_oldest_pending_age_s:
                return f"oldest pending item waits {age_s:.0f} s > {settings.max_oldest_pending_age_s:g} s"
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], readiness: Callable[[], tuple[bool, str]],
                 metrics: Callable[[], bytes]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.readiness = readiness
        self.metrics = metrics
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S
    server_version = "sr2fhir"
    sys_version = ""

    def do_GET(self) -> None:  # http.server's naming
        self._answer(include_body=True)

    def do_HEAD(self) -> None:
        self._answer(include_body=False)

    def _answer(self, *, include_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            status, content_type, body = HTTPStatus.OK, _JSON, _json({"status": "alive"})
        elif path == "/readyz":
            status, content_type, body = self._readyz()
        elif path == "/metrics":
            status, content_type, body = self._metrics()
        else:
            status, content_type, body = HTTPStatus.NOT_FOUND, _JSON, _json({"error": "not found",
                                                                            "paths": ["/healthz", "/readyz", "/metrics"]})
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if include_body:
            self.wfile.write(body)

    def _readyz(self) -> tuple[HTTPStatus, str, bytes]:
        try:
            ready, reason = self.server.readiness()
        except Exception as exc:  # noqa: BLE001 - a failing check means "not ready", not a crash
            log.exception("readiness_check_failed")
            ready, reason = False, f"readiness check failed: {type(exc).__name__}"
        status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
        return status, _JSON, _json({"status": "ready" if ready else "not ready", "reason": reason})

    def _metrics(self) -> tuple[HTTPStatus, str, bytes]:
        try:
            return HTTPStatus.OK, METRICS_CONTENT_TYPE, self.server.metrics()
        except Exception as exc:  # noqa: BLE001 - the boundary: an error status, never a crash
            log.exception("metrics_render_failed")
            return HTTPStatus.INTERNAL_SERVER_ERROR, _JSON, _json({"error": f"metrics failed: {type(exc).__name__}"})

    def do_POST(self) -> None:
        self._not_allowed()

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _not_allowed(self) -> None:
        body = _json({"error": "method not allowed"})
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", _JSON)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # probes every few seconds would drown the log; errors are logged where they happen


def _json(document: dict[str, object]) -> bytes:
    return json.dumps(document).encode() + b"\n"


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``host:port``, served from background threads.

    ``readiness`` returns ``(ready, reason)``: 200 or 503 with ``{"status", "reason"}``;
    ``metrics`` returns the Prometheus text format (:func:`scp.telemetry.metrics.render`). Port 0 binds
    a free port; :attr:`port` tells which. ``start()`` binds (raising ``OSError`` when it
    cannot) and returns; ``stop()`` closes the socket and waits for the serving thread.
    """

    def __init__(self, host: str, port: int, readiness: Callable[[], tuple[bool, str]],
                 metrics: Callable[[], bytes]) -> None:
        self.host = host
        self._requested_port = port
        self._readiness = readiness
        self._metrics = metrics
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the requested one until :meth:`start`)."""
        return self._server.server_address[1] if self._server is not None else self._requested_port

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("HealthServer is already started")
        self._server = _Server((self.host, self._requested_port), self._readiness, self._metrics)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="sr2fhir-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket; harmless when not started or already stopped."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
