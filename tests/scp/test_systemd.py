"""scp.service.systemd: the sd_notify protocol on real AF_UNIX datagram sockets, the health decision,
the monitor's messages, and ``systemd-analyze verify`` on deploy/sr2fhir.service."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scp.service import daemon
from scp.telemetry.metrics import DaemonMetrics, WorkerMetricsStore, metrics_directory
from scp.service.systemd import ProgressCheck, Notifier, Sampler, ServiceMonitor, without_notify_env

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "sr2fhir.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket standing in for systemd's; recv never waits more than 5 s."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        yield str(path), receiver


def nothing_queued(receiver: socket.socket) -> bool:
    receiver.setblocking(False)
    try:
        receiver.recv(4096)
    except BlockingIOError:
        return True
    finally:
        receiver.settimeout(5)
    return False


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- Notifier


def test_messages_arrive_on_a_socket_path_exactly_as_sent(notify_socket):
    path, receiver = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("listening on 127.0.0.1:11112; backlog: 0 pending, 0 failed")
    assert notifier.status("backlog: 3 pending, 1 failed")
    assert notifier.stopping("stopping")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=listening on 127.0.0.1:11112; backlog: 0 pending, 0 failed"
    assert receiver.recv(4096) == b"STATUS=backlog: 3 pending, 1 failed"
    assert receiver.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    assert nothing_queued(receiver)
    notifier.close()


def test_an_at_sign_means_the_abstract_namespace():
    name = f"sr2fhir-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(b"\0" + name.encode())
        receiver.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "1000000"})
        assert notifier.ready("up")
        assert notifier.watchdog()
        assert receiver.recv(4096) == b"READY=1\nSTATUS=up"
        assert receiver.recv(4096) == b"WATCHDOG=1"
        notifier.close()


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"},
                                     {"WATCHDOG_USEC": "2000000"}])
def test_without_a_usable_notify_socket_nothing_is_sent(environ, notify_socket):
    _path, receiver = notify_socket
    notifier = Notifier(environ)
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert not notifier.ready("up")
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping("bye")
    assert nothing_queued(receiver)


def test_the_watchdog_interval_is_half_of_watchdog_usec(notify_socket):
    path, receiver = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert notifier.watchdog_timeout_s == 2.0
    assert notifier.watchdog_interval_s == 1.0
    assert notifier.watchdog()
    assert receiver.recv(4096) == b"WATCHDOG=1"


def test_watchdog_pid_of_this_process_keeps_the_watchdog(notify_socket):
    path, _receiver = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval_s == 0.25


@pytest.mark.parametrize("extra", [{"WATCHDOG_PID": "1"}, {"WATCHDOG_PID": "x"}, {"WATCHDOG_USEC": "0"},
                                   {"WATCHDOG_USEC": "soon"}, {}])
def test_no_watchdog_for_another_pid_or_without_a_valid_interval(extra, notify_socket):
    path, receiver = notify_socket
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", **extra}
    if not extra:
        del environ["WATCHDOG_USEC"]
    notifier = Notifier(environ)
    assert notifier.watchdog_interval_s is None
    assert not notifier.watchdog()
    assert notifier.status("still notifies")  # only the watchdog is not ours
    assert receiver.recv(4096) == b"STATUS=still notifies"
    assert nothing_queued(receiver)


def test_a_vanished_socket_is_reported_not_raised(tmp_path):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert not notifier.status("x")
    assert not notifier.status("y")


def test_child_environments_lose_the_notify_variables():
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin"}
    assert without_notify_env(environ) == {"PATH": "/bin"}


# --------------------------------------------------------------------------- ProgressCheck


def make_health(tmp_path: Path, clock: FakeClock, *, alive: list[bool] | None = None) -> tuple[ProgressCheck, Path]:
    heartbeat = tmp_path / "worker.heartbeat"
    state = alive if alive is not None else [True]
    health = ProgressCheck(listener_alive=lambda: state[0], heartbeat=heartbeat, stale_after_s=2.0, start_grace_s=10.0,
                    clock=clock)
    return health, heartbeat


def beat(heartbeat: Path, second: int) -> None:
    """What the worker's Heartbeat does, with an mtime of our choosing."""
    heartbeat.touch()
    os.utime(heartbeat, ns=(second * 10**9, second * 10**9))


