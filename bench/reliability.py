"""Reliability figures: what survives crashes, outages, throttling, rejections, a full disk and
hostile peers, counted on the FHIR server itself.

Run from the repository root (root is needed for ``disk-full``, which mounts a tmpfs)::

    .venv/bin/python bench/reliability.py SCENARIO     # crash | outage | throttle | reject |
                                                       # disk-full | hostile | all

Every scenario runs ``sr2fhir serve`` as a subprocess on 127.0.0.1 against a fresh loopback
FHIR server (``tests/fhir_server``), through the fault proxy (``tests/support/fault_proxy.py``) where
faults are injected, and prints:

- instances sent (C-STOREs started, one per distinct SOP instance), acknowledged (0x0000),
  delivered (every resource of its Bundle is on the server), duplicated (resources on the
  server beyond the expected ids, plus ids stored twice), lost (acknowledged, not
  dead-lettered, but not all on the server), dead-lettered (``spool/failed``);
- time to drain: from the moment the fault is cleared (or the last acknowledgement) until
  the last expected ``bundle_delivered``;
- peak RSS (``VmHWM``) of the daemon and of its worker process, read just before they stop.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

import pydicom  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.filebase import DicomBytesIO  # noqa: E402
from pydicom.filewriter import write_file_meta_info  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402

from mapping import map_sr  # noqa: E402
from scp.cli import main as cli_main  # noqa: E402
from scp.spool import Spool  # noqa: E402
from tests.support import sr_builders as sr  # noqa: E402
from tests.support.daemon_process import DaemonProcess, write_config  # noqa: E402
from tests.support.dicom_wire import EXPLICIT_VR_LE, PeerClosed, RawAssociation, encode_dataset  # noqa: E402
from tests.support.fault_proxy import DROP, PASS, FaultProxy, reject_type, status  # noqa: E402
from tests.fhir_server import FhirServer  # noqa: E402
from tests.integration.test_hostile_input import (  # noqa: E402
    ABUSES,
    BASES,
    CONTEXT,
    SR_CLASS,
    Ledger,
    _nodelay,
    base_sr,
    good_sr,
    large_sr,
    mutate,
    proc_stats,
    quiet_stats,
    settle,
    store,
)

RETRY = {"initial_backoff_s": 0.2, "max_backoff_s": 2.0, "jitter_s": 0.2, "max_elapsed_s": 3600}


@dataclass
class Figures:
    scenario: str
    title: str
    sent: int = 0
    acknowledged: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0
    dead_lettered: int = 0
    drain_s: float | None = None
    drain_from: str = ""
    daemon_hwm_kib: int = 0
    worker_hwm_kib: int = 0
    notes: list[str] = field(default_factory=list)

    def print(self) -> None:
        drain = "n/a" if self.drain_s is None else f"{self.drain_s:.1f} s ({self.drain_from})"
        print(f"\n== {self.scenario}: {self.title}")
        print(f"  command: .venv/bin/python bench/reliability.py {self.scenario}")
        for label, value in (("instances sent", self.sent), ("acknowledged", self.acknowledged),
                             ("delivered", self.delivered), ("duplicated", self.duplicated), ("lost", self.lost),
                             ("dead-lettered", self.dead_lettered), ("time to drain", drain),
                             ("peak RSS daemon", f"{self.daemon_hwm_kib / 1024:.1f} MiB"),
                             ("peak RSS worker", f"{self.worker_hwm_kib / 1024:.1f} MiB")):
            print(f"  {label:<18} {value}")
        for note in self.notes:
            print(f"  - {note}")
        sys.stdout.flush()


# --------------------------------------------------------------------------- plumbing


def hwm_kib(pid: int) -> int:
    try:
        return proc_stats(pid).hwm_kib
    except (FileNotFoundError, ProcessLookupError, KeyError):
        return 0


class Daemons:
    """The daemon generations of a scenario, with their peak RSS read before each one stops."""

    def __init__(self) -> None:
        self.generations: list[DaemonProcess] = []
        self.daemon_hwm = 0
        self.worker_hwm = 0

    def start(self, config: Path) -> DaemonProcess:
        daemon = DaemonProcess(config).start()
        self.generations.append(daemon)
        return daemon

    def sample(self, daemon: DaemonProcess) -> None:
        self.daemon_hwm = max(self.daemon_hwm, hwm_kib(daemon.process.pid))
        spawned = daemon.named("worker_spawned")
        if spawned:
            self.worker_hwm = max(self.worker_hwm, hwm_kib(int(spawned[-1]["pid"])))

    def kill(self, daemon: DaemonProcess) -> None:
        self.sample(daemon)
        daemon.kill()

    def stop_all(self) -> None:
        for daemon in self.generations:
            if daemon.process is not None and daemon.process.poll() is None:
                self.sample(daemon)
                try:
                    daemon.terminate()
                except subprocess.TimeoutExpired:
                    daemon.kill()

    def named(self, name: str) -> list[dict]:
        return [e for d in self.generations for e in d.named(name)]


def wait_delivered(daemons: Daemons, uids: set[str], timeout_s: float) -> float | None:
    """Wait (bounded) until every uid has a bundle_delivered in some generation; the time it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if uids <= {e["sop_instance_uid"] for e in daemons.named("bundle_delivered")}:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def part10(ds: Dataset, data: bytes) -> bytes:
    """Preamble + the file meta of ``ds`` + ``data`` (a dataset as sent, Explicit VR LE)."""
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + bytes(meta.getvalue()) + data


