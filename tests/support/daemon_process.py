"""Run ``sr2fhir serve`` as a real subprocess and follow its JSON log lines.

Tests synchronise on the daemon's own events (``listener_started``, ``bundle_delivered``,
...), read from its stdout as they are written, never on sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
LISTENER_PROCESSES_ENV = "SR2FHIR_TEST_LISTENER_PROCESSES"
"""Set (e.g. to 2) to give every daemon a test starts ``dicom.listener_processes``."""


def write_config(directory: Path, **sections: dict[str, Any]) -> Path:
    """A config.yaml in ``directory`` (port 0, spool and outbox inside it) merged with ``sections``."""
    config: dict[str, Any] = {
        "dicom": {"host": "127.0.0.1", "port": 0, "ae_title": "SR2FHIR"},
        "spool": {"directory": str(directory / "spool"), "min_free_bytes": 0},
        # The release is fixed, so no GET [base]/metadata comes before the first transaction (tests
        # that script a fault proxy request by request); fhir.version: auto is tested on its own.
        "fhir": {"outbox_directory": str(directory / "outbox"), "version": "r5"},
        "forwarder": {"poll_interval_s": 0.05},
        "log": {"format": "json", "level": "info"},
    }
    if os.environ.get(LISTENER_PROCESSES_ENV):  # run a suite against association processes
        processes = os.environ[LISTENER_PROCESSES_ENV]
        config["dicom"]["listener_processes"] = processes if processes == "auto" else int(processes)
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class DaemonProcess:
    """``sr2fhir serve --config FILE`` with its log lines collected as they arrive."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.events: list[dict[str, Any]] = []
        self.other_lines: list[str] = []
        self._changed = threading.Condition()
        self.process: subprocess.Popen[str] | None = None
        self.port: int | None = None

    def start(self, timeout_s: float = 30) -> DaemonProcess:
        self.events.clear()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scp.cli", "serve", "--config", str(self.config)],
            cwd=self.config.parent, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        try:
            started = self.wait_for("listener_started", timeout_s=timeout_s)
            self.wait_for("worker_started", timeout_s=timeout_s)
        except BaseException:
            self.__exit__(None, None, None)  # never leave a half-started daemon behind
            raise
        self.port = int(started["port"])
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            with self._changed:
                if isinstance(event, dict):
                    self.events.append(event)
                else:
                    self.other_lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, name: str, predicate: Callable[[dict[str, Any]], bool] = lambda _e: True, *,
                 count: int = 1, timeout_s: float = 30) -> dict[str, Any]:
        """Block until ``count`` events named ``name`` matching ``predicate`` were logged."""
        def matching() -> list[dict[str, Any]]:
            return [e for e in self.events if e.get("event") == name and predicate(e)]

        with self._changed:
            ok = self._changed.wait_for(lambda: len(matching()) >= count or self._ended(), timeout=timeout_s)
            found = matching()
        if len(found) < count:
            tail = "\n".join(json.dumps(e) for e in self.events[-15:]) + "\n" + "\n".join(self.other_lines[-15:])
            state = "exited" if self._ended() else ("timed out" if not ok else "")
            raise AssertionError(f"daemon {state}: {len(found)}/{count} {name!r} events; last lines:\n{tail}")
        return found[count - 1]

    def named(self, name: str) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.events if e.get("event") == name]

    def _ended(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def terminate(self, timeout_s: float = 20) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL the main process (the worker must follow by itself)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
