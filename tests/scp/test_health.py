"""The health endpoint over real loopback HTTP, and readiness fed by a real worker process.

Time is injected (the worker's clock in the child, the readiness clock in the parent): no
sleeps, no timing assertions.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scp.config import ReadinessSettings
from scp.telemetry.health import METRICS_CONTENT_TYPE, HealthServer, Readiness
from scp.telemetry.metrics import DaemonMetrics, FhirContact, SpoolBacklog, WorkerMetricsStore, build_registry, render
from scp.spool import SpoolError, SpoolStatus
from tests.scp.test_metrics import RECEIVED_AT, RECEIVED_TS, run_child

EMPTY_SPOOL = SpoolStatus(pending=0, pending_bytes=0, oldest_pending_received_at=None, failed=0, segments=0)


class Switch:
    """A readiness callable the test flips."""

    def __init__(self) -> None:
        self.answer: tuple[bool, str] = (True, "ready")

    def __call__(self) -> tuple[bool, str]:
        return self.answer


@pytest.fixture
def serve() -> Iterator[Callable[..., httpx.Client]]:
    """``serve(readiness, metrics)``: a started HealthServer on an ephemeral loopback port and
    an httpx client for it; both closed after the test."""
    started: list[tuple[HealthServer, httpx.Client]] = []

    def start(readiness: Callable[[], tuple[bool, str]], metrics: Callable[[], bytes] = lambda: b"") -> httpx.Client:
        server = HealthServer("127.0.0.1", 0, readiness, metrics)
        server.start()
        client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30)
        started.append((server, client))
        return client

    yield start
    for server, client in started:
        client.close()
        server.stop()


class TestEndpoints:
    def test_healthz_is_200_while_the_process_answers(self, serve) -> None:
        client = serve(Switch())
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "alive"}

    def test_readyz_flips_with_the_readiness_callable(self, serve) -> None:
        switch = Switch()
        client = serve(switch)
        assert client.get("/readyz").status_code == 200
        switch.answer = (False, "backlog of 12000 pending > 10000")
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"status": "not ready", "reason": "backlog of 12000 pending > 10000"}
        switch.answer = (True, "ready")
        assert client.get("/readyz").status_code == 200

    def test_a_failing_readiness_check_is_503_not_a_crash(self, serve) -> None:
        def broken() -> tuple[bool, str]:
            raise RuntimeError("boom")

        response = serve(broken).get("/readyz")
        assert response.status_code == 503
        assert response.json()["reason"] == "readiness check failed: RuntimeError"

    def test_metrics_in_prometheus_text_format(self, serve) -> None:
        daemon = DaemonMetrics()
        registry = build_registry(daemon)
        client = serve(Switch(), lambda: render(registry))
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == METRICS_CONTENT_TYPE
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        names = {family.name for family in text_string_to_metric_families(response.text)}
        assert {"sr2fhir_instances_received", "sr2fhir_worker_restarts"} <= names

    def test_failing_metrics_are_500(self, serve) -> None:
        def broken() -> bytes:
            raise OSError("disk gone")

        response = serve(Switch(), broken).get("/metrics")
        assert response.status_code == 500
        assert response.json() == {"error": "metrics failed: OSError"}

    def test_unknown_paths_and_methods(self, serve) -> None:
        client = serve(Switch())
        assert client.get("/").status_code == 404
        response = client.post("/readyz")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
        head = client.head("/healthz")
        assert head.status_code == 200 and head.content == b""
        assert client.get("/healthz?verbose=1").status_code == 200

    def test_stop_closes_the_port(self) -> None:
        server = HealthServer("127.0.0.1", 0, Switch(), lambda: b"")
        server.start()
        port = server.port
        assert port != 0
        server.stop()
        server.stop()  # twice is harmless
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz")

    def test_a_port_in_use_fails_at_start(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            server = HealthServer("127.0.0.1", taken.getsockname()[1], Switch(), lambda: b"")
            with pytest.raises(OSError):
                server.start()


def readiness(**overrides) -> Readiness:
    defaults = {"settings": ReadinessSettings(), "listener_up": lambda: True, "fhir_contact": FhirContact,
                "spool_status": lambda: EMPTY_SPOOL, "clock": lambda: 10_000.0}
    return Readiness(**{**defaults, **overrides})


class TestReadiness:
    def test_ready_when_all_is_well(self) -> None:
        assert readiness()() == (True, "ready")

    def test_listener_down_and_stopping(self) -> None:
        assert readiness(listener_up=lambda: False)() == (False, "DICOM listener is not accepting associations")
        assert readiness(stopping=lambda: True)() == (False, "shutting down")

    def test_fhir_failing_only_past_the_threshold(self) -> None:
        settings = ReadinessSettings(fhir_unreachable_after_s=300)

        def failing() -> FhirContact:
            return FhirContact(last_success_at=None, failing_since=1000.0)

        assert readiness(settings=settings, fhir_contact=failing, clock=lambda: 1300.0)() == (True, "ready")
        ready, reason = readiness(settings=settings, fhir_contact=failing, clock=lambda: 1301.0)()
        assert not ready
        assert reason == "FHIR server failing since 1970-01-01T00:16:40+00:00 (301 s > 300 s)"

    def test_backlog_limits(self) -> None:
        status = SpoolStatus(pending=11, pending_bytes=1, oldest_pending_received_at=RECEIVED_AT, failed=0, segments=1)
        over = readiness(settings=ReadinessSettings(max_pending=10), spool_status=lambda: status)
        assert over() == (False, "backlog of 11 pending > 10")
        old = readiness(settings=ReadinessSettings(max_pending=None, max_oldest_pending_age_s=60),
                        spool_status=lambda: status, clock=lambda: RECEIVED_TS + 61)
        assert old() == (False, "oldest pending item waits 61 s > 60 s")
        off = readiness(settings=ReadinessSettings(max_pending=None), spool_status=lambda: status)
        assert off() == (True, "ready")

    def test_a_delivery_hold_is_a_reason_without_server_words(self) -> None:
        from scp.delivery.reasons import HoldReason

        hold = HoldReason("unauthorized", 401, "HTTP 401 Unauthorized: token for Secret^Patient expired", 9_000.0)
        ready, reason = readiness(delivery_hold=lambda: hold)()
        assert not ready
        assert reason == ("delivery held since 1970-01-01T02:30:00+00:00 (1000 s): FHIR server answers 401 "
                          "(unauthorized); SRs are received and kept")
        assert readiness(delivery_hold=lambda: None)() == (True, "ready")

    def test_spool_status_failure_is_a_reason(self) -> None:
        def broken() -> SpoolStatus:
            raise SpoolError("cannot read")

        assert readiness(spool_status=broken)() == (False, "spool status unavailable: SpoolError")

    def test_every_reason_is_given(self) -> None:
        ready, reason = readiness(listener_up=lambda: False, fhir_contact=lambda: FhirContact(None, 0.0),
                                  settings=ReadinessSettings(max_pending=1),
                                  spool_status=lambda: EMPTY_SPOOL.__class__(5, 5, None, 0, 1))()
        assert not ready
        assert reason.count("; ") == 2


class TestEndToEnd:
    """A worker process reports through <spool>/metrics; the main process serves /readyz and /metrics."""

    def test_fhir_unreachable_in_the_worker_flips_readyz_and_a_delivery_shows_in_metrics(
            self, tmp_path: Path, serve) -> None:
        store = WorkerMetricsStore(tmp_path / "metrics")
        store.reset()
        now = [1000.0]
        check = readiness(settings=ReadinessSettings(fhir_unreachable_after_s=300), fhir_contact=store.fhir_contact,
                          clock=lambda: now[0])
        registry = build_registry(DaemonMetrics(), store, SpoolBacklog(lambda: EMPTY_SPOOL))
        client = serve(check, lambda: render(registry))
        assert client.get("/readyz").status_code == 200

        run_child(store.directory, now=1000.0, retries=3)  # the worker's FHIR requests fail at t=1000
        now[0] = 1200.0
        assert client.get("/readyz").status_code == 200  # not yet past the threshold
        now[0] = 1400.0
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["reason"].startswith("FHIR server failing since 1970-01-01T00:16:40+00:00 (400 s")

        run_child(store.directory, now=1450.0, delivered=1)  # a restarted worker gets through
        assert client.get("/readyz").status_code == 200

        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        delivered = families["sr2fhir_bundles_delivered"].samples
        assert [(s.name, s.value) for s in delivered] == [("sr2fhir_bundles_delivered_total", 1.0)]
        assert families["sr2fhir_fhir_retries"].samples[0].value == 3
        assert families["sr2fhir_fhir_last_success_timestamp_seconds"].samples[0].value == 1450.0
