"""FHIR R4 output (``mapping.r4.to_r4`` / ``MappingOptions(fhir_version="r4")``).

For every report fixture, the IG's example SR and the real samples, in every write mode
(``put`` with ``urn:uuid:`` or literal ``Type/id`` references, ``conditional``,
``conditional-update``) and both ``r4_imaging_selection`` modes: the R4 Bundle holds no R5-only
type or element and every reference resolves to a type R4 allows (checked against HL7's R4
definitions, ``test_r4_definitions``); with ``basic`` every R5 ImagingSelection comes back
from its Basic unchanged and no reference is lost; with ``omit`` nothing dangles.
"""

from __future__ import annotations

import copy
import json
import warnings
from decimal import Decimal
from functools import lru_cache
from typing import get_args

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from mapping import MappingOptions, MissingContentItem, WriteMode, map_sr, r4_form, serialize
from mapping.r4 import BASIC_CODE, from_basic, is_selection_basic, to_basic, to_r4
from mapping.r4.imaging_selection import ELEMENTS, Element
from mapping.r4.links import literal_type, map_references, retype_url
from tests.mapping.test_r4_definitions import check_bundle, check_resource, r4_definitions  # noqa: F401 (fixture)
from tests.support import dose_builders as dose
from tests.support import kos_builders as kos
from tests.support import sr_builders as sr
from tests.support.corpus import sr_corpus
from tests.support.conformance import IG_EXAMPLE_SR, SAMPLES, require_shared
from tests.support.report_fixtures import every_profile_report, fidelity_report

IG = "http://hl7.org/fhir/uv/dicom-sr/StructureDefinition/"
XVER = "http://hl7.org/fhir/5.0/StructureDefinition/extension-"
SOP_CLASSES = {"enhanced": sr.ENHANCED_SR, "comprehensive": sr.COMPREHENSIVE_SR, "comprehensive3d": sr.COMPREHENSIVE_3D_SR}
WRITE_MODES = ["put", "put-literal", "conditional", "conditional-update"]
# The real samples that hold a TID 1500 (the others are refused by map_sr, see test_conformance).
NOT_TID1500 = {"dicomscope_reportki", "pydicom_reportsi_with_empty_number_tags", "pydicom_test-SR"}
REAL = sorted(p.stem for p in SAMPLES.glob("*.dcm") if p.stem not in NOT_TID1500) if SAMPLES.is_dir() \
    else ["(../shared absent)"]


def _ig_example() -> Dataset:
    data = json.loads(require_shared(IG_EXAMPLE_SR).read_text(encoding="utf-8"))
    data["00080050"]["Value"] = [data["00080050"]["Value"]]  # MAPPING.md §8.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # its 66-character UIDs
        return Dataset.from_json(data)


FIXTURES = {
    **{f"every_profile:{name}:{uids}": (lambda cls=cls, uids=uids: every_profile_report(cls, observation_uids=uids))
       for name, cls in SOP_CLASSES.items() for uids in (True, False)},
    "fidelity_report": fidelity_report,
    "large_report": lambda: sr.large_report(n_groups=3),
    "highdicom_planar": lambda: sr.highdicom_planar_report(n_groups=2),
    "highdicom_volumetric": sr.highdicom_volumetric_report,
    "ig_example": _ig_example,
}
INPUTS = [*FIXTURES, *(f"real:{stem}" for stem in REAL)]


@lru_cache(maxsize=None)
def _dataset(name: str) -> Dataset:
    if name.startswith("real:"):
        return pydicom.dcmread(require_shared(SAMPLES / f"{name[5:]}.dcm"))
    return FIXTURES[name]()


