"""scp.dicom.listener admission control: who may associate, how many at once, and the disk reserve.

Real pynetdicom SCUs against a real listener on 127.0.0.1 (ephemeral ports), spooling into
``tmp_path``. Tests synchronise on the listener's log events and on its association
threads, never on sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from io import BytesIO
from ipaddress import ip_network
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
import structlog
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scp.config import DicomPeer, DicomSettings
from scp.dicom.listener import (
    OUT_OF_RESOURCES,
    SUCCESS,
    AllowedPeer,
    Listener,
    ListenerPolicy,
    start_listener,
)
from scp.spool import Spool, SpoolWriter
from tests.support import sr_builders as sr

LOCALHOST = "127.0.0.1"

# A-ASSOCIATE-RJ fields (PS3.8 9.3.4) as (result, source, diagnostic).
CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
CALLED_AE_NOT_RECOGNISED = (0x01, 0x01, 0x07)
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)
TEMPORARY_CONGESTION = (0x02, 0x03, 0x01)
TRANSIENT_NO_REASON = (0x02, 0x02, 0x01)


# --------------------------------------------------------------------------- helpers


class LogCapture:
    """structlog events as dicts, from every thread, with a way to wait for one."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()

    def __call__(self, _logger: Any, method_name: str, event_dict: dict[str, Any]) -> Any:
        with self._changed:
            self.events.append({**event_dict, "log_level": method_name})
            self._changed.notify_all()
        raise structlog.DropEvent

    def named(self, name: str) -> list[dict[str, Any]]:
        with self._changed:
            return [event for event in self.events if event["event"] == name]

    def wait_for(self, name: str, predicate: Callable[[dict[str, Any]], bool] = lambda _e: True, *,
                 timeout_s: float = 20) -> dict[str, Any]:
        def found() -> list[dict[str, Any]]:
            return [e for e in self.events if e["event"] == name and predicate(e)]

        with self._changed:
            if not self._changed.wait_for(found, timeout=timeout_s):
                raise AssertionError(f"no {name!r} event; got {[e['event'] for e in self.events]}")
            return found()[0]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    previous = structlog.get_config()
    structlog.configure(processors=[capture])
    try:
        yield capture
    finally:
        structlog.configure(**previous)


def report(name: str) -> Dataset:
    group = sr.measurement_group("1410", tracking_identifier=name, finding_site=sr.finding_site_item(sr.LUNG),
                                 measurements=[sr.num_item(sr.LENGTH, 12.5, sr.MM)])
    return pydicom.dcmread(BytesIO(sr.to_part10_bytes(
        sr.measurement_report([group], sop_instance_uid=sr.uid(f"sr:{name}")))))