def account(figures: Figures, server: FhirServer, acknowledged: dict[str, Dataset | bytes], spool_dir: Path) -> None:
    """Fill delivered / duplicated / lost / dead-lettered from the server and the spool.

    ``acknowledged`` maps each acknowledged instance to its dataset, or to the Part-10 bytes
    that were actually sent (fuzzed instances): their Bundle is what the server should hold.
    """
    failed = {f.sop_instance_uid for f in Spool(spool_dir).failed()}
    figures.dead_lettered = len(failed)
    expected: dict[str, set[tuple[str, str]]] = {}
    for uid, ds in acknowledged.items():
        try:
            if isinstance(ds, bytes):
                ds = pydicom.dcmread(BytesIO(ds))
            expected[uid] = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in map_sr(ds).bundle["entry"]}
        except Exception:  # noqa: BLE001 - an SR that does not map: its dead letter is the outcome
            expected[uid] = set()
    all_expected = set().union(*expected.values()) if expected else set()
    types = {t for t, _ in all_expected} | {"Observation", "ImagingSelection", "Device", "BodyStructure", "Practitioner"}
    stored: dict[str, list[str]] = {t: [r["id"] for r in server.search(t, {"_elements": "id"})] for t in types}
    stored_keys = {(t, i) for t, ids in stored.items() for i in ids}
    figures.duplicated = sum(len(ids) - len(set(ids)) for ids in stored.values()) + len(stored_keys - all_expected)
    figures.delivered = sum(1 for uid, keys in expected.items() if keys and keys <= stored_keys)
    figures.lost = sum(1 for uid, keys in expected.items() if uid not in failed and not keys <= stored_keys)


