"""The File Format wrapper gives what pynetdicom's own encoder gives, byte for byte."""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import create_file_meta, encode

from scp.dicom.part10 import part10_bytes
from tests.support import sr_builders as sr


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
@pytest.mark.parametrize("sop_instance", ["1.2.3", "1.2.34"])  # odd and even UID lengths (padding)
def test_matches_pydicom_file_meta_and_reads_back(transfer_syntax, sop_instance):
    ds = sr.measurement_report([sr.measurement_group(measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])],
                               sop_instance_uid=sop_instance)
    dataset = encode(ds, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian,
                     transfer_syntax.is_deflated)
    ours = part10_bytes(dataset, sop_class_uid=ds.SOPClassUID, sop_instance_uid=sop_instance,
                        transfer_syntax_uid=transfer_syntax)
    meta = create_file_meta(sop_class_uid=ds.SOPClassUID, sop_instance_uid=sop_instance, transfer_syntax=transfer_syntax)
    reference = BytesIO()
    reference.write(b"\x00" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(reference, meta, enforce_standard=True)
    assert ours == reference.getvalue() + dataset
    back = pydicom.dcmread(BytesIO(ours))
    assert back.file_meta.TransferSyntaxUID == transfer_syntax
    assert back.SOPInstanceUID == sop_instance
    assert len(back.ContentSequence) == len(ds.ContentSequence)
