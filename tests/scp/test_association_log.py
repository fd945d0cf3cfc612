"""scp.dicom.association_log: how an association ended, whatever order pynetdicom's two threads
report it in. pynetdicom's own Association and Event objects (no network); the log line is
captured with structlog's testing helper."""

from __future__ import annotations

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.transport import AddressInformation
from structlog.testing import capture_logs

from scp.dicom.association_log import AssociationLog


def _association() -> Association:
    assoc = Association(AE(ae_title="SR2FHIR"), "acceptor")
    assoc.requestor.ae_title = "MODALITY"
    assoc.requestor.address_info = AddressInformation("127.0.0.1", 11112)
    return assoc


def _release(result: str | None) -> A_RELEASE:
    primitive = A_RELEASE()
    primitive.result = result
    return primitive


def _closed_lines(*steps: tuple) -> list[dict]:
    associations = AssociationLog()
    assoc = _association()
    handlers = dict(associations.handlers())
    with capture_logs() as logs:
        for event_type, attrs in steps:
            handlers[event_type](evt.Event(assoc, event_type, attrs))
    return [line for line in logs if line["event"] == "association_closed"]


def test_a_release_is_logged_released_even_when_the_connection_closes_before_evt_released():
    # The order seen once in CI: the response sent, the peer gone, EVT_RELEASED last.
    [line] = _closed_lines((evt.EVT_ACCEPTED, {}), (evt.EVT_ACSE_SENT, {"primitive": _release("affirmative")}),
                           (evt.EVT_CONN_CLOSE, {}), (evt.EVT_RELEASED, {}))
    assert line["ended"] == "released" and line["calling_ae"] == "MODALITY"


def test_a_release_request_we_send_does_not_count_and_a_dropped_connection_is_closed():
    [line] = _closed_lines((evt.EVT_ACCEPTED, {}), (evt.EVT_ACSE_SENT, {"primitive": _release(None)}),
                           (evt.EVT_CONN_CLOSE, {}))
    assert line["ended"] == "closed"


def test_an_abort_before_the_close_is_logged_aborted_and_a_release_after_it_changes_nothing():
    [line] = _closed_lines((evt.EVT_ACCEPTED, {}), (evt.EVT_ABORTED, {}),
                           (evt.EVT_ACSE_SENT, {"primitive": _release("affirmative")}), (evt.EVT_CONN_CLOSE, {}))
    assert line["ended"] == "aborted"