@lru_cache(maxsize=None)
def _r5_json(name: str, write_mode: str) -> str:
    """The R5 Bundle for an input and write mode as JSON (cached)."""
    native = write_mode if write_mode in get_args(WriteMode) else {"put-literal": "put",
                                                                   "conditional-update": "conditional"}[write_mode]
    bundle = map_sr(_dataset(name), MappingOptions(write_mode=native)).bundle
    if write_mode == "put-literal" and native == "put":
        bundle = _literal_references(bundle)
    if write_mode == "conditional-update" and native == "conditional":
        bundle = _conditional_update(bundle)
    return serialize(bundle).decode()


def r5_bundle(name: str, write_mode: str) -> dict:
    found = _r5_json(name, write_mode)
    assert found is not None, f"map_sr refused {name}"
    return json.loads(found, parse_float=Decimal)


def _literal_references(bundle: dict) -> dict:
    """``put`` mode as it becomes with literal references: ``urn:uuid:`` -> ``Type/id``."""
    literal = {e["fullUrl"]: e["request"]["url"] for e in bundle["entry"]}

    def change(reference: dict) -> dict:
        target = literal.get(reference.get("reference"))
        return {**reference, "reference": target} if target else reference

    return {**bundle, "entry": [{**e, "resource": map_references(e["resource"], change)} for e in bundle["entry"]]}


def _conditional_update(bundle: dict) -> dict:
    """``conditional-update`` mode: ``PUT Type?identifier=system|value`` (urn:uuid references)."""
    entries = []
    for entry in bundle["entry"]:
        request = entry["request"]
        url = f"{request['url']}?{request['ifNoneExist']}"
        entries.append({**entry, "request": {"method": "PUT", "url": url}})
    return {**bundle, "entry": entries}


def _r5_selection_links(bundle: dict) -> dict:
    """Inverse of the R4 retyping: literal ``Basic`` references and ``type`` back to ImagingSelection."""
    basics = {e["fullUrl"] for e in bundle["entry"] if is_selection_basic(e["resource"])}
    basics |= {f"Basic/{e['resource']['id']}" for e in bundle["entry"]
               if is_selection_basic(e["resource"]) and "id" in e["resource"]}

    def change(reference: dict) -> dict:
        out = dict(reference)
        if out.get("reference") in basics and literal_type(out["reference"]) == "Basic":
            out["reference"] = retype_url(out["reference"], "Basic", "ImagingSelection")
        if out.get("type") == "Basic":
            out["type"] = "ImagingSelection"
        return out

    return {**bundle, "entry": [{**e, "resource": map_references(e["resource"], change)} for e in bundle["entry"]]}


def _without_ig_profiles(resource: dict) -> dict:
    out = copy.deepcopy(resource)
    profiles = [p for p in out.get("meta", {}).get("profile", []) if not p.startswith(IG)]
    if "meta" in out:
        if profiles:
            out["meta"]["profile"] = profiles
        else:
            out["meta"].pop("profile", None)
            if not out["meta"]:
                del out["meta"]
    return out


def _references(node) -> list[str]:
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            found.append(node["reference"])
        for value in node.values():
            found += _references(value)
    elif isinstance(node, list):
        for item in node:
            found += _references(item)
    return found


# --- the whole Bundle -----------------------------------------------------------------------

