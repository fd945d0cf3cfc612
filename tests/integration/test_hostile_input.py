"""Hostile input over the wire: the SCP keeps serving, spools nothing partial, leaks nothing.

Real ``sr2fhir serve`` processes on 127.0.0.1; peers are pynetdicom (polite traffic) and
:mod:`tests.support.dicom_wire` (raw PDUs: transfers cut off by A-ABORT, TCP RST, FIN or a release
request, oversized and unknown PDUs, garbage datasets). One daemon serves the whole module
(``hostile``) and a :class:`Ledger` records every status it answered, so that at any point the
multiset of ``sr_spooled`` events must equal the multiset of acknowledged instances.

"Associations are over" has no log event at ``log.level: info`` (pynetdicom logs "Association
Released/Aborted" only at debug, and before its threads end). The leak check therefore polls
``/proc/<pid>/fd`` and ``/proc/<pid>/task`` (bounded) until both are back at the baseline taken
before the abuse; a leak shows as a timeout with both counts in the message. (Proposed: an
``association_closed`` info event from the listener's EVT_CONN_CLOSE handler, with the calling
AE, the end reason and ``active_associations``, which these tests would then wait on.)
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, evt

from mapping import map_sr
from scp.cli import main as cli_main
from scp.spool import Spool
from tests.support import sr_builders as sr
from tests.support.daemon_process import DaemonProcess, write_config
from tests.support.dicom_wire import (
    EXPLICIT_VR_LE,
    JPEG_BASELINE,
    P_DATA_TF,
    PeerClosed,
    RawAssociation,
    c_store_rq,
    encode_dataset,
    p_data_tf,
    pdu_header,
    pdv,
)
from tests.support.fault_proxy import PASS, FaultProxy, status

pytestmark = pytest.mark.integration

SR_CLASS = sr.COMPREHENSIVE_SR
CONTEXT = [(1, SR_CLASS, [EXPLICIT_VR_LE])]
SETTLE_TIMEOUT_S = 30.0
OUTCOME_TIMEOUT_S = 30.0
RSS_GROWTH_BOUND_KIB = 32 * 1024
"""After 60 abusive associations the daemon's RSS may grow by at most this (allocator slack)."""
HOSTILE_CONFIG = {
    # The 50-association test needs >= 50; timeouts short enough that stalled peers are seen.
    "dicom": {"max_associations": 50, "acse_timeout_s": 5, "dimse_timeout_s": 10, "network_timeout_s": 10},
}


# --------------------------------------------------------------------------- building blocks


def good_sr(name: str, *, with_selection: bool = True, sop_instance_uid: str | None = None) -> Dataset:
    """A small TID 1500 report (3.5 KB); ``with_selection=False`` maps without an ImagingSelection."""
    group = sr.measurement_group("1410", tracking_identifier=name, finding_site=sr.finding_site_item(sr.LUNG),
                                 measurements=[sr.num_item(sr.LENGTH, 12.5, sr.MM)],
                                 **({} if with_selection else {"observation_uid": None}))
    ds = sr.measurement_report([group], sop_instance_uid=sop_instance_uid or sr.uid(f"sr:{name}"))
    return pydicom.dcmread(BytesIO(sr.to_part10_bytes(ds)))


def large_sr(name: str) -> Dataset:
    """A 60-group report (~190 KB encoded): one P-DATA-TF of it is 12x the default max PDU."""
    ds = sr.large_report()
    ds.SOPInstanceUID = sr.uid(f"sr:{name}")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return pydicom.dcmread(BytesIO(sr.to_part10_bytes(ds)))


def _nodelay(event: evt.Event) -> None:
    """pynetdicom SCUs do not set TCP_NODELAY: each C-STORE would wait ~40 ms on delayed ACKs."""
    if event.assoc.dul.socket is not None and event.assoc.dul.socket.socket is not None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def store(port: int, datasets: list[Dataset], *, calling: str = "MODALITY", timeout_s: float = 30) -> list[int]:
    """C-STORE each dataset over one pynetdicom association; the statuses (-1: no response)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="SR2FHIR", evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    if not assoc.is_established:
        return [-2] * len(datasets)
    try:
        statuses = []
        for ds in datasets:
            response = assoc.send_c_store(ds)
            statuses.append(int(response.Status) if response and "Status" in response else -1)
        return statuses
    finally:
        if assoc.is_established:
            assoc.release()


@dataclass
class ProcStats:
    fds: int
    threads: int
    rss_kib: int
    hwm_kib: int


def proc_stats(pid: int) -> ProcStats:
    """Open file descriptors, threads, RSS and peak RSS (VmHWM) of a live process, from /proc."""
    memory = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                memory[key] = int(rest.split()[0])
    return ProcStats(len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task")),
                     memory["VmRSS"], memory["VmHWM"])


def settle(pid: int, baseline: ProcStats, timeout_s: float = SETTLE_TIMEOUT_S) -> ProcStats:
    """Poll (bounded) until fds and threads are back at ``baseline``; the last reading either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = proc_stats(pid)
        if (now.fds <= baseline.fds and now.threads <= baseline.threads) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def quiet_stats(pid: int, quiet_s: float = 0.5, timeout_s: float = 10.0) -> ProcStats:
    """A reading once fds and threads stayed unchanged for ``quiet_s`` (bounded): a baseline."""
    deadline = time.monotonic() + timeout_s
    last = proc_stats(pid)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = proc_stats(pid)
        if (now.fds, now.threads) != (last.fds, last.threads):
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    return last


