"""``sr2fhir convert``'s fast path writes exactly what its slow path wrote, for every kind of document.

The slow path, kept here as the reference: ``pydicom.dcmread`` + ``Dataset.walk`` (every element
decoded into pydicom Datasets), ``map_sr`` over those Datasets, simplejson with Decimals. The fast
path (:func:`scp.commands.convert.convert_to_json`): the Content Sequence left raw for the mapping's
raw reader, every value proven decodable by ``check_every_element``, orjson. Same Bundle bytes, same
warning lines, same error line, for TID 1500 reports, Key Object Selections, dose reports, and the
SRs sr2fhir refuses; in R5 and R4, indented and compact.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
import simplejson
from pydicom.dataset import Dataset

from mapping import MappingError, MappingOptions, map_sr
from scp.commands.convert import convert_to_json
from tests.support import dose_builders as dose
from tests.support import kos_builders as kos
from tests.support import report_fixtures
from tests.support import sr_builders as sr
from tests.support.conformance import SHARED, require_shared

OPTIONS = {
    "r5": MappingOptions(),
    "r4": MappingOptions(fhir_version="r4"),
    "r5-conditional": MappingOptions(write_mode="conditional", default_timezone="Europe/Berlin"),
}


def _slow_path(path: Path, options: MappingOptions, indent: int | None) -> tuple[bytes | None, tuple[str, ...]]:
    """What ``convert`` wrote before the fast path: the Bundle's JSON (None when refused) and its stderr lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(path)
        ds.walk(lambda _ds, _elem: None)
        try:
            result = map_sr(ds, options)
        except MappingError as exc:
            return None, (f"sr2fhir: error: {path}: {exc}",)
    notes = (*dict.fromkeys(f"pydicom: {w.message}" for w in caught), *map(str, result.skipped))
    separators = (",", ":") if indent is None else (",", ": ")
    text = simplejson.dumps(result.bundle, ensure_ascii=False, indent=indent, separators=separators,
                            use_decimal=True, allow_nan=False).encode("utf-8")
    return text, tuple(f"sr2fhir: warning: {path}: {note}" for note in notes)


def _assert_same_output(path: Path) -> int:
    """Compare both paths on ``path`` in every option set and indent; return how many were refused."""
    refused = 0
    for name, options in OPTIONS.items():
        for indent in (2, None):
            expected_json, expected_lines = _slow_path(path, options, indent)
            outcome = convert_to_json(path, options, indent)
            assert outcome.json == expected_json, f"{path.name} {name} indent={indent}: Bundle bytes differ"
            assert outcome.messages == expected_lines, f"{path.name} {name} indent={indent}: stderr lines differ"
            refused += expected_json is None
    return refused


def _unmapped_document() -> Dataset:
    """A Comprehensive SR whose root is neither TID 1500, 2010 nor a dose report: refused."""
    ds = sr.measurement_report([sr.measurement_group()])
    ds.ConceptNameCodeSequence = [sr.coded("11528-7", "LN", "Radiology Report")]
    ds.ContentTemplateSequence = []
    return ds


def _predecessor_report() -> Dataset:
    ds = sr.large_report(2, 2)
    predecessor = Dataset()
    predecessor.ReferencedSOPClassUID = sr.COMPREHENSIVE_SR
    predecessor.ReferencedSOPInstanceUID = sr.uid("older-report")
    series = Dataset()
    series.SeriesInstanceUID = sr.uid("sr-series")
    series.ReferencedSOPSequence = [predecessor]
    study = Dataset()
    study.StudyInstanceUID = sr.uid("study")
    study.ReferencedSeriesSequence = [series]
    ds.PredecessorDocumentsSequence = [study]
    return ds


def _tiny_coordinates() -> Dataset:
    """Coordinates below 1e-4 (floats orjson spells otherwise than repr did) in 2D and 3D."""
    (ct, ct_1), = sr.ct_image_refs(1)
    group = sr.measurement_group(items=[
        sr.scoord_item("POLYLINE", [0.00002, 1e-7, 3.5, 4, 1e-5, 6], sr.source_image(ct, ct_1)),
        sr.scoord3d_item("POINT", [2.3e-14, -0.0000178, 120.5], sr.uid("frame-of-reference")),
    ], measurements=[sr.num_item(sr.LENGTH, "0.00002206", sr.MM)])
    return sr.measurement_report([group])


BUILT: dict[str, Callable[[], Dataset]] = {
    "tid1500-tiny-coordinates": _tiny_coordinates,
    "tid1500-large": lambda: sr.large_report(4, 3),
    "tid1500-every-profile": report_fixtures.every_profile_report,
    "tid1500-fidelity": report_fixtures.fidelity_report,
    "tid1500-amended": _predecessor_report,
    "tid1500-no-patient-id": lambda: sr.measurement_report([sr.measurement_group()], patient_id=None),
    "kos": lambda: kos.key_object_selection([kos.KeyObject(sr.uid("ct-1")), kos.KeyObject(
        sr.uid("mr-1"), series_uid=sr.uid("kos:series:mr"), sop_class_uid=kos.MR_IMAGE_STORAGE, frames=(2, 5))]),
    "kos-rejection": lambda: kos.key_object_selection([kos.KeyObject(sr.uid("ct-1"))],
                                                      title=kos.REJECTED_FOR_QUALITY_REASONS),
    "kos-highdicom": lambda: kos.highdicom_key_object_selection()[0],
    "dose-ct": lambda: dose.ct_dose_report(accumulated=dose.ct_accumulated_dose()),
    "dose-ct-unreadable-total": lambda: dose.ct_dose_report(accumulated=dose.ct_accumulated_dose(("12", dose.MGY))),
    "dose-projection": lambda: dose.projection_dose_report(
        accumulated=[dose.accumulated_x_ray_dose(dap=("0.00002206", dose.GY_M2))], events=[dose.projection_event()]),
    "dose-radiopharmaceutical": dose.radiopharmaceutical_dose_report,
    "unmapped": _unmapped_document,
}


REFUSED = frozenset({"unmapped", "tid1500-no-patient-id", "dose-ct-unreadable-total"})


@pytest.mark.parametrize("name", BUILT)
def test_built_documents(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(sr.to_part10_bytes(BUILT[name]()))
    refused = _assert_same_output(path)
    # The refusal path is compared too, and every other document did make Bundles.
    assert refused == (2 * len(OPTIONS) if name in REFUSED else 0)


def _shared_samples() -> list[str]:
    return [f"{folder}/{path.name}" for folder in ("real", "real-dose")
            for path in sorted((SHARED / "samples" / folder).glob("*.dcm"))]


def test_real_samples_are_there() -> None:
    """The parametrised test below would silently test nothing without ../shared."""
    require_shared(SHARED / "samples" / "real-dose")
    assert len(_shared_samples()) >= 10


@pytest.mark.parametrize("sample", _shared_samples())
def test_real_documents(sample: str) -> None:
    _assert_same_output(require_shared(SHARED / "samples" / sample))
