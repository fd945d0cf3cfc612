"""Resource ids: the same UUIDv5 the standard library computes, so every id written before
the fast path stays the id of the same thing."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from mapping.ids import NAMESPACE, content_id, report_scoped_id, shared_id


@given(st.text(max_size=80), st.text(max_size=20), st.text(max_size=40))
def test_report_scoped_id_is_the_uuid5_of_its_identity(sop_instance_uid: str, path: str, kind: str) -> None:
    expected = uuid.uuid5(NAMESPACE, f"sr|{sop_instance_uid}|{path}|{kind}")
    assert report_scoped_id(sop_instance_uid, path, kind) == str(expected)


@given(st.text(max_size=30), st.lists(st.text(max_size=40), max_size=4))
def test_shared_id_is_the_uuid5_of_its_identity(kind: str, identity: list[str]) -> None:
    expected = uuid.uuid5(NAMESPACE, "|".join(("shared", kind, *identity)))
    assert shared_id(kind, *identity) == str(expected)


def test_ids_written_by_earlier_releases_are_unchanged() -> None:
    # Pinned: a change here re-keys every resource already on a FHIR server.
    assert report_scoped_id("1.2.3", "1.5.1", "imaging-measurement-group") == "4c9e2cbf-b8e1-5885-abb8-e70efc2bcb93"
    assert content_id("device", {"id": "x", "identifier": [{"value": "d"}]}) == shared_id(
        "device", '{"identifier":[{"value":"d"}]}')
    assert str(NAMESPACE) == "1c0f8a52-9d6e-5b1e-a3f0-5f2d8e7c4b19"
    assert uuid.UUID(report_scoped_id("1.2.3", "1", "x")).version == 5
