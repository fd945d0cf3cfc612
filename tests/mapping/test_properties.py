"""Property tests for ``mapping.map_sr``: a damaged SR is refused with a ``MappingError`` or
mapped to a well-formed transaction Bundle; nothing else ever escapes.

One rich TID 1500 report (every value type and ImagingSelection source the mapping knows) is
built once; each example deep-copies it and damages one place: a content item found by walking
the tree, any nested code / reference item, or a top-level attribute.  The damage is the kind
real SRs arrive with: missing elements, values of the wrong VR, empty sequences, odd or
non-finite Graphic Data, unparsable Numeric Values, duplicated or reordered children, and
garbage in Patient ID, Study Instance UID, SOP Class UID, Content Date, the time-zone offset or
the character set.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, assume, currently_in_test_context, event, example, given, reject, settings
from hypothesis import strategies as st
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from mapping import MappingError, MappingOptions, MappingResult, Skipped, map_sr, serialize
from tests.support import sr_builders as sr

# --- The base report ---------------------------------------------------------------------------

PATIENT_NAME = "Secretname^Patricia"
PATIENT_ID = "PHI-ID-4711"
FRAME_OF_REFERENCE = sr.uid("properties:for")
SEGMENTATION = sr.uid("properties:seg")
COMMENT = sr.coded("121106", "DCM", "Comment")
MEASUREMENT_FAILURE = sr.coded("114006", "DCM", "Measurement failure")
MANUAL = sr.coded("125012", "DCM", "Manual")
PEAK_VALUE = sr.coded("126031", "DCM", "Peak Value Within ROI")
ROI_NUMBER = sr.coded("126045", "DCM", "ROI Number")  # not in TID 1410; only read as an ROI id
ALGORITHM_FAMILY_CAD = sr.coded("123456", "99TEST", "CAD")  # unknown designator on purpose


def _base_report() -> Dataset:
    """A TID 1500 report with every kind of content item the mapping reads."""
    (ct, ct_1), (_, ct_2), (_, ct_3) = sr.ct_image_refs(3, series="properties")
    planar = sr.measurement_group(
        "1410", tracking_identifier="Lesion P", session="Session 1",
        observation_datetime="20240301101600", method=MANUAL,
        finding_site=sr.finding_site_item(sr.LUNG, laterality=sr.RIGHT, modifier=sr.UPPER),
        algorithm=sr.algorithm_items("Finder", "2.0", parameters=["t=0.5"], family=ALGORITHM_FAMILY_CAD),
        items=[
            sr.scoord_item("POINT", [10, 20], sr.source_image(ct, ct_1), observation_uid=sr.uid("p:point")),
            sr.scoord_item("MULTIPOINT", [1, 2, 3, 4, 5, 6], sr.source_image(ct, ct_1, frames=[1])),
            sr.scoord_item("POLYLINE", [10.5, 20, 30.25, 20, 30.25, 40, 10.5, 20], sr.source_image(ct, ct_2)),
            sr.scoord_item("CIRCLE", [50, 50, 60, 50], sr.source_image(ct, ct_2)),
            sr.scoord_item("ELLIPSE", [0, 5, 10, 5, 5, 0, 5, 10], sr.source_image(ct, ct_3)),
            sr.image_item(sr.ILLUSTRATION_OF_ROI, sr.SECONDARY_CAPTURE, sr.uid("p:illustration"), frames=[1, 2]),
            sr.image_item(sr.VISUAL_EXPLANATION, sr.SECONDARY_CAPTURE, sr.uid("p:explanation")),
            sr.composite_item(sr.RWV_MAP, sr.RWV_MAPPING_STORAGE, sr.uid("p:rwv")),
            sr.image_item(sr.REFERENCED_SEGMENTATION_FRAME, sr.SEGMENTATION_STORAGE, SEGMENTATION, frames=[3, 4]),
        ],
        measurements=[
            sr.num_item(sr.LENGTH, 19.8, sr.MM, observation_uid=sr.uid("p:length"),
                        observation_datetime="20240301101700+0200"),
            sr.num_item(sr.AREA, 301.5, sr.MM2, children=[
                sr.scoord_item("POLYLINE", [1, 1, 2, 2, 3, 1], sr.source_image(ct, ct_3)),
                *sr.algorithm_items("Area tool", "1"),
                sr.code_item(sr.MEASUREMENT_METHOD, MANUAL, "HAS CONCEPT MOD"),
                sr.text_item(COMMENT, "not mapped", "HAS PROPERTIES"),
            ]),
            sr.num_item(sr.DIAMETER, None, sr.MM, qualifier=MEASUREMENT_FAILURE),
            sr.num_item(sr.VOLUME, "1e3", sr.MM3),
        ],
        qualitative=[
            sr.code_item(sr.MALIGNANCY, sr.HIGHLY_SUSPICIOUS, observation_uid=sr.uid("p:malignancy")),
            sr.text_item(COMMENT, "Spiculated margin."),
        ],
    )
    volumetric = sr.measurement_group(
        "1411", tracking_identifier="Lesion V", finding_site=sr.finding_site_item(sr.LUNG),
        items=[
            sr.image_item(sr.REFERENCED_SEGMENT, sr.SEGMENTATION_STORAGE, SEGMENTATION, segments=[1, 2]),
            sr.uidref_item(sr.SOURCE_SERIES_FOR_SEGMENTATION, sr.uid(f"series:{ct}")),
            sr.image_item(sr.SOURCE_IMAGE_FOR_SEGMENTATION, ct, ct_1),
            sr.image_item(sr.SOURCE_IMAGE_FOR_SEGMENTATION, ct, ct_2),
            sr.scoord3d_item("ELLIPSOID", [0, 0, 0, 20, 0, 0, 10, -8, 0, 10, 8, 0, 10, 0, -5, 10, 0, 5],
                             FRAME_OF_REFERENCE, concept=sr.VOLUME_SURFACE),
        ],
        measurements=[sr.num_item(sr.VOLUME, 2480.0, sr.MM3, observation_uid=sr.uid("v:volume"))],
    )
    regions_3d = sr.measurement_group(
        "1410", tracking_identifier="Lesion 3D", tracking_uid=None,
        items=[
            sr.scoord3d_item("POINT", [1, 2, 3], FRAME_OF_REFERENCE, observation_uid=sr.uid("3d:point")),
            sr.scoord3d_item("MULTIPOINT", [1, 2, 3, 4, 5, 6], FRAME_OF_REFERENCE),
            sr.scoord3d_item("POLYLINE", [0, 0, 0, 1, 1, 1], FRAME_OF_REFERENCE),
            sr.scoord3d_item("POLYGON", [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0], FRAME_OF_REFERENCE),
            sr.scoord3d_item("ELLIPSE", [0, 0, 0, 2, 0, 0, 1, -1, 0, 1, 1, 0], FRAME_OF_REFERENCE),
            sr.composite_item(sr.REGION_IN_SPACE, sr.RT_STRUCTURE_SET_STORAGE, sr.uid("3d:rtss")),
        ],
        measurements=[sr.num_item(sr.LENGTH, 3.0, sr.MM)],
    )
    # Region In Space needs an ROI identification child; add it by hand (no builder parameter).
    regions_3d.ContentSequence[-2].ContentSequence = [
        sr.num_item(ROI_NUMBER, 7, sr.UNITY, "HAS PROPERTIES"),
        sr.text_item(COMMENT, "ROI name", "HAS PROPERTIES"),
    ]
    derived = sr.derived_measurements([
        *sr.algorithm_items("Deriver", "0.9"),
        sr.num_item(PEAK_VALUE, 1.5, sr.SUV_BW, observation_uid=sr.uid("d:peak"), children=[
            sr.measurement_group("1410", tracking_identifier="Lesion D", relationship="INFERRED FROM",
                                 finding_site=sr.finding_site_item(sr.LUNG),
                                 measurements=[sr.num_item(sr.DIAMETER, 21.0, sr.MM)]),
        ]),
        sr.measurement_group("1501", tracking_identifier="Lesion D2",
                             measurements=[sr.num_item(sr.LENGTH, 4.0, sr.MM)]),
        sr.num_item(sr.AREA, 2.0, sr.MM2),
    ])
    qualitative = sr.report_qualitative([
        sr.text_item(COMMENT, "Follow-up CT in 3 months."),
        sr.code_item(sr.MALIGNANCY, sr.HIGHLY_SUSPICIOUS, observation_uid=sr.uid("q:malignancy")),
    ])
    return sr.measurement_report(
        [planar, volumetric, regions_3d], derived=derived, qualitative=qualitative,
        container_algorithm=sr.algorithm_items("Pipeline", "3.1"),
        sop_class_uid=sr.COMPREHENSIVE_3D_SR, sop_instance_uid=sr.uid("properties-sr"),
        patient_name=PATIENT_NAME, patient_id=PATIENT_ID, timezone_offset="+0100",
        device_observer_uid=sr.uid("properties:observer-device"), device_observer_name="Observer box",
        udi="(01)00643169007222(17)250101", preliminary_flag="FINAL",
    )


BASE = _base_report()

# --- Locating places in the base report ----------------------------------------------------------

# A place is a tuple of (tag, item index) steps from the dataset: () is the dataset itself.
Place = tuple[tuple[int, int], ...]
CONTENT_SEQUENCE = Tag(0x0040A730)


def _content_item_places(ds: Dataset, place: Place = ()) -> Iterator[Place]:
    """Every content item, root first: the dataset is the root CONTAINER."""
    yield place
    for index, child in enumerate(ds.get("ContentSequence", [])):
        yield from _content_item_places(child, (*place, (CONTENT_SEQUENCE, index)))


def _nested_places(ds: Dataset, place: Place = ()) -> Iterator[Place]:
    """Every dataset below ``ds`` in any sequence (content items, code items, SOP references)."""
    for elem in ds:
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value):
                inner = (*place, (elem.tag, index))
                yield inner
                yield from _nested_places(item, inner)


def _at(ds: Dataset, place: Place) -> Dataset:
    for tag, index in place:
        ds = ds[tag].value[index]
    return ds


def _show(place: Place) -> str:
    return "/".join(f"{pydicom.datadict.keyword_for_tag(tag) or tag}[{i}]" for tag, i in place) or "<dataset>"


CONTENT_ITEMS: list[Place] = list(_content_item_places(BASE))
NESTED_DATASETS: list[Place] = list(_nested_places(BASE))
ALL_DATASETS: list[Place] = [(), *NESTED_DATASETS]
TAGS_AT: dict[Place, list[int]] = {p: sorted(_at(BASE, p).keys()) for p in ALL_DATASETS}
SEQUENCE_TAGS_AT: dict[Place, list[int]] = {
    p: [t for t in tags if _at(BASE, p)[t].VR == "SQ"] for p, tags in TAGS_AT.items()
}
VALUE_TAGS_AT: dict[Place, list[int]] = {
    p: [t for t in tags if _at(BASE, p)[t].VR != "SQ"] for p, tags in TAGS_AT.items()
}
GRAPHIC_ITEMS = [p for p in CONTENT_ITEMS if "GraphicData" in _at(BASE, p)]
MEASURED_VALUES = [(*p, (Tag(0x0040A300), 0)) for p in CONTENT_ITEMS if _at(BASE, p).get("MeasuredValueSequence")]
PARENTS = [p for p in CONTENT_ITEMS if len(_at(BASE, p).get("ContentSequence", [])) > 1]
# Content-item elements worth naming in a targeted deletion (the brief's list, plus value elements).
KEY_ELEMENTS = ["ValueType", "ConceptNameCodeSequence", "MeasuredValueSequence", "GraphicData", "GraphicType",
                "ReferencedSOPSequence", "ContentSequence", "RelationshipType", "ConceptCodeSequence",
                "TextValue", "UID", "ReferencedFrameOfReferenceUID", "ContentTemplateSequence"]

# --- Mutations -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """One change at one place; ``repr`` is what Hypothesis prints for a failing example."""

    what: str
    place: Place
    change: Callable[[Dataset], None]

    def apply(self, ds: Dataset) -> None:
        self.change(_at(ds, self.place))

    def __repr__(self) -> str:
        return f"Mutation({self.what} at {_show(self.place)})"


def _delete(tag: int) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        del ds[tag]
    return change


def _put(tag: int, vr: str, value: Any) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        ds[tag] = DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE)
    return change


def _raw(tag: int, vr: str, data: bytes) -> Callable[[Dataset], None]:
    """Undecoded bytes, as ``dcmread`` leaves an element until it is first touched."""
    def change(ds: Dataset) -> None:
        ds[tag] = RawDataElement(Tag(tag), vr, len(data), data, 0, False, True)
    return change


def _set_value(tag: int, value: Any) -> Callable[[Dataset], None]:
    """Keep the element's VR, swap the value for one it should never hold."""
    def change(ds: Dataset) -> None:
        try:
            ds[tag] = DataElement(tag, ds[tag].VR, value, validation_mode=pydicom_config.IGNORE)
        except (AttributeError, TypeError, ValueError):
            reject()  # pydicom refuses to even build such an element (e.g. PN from an int)
    return change