@pytest.mark.parametrize("write_mode", WRITE_MODES)
@pytest.mark.parametrize("name", INPUTS)
def test_basic_mode_is_valid_r4_and_loses_nothing(name, write_mode, r4_definitions):
    r5 = r5_bundle(name, write_mode)
    before = serialize(r5)
    result = to_r4(r5, imaging_selection="basic")
    assert serialize(r5) == before, "to_r4 modified its input"
    r4 = result.bundle
    assert check_bundle(r4_definitions, r4) == []
    assert result.notes == (), [str(n) for n in result.notes]
    assert "ImagingSelection" not in serialize(r4).decode().replace(f"{XVER}ImagingSelection.", "").replace(
        '"code":"ImagingSelection"', "")
    assert len(r4["entry"]) == len(r5["entry"])
    back = _r5_selection_links(r4)
    for r5_entry, r4_entry, back_entry in zip(r5["entry"], r4["entry"], back["entry"]):
        r5_resource, r4_resource = r5_entry["resource"], r4_entry["resource"]
        assert r4_entry["fullUrl"] == r5_entry["fullUrl"]
        assert "profile" not in r4_resource.get("meta", {})  # R4 resources claim core R4 only
        if r5_resource["resourceType"] == "ImagingSelection":
            assert r4_resource["resourceType"] == "Basic" and r4_resource["code"] == BASIC_CODE
            assert r4_resource.get("id") == r5_resource.get("id")
            assert from_basic(back_entry["resource"]) == _without_ig_profiles(r5_resource)
            assert r4_entry["request"] == {**r5_entry["request"],
                                           "url": r5_entry["request"]["url"].replace("ImagingSelection", "Basic", 1)}
            assert r4_entry["request"]["url"].startswith("Basic")
        else:
            assert r4_resource["resourceType"] == r5_resource["resourceType"]
            assert r4_entry["request"] == r5_entry["request"]
            # Every reference is still there (some moved into extensions), none added.
            assert sorted(_references(back_entry["resource"])) == sorted(_references(r5_resource))


@pytest.mark.parametrize("write_mode", WRITE_MODES)
@pytest.mark.parametrize("name", INPUTS)
def test_omit_mode_is_valid_r4_without_dangling_references(name, write_mode, r4_definitions):
    r5 = r5_bundle(name, write_mode)
    selections = [e for e in r5["entry"] if e["resource"]["resourceType"] == "ImagingSelection"]
    result = to_r4(r5, imaging_selection="omit")
    r4 = result.bundle
    assert check_bundle(r4_definitions, r4) == []  # includes: every reference resolves
    assert not [e for e in r4["entry"] if e["resource"]["resourceType"] in ("ImagingSelection", "Basic")]
    assert len(r4["entry"]) == len(r5["entry"]) - len(selections)
    dropped = {e["fullUrl"] for e in selections} | {e["request"]["url"] for e in selections}
    assert not dropped & set(_references(r4))
    assert not any(XVER + "Observation.derivedFrom" in json.dumps(e["resource"], default=str) for e in r4["entry"])
    notes = [str(n) for n in result.notes]
    if selections:
        assert notes == [f"document: FHIR R4: {len(selections)} ImagingSelection(s) left out (R4 has no "
                         "ImagingSelection; r4_imaging_selection is 'omit'), with every reference to them; the image "
                         "regions, frames, segments and SOP instances they named are not in the Bundle"]
    else:
        assert notes == []


# --- wiring ---------------------------------------------------------------------------------

@pytest.mark.parametrize("imaging_selection", ["basic", "omit"])
def test_map_sr_applies_to_r4_and_appends_its_notes(imaging_selection):
    report = every_profile_report()
    r5 = map_sr(report)
    r4 = map_sr(report, MappingOptions(fhir_version="r4", r4_imaging_selection=imaging_selection))
    conversion = to_r4(r5.bundle, imaging_selection=imaging_selection)
    assert serialize(r4.bundle) == serialize(conversion.bundle)
    assert r4.skipped == r5.skipped + conversion.notes


@pytest.mark.parametrize("name", ["every_profile:comprehensive3d:True", "fidelity_report"])
@pytest.mark.parametrize("write_mode", ["put", "conditional"])
def test_r5_output_is_unchanged_by_the_r4_options(name, write_mode):
    ds = _dataset(name)
    default = map_sr(ds, MappingOptions(write_mode=write_mode))
    explicit = map_sr(ds, MappingOptions(write_mode=write_mode, fhir_version="r5", r4_imaging_selection="omit"))
    assert serialize(default.bundle) == serialize(explicit.bundle)
    assert default.skipped == explicit.skipped
    assert '"resourceType":"ImagingSelection"' in serialize(default.bundle).decode()