class Sender(threading.Thread):
    """Sends every dataset until acknowledged, ``batch`` per association, surviving daemon deaths."""

    def __init__(self, datasets: list[Dataset], port: list[int], ready: threading.Event, batch: int = 4) -> None:
        super().__init__(daemon=True)
        self.datasets, self.port, self.ready, self.batch = datasets, port, ready, batch
        self.acknowledged: dict[str, Dataset] = {}
        self.attempted: set[str] = set()
        self.failures = 0
        self.progress = threading.Condition()

    def run(self) -> None:
        remaining = list(self.datasets)
        for _ in range(100_000):  # bounded
            if not remaining or not self.ready.wait(timeout=120):
                return
            batch = remaining[: self.batch]
            ae = AE(ae_title="RELIABLE")
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
            ae.add_requested_context(SR_CLASS)
            try:
                assoc = ae.associate("127.0.0.1", self.port[0], ae_title="SR2FHIR",
                                     evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
                if not assoc.is_established:
                    raise ConnectionError("association not established")
                for ds in batch:
                    self.attempted.add(ds.SOPInstanceUID)
                    response = assoc.send_c_store(ds)
                    if not response or "Status" not in response or int(response.Status) != 0:
                        raise ConnectionError("no success status")
                    with self.progress:
                        self.acknowledged[ds.SOPInstanceUID] = ds
                        self.progress.notify_all()
                    remaining.remove(ds)
                assoc.release()
            except (ConnectionError, OSError, RuntimeError, ValueError, AttributeError):
                self.failures += 1
                self.ready.clear()
                with self.progress:
                    self.progress.notify_all()

    def wait_acknowledged(self, count: int, timeout_s: float = 300) -> None:
        with self.progress:
            self.progress.wait_for(lambda: len(self.acknowledged) >= count or not self.is_alive(), timeout=timeout_s)


# --------------------------------------------------------------------------- scenarios


def scenario_crash(work: Path, args: argparse.Namespace) -> Figures:
    count, kills = args.crash_count, (0.15, 0.35, 0.55, 0.75)
    figures = Figures("crash", f"SIGKILL of the daemon {len(kills)} times while {count} SRs stream in")
    datasets = [good_sr(f"bench-crash-{i}") for i in range(count)]
    daemons = Daemons()
    with FhirServer() as server:
        config = write_config(work, fhir={"base_url": server.base_url, "retry": RETRY})
        first = daemons.start(config)
        port = [int(first.port)]
        config = write_config(work, dicom={"port": port[0]}, fhir={"base_url": server.base_url, "retry": RETRY})
        ready = threading.Event()
        ready.set()
        sender = Sender(datasets, port, ready)
        sender.start()
        try:
            for fraction in kills:
                sender.wait_acknowledged(int(count * fraction))
                daemons.kill(daemons.generations[-1])
                daemons.start(config)
                ready.set()
            sender.join(timeout=600)
            figures.drain_s = wait_delivered(daemons, set(sender.acknowledged), timeout_s=300)
            figures.drain_from = "after the last acknowledgement"
        finally:
            daemons.stop_all()
        figures.sent, figures.acknowledged = len(sender.attempted), len(sender.acknowledged)
        account(figures, server, sender.acknowledged, work / "spool")
        redelivered = sum(n - 1 for n in Counter(e["sop_instance_uid"] for e in daemons.named("bundle_delivered")).values()
                          if n > 1)
        figures.notes += [f"{sender.failures} C-STORE associations interrupted by the kills (re-sent by the sender)",
                          (f"{redelivered} instances delivered by two daemon generations (idempotent PUTs: "
                           "no duplicate on the server)")]
    figures.daemon_hwm_kib, figures.worker_hwm_kib = daemons.daemon_hwm, daemons.worker_hwm
    return figures


def scenario_outage(work: Path, args: argparse.Namespace) -> Figures:
    outage = args.outage_s
    figures = Figures("outage", f"FHIR server down {outage:.0f} s (503 then dropped connections), SRs at 4/s")
    daemons = Daemons()
    with FhirServer() as server, FaultProxy(server.base_url) as proxy:
        daemon = daemons.start(write_config(work, fhir={"base_url": proxy.base_url, "retry": RETRY}))
        acknowledged: dict[str, Dataset] = {}
        sent = 0
        latencies = []
        proxy.set_mode(status(503))
        start = time.monotonic()
        switched = False
        for index in range(int(outage * 4) + 10):  # bounded; stops when the outage is over
            elapsed = time.monotonic() - start
            if elapsed >= outage:
                break
            if not switched and elapsed >= outage / 2:
                proxy.set_mode(DROP)
                switched = True
            ds = good_sr(f"bench-outage-{index}")
            sent += 1
            t = time.monotonic()
            if store(daemon.port, [ds], calling="OUTAGE") == [0]:
                acknowledged[ds.SOPInstanceUID] = ds
            latencies.append(time.monotonic() - t)
            time.sleep(max(0.0, 0.25 - (time.monotonic() - t)))
        early = len(daemon.named("bundle_delivered"))
        proxy.set_mode(PASS)
        figures.drain_s = wait_delivered(daemons, set(acknowledged), timeout_s=600)
        figures.drain_from = "after the server came back"
        daemons.sample(daemon)
        posts = Counter(e.status for e in proxy.log if e.method == "POST")
        daemons.stop_all()
        figures.sent, figures.acknowledged = sent, len(acknowledged)
        account(figures, server, acknowledged, work / "spool")
        figures.notes += [f"delivered while down: {early}; POST answers seen by the proxy: {dict(posts)}",
                          (f"C-STORE latency while down: median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms, "
                           f"max {max(latencies) * 1000:.0f} ms"),
                          (f"retry: backoff {RETRY['initial_backoff_s']} s doubling to {RETRY['max_backoff_s']} s "
                           f"+ up to {RETRY['jitter_s']} s jitter")]
    figures.daemon_hwm_kib, figures.worker_hwm_kib = daemons.daemon_hwm, daemons.worker_hwm
    return figures


def scenario_throttle(work: Path, args: argparse.Namespace) -> Figures:
    count, storm = 100, 20
    figures = Figures("throttle", f"{storm} x 429 'Retry-After: 2' at the start, {count} SRs")
    daemons = Daemons()
    datasets = [good_sr(f"bench-throttle-{i}") for i in range(count)]
    with FhirServer() as server, FaultProxy(server.base_url) as proxy:
        proxy.push(*[status(429, {"Retry-After": "2"})] * storm)
        daemon = daemons.start(write_config(work, fhir={"base_url": proxy.base_url, "retry": RETRY}))
        start = time.monotonic()
        statuses = []
        for i in range(0, count, 10):
            statuses += store(daemon.port, datasets[i:i + 10])
        acknowledged = {ds.SOPInstanceUID: ds for ds, code in zip(datasets, statuses, strict=True) if code == 0}
        waited = wait_delivered(daemons, set(acknowledged), timeout_s=300)
        figures.drain_s = None if waited is None else time.monotonic() - start
        figures.drain_from = "from the first C-STORE; the storm alone costs >= 2 s per 429 round"
        daemons.sample(daemon)
        daemons.stop_all()
        posts = [e for e in proxy.log if e.method == "POST"]
        waits = []
        for i, entry in enumerate(posts):
            if entry.status == 429:
                retry = next((p for p in posts[i + 1:] if p.body == entry.body), None)
                if retry is not None:
                    waits.append(retry.timestamp - entry.responded)
        figures.sent, figures.acknowledged = count, len(acknowledged)
        account(figures, server, acknowledged, work / "spool")
        figures.notes += [(f"429 answered: {sum(1 for p in posts if p.status == 429)}; retries of the same Bundle "
                           f"came {min(waits):.2f}-{max(waits):.2f} s after its 429 (Retry-After: 2); "
                           f"earlier than 2 s: {sum(1 for w in waits if w < 2.0)}"),
                          f"POSTs in total: {len(posts)} for {count} Bundles"]
    figures.daemon_hwm_kib, figures.worker_hwm_kib = daemons.daemon_hwm, daemons.worker_hwm
    return figures


def scenario_reject(work: Path, args: argparse.Namespace) -> Figures:
    count = 100
    figures = Figures("reject", f"the server refuses ImagingSelection (422) for half of {count} SRs; fixed; spool retry")
    daemons = Daemons()
    datasets = [good_sr(f"bench-reject-{i}", with_selection=i % 2 == 0) for i in range(count)]
    with FhirServer() as server, FaultProxy(server.base_url) as proxy:
        proxy.set_mode(reject_type("ImagingSelection", 422, "ImagingSelection is not supported by this server"))
        config = write_config(work, fhir={"base_url": proxy.base_url, "retry": RETRY})
        daemon = daemons.start(config)
        statuses = []
        for i in range(0, count, 10):
            statuses += store(daemon.port, datasets[i:i + 10])
        acknowledged = {ds.SOPInstanceUID: ds for ds, code in zip(datasets, statuses, strict=True) if code == 0}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and \
                len(daemon.named("bundle_delivered")) + len(daemon.named("bundle_rejected")) < len(acknowledged):
            time.sleep(0.05)
        rejected_first = len(daemon.named("bundle_rejected"))
        delivered_first = len(daemon.named("bundle_delivered"))
        proxy.set_mode(PASS)
        fixed = time.monotonic()
        with open(os.devnull, "w") as quiet:
            stdout, stderr = sys.stdout, sys.stderr
            sys.stdout = sys.stderr = quiet
            try:
                cli_main(["spool", "retry", "--config", str(config)])
            finally:
                sys.stdout, sys.stderr = stdout, stderr
        waited = wait_delivered(daemons, set(acknowledged), timeout_s=120)
        figures.drain_s = None if waited is None else time.monotonic() - fixed
        figures.drain_from = "after `spool retry` on the fixed server"
        daemons.sample(daemon)
        daemons.stop_all()
        figures.sent, figures.acknowledged = count, len(acknowledged)
        account(figures, server, acknowledged, work / "spool")
        figures.notes += [(f"before the fix: {delivered_first} delivered, {rejected_first} dead-lettered "
                           f"(422 with the server's OperationOutcome in the sidecar)"),
                          f"dead-lettered after `sr2fhir spool retry`: {figures.dead_lettered}"]
    figures.daemon_hwm_kib, figures.worker_hwm_kib = daemons.daemon_hwm, daemons.worker_hwm
    return figures


def scenario_disk_full(work: Path, args: argparse.Namespace) -> Figures:
    figures = Figures("disk-full", "spool on a 2 MiB tmpfs, FHIR server down until the disk is full; space freed")
    spool_dir = work / "spool"
    spool_dir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(spool_dir)], check=False,
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        figures.notes.append(f"skipped: mount -t tmpfs failed: {mounted.stderr.strip()}")
        return figures
    daemons = Daemons()
    try:
        filler = spool_dir / "filler.bin"
        filler.write_bytes(bytes(512 * 1024))
        with FhirServer() as server, FaultProxy(server.base_url) as proxy:
            proxy.set_mode(status(503))
            config = write_config(work, spool={"min_free_bytes": 0}, fhir={"base_url": proxy.base_url, "retry": RETRY})
            daemon = daemons.start(config)
            acknowledged: dict[str, Dataset] = {}
            sent = 0
            refused = Counter()
            for index in range(3000):  # bounded
                ds = good_sr(f"bench-fill-{index}")
                sent += 1
                code = store(daemon.port, [ds])[0]
                if code == 0:
                    acknowledged[ds.SOPInstanceUID] = ds
                else:
                    refused[code] += 1
                    break
            for index in range(5):  # still full
                sent += 1
                code = store(daemon.port, [good_sr(f"bench-still-full-{index}")])[0]
                refused[code] += 1
            pending_while_full = Spool(spool_dir).status().pending
            filler.unlink()
            proxy.set_mode(PASS)
            freed = time.monotonic()
            waited = wait_delivered(daemons, set(acknowledged), timeout_s=300)
            figures.drain_s = None if waited is None else time.monotonic() - freed
            figures.drain_from = "after freeing 512 KiB and the server coming back"
            after = [good_sr(f"bench-after-full-{i}") for i in range(20)]
            codes = store(daemon.port, after)
            sent += len(after)
            for ds, code in zip(after, codes, strict=True):
                if code == 0:
                    acknowledged[ds.SOPInstanceUID] = ds
            wait_delivered(daemons, set(acknowledged), timeout_s=120)
            daemons.sample(daemon)
            daemons.stop_all()
            figures.sent, figures.acknowledged = sent, len(acknowledged)
            account(figures, server, acknowledged, spool_dir)
            figures.notes += [f"refused while full: {', '.join(f'{n} x 0x{c:04X}' for c, n in refused.items())}",
                              (f"`spool status` while full: {pending_while_full} pending "
                               f"(= acknowledged before the refusal: {pending_while_full == len(acknowledged) - len(after)})"),
                              f"after freeing space: {sum(1 for c in codes if c == 0)}/{len(after)} new SRs acknowledged"]
    finally:
        daemons.stop_all()
        subprocess.run(["umount", "-l", str(spool_dir)], check=False, capture_output=True, timeout=30)
    figures.daemon_hwm_kib, figures.worker_hwm_kib = daemons.daemon_hwm, daemons.worker_hwm
    return figures


