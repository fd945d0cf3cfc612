"""Guard: every value of a measurement group reaches the Bundle, or a Skipped note names it.

Each NUM, CODE, TEXT, UIDREF, IMAGE, COMPOSITE, SCOORD and SCOORD3D item below a Measurement
Group (125007, DCM) is NOTED (a Skipped note's path is the item or one of its ancestors strictly
below the group) or CARRIED by the Bundle (read back from its JSON with Decimal numbers):
- NUM: one resource holds a Quantity with the value (DS text or FD) and unit code, and a coding
  with the NUM's concept code; each NUM needs its own Quantity (identical NUMs of several groups
  are not all carried by one). Without a value: the qualifier code is some coding's code.
- CODE: the value code is some coding's code (SRT codes compared as their SNOMED CT ids).
- TEXT: equals a string that is not a machine value (MACHINE_KEYS), is a word of a ``text``, or
  is a ``subset`` entry of the instance its parent references (an ROI Name).
- UIDREF: some string is the UID or ``urn:oid:`` + UID.
- IMAGE/COMPOSITE: an ImagingSelection coded with the item's (or an ancestor's) concept lists the
  instance, with every referenced frame/segment number among its ``subset`` entries.
- SCOORD: an ``imageRegion2D`` has the Graphic Data (float32 precision); MULTIPOINT as ``point``s.
- SCOORD3D: an ImagingSelection with the Frame of Reference UID has it as an ``imageRegion3D``.
The SR is walked with pydicom's Dataset API, independently of mapping/content_tree. The second
test checks that no two Observations of a Bundle differ only in their value.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr._snomed_dict import mapping as SNOMED

from mapping import MappingError, map_sr, serialize
from mapping.coding import ucum_code
from tests.support import sr_builders as sr
from tests.support.conformance import SAMPLES, require_shared
from tests.support.report_fixtures import every_profile_report, fidelity_report

IG = "http://hl7.org/fhir/uv/dicom-sr/StructureDefinition/"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "measurement-report.dcm"
COVERED = {"NUM", "CODE", "TEXT", "IMAGE", "SCOORD", "SCOORD3D", "UIDREF", "COMPOSITE"}
MACHINE_KEYS = {"id", "fullUrl", "reference", "url", "system", "uid", "studyUid", "seriesUid", "status",
                "frameOfReferenceUid", "regionType", "resourceType", "code", "profile", "display", "unit",
                "subset"}
PROSE_KEYS = {"text", "div"}
SOP_CLASSES = {"enhanced": sr.ENHANCED_SR, "comprehensive": sr.COMPREHENSIVE_SR,
               "comprehensive3d": sr.COMPREHENSIVE_3D_SR}
FIXTURES: dict[str, Callable[[], Dataset]] = {
    **{f"every_profile:{name}:{'uids' if uids else 'no-uids'}":
       (lambda cls=cls, uids=uids: every_profile_report(cls, observation_uids=uids))
       for name, cls in SOP_CLASSES.items() for uids in (True, False)},
    "highdicom_planar": lambda: sr.highdicom_planar_report(n_groups=3, measurements_per_group=2),
    "highdicom_volumetric": sr.highdicom_volumetric_report,
    "large_report": lambda: sr.large_report(n_groups=3),
    "fidelity_report": fidelity_report,
    "example:measurement-report": lambda: pydicom.dcmread(EXAMPLE),
}
REAL = sorted(p.stem for p in SAMPLES.glob("*.dcm")) if SAMPLES.is_dir() else ["(../shared absent)"]
INPUTS = [*FIXTURES, *(f"real:{stem}" for stem in REAL)]


# --- the SR side ----------------------------------------------------------------------------
def concept(code_item: Dataset) -> tuple[str, str]:
    """(scheme, value) of a code sequence item, SNOMED-RT translated to SNOMED CT."""
    value = code_item.get("CodeValue") or code_item.get("LongCodeValue") or code_item.get("URNCodeValue")
    scheme = code_item.get("CodingSchemeDesignator", "")
    if scheme == "SRT" and value in SNOMED["SRT"]:
        return "SCT", SNOMED["SRT"][value]
    return scheme, str(value)


def name_of(ds: Dataset) -> tuple[str, str] | None:
    """The item's Concept Name as (scheme, value), or None."""
    seq = ds.get("ConceptNameCodeSequence")
    return concept(seq[0]) if seq else None