def test_the_option_values_are_checked():
    with pytest.raises(ValueError):
        MappingOptions(fhir_version="r4b")
    with pytest.raises(ValueError):
        MappingOptions(r4_imaging_selection="drop")
    with pytest.raises(ValueError):
        to_r4({"resourceType": "Bundle", "type": "transaction", "entry": []}, imaging_selection="drop")


# --- resource by resource -------------------------------------------------------------------

def _r4_of(name: str, resource_type: str, profile: str | None = None) -> list[tuple[dict, dict]]:
    """(R5, R4) pairs of one resource type (and IG profile) of an input, put mode."""
    r5 = r5_bundle(name, "put")
    r4 = to_r4(r5).bundle
    return [(a["resource"], b["resource"]) for a, b in zip(r5["entry"], r4["entry"])
            if a["resource"]["resourceType"] == resource_type
            and (profile is None or IG + profile in a["resource"]["meta"]["profile"])]


def test_observations_link_selections_through_the_cross_version_derived_from():
    for r5, r4 in _r4_of("every_profile:comprehensive3d:True", "Observation", "imaging-measurement-group"):
        extensions = [e for e in r4.get("extension", []) if e["url"] == XVER + "Observation.derivedFrom"]
        assert extensions and all(set(e) == {"url", "valueReference"} for e in extensions)
        assert [e["valueReference"] for e in extensions] + r4.get("derivedFrom", []) != []
        assert {e["url"] for e in r4["extension"]} <= {XVER + "Observation.derivedFrom",
                                                       "http://hl7.org/fhir/StructureDefinition/bodySite"}
        if "bodyStructure" in r5:
            assert {"url": "http://hl7.org/fhir/StructureDefinition/bodySite",
                    "valueReference": r5["bodyStructure"]} in r4["extension"]
        assert r4["partOf"] == r5["partOf"]  # the ImagingStudy link is plain R4


def test_devices_have_r4_device_names():
    names = {}
    for r5, r4 in _r4_of("every_profile:comprehensive3d:True", "Device"):
        (profile,) = r5["meta"]["profile"]
        names.setdefault(profile.removeprefix(IG), []).append(r4["deviceName"])
        assert r4.get("version") == r5.get("version")
        assert "displayName" not in r4 and "meta" not in r4
    assert names == {
        "dicom-general-equipment": [[{"name": "Lesion Analyzer", "type": "model-name"}]],
        "dicom-participant-device": [[{"name": "CAD node", "type": "user-friendly-name"}]],
        "algorithm-identification": [[{"name": "Pipeline", "type": "user-friendly-name"}],
                                     [{"name": "NoduleFinder", "type": "user-friendly-name"}]],
    }
    algorithm = [r4 for r5, r4 in _r4_of("every_profile:comprehensive3d:True", "Device", "algorithm-identification")
                 if r5.get("property")]
    assert algorithm[0]["property"] == [{"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                                               "code": "111002", "display": "Algorithm Parameters"}]},
                                         "valueCode": [{"text": "t=0.5"}]}]