garbage_text = st.one_of(
    st.sampled_from(["", " ", "\\", "abc", "1e999", "-", "NaN", "\x00", "é" * 70, "1.2.3.", "..", "+9999"]),
    st.text(max_size=24),
)
garbage_bytes = st.binary(max_size=24)
wrong_vr_values = st.one_of(
    st.tuples(st.just("LO"), garbage_text),  # a string, maybe where a sequence belongs
    st.tuples(st.just("SQ"), st.builds(lambda: [Dataset()])),  # an empty item where a string belongs
    st.tuples(st.just("SQ"), st.builds(lambda: [sr.coded("x", "y", "z")])),  # an unrelated code item
    st.tuples(st.just("SQ"), st.builds(list)),
    st.tuples(st.just("OB"), garbage_bytes),
    st.tuples(st.just("UN"), garbage_bytes),
    st.tuples(st.just("US"), st.integers(0, 65535)),
    st.tuples(st.just("SL"), st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3)),
    st.tuples(st.just("FD"), st.floats(allow_nan=True, allow_infinity=True)),
    st.tuples(st.just("DS"), st.sampled_from(["1", "1\\2", "-0", "1e5"])),
    st.tuples(st.just("UI"), st.sampled_from(["1.2.3", "not-a-uid", "1" * 80])),
)
wrong_python_values = st.one_of(
    st.none(), garbage_text, garbage_bytes, st.integers(), st.floats(),
    st.lists(garbage_text, max_size=3), st.builds(lambda: [Dataset()]), st.builds(Dataset),
)