class Item(NamedTuple):
    """A content item below a measurement group; ``lineage`` holds (path, dataset) of its
    ancestors strictly below the group, then of the item itself."""

    path: str
    ds: Dataset
    lineage: tuple[tuple[str, Dataset], ...]


def group_items(ds: Dataset, path: str = "1", lineage: tuple | None = None) -> Iterator[Item]:
    """By-value COVERED items below a measurement group; ``lineage`` is None outside groups."""
    for n, child in enumerate(ds.get("ContentSequence", []), start=1):
        child_path = f"{path}.{n}"
        if "ReferencedContentItemIdentifier" in child:
            continue
        if child.get("ValueType") == "CONTAINER" and name_of(child) == ("DCM", "125007"):
            yield from group_items(child, child_path, ())
            continue
        inner = None if lineage is None else (*lineage, (child_path, child))
        if inner is not None and child.get("ValueType") in COVERED:
            yield Item(child_path, child, inner)
        yield from group_items(child, child_path, inner)


# --- the Bundle side ------------------------------------------------------------------------
def nodes(node: object, key: str | None = None) -> Iterator[tuple[str | None, object]]:
    """(element name, value) of every dict, list and scalar in a JSON tree, depth first
    (list members get the list's element name)."""
    yield key, node
    for k, child in node.items() if isinstance(node, dict) else ((key, c) for c in node) if isinstance(
            node, list) else ():
        yield from nodes(child, k)


def codes_in(node: object) -> set[str]:
    """``code`` of every coding (a dict inside a ``coding`` list) in ``node``."""
    return {str(c["code"]) for _, d in nodes(node) if isinstance(d, dict) and isinstance(d.get("coding"), list)
            for c in d["coding"] if isinstance(c, dict) and "code" in c}


def quantities_in(node: object) -> list[dict]:
    """Every Quantity-like dict (one with a numeric ``value``) in ``node``."""
    return [d for _, d in nodes(node) if isinstance(d, dict) and isinstance(d.get("value"), (int, Decimal))
            and not isinstance(d.get("value"), bool)]


def instances(selection: dict, uid: str) -> list[dict]:
    """The ``instance`` entries of an ImagingSelection that list SOP Instance ``uid``."""
    return [i for i in selection.get("instance", []) if i.get("uid") == uid]


def regions(selections: list[dict], key: str) -> list[dict]:
    """Every ``imageRegion2D``/``imageRegion3D`` (key) entry anywhere in the selections."""
    return [r for _, d in nodes(selections) if isinstance(d, dict) and isinstance(d.get(key), list) for r in d[key]]


def close(found: list, expected: list) -> bool:
    """Same length and every coordinate equal to float32 precision."""
    return len(found) == len(expected) and all(
        math.isclose(float(f), float(e), rel_tol=1e-6, abs_tol=1e-12) for f, e in zip(found, expected))


# --- carried --------------------------------------------------------------------------------
def num_carried(ds: Dataset, resources: list[dict], claimed: set[int]) -> bool:
    """Value and unit in a Quantity of a resource that also codes the NUM's concept; each NUM
    claims its own Quantity, so n identical NUMs need n Quantities."""
    mv = (ds.get("MeasuredValueSequence") or [Dataset()])[0]
    value = mv.get("NumericValue")  # a DS; not ``or``: a zero value is falsy
    text = "" if value is None else str(value).strip()
    if not text:
        qualifier = ds.get("NumericValueQualifierCodeSequence")
        return bool(qualifier) and concept(qualifier[0])[1] in codes_in(resources)
    values = {Decimal(text)} | ({Decimal(repr(float(mv.FloatingPointValue)))}
                                if mv.get("FloatingPointValue") is not None else set())
    units = mv.get("MeasurementUnitsCodeSequence")
    unit = concept(units[0])[1] if units else None
    # a UCUM code DICOM writes invalidly ("{SUVbw}g/ml") is carried as its valid equivalent
    unit = ucum_code(unit) if unit is not None and units[0].CodingSchemeDesignator == "UCUM" else unit
    free = [id(q) for r in resources if name_of(ds)[1] in codes_in(r) for q in quantities_in(r)
            if Decimal(q["value"]) in values and unit in (None, q.get("code")) and id(q) not in claimed]
    claimed.update(free[:1])
    return bool(free)


