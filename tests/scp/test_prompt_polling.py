"""scp.dicom.prompt_polling: the DUL thread's sleep while the peer is busy and once it is quiet,
and the two pynetdicom internals it relies on, against the installed pynetdicom and a real
listener on 127.0.0.1."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pynetdicom import AE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scp.dicom.listener import Listener, start_listener
from scp.dicom.prompt_polling import BUSY_DELAY_S, BUSY_WINDOW_S, PromptDUL, poll_delay
from scp.spool import Spool

seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@given(last_read=seconds, since=st.floats(min_value=0, max_value=100, allow_nan=False),
       idle=st.floats(min_value=1e-6, max_value=1, allow_nan=False))
def test_busy_within_the_window_idle_after_it_never_slower_than_idle(last_read, since, idle):
    delay = poll_delay(last_read + since, last_read, idle)
    assert delay <= idle
    if (last_read + since) - last_read <= BUSY_WINDOW_S:
        assert delay == min(BUSY_DELAY_S, idle)
    else:
        assert delay == idle


def test_the_window_edges():
    assert poll_delay(10.0, 10.0, 0.001) == BUSY_DELAY_S
    assert poll_delay(10.0 + BUSY_WINDOW_S, 10.0, 0.001) == BUSY_DELAY_S
    assert poll_delay(10.0 + 2 * BUSY_WINDOW_S, 10.0, 0.001) == 0.001


def test_pynetdicom_sleeps_what_run_loop_delay_says_and_marks_reads_with_is_transport_event():
    """The contract with pynetdicom 3 that PromptDUL overrides; a pynetdicom that changes it
    fails here rather than silently polling at its own pace."""
    reactor = inspect.getsource(DULServiceProvider.run_reactor)
    assert "time.sleep(self._run_loop_delay)" in reactor
    assert "self._is_transport_event()" in reactor
    assert callable(DULServiceProvider._is_transport_event)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    writer = Spool(tmp_path / "spool").writer()
    running = start_listener(host="127.0.0.1", port=0, ae_title="SR2FHIR", writer=writer)
    try:
        yield running
    finally:
        running.stop(drain_timeout_s=5)
        writer.close()


def test_each_association_the_listener_serves_polls_promptly_while_busy_and_at_pynetdicoms_pace_once_quiet(listener):
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="SR2FHIR")
    try:
        assert assoc.is_established
        [served] = listener._server.active_associations
        dul = served.dul
        assert isinstance(dul, PromptDUL)
        assert dul._idle_delay == 0.001  # pynetdicom's own delay, kept for when the peer is quiet

        before = dul._last_read
        assert assoc.send_c_echo().Status == 0x0000
        assert dul._last_read > before  # the echo's request was read through _is_transport_event

        dul._last_read -= 2 * BUSY_WINDOW_S  # as if the peer had been quiet since
        quiet_since = dul._last_read
        assert dul._run_loop_delay == 0.001
        assert assoc.send_c_echo().Status == 0x0000  # a PDU again: busy, and still served
        assert dul._last_read > quiet_since
    finally:
        assoc.release()
