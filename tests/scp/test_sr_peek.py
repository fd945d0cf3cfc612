"""scp.dicom.sr_peek: the C-STORE check from element headers agrees with pydicom's decode."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode

from scp.dicom.sr_peek import MalformedDataset, SrPeek, peek_sr
from tests.support import sr_builders as sr

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def report() -> Dataset:
    group = sr.measurement_group("1410", tracking_identifier="lesion 1", finding_site=sr.finding_site_item(sr.LUNG),
                                 items=[sr.scoord_item("POLYLINE", [1, 2, 3, 4], sr.source_image(sr.CT_IMAGE_STORAGE,
                                                                                                 sr.uid("ct:1")))],
                                 measurements=[sr.num_item(sr.LENGTH, 12.5, sr.MM)])
    return sr.measurement_report([group], sop_instance_uid=sr.uid("peek:1"))


def by_pydicom(data: bytes, implicit_vr: bool) -> SrPeek:
    ds = decode(BytesIO(data), implicit_vr, True)
    return SrPeek(str(ds.SOPClassUID), str(ds.SOPInstanceUID), 0x0040A730 in ds)


@pytest.mark.parametrize("syntax", SYNTAXES, ids=str)
@pytest.mark.parametrize("lengths", ["defined", "undefined"])
def test_reads_what_pydicom_reads(syntax, lengths):
    ds = report() if lengths == "defined" else sr.with_undefined_lengths(report())
    data = encode(ds, syntax.is_implicit_VR, True)
    if lengths == "undefined":
        assert b"\xfe\xff\xdd\xe0" in data  # the sequence delimiters really are there
    assert peek_sr(data, implicit_vr=syntax.is_implicit_VR) == SrPeek(str(ds.SOPClassUID), sr.uid("peek:1"), True)
    assert peek_sr(data, implicit_vr=syntax.is_implicit_VR) == by_pydicom(data, syntax.is_implicit_VR)


@pytest.mark.parametrize("syntax", SYNTAXES, ids=str)
def test_no_content_sequence_and_padded_uids(syntax):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = "1.2.3"  # odd length: padded with a NUL on the wire
    ds.PatientID = "X"
    data = encode(ds, syntax.is_implicit_VR, True)
    assert peek_sr(data, implicit_vr=syntax.is_implicit_VR) == SrPeek("1.2.840.10008.5.1.4.1.1.88.33", "1.2.3", False)


@pytest.mark.parametrize("syntax", SYNTAXES, ids=str)
@pytest.mark.parametrize("lengths", ["defined", "undefined"])
def test_every_truncation_that_cuts_an_element_or_item_is_malformed(syntax, lengths):
    ds = report() if lengths == "defined" else sr.with_undefined_lengths(report())
    data = encode(ds, syntax.is_implicit_VR, True)
    boundaries = set()  # where a top-level element ends: cutting there leaves a valid dataset
    offset = 0
    for cut in range(1, len(data)):
        try:
            peek_sr(data[:cut], implicit_vr=syntax.is_implicit_VR)
        except MalformedDataset:
            continue
        boundaries.add(cut)
    top_level_ends = set()
    for element in ds:
        offset += len(encode(Dataset({element.tag: element}), syntax.is_implicit_VR, True))
        top_level_ends.add(offset)
    assert boundaries == top_level_ends - {len(data)}


def test_garbage_is_malformed():
    garbage = bytes((i * 131 + 7) % 251 for i in range(4000))
    for implicit_vr in (True, False):
        with pytest.raises(MalformedDataset):
            peek_sr(garbage, implicit_vr=implicit_vr)


def test_a_length_past_the_end_is_malformed_and_says_where():
    data = bytearray(encode(report(), False, True))
    data[6:8] = (0xFFF0).to_bytes(2, "little")  # the first element's 16-bit length
    with pytest.raises(MalformedDataset, match=r"\(0008,0005\) of 65520 bytes at offset 8 runs past the end"):
        peek_sr(bytes(data), implicit_vr=False)


def test_nesting_deeper_than_the_limit_is_refused_without_recursing_away():
    inner = Dataset()
    inner.CodeValue = "1"
    for _ in range(200):
        outer = Dataset()
        outer.ConceptNameCodeSequence = Sequence([inner])
        inner = outer
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = "1.2.3"
    ds.ContentSequence = Sequence([inner])
    data = encode(sr.with_undefined_lengths(ds), True, True)
    with pytest.raises(MalformedDataset, match="nested deeper than 64"):
        peek_sr(data, implicit_vr=True)