def test_device_types_beyond_the_first_go_to_an_extension(r4_definitions):
    families = [{"text": "CAD"}, {"text": "Segmentation"}]
    r5 = {"resourceType": "Device", "id": "d", "displayName": "x", "type": families}
    r4 = to_r4({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": r5}]}).bundle["entry"][0]["resource"]
    assert r4["type"] == families[0]
    assert r4["extension"] == [{"url": XVER + "Device.type", "valueCodeableConcept": families[1]}]
    assert check_resource(r4_definitions, r4) == []


def test_several_finding_sites_stay_on_one_body_structure():
    ((r5, r4),) = _r4_of("fidelity_report", "BodyStructure")
    liver, kidney = r5["includedStructure"]
    assert r4["location"] == liver["structure"] and "locationQualifier" not in r4
    assert r4["extension"] == [{"url": XVER + "BodyStructure.includedStructure", "extension": [
        {"url": "structure", "valueCodeableConcept": kidney["structure"]},
        {"url": "laterality", "valueCodeableConcept": kidney["laterality"]},
    ]}]
    assert r4["patient"] == r5["patient"] and r4["identifier"] == r5["identifier"]


def test_a_single_finding_site_with_laterality_is_location_and_qualifier():
    r5, r4 = _r4_of("every_profile:comprehensive3d:True", "BodyStructure")[0]
    (site,) = r5["includedStructure"]
    assert r4["location"] == site["structure"]
    assert r4["locationQualifier"] == [site["laterality"], *site.get("qualifier", [])]
    assert "extension" not in r4


def test_r5_only_observation_elements_become_extensions_and_unknown_ones_notes(r4_definitions):
    observation = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
                   "triggeredBy": [{"observation": {"reference": "urn:uuid:p"}, "type": "reflex"}],
                   "instantiatesCanonical": "http://example.org/ObservationDefinition/x",
                   "valueAttachment": {"url": "http://example.org/a.png"}}
    previous = {"resourceType": "Observation", "id": "p", "status": "final", "code": {"text": "y"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:o", "resource": observation}, {"fullUrl": "urn:uuid:p", "resource": previous}]}
    result = to_r4(bundle)
    r4 = result.bundle["entry"][0]["resource"]
    assert r4["extension"] == [
        {"url": XVER + "Observation.instantiates[x]", "valueCanonical": "http://example.org/ObservationDefinition/x"},
        {"url": XVER + "Observation.triggeredBy", "extension": [
            {"url": "observation", "valueReference": {"reference": "urn:uuid:p"}}, {"url": "type", "valueCode": "reflex"}]},
    ]
    assert [str(n) for n in result.notes] == ["document: FHIR R4: Observation o: Observation.valueAttachment has no R4 "
                                              "form; left out"]
    assert check_bundle(r4_definitions, result.bundle) == []


# --- ImagingSelection <-> Basic, property-based ----------------------------------------------

_TEXT = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
_UID = st.from_regex(r"\A[12](\.[1-9][0-9]{0,5}){2,6}\Z")
_PRIMITIVES = {
    "code": st.sampled_from(["available", "inactive", "point", "polyline", "circle", "ellipse", "ellipsoid"]),
    "instant": st.just("2024-03-01T10:15:00+00:00"),
    "id": _UID,
    "unsignedInt": st.integers(min_value=0, max_value=2**31 - 1),
    "string": _TEXT,
    "decimal": st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-1e6, max_value=1e6),
    "CodeableConcept": st.builds(lambda c, t: {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                                           "code": c}], "text": t}, _TEXT, _TEXT),
    "Coding": st.builds(lambda c: {"system": "urn:ietf:rfc:3986", "code": c}, _UID),
    "Reference": st.one_of(st.builds(lambda u: {"reference": f"urn:uuid:{u}"}, st.uuids()),
                           st.builds(lambda i: {"type": "ImagingStudy", "identifier": {"value": i}}, _TEXT)),
}
_PRIMITIVES["CodeableReference"] = st.one_of(
    st.fixed_dictionaries({"reference": _PRIMITIVES["Reference"]}),
    st.fixed_dictionaries({"concept": _PRIMITIVES["CodeableConcept"]}),
    st.fixed_dictionaries({"concept": _PRIMITIVES["CodeableConcept"], "reference": _PRIMITIVES["Reference"]}),
)


def _element_strategy(element: Element):
    if element.fhir_type is None:
        required = {c.name: _element_strategy(c) for c in element.children if c.name in ("uid", "regionType", "coordinate")}
        optional = {c.name: _element_strategy(c) for c in element.children if c.name not in required}
        one = st.fixed_dictionaries(required, optional=optional).filter(bool)
    else:
        one = _PRIMITIVES[element.fhir_type]
    return st.lists(one, min_size=1, max_size=3) if element.repeats else one