def _random_mutations(rng: random.Random) -> list[tuple]:
    def one() -> tuple:
        kind = rng.choice(["delete", "duplicate", "random_value", "wrong_vr", "flip", "lying_length", "drop_items",
                           "cut_sequence", "truncate", "insert"])
        index = rng.randrange(10_000)
        if kind == "random_value":
            return (kind, index, rng.randbytes(rng.randrange(80)))
        if kind == "wrong_vr":
            return (kind, index, rng.choice([b"SQ", b"UL", b"US", b"OB", b"UN", b"DS", b"ZZ", b"\x00\x00"]))
        if kind == "flip":
            return (kind, index, rng.randrange(10_000), rng.randrange(256))
        if kind == "lying_length":
            return (kind, index, rng.choice([-7, -2, -1, 1, 2, 9, 4096, 1 << 20, 0x7FFFFFF0]))
        if kind == "cut_sequence":
            return (kind, index, rng.randrange(1000))
        if kind == "truncate":
            return (kind, rng.randrange(1, 1000))
        if kind == "insert":
            return (kind, rng.randrange(1001), rng.randbytes(rng.randrange(1, 40)))
        return (kind, index)

    return [one() for _ in range(rng.randrange(1, 5))]


def scenario_hostile(work: Path, args: argparse.Namespace) -> Figures:
    rounds, fuzz, concurrent = 10, args.fuzz_count, 50
    figures = Figures("hostile", f"{rounds * len(ABUSES)} abusive associations, {fuzz} fuzzed datasets, "
                                 f"{concurrent} concurrent associations x 3 SRs, one 12x oversized PDU")
    daemons = Daemons()
    ledger = Ledger()
    acknowledged: dict[str, Dataset] = {}
    attempted = 0
    refused: Counter = Counter()
    with FhirServer() as server:
        config = write_config(work, dicom={"max_associations": concurrent, "acse_timeout_s": 5,
                                           "dimse_timeout_s": 10, "network_timeout_s": 10},
                              fhir={"base_url": server.base_url, "retry": RETRY})
        daemon = daemons.start(config)
        pid = daemon.process.pid
        warm = good_sr("bench-hostile-warm")
        store(daemon.port, [warm])
        acknowledged[warm.SOPInstanceUID] = warm
        wait_delivered(daemons, {warm.SOPInstanceUID}, 30)
        baseline = quiet_stats(pid)
        for round_number in range(rounds):
            for kind, abuse in ABUSES.items():
                abuse(daemon.port, ledger, f"bench-{kind}-{round_number}")
        attempted += len(ledger.cut_off)
        after_abuse = settle(pid, baseline)
        rng = random.Random(args.seed)
        for number in range(fuzz):
            uid = sr.uid(f"bench-fuzz:{args.seed}:{number}")
            ds = base_sr(rng.choice(BASES), uid)
            data = mutate(encode_dataset(ds), _random_mutations(rng))
            attempted += 1
            with RawAssociation.open(daemon.port, CONTEXT) as assoc:
                try:
                    code = assoc.c_store(1, SR_CLASS, uid, data)
                    assoc.release()
                except PeerClosed:
                    code = None
            if code == 0:
                acknowledged[uid] = part10(ds, data)  # its mapping, if any, is what the server should hold
            else:
                refused["aborted" if code is None else f"0x{code:04X}"] += 1
        big = large_sr("bench-oversized")
        attempted += 1
        with RawAssociation.open(daemon.port, [(1, SR_CLASS, [EXPLICIT_VR_LE])]) as assoc:
            data = encode_dataset(big)
            if assoc.c_store(1, SR_CLASS, big.SOPInstanceUID, data, max_pdu=len(data) + 100) == 0:
                acknowledged[big.SOPInstanceUID] = big
            assoc.release()
        groups = [[good_sr(f"bench-conc-{a}-{i}") for i in range(3)] for a in range(concurrent)]
        results: dict[int, list[int]] = {}
        barrier = threading.Barrier(concurrent, timeout=60)

        def send(index: int) -> None:
            barrier.wait()
            results[index] = store(daemon.port, groups[index], calling=f"CONC{index:02d}")

        threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(concurrent)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        for index, group in enumerate(groups):
            attempted += len(group)
            for ds, code in zip(group, results.get(index, [-1] * 3), strict=True):
                if code == 0:
                    acknowledged[ds.SOPInstanceUID] = ds
                else:
                    refused[f"concurrent {code}"] += 1
        last = time.monotonic()
        deadline = last + 300
        while time.monotonic() < deadline:
            settled = {e["sop_instance_uid"] for e in daemon.named("bundle_delivered") + daemon.named("bundle_rejected")}
            if set(acknowledged) <= settled:
                break
            time.sleep(0.05)
        figures.drain_s = time.monotonic() - last
        figures.drain_from = "after the last acknowledgement"
        final = settle(pid, baseline)
        spooled = Counter(e["sop_instance_uid"] for e in daemon.named("sr_spooled"))
        daemons.sample(daemon)
        alive = daemon.process.poll() is None
        daemons.stop_all()
        figures.sent, figures.acknowledged = attempted + 1, len(acknowledged)
        account(figures, server, acknowledged, work / "spool")
        figures.notes += [
            (f"interrupted transfers spooled: {len(ledger.cut_off & set(spooled))} of {len(ledger.cut_off)}; "
             f"sr_spooled == acknowledged: {spooled == Counter(acknowledged.keys())} "
             f"(spooled, not acknowledged: {len(spooled - Counter(acknowledged.keys()))}; "
             f"acknowledged, not spooled: {len(Counter(acknowledged.keys()) - spooled)})"),
            f"refused: {dict(refused)}",
            (f"daemon fds/threads: baseline {baseline.fds}/{baseline.threads}, after the abuse "
             f"{after_abuse.fds}/{after_abuse.threads}, at the end {final.fds}/{final.threads}; "
             f"RSS {baseline.rss_kib / 1024:.1f} -> {final.rss_kib / 1024:.1f} MiB"),
            f"daemon alive at the end: {alive}; worker restarts: {len(daemon.named('worker_exited'))}",
            "fuzzed SRs that were acknowledged but do not map are dead-lettered by design (counted above)",
        ]
    figures.daemon_hwm_kib, figures.worker_hwm_kib = daemons.daemon_hwm, daemons.worker_hwm
    return figures


