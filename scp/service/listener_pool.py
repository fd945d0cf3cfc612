"""The daemon's association processes (``dicom.listener_processes`` > 1) and their acceptor.

:class:`ListenerPool` binds the port (:class:`~scp.dicom.acceptor.Acceptor`), starts one
``python -m scp.service.association_process`` per slot with its end of a channel, restarts a
process that dies (at once the first time, then with back-off), and on shutdown stops
accepting, lets every process drain its associations (bounded) and stops the acceptor once
their last messages are read. An instance is acknowledged only after its process made it
durable, so a process that dies loses no acknowledged instance; its open connections drop
and the senders retry.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..dicom.acceptor import Acceptor, StoreAnswerObserver
from ..dicom.handoff import Channel, channel_pair
from .systemd import without_notify_env
from .worker import PARENT_PID_ENV

__all__ = ["RESTART_BACKOFF_S", "ListenerPool"]

log = structlog.get_logger()

RESTART_BACKOFF_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Delay before restarting a process that died, by how many times in a row it did."""
HEALTHY_AFTER_S = 60.0
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
"""Beyond the drain timeout, how long a process may take to exit after SIGTERM before SIGKILL."""


@dataclass
class _Process:
    index: int
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None


class ListenerPool:
    """The acceptor and ``count`` association processes."""

    def __init__(self, *, host: str, port: int, count: int, max_associations: int, config_path: Path | None,
                 store_observers: Sequence[StoreAnswerObserver] = ()) -> None:
        self.acceptor = Acceptor(host, port, max_associations=max_associations, store_observers=store_observers)
        self._host = str(self.acceptor.address[0])
        self._config_path = config_path
        self._processes = [_Process(index) for index in range(count)]
        self.restarts = 0

    @property
    def port(self) -> int:
        return self.acceptor.port

    @property
    def active_associations(self) -> int:
        return self.acceptor.active_associations

    def pids(self) -> list[int]:
        return [p.popen.pid for p in self._processes if p.popen is not None and p.popen.poll() is None]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the processes and the acceptor; return once every process serves (bounded:
        connections accepted before are queued on their channel, not lost)."""
        for process in self._processes:
            self._spawn(process)
        self.acceptor.start()
        if not self.acceptor.wait_ready(len(self._processes), timeout_s):
            log.warning("association_processes_slow", waited_s=timeout_s,
                        reason="not every association process said it serves; connections wait on their channel")

    def alive(self) -> bool:
        """The acceptor accepts (association processes being restarted do not make it unhealthy)."""
        return self.acceptor.alive()

    def _spawn(self, process: _Process) -> None:
        ours, theirs = channel_pair()
        command = [sys.executable, "-m", "scp.service.association_process", "--control-fd", str(theirs.fileno()),
                   "--index", str(process.index), "--host", self._host, "--port", str(self.port)]
        if self._config_path is not None:
            command += ["--config", str(self._config_path)]
        env = {**without_notify_env(os.environ), PARENT_PID_ENV: str(os.getpid())}
        try:
            process.popen = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, pass_fds=[theirs.fileno()])
        finally:
            theirs.close()
        process.started = time.monotonic()
        self.acceptor.attach(process.index, Channel(ours), process.popen.pid)
        log.info("association_process_spawned", index=process.index, pid=process.popen.pid)

    def check(self) -> int:
        """Restart processes that died (with back-off); returns how many were restarted now."""
        restarted = 0
        now = time.monotonic()
        for process in self._processes:
            if process.restart_at is None and process.popen is not None and (status := process.popen.poll()) is not None:
                if now - process.started > HEALTHY_AFTER_S:
                    process.failures = 0
                delay = RESTART_BACKOFF_S[min(process.failures, len(RESTART_BACKOFF_S) - 1)]
                log.error("association_process_exited", index=process.index, pid=process.popen.pid, status=status,
                          restart_in_s=delay)
                process.failures += 1
                process.restart_at = now + delay
            if process.restart_at is not None and now >= process.restart_at:
                process.restart_at = None
                self._spawn(process)
                self.restarts += 1
                restarted += 1
        return restarted

    def stop(self, drain_timeout_s: float) -> None:
        """Stop accepting; SIGTERM every process (each drains, bounded); SIGKILL stragglers."""
        self.acceptor.stop_accepting()
        running = [p.popen for p in self._processes if p.popen is not None and p.popen.poll() is None]
        for popen in running:
            popen.terminate()
        deadline = time.monotonic() + drain_timeout_s + STOP_GRACE_S
        for popen in running:
            try:
                popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("association_process_killed", pid=popen.pid,
                            reason=f"no exit within {drain_timeout_s + STOP_GRACE_S:g} s of SIGTERM")
                popen.kill()
                popen.wait()
        self.acceptor.stop()