def _tag_at(place_strategy: st.SearchStrategy[Place], tags: dict[Place, list[int]]) -> st.SearchStrategy:
    return place_strategy.filter(lambda p: tags[p]).flatmap(
        lambda p: st.tuples(st.just(p), st.sampled_from(tags[p])))


any_place = st.sampled_from(ALL_DATASETS)
item_place = st.sampled_from(CONTENT_ITEMS)


@st.composite
def deletions(draw: st.DrawFn) -> Mutation:
    """Delete any element of any dataset in the tree, or a named one of a content item."""
    if draw(st.booleans()):
        place, tag = draw(_tag_at(any_place, TAGS_AT))
    else:
        keyword = draw(st.sampled_from(KEY_ELEMENTS))
        place = draw(st.sampled_from([p for p in CONTENT_ITEMS if keyword in _at(BASE, p)]))
        tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    return Mutation(f"delete {pydicom.datadict.keyword_for_tag(tag) or Tag(tag)}", place, _delete(tag))


@st.composite
def wrong_vr_replacements(draw: st.DrawFn) -> Mutation:
    """Replace an element with one of another VR (string for sequence, sequence for string, bytes)."""
    place, tag = draw(_tag_at(any_place, TAGS_AT))
    vr, value = draw(wrong_vr_values)
    return Mutation(f"{pydicom.datadict.keyword_for_tag(tag) or Tag(tag)} := {vr} {value!r:.60}", place,
                    _put(tag, vr, value))


