"""``sr2fhir serve`` under a stand-in for systemd: a real AF_UNIX datagram socket as
``$NOTIFY_SOCKET`` receives READY, STATUS, WATCHDOG and STOPPING from the real daemon.

Synchronisation is on the datagrams and log events themselves: every ``recv`` blocks (the
socket timeout is only the bound), and the daemon marks each change of the watchdog in its
``STATUS=`` line, so "no WATCHDOG=1 while withheld" is checked between two datagrams in the
order the daemon sent them, not against a clock.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.daemon_process import DaemonProcess, write_config

pytestmark = pytest.mark.integration

RECV_BOUND_S = 20  # a recv that waits this long means the daemon stopped talking: fail
STALE_S = "3"  # health.worker_stale_after_s: the worker beats every ~1 s, so 3 s is "stuck"
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


class NotifySocket:
    """systemd's end: datagrams with the sender's pid (SO_PASSCRED), in arrival order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(RECV_BOUND_S)
        self.received: list[tuple[int, list[str]]] = []

    def next(self, sender: int) -> list[str]:
        """The next datagram's lines; asserts that ``sender`` sent it."""
        data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        pids = [_UCRED.unpack(payload[:_UCRED.size])[0] for level, kind, payload in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
        lines = data.decode().split("\n")
        self.received.append((pids[0] if pids else -1, lines))
        assert pids == [sender], f"datagram {lines} from pid {pids}, not the daemon's main process {sender}"
        return lines

    def until(self, sender: int, wanted: str) -> list[list[str]]:
        """Datagrams up to and including the first with a line starting with ``wanted``."""
        seen = []
        while True:
            lines = self.next(sender)
            seen.append(lines)
            if any(line.startswith(wanted) for line in lines):
                return seen

    def queued(self) -> list[bytes]:
        self.sock.setblocking(False)
        try:
            left = []
            while True:
                left.append(self.sock.recv(4096))
        except BlockingIOError:
            return left
        finally:
            self.sock.settimeout(RECV_BOUND_S)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    receiver = NotifySocket(tmp_path / "notify.sock")
    yield receiver
    receiver.sock.close()


def status_of(lines: list[str]) -> str | None:
    return next((line.removeprefix("STATUS=") for line in lines if line.startswith("STATUS=")), None)


def echo(port: int) -> int:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SR2FHIR")
    assert assoc.is_established, f"no association on port {port}"
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_ready_status_watchdog_withheld_while_the_worker_is_stopped_and_stopping(tmp_path, notify):
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000", "SR2FHIR_HEALTH__WORKER_STALE_AFTER_S": STALE_S}
    daemon = DaemonProcess(write_config(tmp_path), env=env)
    worker_pid = None
    with daemon:
        main_pid = daemon.process.pid
        worker_pid = int(daemon.wait_for("worker_spawned")["pid"])
        try:
            # READY=1 comes first, and names the port it is listening on: bound before READY.
            first = notify.next(main_pid)
            assert first[0] == "READY=1", first
            ready = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+); backlog: counting", status_of(first) or "")
            assert ready, first
            port = int(ready.group(1))
            assert port == daemon.port  # the port listener_started logged
            assert echo(port) == 0x0000
            # The backlog, once counted, in the next STATUS= line.
            counted = status_of(notify.until(main_pid, "STATUS=")[-1])
            assert counted == f"listening on 127.0.0.1:{port}; backlog: 0 pending, 0 failed"

            # Healthy: WATCHDOG=1 again and again.
            for _ in range(3):
                notify.until(main_pid, "WATCHDOG=1")
            assert daemon.named("watchdog_withheld") == []

            # The worker only reads the spool: it must not have inherited systemd's variables.
            worker_environ = Path(f"/proc/{worker_pid}/environ").read_bytes().split(b"\0")
            assert not [v for v in worker_environ if v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))]

            # Stuck worker: its heartbeat stops, the watchdog is withheld (and the STATUS says so).
            os.kill(worker_pid, signal.SIGSTOP)
            seen = notify.until(main_pid, "STATUS=")
            while "watchdog withheld" not in (status_of(seen[-1]) or ""):
                seen = notify.until(main_pid, "STATUS=")
            withheld = daemon.wait_for("watchdog_withheld")
            assert "worker heartbeat worker.heartbeat unchanged" in withheld["reason"]
            # Up to the next STATUS refresh (several supervise ticks later): no WATCHDOG=1.
            window = notify.until(main_pid, "STATUS=")
            assert all("WATCHDOG=1" not in lines for lines in window), window
            assert "watchdog withheld" in (status_of(window[-1]) or "")

            # The worker continues: the watchdog resumes, announced by a STATUS without "withheld".
            os.kill(worker_pid, signal.SIGCONT)
            resumed = notify.until(main_pid, "WATCHDOG=1")
            statuses = [status_of(lines) for lines in resumed if status_of(lines) is not None]
            assert statuses and "withheld" not in statuses[-1], resumed
            assert all("WATCHDOG=1" not in lines for lines in resumed[:-1]), resumed
            daemon.wait_for("watchdog_resumed")
            notify.until(main_pid, "WATCHDOG=1")
        finally:
            with suppress(ProcessLookupError):
                os.kill(worker_pid, signal.SIGCONT)  # never leave a stopped orphan behind

        # SIGTERM: STOPPING=1, exit 0, and nothing after.
        assert daemon.terminate() == 0
        notify.until(main_pid, "STOPPING=1")
        assert notify.queued() == []
        daemon.wait_for("daemon_stopped")


def test_watchdog_pid_of_another_process_gets_status_but_no_watchdog(tmp_path, notify):
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
    with DaemonProcess(write_config(tmp_path), env=env) as daemon:
        main_pid = daemon.process.pid
        assert notify.next(main_pid)[0] == "READY=1"
        refresh = notify.until(main_pid, "STATUS=")  # the periodic refresh, many ticks later
        assert all("WATCHDOG=1" not in lines for lines in refresh), refresh
        assert daemon.terminate() == 0
        notify.until(main_pid, "STOPPING=1")
    assert daemon.named("watchdog_withheld") == []


def test_a_killed_worker_is_restarted_and_the_watchdog_carries_on(tmp_path, notify):
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000", "SR2FHIR_HEALTH__WORKER_STALE_AFTER_S": STALE_S}
    with DaemonProcess(write_config(tmp_path), env=env) as daemon:
        main_pid = daemon.process.pid
        first_worker = int(daemon.wait_for("worker_spawned")["pid"])
        notify.until(main_pid, "WATCHDOG=1")
        os.kill(first_worker, signal.SIGKILL)
        assert daemon.wait_for("worker_exited")["status"] == -signal.SIGKILL
        second_worker = int(daemon.wait_for("worker_spawned", count=2)["pid"])
        assert second_worker != first_worker
        daemon.wait_for("worker_started", count=2)
        for _ in range(3):
            notify.until(main_pid, "WATCHDOG=1")
        assert daemon.named("watchdog_withheld") == []
        assert daemon.terminate() == 0
