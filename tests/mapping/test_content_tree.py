"""Reading the content tree: the fast raw reader agrees with pydicom, leniently."""

from __future__ import annotations

import copy
from io import BytesIO

import pydicom
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import PersonName

from mapping import MappingError, map_sr, serialize
from mapping.content_tree import read_content_tree
from mapping.raw_items import RawItem, RawParseError, parse_sequence
from tests.support import sr_builders as sr
from tests.support.conformance import SAMPLES, require_shared
from tests.support.report_fixtures import every_profile_report


def encode(ds, *, implicit=False, undefined_lengths=False) -> bytes:
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    if undefined_lengths:
        def mark(dataset, element):
            if element.VR == "SQ":
                element.value.is_undefined_length = True
                for item in element.value:
                    item.is_undefined_length_sequence_item = True
        ds.walk(mark)
    out = BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def both_ways(data: bytes):
    """(tree via the raw reader, tree via pydicom's decoded Content Sequence)."""
    fast = pydicom.dcmread(BytesIO(data))
    slow = pydicom.dcmread(BytesIO(data))
    slow.ContentSequence  # noqa: B018 - decode it, so the raw reader steps aside
    skipped_fast, skipped_slow = [], []
    return (read_content_tree(fast, skipped_fast), skipped_fast), (read_content_tree(slow, skipped_slow), skipped_slow)


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("undefined_lengths", [False, True], ids=["defined", "undefined"])
@pytest.mark.parametrize("charset", ["ISO_IR 192", "ISO_IR 100"])
def test_raw_reader_gives_the_same_tree_as_pydicom(implicit, undefined_lengths, charset):
    report = every_profile_report()
    report.SpecificCharacterSet = charset
    report.ContentSequence[-1].ContentSequence[0].TextValue = "Läsion ö" + (" 肺" if charset == "ISO_IR 192" else "")
    data = encode(report, implicit=implicit, undefined_lengths=undefined_lengths)
    (fast, fast_skipped), (slow, slow_skipped) = both_ways(data)
    assert fast == slow
    assert fast_skipped == slow_skipped
    assert len(fast.children) == len(report.ContentSequence)
    assert serialize(map_sr(pydicom.dcmread(BytesIO(data))).bundle) == serialize(
        map_sr(pydicom.dcmread(BytesIO(data), force=True)).bundle)


def test_identical_items_are_read_once_and_stay_apart_from_their_neighbours():
    # Two measurement groups name the same concepts (one code item, bytes alike): the raw
    # reader hands out one item for both, and what is derived from it is derived once.
    report = sr.measurement_report([sr.measurement_group(tracking_identifier="Lesion 1"),
                                    sr.measurement_group(tracking_identifier="Lesion 2")])
    raw = pydicom.dcmread(BytesIO(encode(report))).get_item(0x0040A730).value
    items = parse_sequence(raw, implicit_vr=False, encodings=("iso8859",))
    groups = items[-1].value(0x0040A730)
    first, second = groups[0].value(0x0040A043)[0], groups[1].value(0x0040A043)[0]
    assert first is second
    reads = []

    def code_value(item):
        reads.append(item)
        return item.value(0x00080100)

    assert first.derived(code_value) == second.derived(code_value) == "125007"
    assert reads == [first]
    # The groups differ (their tracking identifiers): two items, and their texts stay their own.
    assert groups[0] is not groups[1]
    texts = [[child.value(0x0040A160) for child in group.value(0x0040A730)] for group in groups]
    assert "Lesion 1" in texts[0] and "Lesion 2" in texts[1]
    assert "Lesion 2" not in texts[0]


def test_raw_reader_agrees_on_the_real_samples():
    for path in sorted(require_shared(SAMPLES).glob("*.dcm")):
        (fast, fast_skipped), (slow, slow_skipped) = both_ways(path.read_bytes())
        assert fast == slow, path.name
        assert fast_skipped == slow_skipped, path.name


def test_paths_values_and_types():
    group = sr.measurement_group("1410", tracking_identifier="T", measurements=[
        sr.num_item(sr.LENGTH, "12.50", sr.MM, observation_uid=sr.uid("n"), observation_datetime="20240101120000")])
    (tree, skipped), _ = both_ways(sr.to_part10_bytes(sr.measurement_report([group])))
    num = next(c for c in tree.children[4].children[0].children if c.value_type == "NUM")
    assert skipped == []
    assert num.path == "1.5.1.5"
    assert num.value.value == 12.5 and num.value.unit.value == "mm"
    assert num.observation_uid == sr.uid("n")
    assert num.observation_datetime == "20240101120000"
    assert tree.template_id == "1500"


