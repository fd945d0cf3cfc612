"""Delivery at the server's pace: the pieces the delivery benchmarks share.

* :func:`transaction_bodies` maps SR files and serialises the Bundles exactly as the daemon's
  FHIR client does (same mapping, same JSON bytes), so the ceiling client sends what the daemon
  would send;
* :func:`ceiling_seconds`: a plain httpx ``AsyncClient`` POSTing those bodies with the same
  concurrency and headers: the server's own pace, the baseline of every ratio here;
* :func:`end_to_end` / :func:`backlog_drain`: ``sr2fhir serve`` (:class:`bench.harness.QuietDaemon`)
  receiving the SRs by C-STORE and delivering them; timed from the log lines' own timestamps,
  so polling the log costs the measurement nothing;
* :func:`on_port`: a loopback FHIR server started on a port chosen beforehand (the daemon is
  configured with it while nothing listens there: an outage);
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pydicom

from bench.harness import QuietDaemon
from bench import ingest_bench
from bench.ingest_bench import push
from fhir_client.client import _TRANSACTION_HEADERS
from mapping import MappingOptions, map_sr, serialize
from tests.support.daemon_process import write_config
from tests.support.loopback_server import LoopbackFhirServer

SHORT_RETRY = {"initial_backoff_s": 0.05, "max_backoff_s": 0.5, "jitter_s": 0.05}
"""``fhir.retry`` of the benchmark daemons: an outage ends within half a second of the server
coming up (the default backs off to 60 s; the drain figure would then measure the backoff)."""

_Server = TypeVar("_Server", bound=LoopbackFhirServer)


def write_reports(directory: Path, count: int, tag: str) -> list[Path]:
    """``count`` small TID 1500 SRs as ``bench/ingest_bench.py`` sends, UIDs unique to ``tag``."""
    return ingest_bench.write_reports(directory, count, f"pace-{tag}")


def transaction_bodies(files: list[Path], release: str = "r5") -> list[bytes]:
    """The request bodies the daemon would POST for ``files`` (one transaction per SR)."""
    options = MappingOptions(fhir_version=release)
    bodies = []
    for path in files:
        bundle = map_sr(pydicom.dcmread(BytesIO(path.read_bytes())), options).bundle
        bodies.append(serialize(bundle))  # the worker's FhirClient encoder
    return bodies


async def _post_all(base_url: str, bodies: list[bytes], concurrency: int, retry_conflicts: bool) -> float:
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency,
                                                                  max_keepalive_connections=concurrency)) as client:
        async def one(body: bytes) -> None:
            async with slots:
                for _ in range(20 if retry_conflicts else 1):
                    # HAPI answers 409 when two transactions create one shared Device at once
                    response = await client.post(base_url, content=body, headers=_TRANSACTION_HEADERS)
                    if response.status_code != 409:
                        break
                response.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        return time.perf_counter() - start


def ceiling_seconds(base_url: str, bodies: list[bytes], concurrency: int, *, retry_conflicts: bool = False) -> float:
    """Seconds for a plain httpx client to POST every body, ``concurrency`` at a time (all 2xx)."""
    return asyncio.run(_post_all(base_url, bodies, concurrency, retry_conflicts))


def cpu_report(cpu_s: dict[str, float], count: int) -> str:
    """``listener 4.1, worker 6.9, server 3.0 ms CPU per SR``."""
    return ", ".join(f"{name} {seconds / count * 1000:.1f}" for name, seconds in cpu_s.items()) + " ms CPU per SR"


@dataclass(frozen=True)
class CpuCap:
    """The most SR/s the measured CPU costs allow on ``cores`` cores (:func:`cpu_cap`)."""

    rate: float
    bound: str
    """What binds: ``"all processes on N cores"`` or the one process (``"worker"``) that alone
    would need a whole core."""


def cpu_cap(cpu_s: dict[str, float], count: int, cores: int | None = None) -> CpuCap:
    """The rate that the CPU per SR of each process allows, whatever the scheduling::

        cap = min( cores / sum_p c_p ,  min_p 1 / c_p )     (c_p: CPU seconds per SR of process p)

    The first term: every process shares the same ``cores`` (``os.cpu_count()``), a strict
    bound; the second: each process does its work on one thread (the worker's event loop, the
    listener's GIL, node's event loop), so it can hardly use more than one core (node's JIT and
    GC threads let a fresh server pass its term by up to 19 %). A run below its cap is limited
    by something else (waiting: latency, pipelining, the worker's idle priority), not by CPU.
    """
    cores = cores or os.cpu_count() or 1
    per_sr = {name: seconds / count for name, seconds in cpu_s.items() if seconds > 0}
    if not per_sr:
        return CpuCap(float("inf"), "nothing measured")
    candidates = {f"all processes on {cores} core{'s' if cores != 1 else ''}": cores / sum(per_sr.values()),
                  **{name: 1 / cost for name, cost in per_sr.items()}}
    bound = min(candidates, key=candidates.__getitem__)
    return CpuCap(candidates[bound], bound)


def _event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


@dataclass
class Delivered:
    """How long the daemon took: from ``start`` (wall clock) to the last 2xx, and the first."""

    seconds: float
    first_2xx_s: float
    attempts: int = 0
    statuses: set[int] = field(default_factory=set)
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU time (user + system) of each process over the run: sender (the ``storescu``
    processes sending the SRs, on the same cores), listener (the daemon's main process),
    worker, server (when its pid was given)."""
    pushed_s: float = 0.0
    """How long the C-STORE senders took (the last SR acknowledged, i.e. spooled)."""


def _delivered(daemon: QuietDaemon, count: int, start_wall: float) -> Delivered:
    events = daemon.wait_events("bundle_delivered", count, timeout_s=1800, poll_s=0.2)
    times = sorted(_event_time(e) for e in events)
    return Delivered(times[-1] - start_wall, times[0] - start_wall, sum(e["attempts"] for e in events),
                     {e["status_code"] for e in events})


def daemon_config(work: Path, base_url: str, concurrency: int, map_ahead_mb: float | None = None,
                  **fhir: Any) -> Path:
    """A daemon config delivering to ``base_url`` (``fhir``: more keys of the ``fhir`` section;
    ``map_ahead_mb``: ``forwarder.map_ahead_mb``, the default when None)."""
    work.mkdir()
    forwarder: dict[str, Any] = {"concurrency": concurrency, "poll_interval_s": 0.05}
    if map_ahead_mb is not None:
        forwarder["map_ahead_mb"] = map_ahead_mb
    return write_config(work, fhir={"base_url": base_url, "retry": SHORT_RETRY, **fhir}, forwarder=forwarder)


def end_to_end(files: list[Path], work: Path, base_url: str, concurrency: int, associations: int = 2,
               server_pid: int | None = None, **fhir: Any) -> Delivered:
    """C-STORE ``files`` into a fresh daemon; time from the first C-STORE to the last 2xx."""
    daemon = QuietDaemon(daemon_config(work, base_url, concurrency, **fhir)).start()
    try:
        pids = dict(zip(("listener", "worker"), daemon.pids()))
        if server_pid is not None:
            pids["server"] = server_pid
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        senders_before = reaped_children_cpu_seconds()
        start = time.time()
        pushed_s = push(daemon.port, "SR2FHIR", files, associations)
        sender_s = reaped_children_cpu_seconds() - senders_before  # push() waited for its storescu processes
        done = _delivered(daemon, len(files), start)
        done.cpu_s = {"sender": sender_s, **{name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}}
        done.pushed_s = pushed_s
        return done
    finally:
        daemon.stop()


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_port(server: _Server, port: int) -> _Server:
    """``server`` (not started) made to listen on ``port`` instead of an ephemeral one."""
    command = server.command

    def fixed_port_command() -> tuple[list[str], Path]:
        args, cwd = command()
        at = args.index("--port")
        return [*args[:at + 1], str(port), *args[at + 2:]], cwd

    server.command = fixed_port_command  # type: ignore[method-assign]
    return server


def reaped_children_cpu_seconds() -> float:
    """User + system CPU time of this process's children that ended and were waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Drain:
    """A backlog drained after an outage: ``seconds`` from the server answering to the last 2xx."""

    seconds: float
    first_2xx_s: float
    startup_s: float
    spooled_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU time (user + system) of each process from the server's start to the last 2xx:
    listener, worker, server."""

    @property
    def worker_cpu_s(self) -> float:
        """CPU time the worker used from the server's start to the last 2xx."""
        return self.cpu_s.get("worker", 0.0)


def backlog_drain(files: list[Path], work: Path, make_server: Callable[[int], LoopbackFhirServer],
                  base_path: str, concurrency: int, associations: int = 2, map_ahead_mb: float | None = None,
                  **fhir: Any) -> Drain:
    """The FHIR server is down while every SR arrives (all acknowledged, spooled); then it
    starts on the port the daemon was configured with. Timed from the moment the server printed
    that it listens (its startup is not counted) until the daemon logged the last 2xx. Meanwhile
    the worker maps the backlog ahead (``forwarder.map_ahead_mb``; 0 turns that off)."""
    port = free_port()
    daemon = QuietDaemon(daemon_config(work, f"http://127.0.0.1:{port}{base_path}", concurrency, map_ahead_mb,
                                       **fhir)).start()
    try:
        start = time.perf_counter()
        push(daemon.port, "SR2FHIR", files, associations)
        spooled_s = time.perf_counter() - start
        assert not daemon.events("bundle_delivered"), "delivered while the server was down"
        server = on_port(make_server(port), port)
        pids = dict(zip(("listener", "worker"), daemon.pids()))
        before = time.perf_counter()
        with server:
            up = time.time()
            pids["server"] = server.pid
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            startup_s = time.perf_counter() - before
            done = _delivered(daemon, len(files), up)
            cpu_s = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        return Drain(done.seconds, done.first_2xx_s, startup_s, spooled_s, cpu_s)
    finally:
        daemon.stop()