@st.composite
def wrong_value_replacements(draw: st.DrawFn) -> Mutation:
    """Keep the VR but store a Python value of the wrong kind (what a careless writer leaves)."""
    place, tag = draw(_tag_at(any_place, VALUE_TAGS_AT))
    value = draw(wrong_python_values)
    return Mutation(f"{pydicom.datadict.keyword_for_tag(tag) or Tag(tag)}.value := {value!r:.60}", place,
                    _set_value(tag, value))


@st.composite
def emptied_sequences(draw: st.DrawFn) -> Mutation:
    place, tag = draw(_tag_at(any_place, SEQUENCE_TAGS_AT))
    return Mutation(f"empty {pydicom.datadict.keyword_for_tag(tag)}", place, _put(tag, "SQ", []))


finite_or_not = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 3.4e38, -3.4e38, 1e300, 5e-324, -0.0]),
)


@st.composite
def graphic_data_mutations(draw: st.DrawFn) -> Mutation:
    """Graphic Data of odd count, huge, NaN or infinite; or a Graphic Type that is no type."""
    place = draw(st.sampled_from(GRAPHIC_ITEMS))
    base_count = len(_at(BASE, place).GraphicData)
    kind = draw(st.sampled_from(["odd", "values", "huge-list", "type"]))
    if kind == "odd":
        values = draw(st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=21).filter(lambda v: len(v) % 2))
    elif kind == "values":
        values = draw(st.lists(finite_or_not, min_size=base_count, max_size=base_count))
    elif kind == "huge-list":
        values = [float(i % 512) for i in range(draw(st.sampled_from([0, 2, 3, 4096, 40_000])))]
    else:
        graphic_type = draw(st.sampled_from(["", "polyline", "POLYGON", "ELLIPSOID", "POINT ", "??", "POINT\\CIRCLE"]))
        return Mutation(f"GraphicType := {graphic_type!r}", place, _put(0x00700023, "CS", graphic_type))
    return Mutation(f"GraphicData := {len(values)} values {values[:4]!r}", place, _put(0x00700022, "FL", values))


@st.composite
def numeric_value_mutations(draw: st.DrawFn) -> Mutation:
    """Numeric Value (DS) that is no number, or a Floating Point Value that is not finite."""
    place = draw(st.sampled_from(MEASURED_VALUES))
    if draw(st.booleans()):
        text = draw(st.one_of(
            st.sampled_from(["abc", "", " ", "1,5", "1e999", "-1e999", "inf", "-Infinity", "nan", "0x10",
                             "١٢", "1\\2", "--1", "1e", ".", "1" * 40, "+", "1_000", "\u2003"]),
            st.text(max_size=16),
        ))
        if draw(st.booleans()):
            return Mutation(f"raw NumericValue {text!r}", place, _raw(0x0040A30A, "DS", text.encode("utf-8", "replace")))
        return Mutation(f"NumericValue := {text!r}", place, _put(0x0040A30A, "LO", text))
    number = draw(finite_or_not)
    return Mutation(f"FloatingPointValue := {number!r}", place, _put(0x0040A161, "FD", number))


@st.composite
def child_order_mutations(draw: st.DrawFn) -> Mutation:
    """Duplicate one child of a content item, or put its children in another order."""
    place = draw(st.sampled_from(PARENTS))
    count = len(_at(BASE, place).ContentSequence)
    if draw(st.booleans()):
        index = draw(st.integers(0, count - 1))
        at = draw(st.integers(0, count))

        def duplicate(ds: Dataset) -> None:
            ds.ContentSequence.insert(at, copy.deepcopy(ds.ContentSequence[index]))
        return Mutation(f"duplicate child {index + 1} at {at + 1}", place, duplicate)
    order = draw(st.permutations(range(count)))

    def reorder(ds: Dataset) -> None:
        ds.ContentSequence = [ds.ContentSequence[i] for i in order]
    return Mutation(f"reorder children {order}", place, reorder)


TOP_LEVEL = ["PatientID", "StudyInstanceUID", "SOPClassUID", "SOPInstanceUID", "ContentDate", "ContentTime",
             "TimezoneOffsetFromUTC", "SpecificCharacterSet", "SeriesInstanceUID", "CompletionFlag",
             "PreliminaryFlag", "InstanceCreationDate", "StudyDate", "Manufacturer", "DeviceUID",
             "SoftwareVersions", "AccessionNumber", "IssuerOfPatientIDQualifiersSequence", "UDISequence",
             "CurrentRequestedProcedureEvidenceSequence", "ContentTemplateSequence", "ConceptNameCodeSequence"]
top_level_values = st.one_of(
    st.none(),  # missing
    garbage_text,
    st.sampled_from(["20241332", "2024", "19000101", "99999999", "+2500", "-0060", "+01:00", "UTC",
                     "ISO_IR 999", "ISO 2022 IR 87", "GB18030", "ISO_IR 100\\ISO_IR 192",
                     "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.59"]),
    st.lists(st.sampled_from(["a", "1.2", "20240101"]), min_size=2, max_size=3),
)