def text_carried(item: Item, resources: list[dict], selections: list[dict]) -> bool:
    """A non-machine string, a word of free text, or a subset entry of the parent's instance."""
    text = str(item.ds.TextValue).strip()
    word = re.compile(rf"(?<!\w){re.escape(text)}(?!\w)")
    if any(s == text and k not in MACHINE_KEYS or k in PROSE_KEYS and word.search(s)
           for k, s in nodes(resources) if isinstance(s, str)):
        return True
    parent = item.lineage[-2][1] if len(item.lineage) > 1 else Dataset()
    return any(text in i.get("subset", []) for ref in parent.get("ReferencedSOPSequence", [])
               for s in selections for i in instances(s, ref.ReferencedSOPInstanceUID))


def reference_carried(item: Item, selections: list[dict]) -> bool:
    """A selection coded like the item (or an ancestor) lists the instance, frames and segments."""
    ref = item.ds.ReferencedSOPSequence[0]
    uid = ref.ReferencedSOPInstanceUID
    numbers = {str(int(n)) for key in ("ReferencedFrameNumber", "ReferencedSegmentNumber") if key in ref
               for n in (ref[key].value if ref[key].VM > 1 else [ref[key].value] if ref[key].VM else [])}
    names = {name_of(ds)[1] for _, ds in item.lineage if name_of(ds)}
    return any(names & codes_in(s) and instances(s, uid) and numbers <= {
        n for i in instances(s, uid) for n in i.get("subset", [])} for s in selections)


def region_carried(ds: Dataset, selections: list[dict]) -> bool:
    """The Graphic Data as a 2D region (MULTIPOINT: one point per pair) or as a 3D region."""
    data = [float(v) for v in ds.GraphicData]
    if ds.ValueType == "SCOORD3D":
        return any(s.get("frameOfReferenceUid") == ds.ReferencedFrameOfReferenceUID and any(
            close(r.get("coordinate", []), data) for r in regions([s], "imageRegion3D")) for s in selections)
    if ds.GraphicType != "MULTIPOINT":
        return any(close(r.get("coordinate", []), data) for r in regions(selections, "imageRegion2D"))
    points = [r.get("coordinate", []) for r in regions(selections, "imageRegion2D") if r.get("regionType") == "point"]
    return all(any(close(p, data[k:k + 2]) for p in points) for k in range(0, len(data), 2))


def carried(item: Item, resources: list[dict], claimed: set[int]) -> bool:
    """Whether some resource of the Bundle carries the item's value (rules in the module doc)."""
    ds, vt = item.ds, item.ds.ValueType
    selections = [r for r in resources if r["resourceType"] == "ImagingSelection"]
    if vt == "NUM":
        return num_carried(ds, resources, claimed)
    if vt == "CODE":
        return concept(ds.ConceptCodeSequence[0])[1] in codes_in(resources)
    if vt == "TEXT":
        return text_carried(item, resources, selections)
    if vt == "UIDREF":
        return any(s in (ds.UID, f"urn:oid:{ds.UID}") for _, s in nodes(resources))
    if vt in ("IMAGE", "COMPOSITE"):
        return reference_carried(item, selections)
    return region_carried(ds, selections)