class Scu:
    """One association attempt with pynetdicom, remembering the A-ASSOCIATE response."""

    def __init__(self, port: int, *, calling: str = "MODALITY", called: str = "SR2FHIR",
                 tls_args: tuple[Any, str | None] | None = None) -> None:
        self.response: Any = None
        ae = AE(ae_title=calling)
        ae.add_requested_context(sr.COMPREHENSIVE_SR)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 20
        self.assoc: Association = ae.associate(
            LOCALHOST, port, ae_title=called, tls_args=tls_args,
            evt_handlers=[(evt.EVT_ACSE_RECV, self._received)],
        )

    def _received(self, event: evt.Event) -> None:
        self.response = event.primitive

    @property
    def rejection(self) -> tuple[int, int, int] | None:
        """(result, source, diagnostic) of the A-ASSOCIATE-RJ, if rejected."""
        if not self.assoc.is_rejected:
            return None
        return (self.response.result, self.response.result_source, self.response.diagnostic)

    def store(self, *datasets: Dataset) -> list[int]:
        assert self.assoc.is_established, "association was not established"
        return [int(self.assoc.send_c_store(ds).Status) for ds in datasets]

    def release(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


def settle(listener: Listener) -> None:
    """Wait until the listener's association threads have all ended (released or rejected)."""
    for thread in listener._server.active_associations:
        thread.join(timeout=20)
        assert not thread.is_alive(), "an association thread did not end"


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[SpoolWriter]:
    spool_writer = Spool(tmp_path / "spool").writer()
    yield spool_writer
    spool_writer.close()


@pytest.fixture
def serve(writer: SpoolWriter) -> Iterator[Callable[..., Listener]]:
    """``serve(**start_listener_kwargs)``: a listener on 127.0.0.1:<ephemeral>, stopped afterwards."""
    started: list[Listener] = []

    def start(**kwargs: Any) -> Listener:
        kwargs.setdefault("writer", writer)
        listener = start_listener(host=LOCALHOST, port=0, ae_title="SR2FHIR", **kwargs)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop(drain_timeout_s=5)


# --------------------------------------------------------------------------- calling AE titles


def test_a_calling_ae_title_not_on_the_allow_list_is_rejected_and_logged(serve, logs):
    listener = serve(allowed_calling_ae_titles=["PACS", "AI_NODE"])
    refused = Scu(listener.port, calling="INTRUDER")
    assert refused.rejection == CALLING_AE_NOT_RECOGNISED
    event = logs.wait_for("association_rejected")
    assert event["calling_ae"] == "INTRUDER"
    assert event["peer_address"] == LOCALHOST
    assert event["reason"] == "calling AE title not allowed"
    assert event["log_level"] == "warning" and event["transient"] is False

    allowed = Scu(listener.port, calling="PACS")
    assert allowed.store(report("allowed-title")) == [SUCCESS]
    allowed.release()
    settle(listener)
    assert len(logs.named("association_rejected")) == 1  # one event per refusal


def test_empty_allow_lists_let_anyone_in(serve):
    listener = serve()
    scu = Scu(listener.port, calling="WHOEVER")
    assert scu.assoc.is_established
    scu.release()


def test_an_allowed_ae_title_from_a_disallowed_address_is_rejected(serve, logs):
    # Only 127.0.0.1 can connect here, so "wrong" is a network that does not hold it.
    listener = serve(allowed_peers=[DicomPeer(ae_title="MODALITY", addresses=["10.0.0.0/8", "192.168.1.7"])])
    scu = Scu(listener.port, calling="MODALITY")
    assert scu.rejection == CALLING_AE_NOT_RECOGNISED
    event = logs.wait_for("association_rejected")
    assert (event["calling_ae"], event["peer_address"]) == ("MODALITY", LOCALHOST)
    assert event["reason"] == "calling AE title not allowed from this address"


def test_an_allowed_ae_title_from_an_allowed_network_gets_in(serve, logs):
    listener = serve(allowed_peers=[DicomPeer(ae_title="MODALITY", addresses=["10.0.0.0/8", "127.0.0.0/8"])])
    scu = Scu(listener.port, calling="MODALITY")
    assert scu.store(report("allowed-peer")) == [SUCCESS]
    scu.release()
    assert Scu(listener.port, calling="OTHER").rejection == CALLING_AE_NOT_RECOGNISED
    assert logs.wait_for("association_rejected")["reason"] == "calling AE title not allowed"


def test_a_single_address_is_a_network_of_one(serve):
    elsewhere = serve(allowed_peers=[SimpleNamespace(ae_title="MODALITY", addresses=["127.0.0.2"])])
    assert Scu(elsewhere.port, calling="MODALITY").rejection == CALLING_AE_NOT_RECOGNISED
    here = serve(allowed_peers=[AllowedPeer("MODALITY", (ip_network("127.0.0.1"),))])
    scu = Scu(here.port, calling="MODALITY")
    assert scu.assoc.is_established
    scu.release()


def test_titles_from_anywhere_and_pinned_peers_combine(serve):
    listener = serve(allowed_calling_ae_titles=["PACS"],
                     allowed_peers=[DicomPeer(ae_title="AI_NODE", addresses=["10.1.2.3"])])
    pacs = Scu(listener.port, calling="PACS")
    assert pacs.assoc.is_established
    pacs.release()
    assert Scu(listener.port, calling="AI_NODE").rejection == CALLING_AE_NOT_RECOGNISED


def test_the_settings_models_plug_straight_in(serve):
    dicom = DicomSettings.model_validate({
        "allowed_calling_ae_titles": ["PACS"],
        "allowed_peers": [{"ae_title": "MODALITY", "addresses": ["127.0.0.0/8"]}],
    })
    listener = serve(allowed_calling_ae_titles=dicom.allowed_calling_ae_titles, allowed_peers=dicom.allowed_peers)
    for calling in ("PACS", "MODALITY"):
        scu = Scu(listener.port, calling=calling)
        assert scu.assoc.is_established, calling
        scu.release()


def test_an_ipv4_client_of_a_dual_stack_listener_matches_ipv4_networks(writer, logs):
    try:
        listener = start_listener(host="::", port=0, ae_title="SR2FHIR", writer=writer,
                                  allowed_peers=[DicomPeer(ae_title="MODALITY", addresses=["127.0.0.0/8"])])
    except OSError as exc:
        pytest.skip(f"cannot listen on '::' here: {exc}")
    try:
        scu = Scu(listener.port, calling="MODALITY")  # arrives as ::ffff:127.0.0.1
        assert scu.assoc.is_established
        scu.release()
        assert Scu(listener.port, calling="OTHER").rejection == CALLING_AE_NOT_RECOGNISED
        assert logs.wait_for("association_rejected")["peer_address"] in ("::ffff:127.0.0.1", LOCALHOST)
    finally:
        listener.stop(drain_timeout_s=5)


# --------------------------------------------------------------------------- called AE title


def test_a_wrong_called_ae_title_is_rejected_and_logged(serve, logs):
    listener = serve()
    assert Scu(listener.port, called="NOT_US").rejection == CALLED_AE_NOT_RECOGNISED
    event = logs.wait_for("association_rejected")
    assert event["reason"] == "called AE title is not ours"
    assert event["called_ae"] == "NOT_US" and event["calling_ae"] == "MODALITY"


def test_the_called_ae_title_is_not_checked_when_so_configured(serve):
    listener = serve(require_called_ae_title=False)
    scu = Scu(listener.port, called="ANY_TITLE")
    assert scu.assoc.is_established
    scu.release()


# --------------------------------------------------------------------------- association limit


def test_association_n_plus_1_is_rejected_while_n_are_open(serve, logs):
    listener = serve(max_associations=2)
    open_ = [Scu(listener.port), Scu(listener.port)]
    assert all(scu.assoc.is_established for scu in open_)
    extra = Scu(listener.port, calling="THIRD")
    assert extra.rejection == LOCAL_LIMIT_EXCEEDED
    event = logs.wait_for("association_rejected")
    assert event["calling_ae"] == "THIRD" and event["transient"] is True
    assert event["reason"] == "too many associations (dicom.max_associations is 2)"
    # The open ones are unaffected; once they are gone there is room again.
    assert open_[0].store(report("while-full")) == [SUCCESS]
    for scu in open_:
        scu.release()
    settle(listener)
    again = Scu(listener.port)
    assert again.assoc.is_established
    again.release()


# --------------------------------------------------------------------------- disk reserve


class _Writer:
    """A spool writer whose free space is what the test says, for each call in turn."""

    def __init__(self, real: SpoolWriter, free: list[int | BaseException]) -> None:
        self._real = real
        self._free = free

    def free_bytes(self) -> int:
        value = self._free.pop(0) if len(self._free) > 1 else self._free[0]
        if isinstance(value, BaseException):
            raise value
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_free_space_below_the_reserve_rejects_the_association(serve, logs):
    listener = serve(policy=ListenerPolicy(min_free_bytes=2**60), reject_associations_below_min_free=True)
    scu = Scu(listener.port)
    assert scu.rejection == TEMPORARY_CONGESTION
    event = logs.wait_for("association_rejected")
    assert event["reason"] == "free disk space below spool.min_free_bytes" and event["transient"] is True
    assert event["calling_ae"] == "MODALITY" and event["peer_address"] == LOCALHOST


def test_without_the_association_check_a_full_disk_is_answered_per_c_store(serve, logs):
    listener = serve(policy=ListenerPolicy(min_free_bytes=2**60))  # reject_associations_below_min_free=False
    scu = Scu(listener.port)
    assert scu.store(report("full")) == [OUT_OF_RESOURCES]
    scu.release()
    assert logs.named("association_rejected") == []


def test_a_disk_that_fills_during_an_association_still_gets_a700(serve, writer):
    # Room when the association is requested and for the first instance; none after.
    low = _Writer(writer, [10**12, 10**12, 10])
    listener = serve(writer=low, policy=ListenerPolicy(min_free_bytes=10**6), reject_associations_below_min_free=True)
    scu = Scu(listener.port)
    assert scu.store(report("fits"), report("does-not")) == [SUCCESS, OUT_OF_RESOURCES]
    scu.release()
    # ... and the next association is refused at the door.
    assert Scu(listener.port).rejection == TEMPORARY_CONGESTION


def test_a_check_that_fails_rejects_rather_than_admits(serve, writer, logs):
    broken = _Writer(writer, [OSError("statvfs failed")])
    listener = serve(writer=broken, policy=ListenerPolicy(min_free_bytes=1), reject_associations_below_min_free=True)
    assert Scu(listener.port).rejection == TRANSIENT_NO_REASON
    assert logs.wait_for("association_check_failed")["peer_address"] == LOCALHOST
    assert logs.wait_for("association_rejected")["reason"] == "association check failed"
    scu = Scu(listener.port, called="NOT_US")  # the listener itself is fine
    assert scu.rejection == CALLED_AE_NOT_RECOGNISED


# --------------------------------------------------------------------------- order and logging


def test_who_the_caller_is_is_checked_before_capacity(serve, logs):
    listener = serve(allowed_calling_ae_titles=["PACS"], policy=ListenerPolicy(min_free_bytes=2**60),
                     reject_associations_below_min_free=True)
    assert Scu(listener.port, calling="INTRUDER").rejection == CALLING_AE_NOT_RECOGNISED
    assert Scu(listener.port, calling="PACS").rejection == TEMPORARY_CONGESTION


def test_rejection_events_carry_no_dataset_content(serve, logs):
    listener = serve(allowed_calling_ae_titles=["PACS"])
    Scu(listener.port, calling="INTRUDER")
    event = logs.wait_for("association_rejected")
    assert set(event) == {"event", "log_level", "calling_ae", "called_ae", "peer_address", "reason", "transient"}
