"""scp.dicom.prompt_reactors: the listener's associations wake on work instead of polling.

The internals of pynetdicom it relies on are checked against the installed pynetdicom; the
behaviour against a real listener on 127.0.0.1 and real pynetdicom SCUs (C-ECHO, C-STORE,
release, abort, the listener stopping under an open association). No sleeps, no timings:
each wait below is bounded and asserts its outcome.
"""

from __future__ import annotations

import inspect
import select
import socket
import threading
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pynetdicom.association
import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scp.dicom.listener import SUCCESS, Listener, start_listener
from scp.dicom.prompt_reactors import PromptDUL, WakingQueue, install
from scp.spool import Spool
from tests.support import sr_builders as sr

LOCALHOST = "127.0.0.1"


def test_the_pynetdicom_internals_relied_on_are_those_of_the_installed_pynetdicom():
    """A pynetdicom that changes these fails here rather than polling again unnoticed."""
    dul_reactor = inspect.getsource(DULServiceProvider.run_reactor)
    assert "time.sleep(self._run_loop_delay)" in dul_reactor
    assert "self.to_provider_queue.put(primitive)" in inspect.getsource(DULServiceProvider.send_pdu)
    association_reactor = inspect.getsource(Association._run_reactor)
    assert "time.sleep(0.001)" in association_reactor
    assert "self.dimse.get_msg(block=False)" in association_reactor
    assert "self.msg_queue.get(" in inspect.getsource(DIMSEServiceProvider.get_msg)


def test_a_waking_queue_wakes_a_select_on_its_socket_pair_at_each_put():
    woken, waker = socket.socketpair()
    with woken, waker:
        woken.setblocking(False)
        sending = WakingQueue(waker)
        assert select.select([woken], [], [], 0)[0] == []
        sending.put("pdu")
        assert select.select([woken], [], [], 10)[0] == [woken]
        assert sending.get_nowait() == "pdu"
        waker.close()
        sending.put("after the reader is gone")  # a closed socket is not an error
        assert sending.get_nowait() == "after the reader is gone"


def test_install_is_idempotent_and_keeps_the_real_time_module_behind_it():
    install()
    shim = pynetdicom.association.time
    install()
    assert pynetdicom.association.time is shim
    assert shim.monotonic() > 0 and shim.time() > 0  # everything but sleep is the real module's


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    writer = Spool(tmp_path / "spool").writer()
    running = start_listener(host=LOCALHOST, port=0, ae_title="SR2FHIR", writer=writer)
    try:
        yield running
    finally:
        running.stop(drain_timeout_s=5)
        writer.close()


def _associate(port: int) -> Association:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    ae.add_requested_context(sr.COMPREHENSIVE_SR)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 20
    assoc = ae.associate(LOCALHOST, port, ae_title="SR2FHIR")
    assert assoc.is_established
    return assoc


def _report(name: str) -> pydicom.Dataset:
    group = sr.measurement_group("1410", tracking_identifier=name, finding_site=sr.finding_site_item(sr.LUNG),
                                 measurements=[sr.num_item(sr.LENGTH, 12.5, sr.MM)])
    return pydicom.dcmread(BytesIO(sr.to_part10_bytes(
        sr.measurement_report([group], sop_instance_uid=sr.uid(f"prompt:{name}")))))


def _served(listener: Listener) -> Association:
    [served] = listener._server.active_associations
    return served


def test_the_listeners_associations_are_prompt_and_serve_many_exchanges_then_end_cleanly(listener):
    assoc = _associate(listener.port)
    served = _served(listener)
    dul = served.dul
    assert isinstance(dul, PromptDUL)
    assert isinstance(dul.to_provider_queue, WakingQueue)
    assert not isinstance(assoc.dul, PromptDUL)  # our own SCU's association is pynetdicom's, untouched
    statuses = []
    for index in range(20):
        statuses.append(int(assoc.send_c_echo().Status))
        statuses.append(int(assoc.send_c_store(_report(str(index))).Status))
    assert statuses == [SUCCESS] * 40
    assoc.release()
    assert assoc.is_released
    served.join(timeout=20)
    dul.join(timeout=20)
    assert not served.is_alive() and not dul.is_alive()
    assert dul._woken.fileno() == -1 and dul._waker.fileno() == -1  # closed when the DUL thread ended


def test_an_abort_from_the_peer_ends_the_association(listener):
    assoc = _associate(listener.port)
    served = _served(listener)
    assert int(assoc.send_c_echo().Status) == SUCCESS
    assoc.abort()
    served.join(timeout=20)
    assert not served.is_alive()
    assert served.is_aborted


def test_the_listener_stops_with_an_association_still_open(tmp_path):
    writer = Spool(tmp_path / "spool").writer()
    running = start_listener(host=LOCALHOST, port=0, ae_title="SR2FHIR", writer=writer)
    try:
        assoc = _associate(running.port)
        served = _served(running)
        assert int(assoc.send_c_echo().Status) == SUCCESS
        stopper = threading.Thread(target=running.stop, kwargs={"drain_timeout_s": 1})
        stopper.start()
        stopper.join(timeout=30)
        assert not stopper.is_alive(), "Listener.stop hung on an open association"
        served.join(timeout=20)
        assert not served.is_alive()
    finally:
        writer.close()