def wait_outcome(daemon: DaemonProcess, sop_instance_uid: str, timeout_s: float = OUTCOME_TIMEOUT_S) -> dict:
    """The ``bundle_delivered`` or ``bundle_rejected`` event of that instance (bounded poll)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for name in ("bundle_delivered", "bundle_rejected"):
            for event in daemon.named(name):
                if event.get("sop_instance_uid") == sop_instance_uid:
                    return event
        if time.monotonic() > deadline or daemon.process.poll() is not None:
            raise AssertionError(f"no delivery outcome for {sop_instance_uid} within {timeout_s} s "
                                 f"(daemon {'exited' if daemon.process.poll() is not None else 'running'})")
        time.sleep(0.02)


@dataclass
class Ledger:
    """What the module's daemon answered: every acknowledged instance must be spooled once."""

    acknowledged: Counter = field(default_factory=Counter)
    refused: dict[str, int] = field(default_factory=dict)
    cut_off: set[str] = field(default_factory=set)
    """Instances whose transfer was interrupted (never completed): must never be spooled."""
    answer_lost: Counter = field(default_factory=Counter)
    """Sent whole, answered by nobody the client heard (pynetdicom's SCU can drop a response its
    reactor thread took off the queue first, pydicom/pynetdicom#875), then sent again: the
    daemon may have spooled the first copy too, as with any sender that resends after a lost
    answer."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, sop_instance_uid: str, status: int | None) -> None:
        with self.lock:
            if status == 0x0000:
                self.acknowledged[sop_instance_uid] += 1
            elif status is not None:
                self.refused[sop_instance_uid] = status


@dataclass
class Hostile:
    daemon: DaemonProcess
    ledger: Ledger
    directory: Path

    @property
    def port(self) -> int:
        return int(self.daemon.port)

    @property
    def pid(self) -> int:
        return self.daemon.process.pid

    def store(self, datasets: list[Dataset], **kwargs: Any) -> list[int]:
        statuses = store(self.port, datasets, **kwargs)
        for ds, code in zip(datasets, statuses, strict=True):
            self.ledger.record(str(ds.SOPInstanceUID), code if code >= 0 else None)
        return statuses

    def assert_serves(self, name: str) -> None:
        """A good SR afterwards is acknowledged and delivered."""
        ds = good_sr(name)
        assert self.store([ds]) == [0x0000]
        outcome = wait_outcome(self.daemon, ds.SOPInstanceUID)
        assert outcome["event"] == "bundle_delivered", outcome
        assert (self.directory / "outbox" / f"{ds.SOPInstanceUID}.json").exists()

    def assert_spool_matches_ledger(self) -> None:
        """sr_spooled == acknowledged (as multisets); nothing cut off spooled; all settled; spool empty."""
        with self.ledger.lock:
            acknowledged = Counter(self.ledger.acknowledged)
            cut_off = set(self.ledger.cut_off)
            answer_lost = Counter(self.ledger.answer_lost)
        deadline = time.monotonic() + OUTCOME_TIMEOUT_S
        while True:  # bounded: the backlog drains (outbox delivery) or the deadline passes
            spooled = Counter(e["sop_instance_uid"] for e in self.daemon.named("sr_spooled"))
            settled = len(self.daemon.named("bundle_delivered")) + len(self.daemon.named("bundle_rejected"))
            if (not acknowledged - spooled and not (spooled - acknowledged) - answer_lost
                    and settled >= sum(spooled.values())) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not acknowledged - spooled, f"acknowledged but not spooled: {acknowledged - spooled}"
        assert not (spooled - acknowledged) - answer_lost, (
            f"spooled but not acknowledged: {(spooled - acknowledged) - answer_lost}")
        assert not cut_off & set(spooled), f"interrupted transfers were spooled: {cut_off & set(spooled)}"
        # Each spooled copy settles exactly once (unique UIDs here; a copy more only for a lost answer).
        delivered = Counter(e["sop_instance_uid"] for e in self.daemon.named("bundle_delivered"))
        rejected = Counter(e["sop_instance_uid"] for e in self.daemon.named("bundle_rejected"))
        assert delivered + rejected == spooled
        status = Spool(self.directory / "spool").status()
        assert status.pending == 0
        assert status.failed == sum(rejected.values())


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    directory = tmp_path_factory.mktemp("hostile")
    with DaemonProcess(write_config(directory, **HOSTILE_CONFIG)) as daemon:
        running = Hostile(daemon, Ledger(), directory)
        running.assert_serves("warm-up")  # opens the spool segment: part of the baseline
        yield running
        assert daemon.process.poll() is None, "the daemon died"


# --------------------------------------------------------------------------- abusive peers

Abuse = Callable[[int, Ledger, str], None]


def _cut_off(port: int, ledger: Ledger, name: str, ending: str, fraction: float = 0.5) -> None:
    ds = good_sr(name)
    ledger.cut_off.add(ds.SOPInstanceUID)
    assoc = RawAssociation.open(port, CONTEXT)
    assoc.c_store_partial(1, SR_CLASS, ds.SOPInstanceUID, encode_dataset(ds), fraction)
    if ending == "abort":
        assoc.abort()
    elif ending == "reset":
        assoc.reset()
    elif ending == "release":  # A-RELEASE-RQ in the middle of a message
        assoc.release()
    else:
        assoc.close()


def abort_mid_dataset(port: int, ledger: Ledger, name: str) -> None:
    _cut_off(port, ledger, name, "abort")


def reset_mid_dataset(port: int, ledger: Ledger, name: str) -> None:
    _cut_off(port, ledger, name, "reset")


def fin_mid_dataset(port: int, ledger: Ledger, name: str) -> None:
    _cut_off(port, ledger, name, "fin", 0.8)


def release_mid_dataset(port: int, ledger: Ledger, name: str) -> None:
    _cut_off(port, ledger, name, "release", 0.3)


def command_then_abort(port: int, ledger: Ledger, name: str) -> None:
    _cut_off(port, ledger, name, "abort", 0.0)


def reset_mid_pdu(port: int, ledger: Ledger, name: str) -> None:
    """The P-DATA-TF header promises 3 KB, 100 bytes come, then the peer vanishes (RST)."""
    ds = good_sr(name)
    ledger.cut_off.add(ds.SOPInstanceUID)
    data = encode_dataset(ds)
    assoc = RawAssociation.open(port, CONTEXT)
    assoc.send(p_data_tf(pdv(1, c_store_rq(SR_CLASS, ds.SOPInstanceUID), command=True, last=True)))
    assoc.send(p_data_tf(pdv(1, data, command=False, last=True))[:100])
    assoc.reset()


def garbage_instead_of_associate(port: int, ledger: Ledger, name: str) -> None:
    """300 bytes of noise where the A-ASSOCIATE-RQ belongs (first byte: no PDU type), then FIN."""
    assoc = RawAssociation.connect(port)
    assoc.send(b"\x09" + bytes((i * 37 + len(name)) % 256 for i in range(299)))
    assoc.close()


def unknown_pdu_type(port: int, ledger: Ledger, name: str) -> None:
    """A PDU of type 0x09 on an established association; read the A-ABORT, then close."""
    assoc = RawAssociation.open(port, CONTEXT)
    assoc.send(pdu_header(0x09, 4) + b"\x00" * 4)
    assoc.sock.settimeout(5)
    try:
        assoc.read_pdu()
    except (PeerClosed, OSError):
        pass
    assoc.close()


def store_on_rejected_context(port: int, ledger: Ledger, name: str) -> None:
    """Propose only JPEG Baseline (rejected), then send a C-STORE on that context anyway."""
    ds = good_sr(name)
    ledger.cut_off.add(ds.SOPInstanceUID)
    assoc = RawAssociation.open(port, [(1, SR_CLASS, [JPEG_BASELINE])])
    assert assoc.accepted_transfer_syntax(1) is None
    try:
        code = assoc.c_store(1, SR_CLASS, ds.SOPInstanceUID, encode_dataset(ds))
    except (PeerClosed, OSError):
        code = None
    ledger.record(ds.SOPInstanceUID, code)
    assert code != 0x0000, "a C-STORE on a rejected presentation context was acknowledged"
    assoc.close()


def associate_then_reset(port: int, ledger: Ledger, name: str) -> None:
    RawAssociation.open(port, CONTEXT).reset()


ABUSES: dict[str, Abuse] = {
    "abort-mid-dataset": abort_mid_dataset,
    "reset-mid-dataset": reset_mid_dataset,
    "fin-mid-dataset": fin_mid_dataset,
    "release-mid-dataset": release_mid_dataset,
    "command-then-abort": command_then_abort,
    "reset-mid-pdu": reset_mid_pdu,
    "garbage-instead-of-associate": garbage_instead_of_associate,
    "unknown-pdu-type": unknown_pdu_type,
    "store-on-rejected-context": store_on_rejected_context,
    "associate-then-reset": associate_then_reset,
}


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", list(ABUSES))
def test_an_interrupted_or_abusive_association_spools_nothing_and_the_scp_keeps_serving(hostile, kind):
    ABUSES[kind](hostile.port, hostile.ledger, f"{kind}-single")
    hostile.assert_serves(f"after-{kind}")
    hostile.assert_spool_matches_ledger()


def test_sixty_abusive_associations_leak_no_descriptor_thread_or_memory(hostile):
    baseline = quiet_stats(hostile.pid)
    rounds = 6
    for round_number in range(rounds):
        for kind, abuse in ABUSES.items():
            abuse(hostile.port, hostile.ledger, f"{kind}-{round_number}")
    after = settle(hostile.pid, baseline)
    assert after.fds <= baseline.fds and after.threads <= baseline.threads, (
        f"after {rounds * len(ABUSES)} abusive associations: fds {baseline.fds} -> {after.fds}, "
        f"threads {baseline.threads} -> {after.threads} (not back within {SETTLE_TIMEOUT_S} s)")
    assert after.rss_kib - baseline.rss_kib < RSS_GROWTH_BOUND_KIB, (baseline, after)
    print(f"\n60 abusive associations: fds {baseline.fds}->{after.fds}, threads {baseline.threads}->{after.threads}, "
          f"RSS {baseline.rss_kib}->{after.rss_kib} KiB (peak {after.hwm_kib} KiB)")
    hostile.assert_serves("after-sixty")
    hostile.assert_spool_matches_ledger()


def test_a_peer_that_goes_silent_mid_dataset_is_dropped_after_the_network_timeout(hostile):
    # A pulled cable: no FIN, no RST, nothing. dicom.network_timeout_s is 10 s in this module.
    baseline = quiet_stats(hostile.pid)
    ds = good_sr("silent")
    hostile.ledger.cut_off.add(ds.SOPInstanceUID)
    silent = RawAssociation.open(hostile.port, CONTEXT)
    idle = RawAssociation.connect(hostile.port)  # connects, never even asks for an association
    try:
        silent.c_store_partial(1, SR_CLASS, ds.SOPInstanceUID, encode_dataset(ds), 0.5)
        start = time.monotonic()
        hostile.assert_serves("while-one-is-silent")  # the others are not held up meanwhile
        silent.read_until_closed(timeout_s=40)
        idle.read_until_closed(timeout_s=40)
        waited = time.monotonic() - start
    finally:
        silent.close()
        idle.close()
    assert waited < 35, f"the silent peer kept its association for {waited:.0f} s"
    after = settle(hostile.pid, baseline)
    assert after.fds <= baseline.fds and after.threads <= baseline.threads, (baseline, after)
    hostile.assert_spool_matches_ledger()


def _stall_mid_pdu(port: int, ledger: Ledger) -> RawAssociation:
    """A P-DATA-TF header promising 3 KB, 100 bytes of it, then silence (cable pulled mid-PDU)."""
    ds = good_sr("stall-mid-pdu")
    ledger.cut_off.add(ds.SOPInstanceUID)
    assoc = RawAssociation.open(port, CONTEXT)
    assoc.send(p_data_tf(pdv(1, c_store_rq(SR_CLASS, ds.SOPInstanceUID), command=True, last=True)))
    assoc.send(p_data_tf(pdv(1, encode_dataset(ds), command=False, last=True))[:100])
    return assoc


def _stall_after_unknown_pdu(port: int, ledger: Ledger) -> RawAssociation:
    """PDU type 0x09 with a 4-byte body; the SCP answers A-ABORT; the peer keeps the socket open."""
    assoc = RawAssociation.open(port, CONTEXT)
    assoc.send(pdu_header(0x09, 4) + b"\x00" * 4)
    return assoc


def _stall_after_garbage(port: int, ledger: Ledger) -> RawAssociation:
    """Noise instead of an A-ASSOCIATE-RQ, then the peer keeps the socket open."""
    assoc = RawAssociation.connect(port)
    assoc.send(b"\x09" + bytes(range(1, 200)))
    return assoc


STALLS = {"mid-pdu": _stall_mid_pdu, "after-unknown-pdu-type": _stall_after_unknown_pdu,
          "after-garbage-preamble": _stall_after_garbage}


def test_a_peer_that_stalls_inside_a_pdu_loses_its_association_within_the_timeouts(hostile):
    # This module: network_timeout_s 10, acse_timeout_s 5. Allowed: 10 + 5 + 10 s of slack.
    limit_s = 25.0
    opened = {name: stall(hostile.port, hostile.ledger) for name, stall in STALLS.items()}
    held: dict[str, float] = {}
    try:
        start = time.monotonic()
        for name, assoc in opened.items():
            remaining = max(0.1, start + limit_s - time.monotonic())
            assoc.sock.settimeout(remaining)
            types = []
            try:
                for _ in range(100):  # bounded: read until the SCP closes, or the deadline
                    types.append(assoc.read_pdu()[0])
            except PeerClosed:
                continue  # the SCP closed the connection: good
            except OSError:
                held[name] = time.monotonic() - start  # timed out: still held by the SCP
    finally:
        for assoc in opened.values():
            assoc.close()  # our FIN lets the stuck reads return, so the module's daemon recovers
    hostile.assert_serves("after-stalls")
    assert not held, f"associations still held by the SCP after {limit_s:.0f} s: {sorted(held)}"


def test_an_oversized_pdu_is_acknowledged_or_refused_consistently(hostile):
    # The whole ~190 KB dataset in ONE P-DATA-TF, 12x the 16382 bytes the SCP announced.
    ds = large_sr("oversized-pdu")
    with RawAssociation.open(hostile.port, CONTEXT) as assoc:
        assert assoc.peer_max_pdu == 16382
        data = encode_dataset(ds)
        assert len(data) + 12 > 10 * assoc.peer_max_pdu
        try:
            code = assoc.c_store(1, SR_CLASS, ds.SOPInstanceUID, data, max_pdu=len(data) + 100)
        except PeerClosed:
            code = None  # aborted: acceptable, as long as nothing was spooled
        hostile.ledger.record(ds.SOPInstanceUID, code)
        if code is None:
            hostile.ledger.cut_off.add(ds.SOPInstanceUID)
    print(f"\noversized P-DATA-TF ({len(data)} bytes vs max 16382): "
          f"{'aborted' if code is None else hex(code)}")
    if code == 0x0000:
        assert wait_outcome(hostile.daemon, ds.SOPInstanceUID)["event"] == "bundle_delivered"
    hostile.assert_serves("after-oversized")
    hostile.assert_spool_matches_ledger()


def test_garbage_as_the_dataset_of_an_sr_c_store_is_refused_c210(hostile):
    garbage_uid = sr.uid("garbage-dataset")
    with RawAssociation.open(hostile.port, CONTEXT) as assoc:
        pattern = bytes((i * 131 + 7) % 251 for i in range(4000))
        code = assoc.c_store(1, SR_CLASS, garbage_uid, pattern)
        hostile.ledger.record(garbage_uid, code)
        assert code == 0xC210
        # Same association still usable afterwards.
        ds = good_sr("after-garbage-same-association")
        code = assoc.c_store(1, SR_CLASS, ds.SOPInstanceUID, encode_dataset(ds), message_id=2)
        hostile.ledger.record(ds.SOPInstanceUID, code)
        assert code == 0x0000
        assert assoc.release()
    refused = hostile.daemon.wait_for("sr_refused", lambda e: e["sop_instance_uid"] == garbage_uid)
    assert refused["status"] == 0xC210
    hostile.assert_serves("after-garbage")
    hostile.assert_spool_matches_ledger()


def test_a_dataset_whose_sop_instance_uid_differs_from_the_request_is_refused_a900(hostile):
    ds = good_sr("uid-in-dataset")
    request_uid = sr.uid("uid-in-request")
    with RawAssociation.open(hostile.port, CONTEXT) as assoc:
        code = assoc.c_store(1, SR_CLASS, request_uid, encode_dataset(ds))
        hostile.ledger.record(request_uid, code)
        assoc.release()
    assert code == 0xA900
    assert not [e for e in hostile.daemon.named("sr_spooled")
                if e["sop_instance_uid"] in (request_uid, ds.SOPInstanceUID)]
    hostile.assert_serves("after-mismatch")
    hostile.assert_spool_matches_ledger()


@pytest.mark.parametrize("hostile_uid", ["../../../../tmp/sr2fhir-escape", "1.2.3/../../x", "1." + "9" * 200, "1.2 3"])
def test_a_hostile_sop_instance_uid_writes_nothing_outside_the_outbox(hostile, hostile_uid, tmp_path):
    ds = good_sr(f"hostile-uid-{len(hostile_uid)}")
    ds.SOPInstanceUID = hostile_uid
    before = set(hostile.directory.rglob("*"))
    with RawAssociation.open(hostile.port, CONTEXT) as assoc:
        try:
            code: int | None = assoc.c_store(1, SR_CLASS, hostile_uid, encode_dataset(ds))
        except PeerClosed:  # an invalid command set may be answered with A-ABORT: fine
            code = None
            hostile.ledger.cut_off.add(hostile_uid)
        hostile.ledger.record(hostile_uid, code)
        if code is not None:
            assoc.release()
    outcome = wait_outcome(hostile.daemon, hostile_uid) if code == 0x0000 else None
    print(f"\nSOP Instance UID {hostile_uid[:40]!r}: {'aborted' if code is None else hex(code)}, "
          f"{outcome and (outcome['event'], outcome.get('reason'))}")
    created = {p for p in set(hostile.directory.rglob("*")) - before}
    outside = [p for p in created if not (p.is_relative_to(hostile.directory / "outbox")
                                           or p.is_relative_to(hostile.directory / "spool"))]
    assert not outside, f"files outside the outbox/spool: {outside}"
    assert not Path("/tmp/sr2fhir-escape.json").exists()
    hostile.assert_serves(f"after-hostile-uid-{len(hostile_uid)}")
    hostile.assert_spool_matches_ledger()


def test_only_an_unsupported_transfer_syntax_gets_the_context_rejected(hostile):
    # pynetdicom as the peer: JPEG Baseline for an SR class -> result 4 (transfer syntaxes not supported)
    ae = AE(ae_title="JPEGONLY")
    ae.add_requested_context(SR_CLASS, [JPEGBaseline8Bit])
    assoc = ae.associate("127.0.0.1", hostile.port, ae_title="SR2FHIR")
    try:
        # pynetdicom aborts by itself when nothing was accepted; the SCP's answer is what matters.
        assert not assoc.accepted_contexts
        assert [str(c.abstract_syntax) for c in assoc.rejected_contexts] == [SR_CLASS]
    finally:
        if assoc.is_established:
            assoc.release()
    with RawAssociation.open(hostile.port, [(1, SR_CLASS, [JPEG_BASELINE]), (3, SR_CLASS, [EXPLICIT_VR_LE])]) as raw:
        assert raw.contexts[1].result == 4
        assert raw.contexts[3].result == 0 and raw.accepted_transfer_syntax(3) == EXPLICIT_VR_LE
        assert raw.release()
    hostile.assert_serves("after-jpeg")


def test_fifty_concurrent_associations_are_all_acknowledged_and_delivered(hostile):
    associations, per_association = 50, 3
    datasets = [[good_sr(f"concurrent-{a}-{i}") for i in range(per_association)] for a in range(associations)]
    results: dict[int, list[int]] = {}
    start = threading.Barrier(associations, timeout=60)

    def sender(index: int) -> None:
        try:
            start.wait()
            results[index] = hostile.store(datasets[index], calling=f"CONC{index:02d}")
        except Exception as exc:  # noqa: BLE001 - reported below
            results[index] = [repr(exc)]  # type: ignore[list-item]

    threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(associations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not [t for t in threads if t.is_alive()], "a sender hung"
    for index, statuses in list(results.items()):
        # No answer (-1) is pynetdicom's SCU losing one (pydicom/pynetdicom#875), not a refusal:
        # resend those on a new association, as a modality does, and count them as lost answers.
        if all(isinstance(code, int) for code in statuses) and set(statuses) <= {0x0000, -1} and -1 in statuses:
            unanswered = [ds for ds, code in zip(datasets[index], statuses, strict=True) if code == -1]
            with hostile.ledger.lock:
                hostile.ledger.answer_lost.update(str(ds.SOPInstanceUID) for ds in unanswered)
            again = iter(hostile.store(unanswered, calling=f"CONC{index:02d}"))
            results[index] = [code if code == 0x0000 else next(again) for code in statuses]
    failures = {i: r for i, r in results.items() if r != [0x0000] * per_association}
    assert len(results) == associations and not failures, failures
    for group in datasets:
        for ds in group:
            assert wait_outcome(hostile.daemon, ds.SOPInstanceUID)["event"] == "bundle_delivered"
    assert len({e["calling_ae"] for e in hostile.daemon.named("sr_spooled") if e["calling_ae"].startswith("CONC")}) == 50
    hostile.assert_spool_matches_ledger()


# --------------------------------------------------------------------------- fuzzing


@dataclass
class Element:
    """One explicit-VR little-endian element; ``value`` is bytes or, for SQ, a list of items."""

    tag: int
    vr: bytes
    value: bytes | list[list[Element]]
    declared_length: int | None = None
    """Write this length instead of the real one (a lying length)."""
    cut_to: int | None = None
    """For a sequence: write only this many bytes of its content (declared length unchanged)."""


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF


def parse_elements(data: bytes, pos: int = 0, end: int | None = None) -> tuple[list[Element], int]:
    """Parse well-formed Explicit VR Little Endian (what pydicom wrote); stops at a delimiter."""
    end = len(data) if end is None else end
    elements: list[Element] = []
    while pos < end:
        group, number = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | number
        if tag in (0xFFFEE00D, 0xFFFEE0DD):
            return elements, pos + 8
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<L", data, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8
        if vr == b"SQ":
            items: list[list[Element]] = []
            stop = end if length == _UNDEFINED else pos + length
            while pos < stop:
                item_tag, item_length = struct.unpack_from("<LL", data, pos)
                item_tag = (item_tag & 0xFFFF) << 16 | item_tag >> 16
                pos += 8
                if item_tag == 0xFFFEE0DD:
                    break
                if item_length == _UNDEFINED:
                    item, pos = parse_elements(data, pos, end)
                else:
                    item, _ = parse_elements(data, pos, pos + item_length)
                    pos += item_length
                items.append(item)
            elements.append(Element(tag, vr, items))
        else:
            elements.append(Element(tag, vr, data[pos:pos + length]))
            pos += length
    return elements, pos


def dump_elements(elements: list[Element]) -> bytes:
    out = bytearray()
    for element in elements:
        if isinstance(element.value, list):
            content = b"".join(struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body
                               for body in (dump_elements(item) for item in element.value))
        else:
            content = element.value
        length = len(content) if element.declared_length is None else element.declared_length
        if element.cut_to is not None:
            content = content[:element.cut_to]
        vr = element.vr
        header = struct.pack("<HH", element.tag >> 16, element.tag & 0xFFFF) + vr
        if vr in _LONG_VRS:
            header += b"\x00\x00" + struct.pack("<L", length & 0xFFFFFFFF)
        else:
            header += struct.pack("<H", length & 0xFFFF)
        out += header + content
    return bytes(out)


def _walk(elements: list[Element]) -> Iterator[tuple[list[Element], int]]:
    for index, element in enumerate(elements):
        yield elements, index
        if isinstance(element.value, list):
            for item in element.value:
                yield from _walk(item)


def mutate(data: bytes, mutations: list[tuple]) -> bytes:
    """Apply structure-aware mutations (see :data:`MUTATION`) to an encoded dataset."""
    elements, _ = parse_elements(data)
    tail: list[tuple] = []
    for mutation in mutations:
        kind = mutation[0]
        if kind in ("truncate", "insert"):
            tail.append(mutation)
            continue
        places = list(_walk(elements))
        if kind in ("drop_items", "cut_sequence"):
            places = [(c, i) for c, i in places if isinstance(c[i].value, list)]
        if not places:
            continue
        container, index = places[mutation[1] % len(places)]
        element = container[index]
        if kind == "delete":
            del container[index]
        elif kind == "duplicate":
            container.insert(index, Element(element.tag, element.vr, element.value))
        elif kind == "random_value":
            element.value = mutation[2]
        elif kind == "wrong_vr":
            element.vr = mutation[2]
            if isinstance(element.value, list):  # keep the encoded items as that VR's "value"
                element.value = dump_elements([Element(element.tag, b"SQ", element.value)])[12:]
        elif kind == "flip" and isinstance(element.value, bytes) and element.value:
            raw = bytearray(element.value)
            raw[mutation[2] % len(raw)] = mutation[3]
            element.value = bytes(raw)
        elif kind == "lying_length":
            real = len(dump_elements([element])) - (12 if element.vr in _LONG_VRS else 8)
            element.declared_length = max(0, real + mutation[2])
        elif kind == "drop_items" and isinstance(element.value, list):
            element.value = element.value[: len(element.value) // 2]
        elif kind == "cut_sequence":
            full = len(dump_elements([element])) - 12
            element.cut_to = full * mutation[2] // 1000
    out = dump_elements(elements)
    for mutation in tail:
        if mutation[0] == "truncate":
            out = out[: max(1, len(out) * mutation[1] // 1000)]
        else:
            at = len(out) * mutation[1] // 1000
            out = out[:at] + mutation[2] + out[at:]
    return out


_INDEX = st.integers(0, 10_000)
MUTATION = st.one_of(
    st.tuples(st.just("delete"), _INDEX),
    st.tuples(st.just("duplicate"), _INDEX),
    st.tuples(st.just("random_value"), _INDEX, st.binary(max_size=80)),
    st.tuples(st.just("wrong_vr"), _INDEX,
              st.sampled_from([b"SQ", b"UL", b"US", b"OB", b"UN", b"DS", b"CS", b"UI", b"FD", b"ZZ", b"\x00\x00", b"sq"])),
    st.tuples(st.just("flip"), _INDEX, _INDEX, st.integers(0, 255)),
    st.tuples(st.just("lying_length"), _INDEX, st.sampled_from([-7, -2, -1, 1, 2, 9, 4096, 1 << 20, 0x7FFFFFF0])),
    st.tuples(st.just("drop_items"), _INDEX),
    st.tuples(st.just("cut_sequence"), _INDEX, st.integers(0, 999)),
    st.tuples(st.just("truncate"), st.integers(1, 999)),
    st.tuples(st.just("insert"), st.integers(0, 1000), st.binary(min_size=1, max_size=40)),
)
BASES = ("plain", "region", "qualitative", "no-observation-uid")


def base_sr(kind: str, sop_instance_uid: str) -> Dataset:
    if kind == "plain":
        return good_sr("fuzz-plain", sop_instance_uid=sop_instance_uid)
    if kind == "no-observation-uid":
        return good_sr("fuzz-no-uid", with_selection=False, sop_instance_uid=sop_instance_uid)
    ref = sr.ct_image_refs(1)[0]
    if kind == "region":
        items = [sr.scoord_item("POLYLINE", [1, 1, 20, 1, 20, 20, 1, 1], sr.source_image(*ref))]
        group = sr.measurement_group("1410", tracking_identifier="fuzz-region", items=items,
                                     finding_site=sr.finding_site_item(sr.LUNG, sr.RIGHT),
                                     measurements=[sr.num_item(sr.AREA, 42.0, sr.MM2)])
    else:
        group = sr.measurement_group("1410", tracking_identifier="fuzz-qual",
                                     qualitative=[sr.code_item(sr.MALIGNANCY, sr.HIGHLY_SUSPICIOUS),
                                                  sr.text_item(sr.FINDING, "spiculated")],
                                     measurements=[sr.num_item(sr.VOLUME, None, sr.MM3)])
    return sr.measurement_report([group], sop_instance_uid=sop_instance_uid)


FUZZ_EXAMPLES = int(os.environ.get("SR2FHIR_FUZZ_EXAMPLES", "60"))
"""Examples per run (``SR2FHIR_FUZZ_EXAMPLES=2000`` for a long campaign)."""
FUZZ_WALL_CLOCK_S = float(os.environ.get("SR2FHIR_FUZZ_SECONDS", "240"))
"""Examples after this many seconds are skipped (pass without sending): the wall-clock guard."""
_fuzz_numbers = itertools.count()
_fuzz_started: list[float] = []
FUZZ_TALLY: Counter = Counter()


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(base=st.sampled_from(BASES), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_fuzzed_sr_datasets_are_acknowledged_and_settled_or_refused_and_the_daemon_survives(hostile, base, mutations):
    if not _fuzz_started:
        _fuzz_started.append(time.monotonic())
    if time.monotonic() - _fuzz_started[0] > FUZZ_WALL_CLOCK_S:
        FUZZ_TALLY["skipped (wall-clock guard)"] += 1
        return
    sop_instance_uid = sr.uid(f"fuzz:{next(_fuzz_numbers)}")
    data = mutate(encode_dataset(base_sr(base, sop_instance_uid)), mutations)
    with RawAssociation.open(hostile.port, CONTEXT) as assoc:
        try:
            code: int | None = assoc.c_store(1, SR_CLASS, sop_instance_uid, data)
        except PeerClosed:
            code = None
        hostile.ledger.record(sop_instance_uid, code)
        if code is None:
            hostile.ledger.cut_off.add(sop_instance_uid)
        else:
            assoc.release()
    assert hostile.daemon.process.poll() is None, "the daemon died"
    assert code is not None, f"the SCP aborted instead of answering a status ({mutations})"
    if code == 0x0000:
        outcome = wait_outcome(hostile.daemon, sop_instance_uid)
        FUZZ_TALLY[outcome["event"]] += 1
        if outcome["event"] == "bundle_delivered":
            bundle = json.loads((hostile.directory / "outbox" / f"{sop_instance_uid}.json").read_text("utf-8"))
            assert bundle["resourceType"] == "Bundle"
        else:
            assert outcome["reason"]
            failed = {f.sop_instance_uid: f for f in Spool(hostile.directory / "spool").failed()}
            assert sop_instance_uid in failed and failed[sop_instance_uid].reason == outcome["reason"]
    else:
        FUZZ_TALLY[f"refused 0x{code:04X}"] += 1
        assert code in (0xA900, 0xC210, 0xC211), f"unexpected status 0x{code:04X} ({mutations})"
        assert not [e for e in hostile.daemon.named("sr_spooled") if e["sop_instance_uid"] == sop_instance_uid]


def test_after_the_campaign_the_daemon_and_its_worker_are_alive_and_serve(hostile):
    print(f"\nfuzz outcomes: {dict(FUZZ_TALLY)}")
    assert hostile.daemon.process.poll() is None
    assert not hostile.daemon.named("worker_exited"), hostile.daemon.named("worker_exited")
    assert not hostile.daemon.named("sr_store_failed"), hostile.daemon.named("sr_store_failed")[:3]
    hostile.assert_serves("after-fuzz")
    hostile.assert_spool_matches_ledger()
    assert cli_main(["spool", "status", "--config", str(hostile.daemon.config)]) == 0


# --------------------------------------------------------------------------- dedicated daemons


def test_a_pdu_announcing_far_more_than_the_max_pdu_length_is_not_buffered(tmp_path):
    announced = 256 * 1024 * 1024
    with DaemonProcess(write_config(tmp_path)) as daemon:
        pid = daemon.process.pid
        before = proc_stats(pid)
        assoc = RawAssociation.open(daemon.port, CONTEXT)
        assert assoc.peer_max_pdu == 16382
        assoc.send(p_data_tf(pdv(1, c_store_rq(SR_CLASS, sr.uid("huge-pdu")), command=True, last=True)))
        chunk = bytes(1 << 20)
        sent = 0
        deadline = time.monotonic() + 60
        try:
            assoc.send(pdu_header(P_DATA_TF, announced))
            while sent < announced - len(chunk) and time.monotonic() < deadline:
                assoc.sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the SCP aborted: what we want
        peak = proc_stats(pid).hwm_kib
        assoc.reset()
        grown_mib = (peak - before.hwm_kib) / 1024
        print(f"\nannounced {announced >> 20} MiB P-DATA-TF, sent {sent >> 20} MiB: daemon peak RSS +{grown_mib:.0f} MiB")
        assert daemon.process.poll() is None
        assert grown_mib < 64, f"the daemon buffered the PDU: peak RSS +{grown_mib:.0f} MiB"


def _mount_tmpfs(directory: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("disk-full test needs root to mount a tmpfs (mount -t tmpfs): not running as root")
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=False,
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {result.stderr.strip() or result.returncode}")


@pytest.mark.soak
def test_a_small_spool_reuses_the_space_of_delivered_records_without_intervention(tmp_path):
    """Twice what a 2 MiB spool holds passes through it: delivered instances give their space back.

    With the journal spool a file system full of delivered records had to be reclaimed; the
    SQLite spool deletes delivered rows and reuses their pages. Should the worker fall behind
    and the spool fill up, the SCP answers 0xA700 and the same SR is accepted once the worker
    has caught up: nothing is lost, and nobody has to intervene.
    """
    spool_dir = tmp_path / "spool"
    _mount_tmpfs(spool_dir, "2M")
    count = 1200  # 2 MiB / ~3.5 KiB per SR ~ 550 fit at once
    try:
        with DaemonProcess(write_config(tmp_path, spool={"min_free_bytes": 0})) as daemon:  # outbox: delivery never fails
            refusals = 0
            for index in range(count):
                ds = good_sr(f"through-small-{index}")
                for _ in range(200):  # bounded: a refused SR waits for the worker to catch up
                    if store(daemon.port, [ds]) == [0x0000]:
                        break
                    refusals += 1
                    delivered = sum(e.get("event") == "bundle_delivered" for e in list(daemon.events))
                    daemon.wait_for("bundle_delivered", count=delivered + 1, timeout_s=30)
                else:
                    pytest.fail(f"SR {index} was never accepted")
            daemon.wait_for("bundle_delivered", count=count, timeout_s=180)
            assert len(list((tmp_path / "outbox").glob("*.json"))) == count  # every SR delivered once
            assert Spool(spool_dir).status().pending == 0
            print(f"\n{count} SRs (about twice what 2 MiB holds) through a 2 MiB spool; {refusals} refusals on the way")
    finally:
        subprocess.run(["umount", "-l", str(spool_dir)], check=False, capture_output=True, timeout=30)


def test_disk_full_answers_a700_corrupts_nothing_and_service_resumes_when_space_is_freed(fhir_server, tmp_path, capsys):
    spool_dir = tmp_path / "spool"
    _mount_tmpfs(spool_dir, "2M")
    try:
        filler = spool_dir / "filler.bin"
        filler.write_bytes(bytes(512 * 1024))  # what the admin deletes to make room
        with FaultProxy(fhir_server.base_url) as proxy:
            proxy.set_mode(status(503))  # the FHIR server is down: the backlog grows until the disk is full
            config = write_config(tmp_path, spool={"min_free_bytes": 0}, fhir={
                "base_url": proxy.base_url,
                "retry": {"initial_backoff_s": 0.1, "max_backoff_s": 0.5, "jitter_s": 0.0, "max_elapsed_s": 600}})
            sent: dict[str, Dataset] = {}
            acknowledged: list[str] = []
            with DaemonProcess(config) as daemon:
                refused_at = None
                for index in range(2000):  # bounded: 1.5 MiB / 3.5 KB ~ 450 instances
                    ds = good_sr(f"fill-{index}")
                    sent[ds.SOPInstanceUID] = ds
                    code = store(daemon.port, [ds])[0]
                    if code != 0x0000:
                        refused_at = (index, code)
                        break
                    acknowledged.append(ds.SOPInstanceUID)
                assert refused_at is not None and refused_at[1] == 0xA700, refused_at
                refused = daemon.wait_for("sr_refused")
                assert refused["status"] == 0xA700 and "No space left" in refused["reason"], refused
                assert len(daemon.named("sr_spooled")) == len(acknowledged)
                # The CLI, a separate reader, sees every acknowledged instance pending.
                capsys.readouterr()
                assert cli_main(["spool", "status", "--config", str(config)]) == 0
                out = capsys.readouterr().out
                assert f"pending: {len(acknowledged)} " in out, out
                # Still answering: refused while full, or accepted when the refusal's clean-up (the
                # spool gives its write-ahead log back) made room; an accepted one is kept like the rest.
                still = good_sr("still-full")
                sent[still.SOPInstanceUID] = still
                answer = store(daemon.port, [still])
                assert answer in ([0xA700], [0x0000]), answer
                if answer == [0x0000]:
                    acknowledged.append(still.SOPInstanceUID)
                assert daemon.terminate() == 0  # a clean stop on a full disk
            # Nothing corrupt: a new consumer reads every pending record back with its CRC checked.
            with Spool(spool_dir).consumer() as consumer:
                pending = consumer.pending()
                assert sorted(item.sop_instance_uid for item in pending) == sorted(acknowledged)
                for item in pending:
                    assert pydicom.dcmread(BytesIO(item.read())).SOPInstanceUID == item.sop_instance_uid
            # Restart on the still-full disk, then free space and bring the server back.
            with DaemonProcess(config) as daemon:
                filler.unlink()
                proxy.set_mode(PASS)
                recovered = time.monotonic()
                for uid in acknowledged:
                    assert wait_outcome(daemon, uid, timeout_s=120)["event"] == "bundle_delivered"
                drained = time.monotonic() - recovered
                after = good_sr("after-disk-full")
                assert store(daemon.port, [after]) == [0x0000]
                assert wait_outcome(daemon, after.SOPInstanceUID)["event"] == "bundle_delivered"
                assert daemon.process.poll() is None and not daemon.named("worker_exited")
                print(f"\ndisk full after {len(acknowledged)} acknowledged SRs (2 MiB tmpfs); "
                      f"drained in {drained:.1f} s once space was freed")
            assert Spool(spool_dir).status().pending == 0
        for sample in acknowledged[:: max(1, len(acknowledged) // 10)]:
            for entry in map_sr(sent[sample]).bundle["entry"]:
                resource = entry["resource"]
                assert fhir_server.get(resource["resourceType"], resource["id"]) is not None
    finally:
        subprocess.run(["umount", "-l", str(spool_dir)], check=False, capture_output=True, timeout=30)