_SELECTIONS = st.builds(
    lambda body, identifiers, uid: {"resourceType": "ImagingSelection", "id": str(uid),
                                    "meta": {"profile": [IG + "image-region-2d"]}, **identifiers, **body},
    st.fixed_dictionaries({"status": _PRIMITIVES["code"], "code": _PRIMITIVES["CodeableConcept"]},
                          optional={e.name: _element_strategy(e) for e in ELEMENTS if e.name not in ("status", "code")}),
    st.fixed_dictionaries({}, optional={"identifier": st.lists(st.builds(lambda v: {"system": "urn:dicom:uid", "value": v},
                                                                                  _TEXT), min_size=1, max_size=2),
                                        "subject": _PRIMITIVES["Reference"]}),
    st.uuids(),
)


@settings(max_examples=150, deadline=None)
@given(selection=_SELECTIONS)
def test_every_imaging_selection_survives_the_basic_round_trip(selection, r4_definitions):
    original = copy.deepcopy(selection)
    basic = to_basic(selection)
    assert selection == original
    assert basic["code"] == BASIC_CODE and basic["id"] == selection["id"] and "meta" not in basic
    assert from_basic(basic) == _without_ig_profiles(selection)
    assert all(e["url"].startswith(XVER + "ImagingSelection.") for e in basic["extension"])
    references = [e for e in _references(basic) if e.startswith("urn:uuid:")]  # resolvable only in a Bundle
    errors = [e for e in check_resource(r4_definitions, basic) if not any(r in e for r in references)]
    assert errors == []


def test_an_unknown_selection_element_is_reported_not_dropped_silently():
    selection = {"resourceType": "ImagingSelection", "id": "s", "status": "available", "code": {"text": "x"},
                 "note": [{"text": "a future element"}]}
    with pytest.raises(ValueError, match="ImagingSelection.note"):
        to_basic(selection)
    result = to_r4({"resourceType": "Bundle", "type": "transaction", "entry": [{"fullUrl": "urn:uuid:s",
                                                                               "resource": selection}]})
    assert [str(n) for n in result.notes] == ["document: FHIR R4: ImagingSelection s: ImagingSelection.note has no "
                                              "R4 form; left out"]


def _r4_form_cases() -> dict[str, Dataset]:
    cases = sr_corpus()
    cases["key-objects"] = kos.key_object_selection([kos.KeyObject(sr.uid("r4-form-ct"))])
    cases["ct-dose"] = dose.ct_dose_report(accumulated=dose.ct_accumulated_dose())
    cases["projection-dose"] = dose.projection_dose_report(accumulated=[dose.accumulated_x_ray_dose(
        dap=("12", dose.ucum("Gy.m2")), dose_rp=("0.5", dose.GY))], events=[dose.projection_event()])
    return cases


@pytest.mark.parametrize("imaging_selection", ["basic", "omit"])
def test_r4_form_of_an_r5_result_is_what_mapping_for_r4_gives(imaging_selection: str) -> None:
    """``r4_form`` (used for Bundles mapped ahead for R5 when the server turns out to be R4)."""
    r5 = MappingOptions()
    r4 = MappingOptions(fhir_version="r4", r4_imaging_selection=imaging_selection)
    for name, ds in _r4_form_cases().items():
        r5_result = map_sr(ds, r5)
        r5_bytes = serialize(r5_result.bundle)
        try:
            direct = map_sr(ds, r4)
        except MissingContentItem:  # a KOS without its ImagingSelections: r4_form refuses it too
            with pytest.raises(MissingContentItem):
                r4_form(r5_result, r4)
            continue
        converted = r4_form(r5_result, r4)
        assert serialize(converted.bundle) == serialize(direct.bundle), name
        assert (converted.skipped, converted.kind, converted.predecessors) == \
            (direct.skipped, direct.kind, direct.predecessors), name
        assert serialize(r5_result.bundle) == r5_bytes, f"{name}: the R5 result was modified"
