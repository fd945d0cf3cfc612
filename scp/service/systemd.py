"""systemd integration: the ``sd_notify`` protocol and what the watchdog vouches for.

The notify protocol (``sd_notify(3)``) is a few lines: newline-separated ``KEY=VALUE``
assignments in one datagram on an ``AF_UNIX``/``SOCK_DGRAM`` socket whose address is in
``$NOTIFY_SOCKET`` (a path, or an abstract-namespace name when it starts with ``@``). The
watchdog is on when ``$WATCHDOG_USEC`` is set and ``$WATCHDOG_PID`` is unset or names this
process; ``WATCHDOG=1`` is then due every half of that interval (``sd_watchdog_enabled(3)``).
Without ``$NOTIFY_SOCKET`` (not started by systemd as ``Type=notify``), :class:`Notifier`
does nothing. Child processes must not inherit the variables: :func:`without_notify_env`.

:class:`ProgressCheck` decides whether ``WATCHDOG=1`` may be sent: the listener's acceptor thread
is alive, and the worker's heartbeat file (touched at least once a second while its
forwarding loop turns) has changed within the last ``stale_after_s`` (a new worker has
``start_grace_s`` for its first beat). A worker that has exited is the supervisor's business
(it is restarted), not the watchdog's.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from ..common.times import Clock

__all__ = ["NOTIFY_ENV", "ProgressCheck", "Notifier", "Sampler", "ServiceMonitor", "without_notify_env"]

log = structlog.get_logger()

NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
"""The variables through which systemd talks to its main process (never to its children)."""


def without_notify_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without :data:`NOTIFY_ENV`: for child processes, which must stay silent."""
    return {key: value for key, value in environ.items() if key not in NOTIFY_ENV}