def test_a_beating_worker_is_healthy_and_a_silent_one_is_stuck(tmp_path):
    clock = FakeClock()
    health, heartbeat = make_health(tmp_path, clock)
    beat(heartbeat, 1)
    assert health.problem(worker_running=True) is None
    clock.now += 1.5
    beat(heartbeat, 2)
    assert health.problem(worker_running=True) is None
    clock.now += 2.0
    assert health.problem(worker_running=True) is None  # exactly at the limit: still fine
    clock.now += 0.5
    problem = health.problem(worker_running=True)
    assert problem is not None and "worker.heartbeat unchanged for 2.5 s (limit 2 s)" in problem
    beat(heartbeat, 3)
    assert health.problem(worker_running=True) is None


def test_a_new_worker_has_the_start_grace_and_an_old_heartbeat_file_counts_for_nothing(tmp_path):
    clock = FakeClock()
    health, heartbeat = make_health(tmp_path, clock)
    beat(heartbeat, 1)  # left by an earlier worker
    health.worker_spawned()
    clock.now += 9.0
    assert health.problem(worker_running=True) is None
    clock.now += 2.0
    problem = health.problem(worker_running=True)
    assert problem is not None and "has not beaten yet" in problem
    beat(heartbeat, 2)
    assert health.problem(worker_running=True) is None
    clock.now += 2.5
    assert "unchanged" in (health.problem(worker_running=True) or "")


def test_a_worker_awaiting_restart_is_not_stuck(tmp_path):
    clock = FakeClock()
    health, _heartbeat = make_health(tmp_path, clock)
    clock.now += 100
    assert health.problem(worker_running=False) is None


def test_a_dead_listener_is_stuck_whatever_the_worker_does(tmp_path):
    clock = FakeClock()
    alive = [True]
    health, heartbeat = make_health(tmp_path, clock, alive=alive)
    beat(heartbeat, 1)
    assert health.problem(worker_running=True) is None
    alive[0] = False
    assert health.problem(worker_running=False) == "the DICOM listener's acceptor thread has ended"


# --------------------------------------------------------------------------- ServiceMonitor


def datagrams(receiver: socket.socket) -> list[bytes]:
    received = []
    receiver.setblocking(False)
    try:
        while True:
            received.append(receiver.recv(4096))
    except BlockingIOError:
        return received
    finally:
        receiver.settimeout(5)


class FakeBacklog:
    """A Sampler whose samples the test takes."""

    def __init__(self, text: str) -> None:
        self.generation, self.text = 0, text
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def latest(self) -> tuple[int, str]:
        return self.generation, self.text