SCENARIOS: dict[str, Callable[[Path, argparse.Namespace], Figures]] = {
    "crash": scenario_crash,
    "outage": scenario_outage,
    "throttle": scenario_throttle,
    "reject": scenario_reject,
    "disk-full": scenario_disk_full,
    "hostile": scenario_hostile,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--crash-count", type=int, default=600, help="SRs in the crash scenario (600)")
    parser.add_argument("--outage-s", type=float, default=60.0, help="length of the outage (60 s)")
    parser.add_argument("--fuzz-count", type=int, default=300, help="fuzzed datasets in the hostile scenario (300)")
    parser.add_argument("--seed", type=int, default=20261127, help="seed of the hostile scenario's fuzzing")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"sr2fhir-{name}-") as tmp:
            started = time.monotonic()
            figures = SCENARIOS[name](Path(tmp), args)
            figures.notes.append(f"scenario wall time {time.monotonic() - started:.0f} s")
            figures.print()
            results.append(figures)
    if len(results) > 1:
        print("\n| scenario | sent | acknowledged | delivered | duplicated | lost | dead-lettered | time to drain | "
              "peak RSS daemon / worker |")
        print("|---|---|---|---|---|---|---|---|---|")
        for f in results:
            drain = "n/a" if f.drain_s is None else f"{f.drain_s:.1f} s"
            print(f"| {f.scenario} | {f.sent} | {f.acknowledged} | {f.delivered} | {f.duplicated} | {f.lost} | "
                  f"{f.dead_lettered} | {drain} | {f.daemon_hwm_kib / 1024:.0f} / {f.worker_hwm_kib / 1024:.0f} MiB |")
    return 1 if any(f.lost for f in results) else 0


if __name__ == "__main__":
    sys.exit(main())
