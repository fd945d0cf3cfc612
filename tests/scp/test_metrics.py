"""Metrics across two real processes: a child counts as the worker does, the parent scrapes.

Children are started with the ``spawn`` method (a fresh interpreter, as the daemon's worker
is) and synchronised with multiprocessing events and joins, never with sleeps.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from fhir_client import Outcome, SendResult
from scp.delivery.reasons import HoldReason
from scp.telemetry.metrics import (
    MAX_CALLING_AE_LABELS,
    CachedSpoolStatus,
    DaemonMetrics,
    FhirContact,
    SpoolBacklog,
    WorkerMetrics,
    WorkerMetricsStore,
    build_registry,
    metrics_directory,
    render,
)
from scp.spool import SpoolError, SpoolStatus

SPAWN = multiprocessing.get_context("spawn")
RECEIVED_AT = "2024-03-01T10:00:00.000000+00:00"
RECEIVED_TS = 1709287200.0  # RECEIVED_AT as Unix time


@dataclass(frozen=True)
class Item:
    """The SpoolItem fields the observers read."""

    sop_instance_uid: str = "1.2.826.0.1.3680043.8.498.1"
    sop_class_uid: str = "1.2.840.10008.5.1.4.1.1.88.33"
    calling_ae: str = "MODALITY"
    received_at: str = RECEIVED_AT


def sent(outcome: Outcome = Outcome.DELIVERED, status_code: int | None = 200, elapsed_s: float = 0.2) -> SendResult:
    return SendResult(outcome, status_code, None, f"HTTP {status_code}", 1, elapsed_s)


def work(directory: str, plan: dict, started=None, release=None) -> None:
    """The child: what a worker process reports, at the fake time ``plan['now']``."""
    metrics = WorkerMetrics(Path(directory), clock=lambda: plan["now"])
    for _ in range(plan.get("delivered", 0)):
        metrics.delivered(Item(), sent(elapsed_s=0.2), {})
    for reason in plan.get("dead_lettered", []):
        metrics.dead_lettered(Item(), reason, sent(Outcome.REJECTED, 422) if reason == "rejected" else None)
    for _ in range(plan.get("retries", 0)):
        metrics.retry_wait()
    for _ in range(plan.get("deferred", 0)):
        metrics.deferred(Item())
    if "hold" in plan:
        metrics.hold_started(HoldReason(**plan["hold"]))
    if plan.get("resume"):
        metrics.hold_ended(HoldReason(**plan["hold"]), 60.0)
    if plan.get("close"):
        metrics.close()
    if started is not None:
        started.set()
        release.wait()  # stays alive until the parent kills it


def run_child(directory: Path, **plan) -> int:
    plan.setdefault("now", RECEIVED_TS + 2.0)
    child = SPAWN.Process(target=work, args=(str(directory), plan))
    child.start()
    child.join()
    assert child.exitcode == 0
    return child.pid


def scrape(*collectors) -> dict[tuple[str, frozenset], float]:
    """Render like /metrics does, parse it back: ``{(sample name, labels): value}``."""
    text = render(build_registry(*collectors)).decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def store(tmp_path: Path) -> WorkerMetricsStore:
    store = WorkerMetricsStore(metrics_directory(tmp_path))
    store.reset()
    return store


class TestAcrossProcesses:
    def test_a_workers_counts_reach_the_main_process(self, store: WorkerMetricsStore) -> None:
        run_child(store.directory, delivered=3, dead_lettered=["rejected", "unmappable"], retries=2, deferred=1)

        samples = scrape(store)
        assert value(samples, "sr2fhir_bundles_delivered_total") == 3
        assert value(samples, "sr2fhir_bundles_failed_total", reason="rejected") == 1
        assert value(samples, "sr2fhir_bundles_failed_total", reason="unmappable") == 1
        assert value(samples, "sr2fhir_bundles_failed_total", reason="retries_exhausted") == 0
        assert value(samples, "sr2fhir_fhir_retries_total") == 2
        assert value(samples, "sr2fhir_bundles_deferred_total") == 1
        # received 2 s before delivery: in the 2.5 s bucket, not in the 1 s one
        assert value(samples, "sr2fhir_delivery_latency_seconds_count") == 3
        assert value(samples, "sr2fhir_delivery_latency_seconds_bucket", le="1.0") == 0
        assert value(samples, "sr2fhir_delivery_latency_seconds_bucket", le="2.5") == 3
        assert value(samples, "sr2fhir_delivery_latency_seconds_sum") == pytest.approx(6.0)
        assert value(samples, "sr2fhir_send_duration_seconds_count") == 4  # 3 delivered + 1 rejected

    def test_counters_survive_a_killed_worker_and_its_restart(self, store: WorkerMetricsStore) -> None:
        started, release = SPAWN.Event(), SPAWN.Event()
        first = SPAWN.Process(target=work, args=(str(store.directory), {"now": RECEIVED_TS, "delivered": 5},
                                                 started, release))
        first.start()
        assert started.wait(timeout=60)
        os.kill(first.pid, signal.SIGKILL)  # no clean exit: what it published must still count
        first.join()
        assert value(scrape(store), "sr2fhir_bundles_delivered_total") == 5

        second = run_child(store.directory, delivered=2, retries=1)
        samples = scrape(store)
        assert value(samples, "sr2fhir_bundles_delivered_total") == 7
        assert value(samples, "sr2fhir_fhir_retries_total") == 1

        # the daemon folds each exited worker into retired.json: same totals, fewer files
        store.process_exited(first.pid)
        store.process_exited(second)
        assert sorted(p.name for p in store.directory.iterdir()) == ["retired.json"]
        samples = scrape(store)
        assert value(samples, "sr2fhir_bundles_delivered_total") == 7
        assert value(samples, "sr2fhir_delivery_latency_seconds_count") == 7

        run_child(store.directory, delivered=1)
        assert value(scrape(store), "sr2fhir_bundles_delivered_total") == 8

    def test_fhir_contact_state_crosses_processes_and_restarts(self, store: WorkerMetricsStore) -> None:
        run_child(store.directory, now=1000.0, retries=1)  # fails at t=1000, then dies
        run_child(store.directory, now=1200.0, retries=1)  # the restarted worker fails too
        assert store.fhir_contact() == FhirContact(last_success_at=None, failing_since=1000.0)

        run_child(store.directory, now=1300.0, delivered=1)
        assert store.fhir_contact() == FhirContact(last_success_at=1300.0, failing_since=None)
        samples = scrape(store)
        assert value(samples, "sr2fhir_fhir_last_success_timestamp_seconds") == 1300.0
        assert value(samples, "sr2fhir_fhir_failing_since_timestamp_seconds") == 0.0

    def test_a_delivery_hold_crosses_processes_and_ends_with_its_worker(self, store: WorkerMetricsStore) -> None:
        hold = {"problem": "unauthorized", "status_code": 401, "detail": "HTTP 401 Unauthorized", "since": 1000.0}
        started, release = SPAWN.Event(), SPAWN.Event()
        worker = SPAWN.Process(target=work, args=(str(store.directory), {"now": 1000.0, "hold": hold}, started, release))
        worker.start()
        assert started.wait(timeout=60)
        assert store.delivery_hold() == HoldReason(**hold)
        samples = scrape(store)
        assert value(samples, "sr2fhir_delivery_held") == 1
        assert value(samples, "sr2fhir_delivery_held_since_timestamp_seconds") == 1000.0
        assert value(samples, "sr2fhir_delivery_hold_reason", problem="unauthorized", status_code="401") == 1
        assert value(samples, "sr2fhir_delivery_holds_total") == 1
        os.kill(worker.pid, signal.SIGKILL)  # died while held: its file still says held ...
        worker.join()
        assert store.delivery_hold() is not None
        store.process_exited(worker.pid)  # ... until the daemon folds it: an exited worker holds nothing
        assert store.delivery_hold() is None
        samples = scrape(store)
        assert value(samples, "sr2fhir_delivery_held") == 0
        assert not [key for key in samples if key[0] == "sr2fhir_delivery_hold_reason"]
        assert value(samples, "sr2fhir_delivery_holds_total") == 1

    def test_a_hold_that_ended_or_a_worker_that_stopped_holds_nothing(self, store: WorkerMetricsStore) -> None:
        hold = {"problem": "forbidden", "status_code": 403, "detail": "HTTP 403", "since": 1000.0}
        run_child(store.directory, hold=hold, resume=True)
        assert store.delivery_hold() is None
        run_child(store.directory, hold=hold, close=True)  # a clean stop while held
        assert store.delivery_hold() is None
        assert value(scrape(store), "sr2fhir_delivery_holds_total") == 2

    def test_reset_starts_a_daemon_run_from_zero(self, store: WorkerMetricsStore) -> None:
        pid = run_child(store.directory, delivered=4)
        store.process_exited(pid)
        run_child(store.directory, delivered=1)
        store.reset()
        assert value(scrape(store), "sr2fhir_bundles_delivered_total") == 0
        assert list(store.directory.iterdir()) == []


class TestWorkerMetrics:
    def test_a_rejection_is_contact_but_exhausted_retries_are_not(self, store: WorkerMetricsStore) -> None:
        now = [100.0]
        metrics = WorkerMetrics(store.directory, clock=lambda: now[0])
        metrics.retry_wait()
        now[0] = 150.0
        metrics.retry_wait()
        assert store.fhir_contact() == FhirContact(None, 100.0)
        metrics.dead_lettered(Item(), "rejected", sent(Outcome.REJECTED, 422))
        assert store.fhir_contact() == FhirContact(150.0, None)
        now[0] = 200.0
        metrics.dead_lettered(Item(), "retries_exhausted", sent(Outcome.DEFERRED, 503))
        assert store.fhir_contact() == FhirContact(150.0, 200.0)
        now[0] = 210.0
        metrics.dead_lettered(Item(), "unmappable")  # no FHIR request: changes nothing
        assert store.fhir_contact() == FhirContact(150.0, 200.0)

    def test_wrap_sleep_counts_each_retry_wait(self, store: WorkerMetricsStore) -> None:
        waits: list[float] = []

        async def fake_sleep(delay: float) -> None:
            waits.append(delay)

        metrics = WorkerMetrics(store.directory, clock=lambda: 5.0)
        sleep = metrics.wrap_sleep(fake_sleep)

        async def retry_twice() -> None:
            await sleep(1.0)
            await sleep(2.0)

        asyncio.run(retry_twice())
        assert waits == [1.0, 2.0]
        assert value(scrape(store), "sr2fhir_fhir_retries_total") == 2
        assert store.fhir_contact().failing_since == 5.0

    def test_never_raises_when_it_cannot_publish(self, tmp_path: Path) -> None:
        blocked = tmp_path / "metrics"
        blocked.write_text("a file where the directory should be")
        with capture_logs() as logs:
            metrics = WorkerMetrics(blocked)
            metrics.delivered(Item(), sent(), {})
            metrics.retry_wait()
        assert [entry["event"] for entry in logs] == ["metrics_not_published"]  # once, not per change

    def test_a_torn_read_never_makes_a_counter_go_back(self, store: WorkerMetricsStore) -> None:
        metrics = WorkerMetrics(store.directory)
        for _ in range(3):
            metrics.delivered(Item(), sent(), {})
        assert value(scrape(store), "sr2fhir_bundles_delivered_total") == 3
        record = metrics.path.read_bytes()
        metrics.path.write_bytes(record[:40] + b"#" * (len(record) - 40))  # what a torn read could see
        with capture_logs() as logs:
            assert value(scrape(store), "sr2fhir_bundles_delivered_total") == 3
        assert logs[0]["event"] == "metrics_file_unreadable"
        metrics.delivered(Item(), sent(), {})  # the next write is whole again
        assert value(scrape(store), "sr2fhir_bundles_delivered_total") == 4

    def test_unreadable_files_are_skipped(self, store: WorkerMetricsStore) -> None:
        WorkerMetrics(store.directory).delivered(Item(), sent(), {})
        (store.directory / "worker-1-2.json").write_text("{not json")
        assert value(scrape(store), "sr2fhir_bundles_delivered_total") == 1

    def test_latency_without_a_parseable_received_at_is_not_observed(self, store: WorkerMetricsStore) -> None:
        WorkerMetrics(store.directory).delivered(Item(received_at="yesterday"), sent(), {})
        samples = scrape(store)
        assert value(samples, "sr2fhir_bundles_delivered_total") == 1
        assert value(samples, "sr2fhir_delivery_latency_seconds_count") == 0


class TestFhirContact:
    def test_merge_of_processes_that_ran_one_after_another(self) -> None:
        failing = FhirContact(last_success_at=10.0, failing_since=20.0)
        restarted_and_failing = FhirContact(last_success_at=None, failing_since=30.0)
        recovered = FhirContact(last_success_at=40.0, failing_since=None)
        assert failing.merge(restarted_and_failing) == FhirContact(10.0, 20.0)
        assert failing.merge(restarted_and_failing).merge(recovered) == FhirContact(40.0, None)
        assert recovered.merge(failing) == FhirContact(40.0, None)
        assert FhirContact().merge(FhirContact()) == FhirContact()


class TestDaemonMetrics:
    @staticmethod
    def store_event(calling_ae: str) -> SimpleNamespace:
        return SimpleNamespace(assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title=calling_ae)))

    def test_received_per_calling_ae_refused_per_status(self) -> None:
        metrics = DaemonMetrics()
        for calling_ae, status in [("CT1", 0x0000), ("CT1", 0x0000), ("PACS", 0x0000), ("CT1", 0xA700),
                                   ("PACS", 0xC210)]:
            metrics.store_answered(self.store_event(calling_ae), status)
        metrics.worker_restarted()
        samples = scrape(metrics)
        assert value(samples, "sr2fhir_instances_received_total", calling_ae="CT1") == 2
        assert value(samples, "sr2fhir_instances_received_total", calling_ae="PACS") == 1
        assert value(samples, "sr2fhir_instances_refused_total", status="0xA700") == 1
        assert value(samples, "sr2fhir_instances_refused_total", status="0xC210") == 1
        assert value(samples, "sr2fhir_worker_restarts_total") == 1

    def test_calling_ae_labels_are_bounded(self) -> None:
        metrics = DaemonMetrics()
        for n in range(MAX_CALLING_AE_LABELS + 5):
            metrics.store_answered(self.store_event(f"AE{n}"), 0x0000)
        metrics.store_answered(self.store_event("AE0"), 0x0000)  # known titles keep their label
        samples = scrape(metrics)
        received = {labels: v for (name, labels), v in samples.items() if name == "sr2fhir_instances_received_total"}
        assert len(received) == MAX_CALLING_AE_LABELS + 1
        assert value(samples, "sr2fhir_instances_received_total", calling_ae="_other") == 5
        assert value(samples, "sr2fhir_instances_received_total", calling_ae="AE0") == 2


class TestSpoolBacklog:
    def test_gauges_from_spool_status(self) -> None:
        status = SpoolStatus(pending=12, pending_bytes=4096, oldest_pending_received_at=RECEIVED_AT, failed=3,
                             segments=1)
        samples = scrape(SpoolBacklog(lambda: status, clock=lambda: RECEIVED_TS + 90.0))
        assert value(samples, "sr2fhir_spool_pending") == 12
        assert value(samples, "sr2fhir_spool_pending_bytes") == 4096
        assert value(samples, "sr2fhir_spool_failed") == 3
        assert value(samples, "sr2fhir_spool_oldest_pending_age_seconds") == 90.0

    def test_a_failing_status_leaves_the_other_metrics_alone(self) -> None:
        def broken() -> SpoolStatus:
            raise SpoolError("journal unreadable")

        samples = scrape(SpoolBacklog(broken), DaemonMetrics())
        assert ("sr2fhir_spool_pending", frozenset()) not in samples
        assert value(samples, "sr2fhir_worker_restarts_total") == 0

    def test_a_real_spool(self, tmp_path: Path) -> None:
        from scp.spool import RecordFields, Spool

        spool = Spool(tmp_path / "spool")
        with spool.writer() as writer:
            writer.put(RecordFields("1.2.3", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.1.2.1", "CT1"), b"x" * 10)
        samples = scrape(SpoolBacklog(spool.status))
        assert value(samples, "sr2fhir_spool_pending") == 1
        assert value(samples, "sr2fhir_spool_failed") == 0

    def test_status_is_read_at_most_once_per_max_age(self) -> None:
        calls, now = [], [0.0]

        def status() -> SpoolStatus:
            calls.append(now[0])
            return SpoolStatus(len(calls), 0, None, 0, 0)

        cached = CachedSpoolStatus(status, max_age_s=5.0, clock=lambda: now[0])
        assert cached().pending == 1
        now[0] = 4.9
        assert cached().pending == 1
        now[0] = 5.0
        assert cached().pending == 2
        assert calls == [0.0, 5.0]