@pytest.mark.parametrize(("written", "read"), [
    (" 12.50 ", "12.50"), ("-.5", "-0.5"), ("+1E3", "1E+3"),
    ("1\u2003", None), ("\u20031", None), ("1\u00a0", None),  # not DS padding
    ("\u0661\u0662", None), ("1_000", None), ("inf", None), ("1,5", None),  # not the DS repertoire
])
def test_numeric_value_is_read_by_the_ds_grammar_alike_in_both_readers(written, read):
    """Only SPACE pads a DS (PS3.5 6.2); other whitespace or digits make it no number, both ways."""
    group = sr.measurement_group("1410", measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])
    report = sr.measurement_report([group])
    measured = report.ContentSequence[4].ContentSequence[0].ContentSequence[-1].MeasuredValueSequence[0]
    data = written.encode("utf-8")
    measured[0x0040A30A] = RawDataElement(Tag(0x0040A30A), "DS", len(data), data, 0, False, True)
    (fast, fast_skipped), (slow, slow_skipped) = both_ways(sr.to_part10_bytes(report))
    assert fast == slow and fast_skipped == slow_skipped
    nums = [c for c in fast.children[4].children[0].children if c.value_type == "NUM"]
    if read is None:
        assert nums == [] and [s.reason for s in fast_skipped] == [f"NUM: Numeric Value {written.strip(' ')!r} is not a finite decimal number"]
    else:
        assert str(nums[0].value.value) == read and fast_skipped == []


def test_an_unreadable_item_is_skipped_with_its_path_and_the_rest_kept():
    report = sr.measurement_report([sr.measurement_group("1410", measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])])
    group = report.ContentSequence[4].ContentSequence[0]
    del group.ContentSequence[2].ValueType
    skipped = []
    tree = read_content_tree(report, skipped)
    assert [str(s) for s in skipped] == ["1.5.1.3: content item without Value Type (0040,A040)"]
    assert [c.path for c in tree.children[4].children[0].children] == ["1.5.1.1", "1.5.1.2", "1.5.1.4", "1.5.1.5"]


def test_by_reference_relationships_are_noted_not_followed():
    report = sr.measurement_report([sr.measurement_group("1410", measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])])
    reference = pydicom.Dataset()
    reference.RelationshipType = "INFERRED FROM"
    reference.ReferencedContentItemIdentifier = [1, 5, 1, 1]
    report.ContentSequence[4].ContentSequence[0].ContentSequence.append(reference)
    skipped = []
    read_content_tree(report, skipped)
    assert [str(s) for s in skipped] == ["1.5.1.6: by-reference INFERRED FROM relationship not followed"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.booleans())
def test_raw_parser_raises_only_parse_errors_on_garbage(data, implicit):
    try:
        items = parse_sequence(data, implicit_vr=implicit, encodings=("iso8859",))
    except RawParseError:
        return
    assert all(isinstance(item, RawItem) for item in items)
    for item in items:
        for tag in (0x0040A040, 0x0040A043, 0x0040A160, 0x0040A730, 0x00700022):
            try:
                value = item.value(tag)
            except (ValueError, LookupError) as exc:  # a malformed value is reported, never guessed
                assert str(exc)
                continue
            # A value is absent, decoded to a scalar, or a (list of) items / numbers: never raw garbage
            # passed off as text.
            assert value is None or isinstance(value, (str, int, float, bytes, list, tuple, PersonName)), type(value)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupted_part10_bytes_give_a_bundle_or_a_mapping_error(data):
    original = bytearray(sr.to_part10_bytes(every_profile_report()))
    start = 400  # past the file meta and the top-level header, into the Content Sequence
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(start, len(original) - 1))
        original[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del original[data.draw(st.integers(start, len(original))):]
    try:
        ds = pydicom.dcmread(BytesIO(bytes(original)))
    except Exception:  # noqa: BLE001 - pydicom refusing the file is not the subject here
        reject()
    try:
        result = map_sr(ds)
    except MappingError as exc:
        assert str(exc), "a MappingError says what is wrong"
        return
    assert result.bundle["type"] == "transaction"
    assert all(isinstance(entry["resource"]["resourceType"], str) for entry in result.bundle["entry"])