@st.composite
def top_level_mutations(draw: st.DrawFn) -> Mutation:
    """A document-level attribute missing, garbage, multi-valued or of the wrong VR."""
    keyword = draw(st.sampled_from(TOP_LEVEL))
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    if draw(st.integers(0, 4)) == 0:
        vr, value = draw(wrong_vr_values)
        return Mutation(f"{keyword} := {vr} {value!r:.60}", (), _put(tag, vr, value))
    value = draw(top_level_values)
    if value is None:
        return Mutation(f"delete {keyword}", (), lambda ds: ds.pop(tag, None))
    vr = pydicom.datadict.dictionary_VR(tag)
    if vr == "SQ":
        vr = "LO"
    return Mutation(f"{keyword} := {value!r:.60}", (), _put(tag, vr, value))


@st.composite
def raw_garbage(draw: st.DrawFn) -> Mutation:
    """An element whose undecoded bytes are garbage for its VR (as read from a damaged file)."""
    place, tag = draw(_tag_at(any_place, TAGS_AT))
    vr = _at(BASE, place)[tag].VR
    data = draw(st.one_of(garbage_bytes, st.sampled_from([b"\x00", b"\xff" * 3, b"\xfe\xff\x00\xe0\xff\xff\xff\xff"])))
    return Mutation(f"raw {vr} {pydicom.datadict.keyword_for_tag(tag) or Tag(tag)} := {data!r:.60}", place,
                    _raw(tag, vr, data))


structural_mutations = st.one_of(deletions(), emptied_sequences(), child_order_mutations())
value_mutations = st.one_of(wrong_vr_replacements(), wrong_value_replacements(), graphic_data_mutations(),
                            numeric_value_mutations(), top_level_mutations())
any_mutation = st.one_of(structural_mutations, value_mutations)

# --- What every outcome must satisfy -----------------------------------------------------------