class Notifier:
    """Send ``sd_notify`` messages to systemd; every method is a no-op without ``NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] = os.environ, *, pid: int | None = None) -> None:
        target = environ.get("NOTIFY_SOCKET", "")
        self._address: bytes | None = None
        if target.startswith("@"):
            self._address = b"\0" + os.fsencode(target[1:])
        elif target.startswith("/"):
            self._address = os.fsencode(target)
        self._socket: socket.socket | None = None
        self._warned = False
        self.watchdog_timeout_s = _watchdog_timeout_s(environ, os.getpid() if pid is None else pid)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often ``WATCHDOG=1`` is due (half the timeout), or None: no watchdog for us."""
        if not self.enabled or self.watchdog_timeout_s is None:
            return None
        return self.watchdog_timeout_s / 2

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; False when not sent (disabled or failed)."""
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:
            if not self._warned:  # once: a vanished socket must not flood the log every tick
                log.warning("sd_notify_failed", error=exc.strerror or str(exc))
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``, only when the watchdog is on for this process."""
        return self.watchdog_interval_s is not None and self.notify("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_timeout_s(environ: Mapping[str, str], pid: int) -> float | None:
    """``WATCHDOG_USEC`` in seconds when the watchdog applies to ``pid``, else None."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
        watchdog_pid = int(environ["WATCHDOG_PID"]) if "WATCHDOG_PID" in environ else pid
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 and watchdog_pid == pid else None


class ProgressCheck:
    """Whether the daemon is making progress; :meth:`problem` names what is stuck, or None.

    The heartbeat's age is measured on our monotonic clock from the moment we saw its mtime
    change, so wall-clock steps and a file left by an earlier worker mislead nothing. A new
    worker has ``start_grace_s`` (opening a large spool takes a while) until its first beat.
    """

    def __init__(self, *, listener_alive: Callable[[], bool], heartbeat: Path, stale_after_s: float,
                 start_grace_s: float = 60.0, clock: Clock = time.monotonic) -> None:
        self._listener_alive = listener_alive
        self._heartbeat = heartbeat
        self.stale_after_s = stale_after_s
        self.start_grace_s = start_grace_s
        self._clock = clock
        self.worker_spawned()

    def worker_spawned(self) -> None:
        self._seen = self._mtime_ns()
        self._changed_at = self._clock()
        self._beating = False

    def problem(self, *, worker_running: bool) -> str | None:
        if not self._listener_alive():
            return "the DICOM listener's acceptor thread has ended"
        mtime, now = self._mtime_ns(), self._clock()
        if mtime != self._seen:
            self._seen, self._changed_at, self._beating = mtime, now, True
        silent_s = now - self._changed_at
        limit = self.stale_after_s if self._beating else max(self.stale_after_s, self.start_grace_s)
        if worker_running and silent_s > limit:
            return (f"worker heartbeat {self._heartbeat.name} unchanged for {silent_s:.1f} s (limit {limit:g} s)"
                    if self._beating else f"worker started {silent_s:.1f} s ago and has not beaten yet (limit {limit:g} s)")
        return None

    def _mtime_ns(self) -> int | None:
        try:
            return self._heartbeat.stat().st_mtime_ns
        except OSError:
            return None


class Sampler:
    """The latest result of a slow ``probe`` (the spool's status: a query over every pending
    item), taken every ``interval_s`` in a daemon thread so that the watchdog
    loop never waits on it. :meth:`latest` returns ``(generation, text)``; generation 0 is the
    ``initial`` text, before the first probe has returned."""

    def __init__(self, probe: Callable[[], str], interval_s: float, initial: str = "counting") -> None:
        self._probe = probe
        self._interval_s = interval_s
        self._latest = (0, initial)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sr2fhir-status-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def latest(self) -> tuple[int, str]:
        with self._changed:
            return self._latest

    def wait_for(self, generation: int, timeout_s: float) -> tuple[int, str]:
        """Block until ``generation`` (or a later one) is there, at most ``timeout_s``."""
        with self._changed:
            self._changed.wait_for(lambda: self._latest[0] >= generation, timeout=timeout_s)
            return self._latest

    def _run(self) -> None:
        while not self._stop.is_set():
            text = self._probe()
            with self._changed:
                self._latest = (self._latest[0] + 1, text)
                self._changed.notify_all()
            self._stop.wait(self._interval_s)


class ServiceMonitor:
    """What the daemon tells systemd: ``READY=1`` with a ``STATUS=`` line, then on every
    :meth:`tick` ``WATCHDOG=1`` while :class:`ProgressCheck` finds nothing stuck, the ``STATUS=``
    line again after every new backlog sample and whenever the watchdog is withheld or
    resumes (so the datagram stream itself marks the change), and ``STOPPING=1``.

    ``backlog`` samples the spool (``"3 pending, 0 failed"``); it is only started when
    systemd listens. Without a watchdog, health is not judged and nothing is withheld.
    """

    def __init__(self, notifier: Notifier, health: ProgressCheck, backlog: Sampler, *, max_tick_s: float = 0.5) -> None:
        self._notifier = notifier
        self._health = health
        self._backlog = backlog
        self._where = ""
        self._problem: str | None = None
        self._reported = -1  # the backlog generation last sent
        interval = notifier.watchdog_interval_s
        self.tick_s = max_tick_s if interval is None else min(max_tick_s, interval)
        """How often :meth:`tick` must run: at most half the watchdog timeout."""

    def worker_spawned(self) -> None:
        self._health.worker_spawned()

    def ready(self, where: str) -> None:
        self._where = where
        if self._notifier.enabled:
            self._notifier.ready(self._status_line())  # "backlog: counting" until the first sample
            self._backlog.start()

    def tick(self, *, worker_running: bool) -> None:
        if not self._notifier.enabled:
            return
        problem = (self._health.problem(worker_running=worker_running)
                   if self._notifier.watchdog_interval_s is not None else None)
        changed = (problem is None) != (self._problem is None)
        if changed:
            if problem is not None:
                log.error("watchdog_withheld", reason=problem)
            else:
                log.info("watchdog_resumed", was=self._problem)
            self._problem = problem
        if changed or self._backlog.latest()[0] != self._reported:
            self._notifier.status(self._status_line())
        if problem is None:
            self._notifier.watchdog()

    def stopping(self) -> None:
        self._backlog.stop()
        self._notifier.stopping("stopping: draining associations, stopping the worker")

    def _status_line(self) -> str:
        self._reported, backlog = self._backlog.latest()
        line = f"{self._where}; backlog: {backlog}"
        return line if self._problem is None else f"{line}; watchdog withheld: {self._problem}"