def describe(item: Item) -> str:
    """``(scheme,code) VT value`` of an item, for failure lines."""
    ds, vt = item.ds, item.ds.ValueType
    if vt == "NUM":
        mv, q = (ds.get("MeasuredValueSequence") or [Dataset()])[0], ds.get("NumericValueQualifierCodeSequence")
        units = mv.get("MeasurementUnitsCodeSequence")
        value = (f"{mv.NumericValue} {concept(units[0])[1] if units else ''}" if "NumericValue" in mv
                 else "qualifier ({},{})".format(*concept(q[0])) if q else "<no value>")
    elif vt == "CODE":
        value = "({},{})".format(*concept(ds.ConceptCodeSequence[0]))
    elif vt in ("TEXT", "UIDREF"):
        value = repr(str(ds.TextValue)[:60]) if vt == "TEXT" else ds.UID
    elif vt in ("IMAGE", "COMPOSITE"):
        ref = ds.ReferencedSOPSequence[0]
        value = " ".join(str(ref[k].value) for k in ("ReferencedSOPInstanceUID", "ReferencedFrameNumber",
                                                     "ReferencedSegmentNumber") if k in ref)
    else:
        value = f"{ds.GraphicType} {[float(v) for v in ds.GraphicData][:6]}"
    return "({},{}) {} {}".format(*(name_of(ds) or ("?", "?")), vt, value.strip())


# --- inputs and tests -----------------------------------------------------------------------
def mapped(name: str) -> tuple[Dataset, dict, tuple]:
    """(dataset, Bundle read back from its JSON with Decimal numbers, Skipped notes) of an input.

    A real sample the mapper refuses is skipped only when it holds no measurement group item.
    """
    if name in FIXTURES:
        ds = FIXTURES[name]()
    else:
        path = require_shared(SAMPLES) / f"{name.removeprefix('real:')}.dcm"
        assert path.is_file(), f"no SR sample {path}"
        ds = pydicom.dcmread(path)
    try:
        result = map_sr(ds)
    except MappingError as exc:
        if name.startswith("real:") and not any(group_items(ds)):
            pytest.skip(f"refused, and holds no measurement group: {exc}")
        raise
    return ds, json.loads(serialize(result.bundle), parse_float=Decimal), result.skipped


@pytest.mark.parametrize("name", INPUTS)
def test_every_group_item_is_carried_or_noted(name):
    ds, bundle, skipped = mapped(name)
    resources = [entry["resource"] for entry in bundle["entry"]]
    items = list(group_items(ds))
    assert items, f"{name}: no measurement group items found"
    noted, claimed = {s.path for s in skipped}, set()
    missing = [f"{name} {item.path} {describe(item)}: not carried, not noted" for item in items
               if not noted & {path for path, _ in item.lineage} and not carried(item, resources, claimed)]
    assert not missing, f"{len(missing)} of {len(items)} items lost:\n" + "\n".join(missing)


def comparison_key(observation: dict, by_url: dict[str, dict]) -> str:
    """The Observation without id, identifier, valueQuantity.value and source-sr-content-item refs."""
    key = copy.deepcopy(observation)
    key.pop("id", None)
    key.pop("identifier", None)
    key.get("valueQuantity", {}).pop("value", None)
    if "derivedFrom" in key:
        key["derivedFrom"] = [ref for ref in key["derivedFrom"] if IG + "source-sr-content-item" not in
                              by_url.get(ref.get("reference"), {}).get("meta", {}).get("profile", [])]
    return json.dumps(key, sort_keys=True, default=str)


def summary(observation: dict) -> str:
    """``codes = value`` of an Observation, for failure lines."""
    quantity = observation.get("valueQuantity")
    value = (f"{quantity.get('value')} {quantity.get('code', '')}" if quantity else
             json.dumps(next((v for k, v in observation.items() if k.startswith("value")), None), default=str))
    return f"{'|'.join(sorted(codes_in(observation.get('code', {}))))} = {value}"


@pytest.mark.parametrize("name", INPUTS)
def test_no_two_observations_differ_only_in_value(name):
    _, bundle, _ = mapped(name)
    by_url = {entry["fullUrl"]: entry["resource"] for entry in bundle["entry"]}
    first: dict[str, dict] = {}
    twins = []
    for obs in (r for r in by_url.values() if r["resourceType"] == "Observation"):
        key = comparison_key(obs, by_url)
        if key in first:
            twins.append(f"{name}: {summary(first[key])} and {summary(obs)} differ only in the value")
        first.setdefault(key, obs)
    assert not twins, "\n".join(twins)
