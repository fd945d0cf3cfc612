"""Benchmark plumbing: a daemon whose log goes to a file (so reading it costs the run nothing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class QuietDaemon:
    """``sr2fhir serve`` with stdout in a file; polled (bounded) only between measurements."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log_path = config.parent / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout_s: float = 60) -> QuietDaemon:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "scp.cli", "serve", "--config", str(self.config)],
                                        cwd=self.config.parent, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            started = self.wait_events("listener_started", 1, timeout_s)[0]
            self.wait_events("worker_started", 1, timeout_s)
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise
        self.port = int(started["port"])
        return self

    def events(self, name: str) -> list[dict]:
        found = []
        with open(self.log_path, "rb") as f:
            for line in f:
                if name.encode() in line:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if event.get("event") == name:
                        found.append(event)
        return found

    def wait_events(self, name: str, count: int, timeout_s: float, poll_s: float = 0.1) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.events(name)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or (self.process and self.process.poll() is not None):
                raise RuntimeError(f"{len(found)}/{count} {name} events; see {self.log_path}")
            time.sleep(poll_s)

    def pids(self) -> tuple[int, int]:
        """(daemon pid, worker pid)."""
        return self.process.pid, int(self.events("worker_spawned")[-1]["pid"])

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=60)
        self._log.close()
        return status


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in KiB, from /proc."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]
