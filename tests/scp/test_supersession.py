"""Amended and corrected reports: the registry in spool.db, the retiring Bundles, the forwarder.

The registry tests use a real spool.db (a restart is a reopened consumer); the forwarder tests
deliver to the outbox (the FHIR server tests are tests/integration/test_amended_reports.py).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from mapping import MappingOptions, map_sr
from scp.delivery.forwarder import ForwarderStats, OutboxDelivery, process_item, template_label
from scp.delivery.supersession import (
    ENTERED_IN_ERROR,
    Supersessions,
    carried_keys,
    delivered_report,
    entry_key,
    retire_in_bundle,
    retirable_entries,
    retirement_bundle,
)
from scp.spool import DB_NAME, RecordFields, Spool
from scp.spool.db import SCHEMA_VERSION
from tests.support import sr_builders as sr
from tests.support.conformance import assert_conformant

STATUS_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ImagingSelection.status"


def report(name: str, *, predecessors: tuple[str, ...] = (), length: float = 12.5) -> Dataset:
    """A TID 1500 report with a measurement and an image region (Observations and an
    ImagingSelection), replacing the SRs ``predecessors`` (Predecessor Documents Sequence)."""
    region = sr.scoord_item("POLYLINE", [1, 1, 20, 1, 20, 20, 1, 1],
                            sr.source_image(sr.CT_IMAGE_STORAGE, sr.uid("amend:ct:1")))
    group = sr.measurement_group("1410", tracking_identifier="Lesion A", items=[region],
                                 finding_site=sr.finding_site_item(sr.LUNG),
                                 measurements=[sr.num_item(sr.LENGTH, length, sr.MM)])
    ds = sr.measurement_report([group], sop_instance_uid=sr.uid(f"amend:{name}"))
    if predecessors:
        ds.PredecessorDocumentsSequence = [_reference(ds, predecessors)]
    return pydicom.dcmread(BytesIO(sr.to_part10_bytes(ds)))


def _reference(ds: Dataset, uids: tuple[str, ...]) -> Dataset:
    study = Dataset()
    study.StudyInstanceUID = ds.StudyInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = ds.SeriesInstanceUID
    instances = []
    for uid in uids:
        instance = Dataset()
        instance.ReferencedSOPClassUID = ds.SOPClassUID
        instance.ReferencedSOPInstanceUID = uid
        instances.append(instance)
    series.ReferencedSOPSequence = instances
    study.ReferencedSeriesSequence = [series]
    return study


def not_mapped(name: str) -> Dataset:
    """A readable SR that is no document sr2fhir maps (an LOINC-titled report, no template)."""
    ds = report(name)
    ds.ConceptNameCodeSequence[0].CodeValue = "18748-4"
    ds.ConceptNameCodeSequence[0].CodingSchemeDesignator = "LN"
    del ds.ContentTemplateSequence
    return ds


def report_statuses(bundle: dict) -> dict[str, str]:
    """entry_key -> status of every Observation / ImagingSelection (R4 Basic: its extension)."""
    found = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] in ("Observation", "ImagingSelection"):
            found[entry_key(entry)] = resource["status"]
        elif resource["resourceType"] == "Basic":
            found[entry_key(entry)] = next(e["valueCode"] for e in resource["extension"] if e["url"] == STATUS_EXTENSION)
    return found


# -- the Bundles ------------------------------------------------------------------------------


@pytest.mark.parametrize("write_mode", ["put", "conditional", "conditional-update"])
def test_retiring_a_predecessor_rewrites_its_report_resources_only(write_mode):
    bundle = map_sr(report("pure"), MappingOptions(write_mode=write_mode)).bundle
    kept = retirable_entries(bundle)
    kinds = {e["resource"]["resourceType"] for e in kept}
    assert {"Observation", "ImagingSelection"} <= kinds
    if write_mode == "put":  # literal references: nothing else is needed
        assert kinds == {"Observation", "ImagingSelection"}
    else:  # urn:uuid references: what they point at comes along, so the transaction resolves
        urls = {e["fullUrl"] for e in kept}
        assert all(text in urls for e in kept for text in _strings(e["resource"]) if text.startswith("urn:uuid:")
                   and text in {x["fullUrl"] for x in bundle["entry"]})
    retired, count = retirement_bundle(kept, carried=set())
    statuses = report_statuses(retired)
    assert count == len(statuses) > 0 and set(statuses.values()) == {ENTERED_IN_ERROR}
    for entry in retired["entry"]:
        if entry["resource"]["resourceType"] in ("Observation", "ImagingSelection"):
            # a conditional create would leave an existing resource as it is: an update instead
            assert entry["request"]["method"] == "PUT"
            if write_mode != "put":
                assert entry["request"]["url"].startswith(entry["resource"]["resourceType"] + "?identifier=")
        else:
            assert entry in kept  # shared resources are sent as they were, never changed


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for child in value.values():
            yield from _strings(child)
    elif isinstance(value, list):
        for child in value:
            yield from _strings(child)


def test_resources_the_successor_carries_are_not_retired():
    bundle = map_sr(report("carry"), MappingOptions()).bundle
    keys = carried_keys(bundle)
    carried = {keys[0]}
    retired, count = retirement_bundle(retirable_entries(bundle), carried)
    assert count == len(keys) - 1
    assert keys[0] not in report_statuses(retired)
    arrived, count = retire_in_bundle(bundle, carried)
    statuses = report_statuses(arrived)
    assert statuses[keys[0]] != ENTERED_IN_ERROR and count == len(keys) - 1


def test_r4_basic_imaging_selection_is_retired_through_its_status_extension():
    bundle = map_sr(report("r4"), MappingOptions(fhir_version="r4")).bundle
    retired, count = retire_in_bundle(bundle, set())
    basics = [e["resource"] for e in retired["entry"] if e["resource"]["resourceType"] == "Basic"]
    assert basics and count == len(report_statuses(retired))
    for basic in basics:
        assert [e["valueCode"] for e in basic["extension"] if e["url"] == STATUS_EXTENSION] == [ENTERED_IN_ERROR]


def test_a_retired_bundle_is_conformant(tmp_path):
    arrived, _ = retire_in_bundle(map_sr(report("ig"), MappingOptions()).bundle, set())
    retired, _ = retirement_bundle(retirable_entries(map_sr(report("ig2"), MappingOptions()).bundle), set())
    assert_conformant({"arrived": arrived, "retired": retired}, tmp_path)


def test_template_labels_stay_few():
    assert [template_label(t) for t in ("2000", None, "", "12345678901", "1500; DROP")] == \
        ["2000", "none", "none", "other", "other"]


# -- the registry in spool.db -----------------------------------------------------------------


def spooled(spool: Spool, *datasets: Dataset) -> None:
    with spool.writer() as writer:
        for ds in datasets:
            data = sr.to_part10_bytes(ds)
            writer.put(RecordFields(ds.SOPInstanceUID, ds.SOPClassUID, "1.2.840.10008.1.2.1", "MODALITY",
                                    "2026-12-07T06:00:00+00:00"), data)


def settle_delivered(spool: Spool, ds: Dataset, retired_for: tuple[str, ...] = ()) -> list:
    result = map_sr(ds, MappingOptions())
    with spool.consumer() as consumer:
        item = next(i for i in consumer.pending() if i.sop_instance_uid == ds.SOPInstanceUID)
        return consumer.settle(item, report=delivered_report(ds.SOPInstanceUID, result.bundle, result.predecessors,
                                                             retired_for))


def test_a_successor_of_a_delivered_report_is_pending_and_survives_a_restart(tmp_path):
    spool = Spool(tmp_path / "spool")
    old = report("reg-old")
    new = report("reg-new", predecessors=(old.SOPInstanceUID,))
    spooled(spool, old, new)
    assert settle_delivered(spool, old) == []
    started = settle_delivered(spool, new)
    assert [(s.predecessor_uid, s.state) for s in started] == [(old.SOPInstanceUID, "pending")]
    with spool.consumer() as consumer:  # a new process: read back from spool.db
        [pending] = consumer.pending_supersessions()
        assert (pending.predecessor_uid, pending.successor_uid) == (old.SOPInstanceUID, new.SOPInstanceUID)
        entries = json.loads(pending.entries)["entry"]
        assert {e["resource"]["resourceType"] for e in entries} == {"Observation", "ImagingSelection"}
        consumer.settle_supersession(pending, "done")
    with spool.consumer() as consumer:
        assert consumer.pending_supersessions() == []
        assert [s.state for s in consumer.supersessions_of(old.SOPInstanceUID)] == ["done"]


def test_a_successor_first_awaits_its_predecessor_which_then_settles_it(tmp_path):
    spool = Spool(tmp_path / "spool")
    old = report("first-old")
    new = report("first-new", predecessors=(old.SOPInstanceUID,))
    spooled(spool, new, old)
    assert [s.state for s in settle_delivered(spool, new)] == ["awaiting"]
    settle_delivered(spool, old, retired_for=(new.SOPInstanceUID,))
    with spool.consumer() as consumer:
        assert [s.state for s in consumer.supersessions_of(old.SOPInstanceUID)] == ["done"]
        assert consumer.pending_supersessions() == []


def test_a_predecessor_settled_while_its_successor_was_in_flight_becomes_pending(tmp_path):
    spool = Spool(tmp_path / "spool")
    old = report("race-old")
    new = report("race-new", predecessors=(old.SOPInstanceUID,))
    spooled(spool, new, old)
    settle_delivered(spool, new)  # the predecessor was not known when the successor settled ...
    settle_delivered(spool, old)  # ... and was sent without being retired: it is to be rewritten now
    with spool.consumer() as consumer:
        assert [s.state for s in consumer.pending_supersessions()] == ["pending"]


def test_old_reports_are_forgotten_in_bounded_steps(tmp_path):
    spool = Spool(tmp_path / "spool")
    reports = [report(f"prune-{n}") for n in range(3)]
    spooled(spool, *reports)
    for ds in reports:
        settle_delivered(spool, ds)
    with spool.consumer() as consumer:
        assert consumer.forget_delivered(before_us=0) == 0
        assert consumer.forget_delivered(before_us=2**62, limit=2) == 2
        assert consumer.forget_delivered(before_us=2**62, limit=2) == 1
    with sqlite3.connect(tmp_path / "spool" / DB_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM delivered_reports").fetchall() == [(0,)]
    conn.close()


@pytest.mark.parametrize("version", [1, 2])
def test_an_earlier_spool_is_upgraded_in_place_keeping_its_items(tmp_path, version):
    spool = Spool(tmp_path / "spool")
    ds = report(f"upgrade-{version}")
    spooled(spool, ds)
    path = tmp_path / "spool" / DB_NAME
    with sqlite3.connect(path) as conn:  # what the earlier release wrote
        for table in ("delivered_reports", "supersessions", *(("progress",) if version == 1 else ())):
            conn.execute(f"DROP TABLE {table}")
        conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    assert settle_delivered(spool, ds) == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchall() == [(SCHEMA_VERSION,)] == [(3,)]
        assert conn.execute("SELECT sop_instance_uid FROM delivered_reports").fetchall() == [(ds.SOPInstanceUID,)]
    conn.close()


# -- the forwarder, to the outbox -------------------------------------------------------------


def forward(spool: Spool, outbox: Path, *, unmapped: str = "ignore", crash_after_settle: bool = False) -> list[str]:
    """Process every pending item once with the outbox as the target; the settlements."""

    async def run() -> list[str]:
        delivery = OutboxDelivery(outbox)
        settled = []
        with spool.consumer() as consumer:
            supersessions = Supersessions(consumer, delivery, asyncio.Event())
            if crash_after_settle:
                async def died(_started) -> None:  # the worker dies right after the successor's commit
                    return None
                supersessions.carry_out = died  # type: ignore[method-assign]
            for item in consumer.pending():
                settled.append(await process_item(item, consumer, delivery, MappingOptions(), asyncio.Event(),
                                                  ForwarderStats(), unmapped=unmapped, supersessions=supersessions))
        return settled

    return asyncio.run(run())


def outbox_statuses(outbox: Path, name: str) -> set[str]:
    return set(report_statuses(json.loads((outbox / f"{name}.json").read_text(encoding="utf-8"))).values())


def test_in_order_the_successor_is_followed_by_a_retiring_bundle(tmp_path):
    spool, outbox = Spool(tmp_path / "spool"), tmp_path / "outbox"
    old = report("fw-old")
    new = report("fw-new", predecessors=(old.SOPInstanceUID,), length=13.0)
    spooled(spool, old, new)
    assert forward(spool, outbox) == ["delivered", "delivered"]
    assert outbox_statuses(outbox, old.SOPInstanceUID) == {"final", "available"}
    assert outbox_statuses(outbox, new.SOPInstanceUID) == {"final", "available"}
    assert outbox_statuses(outbox, f"{new.SOPInstanceUID}.supersedes.{old.SOPInstanceUID}") == {ENTERED_IN_ERROR}


def test_out_of_order_the_predecessor_goes_out_retired(tmp_path):
    spool, outbox = Spool(tmp_path / "spool"), tmp_path / "outbox"
    old = report("ooo-old")
    new = report("ooo-new", predecessors=(old.SOPInstanceUID,))
    spooled(spool, new)
    forward(spool, outbox)
    spooled(spool, old)
    forward(spool, outbox)
    assert outbox_statuses(outbox, old.SOPInstanceUID) == {ENTERED_IN_ERROR}
    assert outbox_statuses(outbox, new.SOPInstanceUID) == {"final", "available"}
    assert sorted(p.name for p in outbox.iterdir()) == sorted([f"{old.SOPInstanceUID}.json",
                                                               f"{new.SOPInstanceUID}.json"])


def test_a_crash_after_the_successor_settled_is_carried_out_after_the_restart(tmp_path):
    spool, outbox = Spool(tmp_path / "spool"), tmp_path / "outbox"
    old = report("crash-old")
    new = report("crash-new", predecessors=(old.SOPInstanceUID,))
    spooled(spool, old, new)
    forward(spool, outbox, crash_after_settle=True)
    retiring = outbox / f"{new.SOPInstanceUID}.supersedes.{old.SOPInstanceUID}.json"
    assert not retiring.exists()

    async def restart() -> None:
        with spool.consumer() as consumer:
            await Supersessions(consumer, OutboxDelivery(outbox), asyncio.Event()).housekeeping()
            assert consumer.pending_supersessions() == []

    asyncio.run(restart())
    assert outbox_statuses(outbox, retiring.name.removesuffix(".json")) == {ENTERED_IN_ERROR}


def test_an_unmapped_sr_is_dropped_by_default_and_dead_lettered_on_request(tmp_path):
    spool, outbox = Spool(tmp_path / "spool"), tmp_path / "outbox"
    spooled(spool, not_mapped("drop-me"))
    assert forward(spool, outbox) == ["ignored"]
    assert spool.failed() == [] and spool.status().pending == 0 and not any(outbox.iterdir())
    spooled(spool, not_mapped("keep-me"))
    assert forward(spool, outbox, unmapped="dead-letter") == ["dead_lettered"]
    assert [f.sop_instance_uid for f in spool.failed()] == [sr.uid("amend:keep-me")]


def test_short_of_space_the_registry_shrinks_instead_of_taking_the_room_of_received_srs(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool")
    reports = [report(f"space-{n}") for n in range(4)]
    spooled(spool, *reports)
    for ds in reports[:3]:
        settle_delivered(spool, ds)
    monkeypatch.setattr("scp.spool.consumer.free_bytes", lambda _path: 1024 * 1024)  # statvfs says 1 MiB free
    settle_delivered(spool, reports[3])
    with sqlite3.connect(tmp_path / "spool" / DB_NAME) as conn:  # the two oldest went, the newest stays
        remembered = {row[0] for row in conn.execute("SELECT sop_instance_uid FROM delivered_reports")}
    conn.close()
    assert remembered == {reports[2].SOPInstanceUID, reports[3].SOPInstanceUID}