def test_monitor_pings_while_healthy_withholds_while_stuck_and_marks_both_in_status(tmp_path, notify_socket):
    path, receiver = notify_socket
    clock = FakeClock()
    health, heartbeat = make_health(tmp_path, clock)
    backlog = FakeBacklog("counting")
    monitor = ServiceMonitor(Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"}), health, backlog)
    assert monitor.tick_s == 0.3
    monitor.ready("listening on 127.0.0.1:104")
    assert backlog.started
    beat(heartbeat, 1)
    monitor.tick(worker_running=True)
    assert datagrams(receiver) == [b"READY=1\nSTATUS=listening on 127.0.0.1:104; backlog: counting", b"WATCHDOG=1"]
    backlog.generation, backlog.text = 1, "2 pending, 1 failed"
    monitor.tick(worker_running=True)
    assert datagrams(receiver) == [b"STATUS=listening on 127.0.0.1:104; backlog: 2 pending, 1 failed", b"WATCHDOG=1"]
    clock.now += 3.0  # heartbeat silent past the 2 s limit
    monitor.tick(worker_running=True)
    clock.now += 0.3
    monitor.tick(worker_running=True)
    withheld = datagrams(receiver)
    assert len(withheld) == 1 and withheld[0].startswith(b"STATUS=listening on 127.0.0.1:104; backlog: 2 pending, "
                                                         b"1 failed; watchdog withheld: worker heartbeat")
    backlog.generation = 2
    monitor.tick(worker_running=True)  # a new sample: the refreshed line still says withheld
    refreshed = datagrams(receiver)
    assert len(refreshed) == 1 and b"watchdog withheld" in refreshed[0]
    beat(heartbeat, 2)
    monitor.tick(worker_running=True)
    assert datagrams(receiver) == [b"STATUS=listening on 127.0.0.1:104; backlog: 2 pending, 1 failed", b"WATCHDOG=1"]
    monitor.stopping()
    assert backlog.stopped
    assert datagrams(receiver) == [b"STOPPING=1\nSTATUS=stopping: draining associations, stopping the worker"]


def test_monitor_without_watchdog_reports_status_only_and_judges_nothing(tmp_path, notify_socket):
    path, receiver = notify_socket
    health, _heartbeat = make_health(tmp_path, FakeClock(), alive=[False])
    backlog = FakeBacklog("counting")
    monitor = ServiceMonitor(Notifier({"NOTIFY_SOCKET": path}), health, backlog)
    assert monitor.tick_s == 0.5
    monitor.ready("here")
    monitor.tick(worker_running=True)
    backlog.generation, backlog.text = 1, "0 pending, 0 failed"
    monitor.tick(worker_running=True)
    monitor.tick(worker_running=True)
    assert datagrams(receiver) == [b"READY=1\nSTATUS=here; backlog: counting", b"STATUS=here; backlog: 0 pending, 0 failed"]


def test_monitor_without_systemd_does_not_even_sample_the_backlog(tmp_path):
    health, _heartbeat = make_health(tmp_path, FakeClock(), alive=[False])
    backlog = FakeBacklog("counting")
    monitor = ServiceMonitor(Notifier({}), health, backlog)
    monitor.ready("here")
    monitor.tick(worker_running=True)
    monitor.stopping()
    assert not backlog.started


def test_sampler_takes_samples_in_its_own_thread_until_stopped():
    calls: list[str] = []

    def probe() -> str:
        calls.append(threading.current_thread().name)
        return f"{len(calls)} pending, 0 failed"

    sampler = Sampler(probe, interval_s=0.01)
    assert sampler.latest() == (0, "counting")
    sampler.start()
    generation, text = sampler.wait_for(3, timeout_s=10)
    assert generation >= 3 and text == f"{generation} pending, 0 failed"
    assert set(calls) == {"sr2fhir-status-sampler"}
    sampler.stop()
    assert sampler._thread is not None
    sampler._thread.join(10)
    assert not sampler._thread.is_alive()


# --------------------------------------------------------------------------- the unit file


def test_unit_file_has_the_required_settings():
    text = UNIT.read_text(encoding="utf-8")
    settings = [line for line in text.splitlines() if line and not line.startswith(("#", ";", "["))]
    for required in ("Type=notify", "Restart=on-failure", "ProtectSystem=strict", "NoNewPrivileges=yes",
                     "PrivateTmp=yes", "PrivateDevices=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                     "CapabilityBoundingSet=", "SystemCallFilter=@system-service", "UMask=0077",
                     "StateDirectory=sr2fhir", "ConfigurationDirectory=sr2fhir",
                     "Environment=SR2FHIR_SPOOL__DIRECTORY=%S/sr2fhir/spool",
                     "Environment=SR2FHIR_FHIR__OUTBOX_DIRECTORY=%S/sr2fhir/outbox",
                     "ExecStart=/opt/sr2fhir/venv/bin/sr2fhir serve --config /etc/sr2fhir/config.yaml"):
        assert required in settings, required
    assert re.search(r"^WatchdogSec=\d+s$", text, re.MULTILINE)
    stop = re.search(r"^TimeoutStopSec=(\d+)s$", text, re.MULTILINE)
    assert stop and int(stop.group(1)) > 20  # the daemon's own drain bound is 20 s
    assert re.search(r"^(User=sr2fhir|DynamicUser=yes)$", text, re.MULTILINE)


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    # verify checks that ExecStart's program exists: point it at this checkout's venv, nothing else changes.
    installed = Path(sys.executable).parent / "sr2fhir"
    if not installed.exists():
        pytest.skip(f"{installed} is not installed (pip install -e . into the venv)")
    text = UNIT.read_text(encoding="utf-8")
    rewritten = text.replace("ExecStart=/opt/sr2fhir/venv/bin/sr2fhir ", f"ExecStart={installed} ")
    assert rewritten != text
    unit = tmp_path / "sr2fhir.service"
    unit.write_text(rewritten, encoding="utf-8")
    proc = subprocess.run([analyze, "verify", str(unit)], check=False, capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys and typos; those are warnings naming the file.
    about_unit = [line for line in (proc.stdout + proc.stderr).splitlines() if "sr2fhir" in line]
    assert proc.returncode == 0 and not about_unit, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- the daemon's supervise loop


class FakeWorker:
    def __init__(self) -> None:
        self.status: int | None = None
        self.starts = 0
        self.restarts = 0
        self.pid = 4242

    def exited(self) -> int | None:
        return self.status

    def start(self) -> None:
        self.starts += 1
        self.status = None


class RecordingMonitor:
    """Ticks fast; the worker dies at the first tick; the loop stops two ticks after the restart."""

    tick_s = 0.01

    def __init__(self, worker: FakeWorker, stop: threading.Event) -> None:
        self.worker, self.stop = worker, stop
        self.ticks: list[bool] = []
        self.spawned = 0

    def tick(self, *, worker_running: bool) -> None:
        self.ticks.append(worker_running)
        if len(self.ticks) == 1:
            self.worker.status = -9
        if self.worker.starts and self.ticks[-2:] == [True, True]:
            self.stop.set()

    def worker_spawned(self) -> None:
        self.spawned += 1


def test_supervise_restarts_a_dead_worker_and_keeps_ticking_through_the_back_off(tmp_path):
    stop = threading.Event()
    worker = FakeWorker()
    monitor = RecordingMonitor(worker, stop)
    daemon_metrics = DaemonMetrics()
    daemon._supervise(worker, stop, monitor, WorkerMetricsStore(metrics_directory(tmp_path)),  # type: ignore[arg-type]
                      daemon_metrics)
    assert worker.starts == 1 and worker.restarts == 1 and monitor.spawned == 1
    restarts = next(m for m in daemon_metrics.collect() if m.name == "sr2fhir_worker_restarts")
    assert restarts.samples[0].value == 1
    # ticks went on while the restart was pending (1 s back-off at 0.01 s a tick), reported as not running
    waiting = monitor.ticks[1:monitor.ticks.index(True, 1)]
    assert len(waiting) >= 2 and not any(waiting)


def test_the_status_line_names_a_delivery_hold_while_the_worker_publishes_one(tmp_path):
    from datetime import datetime

    from scp.delivery.reasons import HoldReason
    from scp.spool import Spool
    from scp.telemetry.metrics import WorkerMetrics

    spool = Spool(tmp_path / "spool")
    store = WorkerMetricsStore(metrics_directory(spool.directory))
    store.reset()
    assert daemon._backlog(spool, store) == "0 pending, 0 failed"
    worker = WorkerMetrics(store.directory)
    since = datetime(2026, 11, 27, 2, 13, 5).timestamp()  # local time, as journald shows it
    reason = HoldReason("unauthorized", 401, "HTTP 401 Unauthorized", since)
    worker.hold_started(reason)
    assert daemon._backlog(spool, store) == "0 pending, 0 failed; delivery held: FHIR server answers 401 since 02:13"
    worker.hold_ended(reason, 60.0)
    assert daemon._backlog(spool, store) == "0 pending, 0 failed"
    worker.close()