def _no_constant(name: str) -> float:
    raise AssertionError(f"Bundle JSON holds {name}, which is not JSON")


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "reference" and isinstance(inner, str):
                yield inner
            else:
                yield from _references(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _references(inner)


def assert_well_formed(result: MappingResult) -> None:
    """A transaction Bundle whose entries all have a urn:uuid fullUrl and a request, whose
    literal references (``Type/id`` or a fullUrl) all resolve inside it, to an earlier entry."""
    bundle = result.bundle
    assert isinstance(bundle, dict)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "transaction"
    entries = bundle["entry"]
    assert isinstance(entries, list) and entries
    full_urls = [entry["fullUrl"] for entry in entries]
    assert all(isinstance(url, str) and url.startswith("urn:uuid:") for url in full_urls)
    assert len(set(full_urls)) == len(full_urls), "duplicate fullUrl"
    position = {}
    for index, entry in enumerate(entries):
        assert isinstance(entry["request"], dict)
        assert entry["request"]["method"] in ("PUT", "POST")
        assert isinstance(entry["request"]["url"], str) and entry["request"]["url"]
        resource = entry["resource"]
        assert isinstance(resource["resourceType"], str)
        position[entry["fullUrl"]] = index
        if "id" in resource:
            position[f"{resource['resourceType']}/{resource['id']}"] = index
    for index, entry in enumerate(entries):
        references = set(_references(entry["resource"]))
        dangling = references - set(position)
        assert not dangling, f"references to entries not in the Bundle: {sorted(dangling)}"
        later = sorted(r for r in references if position[r] > index)
        assert not later, f"entry {index} references entries that come after it: {later}"
    json.loads(serialize(bundle), parse_constant=_no_constant)  # strict JSON: no NaN/Infinity
    assert all(isinstance(note, Skipped) and isinstance(note.path, str) for note in result.skipped)


def assert_no_patient_data(text: str) -> None:
    assert PATIENT_NAME.split("^")[0] not in text and PATIENT_ID not in text, "patient data in a message"


def _event(outcome: str) -> None:
    """Count outcomes for ``--hypothesis-show-statistics`` (mapped vs refused, by error type)."""
    if currently_in_test_context():
        event(outcome)


def map_or_refuse(ds: Dataset, options: MappingOptions | None = None) -> MappingResult | None:
    """Map ``ds``: a well-formed result, or None when it was refused with a MappingError."""
    try:
        result = map_sr(ds, options)
    except MappingError as exc:
        _event(f"refused: {type(exc).__name__}")
        assert str(exc), "a MappingError must say what is wrong"
        assert_no_patient_data(str(exc))
        return None
    _event("mapped")
    assert_well_formed(result)
    for note in result.skipped:
        assert_no_patient_data(str(note))
    return result


def mutated(*mutations: Mutation) -> Dataset:
    """A fresh copy of the base report with the mutations applied in order.

    An example is rejected when a mutation cannot be applied: its place was removed by an
    earlier one, or pydicom will not hold the value in memory (then no SR can carry it).
    """
    ds = copy.deepcopy(BASE)
    for mutation in mutations:
        try:
            mutation.apply(ds)
        except (KeyError, IndexError, TypeError, ValueError, OverflowError, AttributeError):
            reject()
    return ds


def budget(examples: int) -> settings:
    """Bounded settings: the whole file runs in well under a minute."""
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# --- Part 10 helpers ---------------------------------------------------------------------------------


def _read_back(ds: Dataset) -> Dataset:
    """``ds`` written as Part 10 and read again; the example is rejected if pydicom refuses either."""
    try:
        return pydicom.dcmread(BytesIO(sr.to_part10_bytes(ds)))
    except Exception:  # noqa: BLE001 - pydicom refusing to write/read it is not the mapper's business
        reject()


def _decoded(data: bytes) -> Dataset:
    """``data`` read with every element decoded by pydicom (no raw Content Sequence left)."""
    ds = pydicom.dcmread(BytesIO(data))
    ds.walk(lambda _ds, _elem: None)
    return ds


BASE_PART10 = sr.to_part10_bytes(sr.with_undefined_lengths(copy.deepcopy(BASE)))
# Preamble + "DICM" (132 bytes), then (0002,0000) UL File Meta Information Group Length.
BODY_START = 132 + 12 + int.from_bytes(BASE_PART10[140:144], "little")
# Offset of the 2-byte length of (0008,0016) SOP Class UID (explicit VR: tag, "UI", length).
SOP_CLASS_UID_LENGTH = BASE_PART10.index(b"\x08\x00\x16\x00UI", BODY_START) + 6


def _content_path(place: Place) -> str:
    """The SR content-item path ("1.5.1.4") of the content item at or above ``place``."""
    return ".".join(["1", *(str(index + 1) for tag, index in place if tag == CONTENT_SEQUENCE)])


def _item_with(observation_uid: str) -> Place:
    return next(p for p in CONTENT_ITEMS if _at(BASE, p).get("ObservationUID") == observation_uid)


REPORT_COMMENT = next(p for p in CONTENT_ITEMS if _at(BASE, p).get("TextValue") == "Follow-up CT in 3 months.")
REPORT_MALIGNANCY_CODE = (*_item_with(sr.uid("q:malignancy")), (Tag(0x0040A168), 0))

CODE_VALUE_IS_A_SEQUENCE = Mutation("CodeValue := SQ [code item]", REPORT_MALIGNANCY_CODE,
                                    _put(0x00080100, "SQ", [sr.coded("x", "y", "z")]))
TEXT_VALUE_IS_A_SEQUENCE = Mutation("TextValue := SQ [code item]", REPORT_COMMENT,
                                    _put(0x0040A160, "SQ", [sr.coded("x", "y", "z")]))
# Whitespace outside the DS repertoire: pydicom decodes an invalid DS with the dataset's
# character set (UTF-8: an em-space, which Decimal() would strip), the raw reader as Latin-1;
# an LO keeps its leading blanks in pydicom. Both readers must refuse the value alike.
NUMERIC_VALUE_WITH_EM_SPACE = Mutation("raw NumericValue '1\\u2003'", MEASURED_VALUES[0],
                                       _raw(0x0040A30A, "DS", "1\u2003".encode("utf-8")))
NUMERIC_VALUE_LO_WITH_TAB = Mutation("NumericValue := '\\t1'", MEASURED_VALUES[0], _put(0x0040A30A, "LO", "\t1"))
# An empty value of a binary VR: pydicom reads it as None, and so must the raw reader.
RELATIONSHIP_TYPE_EMPTY_OB = Mutation("RelationshipType := OB b''", ((Tag(0x0040A730), 0),), _put(0x0040A010, "OB", b""))

# --- Tests -------------------------------------------------------------------------------------------


class TestBaseReport:
    def test_base_report_maps_every_kind_of_item(self) -> None:
        result = map_or_refuse(copy.deepcopy(BASE))
        assert result is not None
        profiles = {p.rsplit("/", 1)[-1] for e in result.bundle["entry"]
                    for p in e["resource"].get("meta", {}).get("profile", [])}
        assert {"imaging-measurement-group", "imaging-measurement", "imaging-qualitative-evaluation",
                "derived-imaging-measurement", "image-region-2d", "image-region-3d", "volume-surface",
                "illustration-of-roi", "visual-explanation", "real-world-value-map", "referenced-segment",
                "referenced-segmentation-frame", "source-image-for-segmentation", "source-sr-content-item",
                "algorithm-identification", "dicom-general-equipment", "dicom-participant-device",
                "dicom-sr-finding-site", "dicom-participant-person"} <= profiles

    def test_walk_finds_content_items_and_nested_datasets(self) -> None:
        value_types = {_at(BASE, p).get("ValueType") for p in CONTENT_ITEMS}
        assert {"CONTAINER", "NUM", "CODE", "TEXT", "UIDREF", "PNAME", "IMAGE", "COMPOSITE", "SCOORD",
                "SCOORD3D"} <= value_types
        assert len(NESTED_DATASETS) > len(CONTENT_ITEMS) > 80
        assert {_at(BASE, p).GraphicType for p in GRAPHIC_ITEMS} >= {
            "POINT", "MULTIPOINT", "POLYLINE", "CIRCLE", "ELLIPSE", "POLYGON", "ELLIPSOID"}

    def test_base_report_read_from_part10_maps_like_the_dataset(self) -> None:
        in_memory = map_or_refuse(copy.deepcopy(BASE))
        from_file = map_or_refuse(pydicom.dcmread(BytesIO(BASE_PART10)))
        assert in_memory is not None and from_file is not None
        assert from_file.bundle == in_memory.bundle


class TestMutatedReportsRaiseOnlyMappingError:
    @budget(40)
    @given(mutation=deletions())
    def test_deleted_element(self, mutation: Mutation) -> None:
        map_or_refuse(mutated(mutation))

    @budget(30)
    @given(mutation=wrong_vr_replacements())
    def test_element_of_the_wrong_vr(self, mutation: Mutation) -> None:
        map_or_refuse(mutated(mutation))

    @budget(20)
    @given(mutation=wrong_value_replacements())
    def test_value_of_the_wrong_python_type(self, mutation: Mutation) -> None:
        map_or_refuse(mutated(mutation))

    @budget(15)
    @given(mutation=emptied_sequences())
    def test_emptied_sequence(self, mutation: Mutation) -> None:
        map_or_refuse(mutated(mutation))

    @budget(25)
    @given(mutation=graphic_data_mutations())
    def test_malformed_graphic_data(self, mutation: Mutation) -> None:
        map_or_refuse(mutated(mutation))

    @budget(20)
    @given(mutation=numeric_value_mutations())
    def test_unparsable_numeric_value(self, mutation: Mutation) -> None:
        map_or_refuse(mutated(mutation))

    @budget(15)
    @given(mutation=child_order_mutations())
    def test_duplicated_or_reordered_children(self, mutation: Mutation) -> None:
        map_or_refuse(mutated(mutation))

    @budget(25)
    @given(mutation=top_level_mutations())
    def test_document_attribute_missing_or_garbage(self, mutation: Mutation) -> None:
        map_or_refuse(mutated(mutation))

    @budget(20)
    @given(mutations=st.lists(any_mutation, min_size=2, max_size=4))
    def test_several_mutations_at_once(self, mutations: list[Mutation]) -> None:
        map_or_refuse(mutated(*mutations))

    @budget(20)
    @given(mutation=raw_garbage())
    @example(mutation=Mutation("raw FL GraphicData := 7 bytes", GRAPHIC_ITEMS[0], _raw(0x00700022, "FL", b"\0" * 7)))
    def test_undecodable_raw_element(self, mutation: Mutation) -> None:
        map_or_refuse(mutated(mutation))


class TestPart10RoundTrip:
    """What ``dcmread`` hands the mapper: elements left undecoded until first touched."""

    @budget(25)
    @given(mutation=any_mutation)
    def test_mutated_report_read_back_from_part10(self, mutation: Mutation) -> None:
        map_or_refuse(_read_back(mutated(mutation)))

    @budget(20)
    @given(mutation=any_mutation)
    @example(mutation=TEXT_VALUE_IS_A_SEQUENCE)
    @example(mutation=NUMERIC_VALUE_WITH_EM_SPACE)
    @example(mutation=NUMERIC_VALUE_LO_WITH_TAB)
    @example(mutation=RELATIONSHIP_TYPE_EMPTY_OB)
    def test_raw_and_decoded_content_sequence_map_alike(self, mutation: Mutation) -> None:
        """The raw Content Sequence reader and pydicom's decoding give the same Bundle."""
        data = sr.to_part10_bytes(_read_back(mutated(mutation)))
        from_raw = map_or_refuse(pydicom.dcmread(BytesIO(data)))
        from_decoded = map_or_refuse(_decoded(data))
        assert (from_raw is None) == (from_decoded is None)
        if from_raw is not None:
            assert from_raw.bundle == from_decoded.bundle
            assert [n.path for n in from_raw.skipped] == [n.path for n in from_decoded.skipped]

    @budget(25)
    @given(corruptions=st.lists(st.tuples(st.integers(BODY_START, len(BASE_PART10) - 1),
                                          st.binary(min_size=1, max_size=4)), min_size=1, max_size=4))
    @example(corruptions=[(SOP_CLASS_UID_LENGTH + 1, b"\x04")])
    def test_corrupted_bytes(self, corruptions: list[tuple[int, bytes]]) -> None:
        """Bytes overwritten anywhere after the file meta (lengths, tags, VRs, values)."""
        buffer = bytearray(BASE_PART10)
        for offset, chunk in corruptions:
            buffer[offset:offset + len(chunk)] = chunk
        try:
            ds = pydicom.dcmread(BytesIO(bytes(buffer)))
        except Exception:  # noqa: BLE001 - a file pydicom cannot open never reaches the mapper
            reject()
        map_or_refuse(ds)


class TestDeterminism:
    @budget(20)
    @given(mutation=structural_mutations)
    def test_same_dataset_twice_gives_equal_bundles_and_is_not_modified(self, mutation: Mutation) -> None:
        ds = mutated(mutation)
        before = copy.deepcopy(ds)
        first = map_or_refuse(ds)
        assume(first is not None)
        second = map_sr(ds)
        assert second == first
        assert serialize(second.bundle) == serialize(first.bundle)
        assert ds == before, "map_sr modified its input"

    @budget(20)
    @given(mutation=structural_mutations)
    def test_put_and_conditional_modes_key_the_same_resources(self, mutation: Mutation) -> None:
        put = map_or_refuse(mutated(mutation), MappingOptions(write_mode="put"))
        assume(put is not None)
        conditional = map_or_refuse(mutated(mutation), MappingOptions(write_mode="conditional"))
        assert conditional is not None

        put_entries, conditional_entries = put.bundle["entry"], conditional.bundle["entry"]
        assert len(put_entries) == len(conditional_entries)
        for entry in put_entries:
            resource = entry["resource"]
            assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
            assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
        full_urls = {e["fullUrl"] for e in conditional_entries}
        for put_entry, entry in zip(put_entries, conditional_entries, strict=True):
            resource, request = entry["resource"], entry["request"]
            assert "id" not in resource
            assert request["method"] == "POST" and request["url"] == resource["resourceType"]
            keys = {f"identifier={i['system']}|{i['value']}" for i in resource["identifier"] if "system" in i}
            assert request["ifNoneExist"] in keys
            key_value = request["ifNoneExist"].split("|", 1)[1]
            # The same identity as the PUT id (or the resource's natural identifier) ...
            assert key_value == put_entry["fullUrl"] or not key_value.startswith("urn:uuid:")
            # ... and never a fullUrl string, which some servers rewrite inside a transaction.
            assert key_value not in full_urls
        assert put.skipped == conditional.skipped
        update = map_or_refuse(mutated(mutation), MappingOptions(write_mode="conditional-update"))
        assert update is not None
        for entry, posted in zip(update.bundle["entry"], conditional_entries, strict=True):
            assert (entry["fullUrl"], entry["resource"]) == (posted["fullUrl"], posted["resource"])
            assert entry["request"]["method"] == "PUT"
            assert entry["request"]["url"].startswith(f"{entry['resource']['resourceType']}?identifier=")
        assert update.skipped == put.skipped


def _part10_with_short_graphic_data() -> bytes:
    """The base report as Part 10, its first SCOORD's Graphic Data (FL) cut to 6 bytes (1.5 floats)."""
    header = b"\x70\x00\x22\x00FL\x08\x00"  # (0070,0022) FL, 8 bytes: the POINT [10, 20]
    at = BASE_PART10.index(header)
    return BASE_PART10[:at] + b"\x70\x00\x22\x00FL\x06\x00" + BASE_PART10[at + 8:at + 14] + BASE_PART10[at + 16:]


class TestUndecodableValues:
    """Deterministic reproducers: a value whose bytes do not fit its VR skips only its content item."""

    def test_graphic_data_not_a_whole_number_of_floats_in_memory(self) -> None:
        place = GRAPHIC_ITEMS[0]
        result = map_or_refuse(mutated(Mutation("raw FL GraphicData := 6 bytes", place,
                                                _raw(0x00700022, "FL", b"\0" * 6))))
        assert result is not None
        assert _content_path(place) in {note.path for note in result.skipped}

    def test_graphic_data_not_a_whole_number_of_floats_from_part10(self) -> None:
        result = map_or_refuse(pydicom.dcmread(BytesIO(_part10_with_short_graphic_data())))
        assert result is not None
        assert _content_path(GRAPHIC_ITEMS[0]) in {note.path for note in result.skipped}

    @pytest.mark.parametrize("keyword, vr, data", [
        ("NumericValue", "DS", b"abc "),
        ("ReferencedFrameNumber", "IS", b"x?"),
        ("ReferencedSegmentNumber", "US", b"\x01"),
    ])
    def test_undecodable_value(self, keyword: str, vr: str, data: bytes) -> None:
        place = next(p for p in NESTED_DATASETS if keyword in _at(BASE, p))
        tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
        result = map_or_refuse(mutated(Mutation(f"raw {keyword}", place, _raw(tag, vr, data))))
        assert result is not None
        assert _content_path(place) in {note.path for note in result.skipped}


class TestSequenceWhereTextBelongs:
    """A sequence in a text element reads as "no value", as an absent element does."""

    def test_code_value_that_is_a_sequence_maps_like_an_absent_code_value(self) -> None:
        absent = map_or_refuse(mutated(Mutation("delete CodeValue", REPORT_MALIGNANCY_CODE, _delete(0x00080100))))
        as_sequence = map_or_refuse(mutated(CODE_VALUE_IS_A_SEQUENCE))
        assert absent is not None and as_sequence is not None
        assert serialize(as_sequence.bundle) == serialize(absent.bundle)

    def test_text_value_that_is_a_sequence_maps_like_an_absent_text_value(self) -> None:
        absent = map_or_refuse(mutated(Mutation("delete TextValue", REPORT_COMMENT, _delete(0x0040A160))))
        as_sequence = map_or_refuse(mutated(TEXT_VALUE_IS_A_SEQUENCE))
        assert absent is not None and as_sequence is not None
        assert serialize(as_sequence.bundle) == serialize(absent.bundle)

    def test_no_python_object_repr_reaches_the_bundle_from_part10(self) -> None:
        data = sr.to_part10_bytes(mutated(TEXT_VALUE_IS_A_SEQUENCE))
        result = map_or_refuse(pydicom.dcmread(BytesIO(data)))
        assert result is not None
        assert b"object at 0x" not in serialize(result.bundle)


class TestMessagesCarryNoPatientData:
    """Errors name the attribute and the path, never the values around them (STYLE: no PHI)."""

    @pytest.mark.parametrize("keyword", ["SOPClassUID", "StudyInstanceUID"])
    def test_garbage_uid_holding_patient_data_is_not_echoed(self, keyword: str) -> None:
        ds = copy.deepcopy(BASE)
        setattr(ds, keyword, f"1.2.3 PN {PATIENT_NAME} LO {PATIENT_ID}")
        with pytest.raises(MappingError) as refused:
            map_sr(ds)
        assert_no_patient_data(str(refused.value))

    def test_sop_class_uid_length_running_into_the_patient_module(self) -> None:
        """One corrupted length byte: the SOP Class UID swallows the next ~1 KB of the file."""
        buffer = bytearray(BASE_PART10)
        buffer[SOP_CLASS_UID_LENGTH + 1] = 0x04
        with pytest.raises(MappingError) as refused:
            map_sr(pydicom.dcmread(BytesIO(bytes(buffer))))
        assert "\n" not in str(refused.value)
        assert_no_patient_data(str(refused.value))
