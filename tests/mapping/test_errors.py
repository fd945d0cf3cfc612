"""When nothing meaningful can be mapped: a MappingError that says why, and where."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from mapping import InvalidValue, MissingContentItem, NotAnSR, UnsupportedTemplate, map_sr
from tests.support import sr_builders as sr


def group():
    return sr.measurement_group("1410", measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])


def test_not_an_sr():
    ds = Dataset()
    ds.SOPClassUID = sr.CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sr.uid("ct")
    with pytest.raises(NotAnSR, match=r"SOP Class CT Image Storage \(1\.2\.840\.10008\.5\.1\.4\.1\.1\.2\) is not a Structured Report"):
        map_sr(ds)


def test_no_sop_class():
    with pytest.raises(NotAnSR, match="no SOP Class UID"):
        map_sr(Dataset())


def test_sr_without_content():
    report = sr.measurement_report([group()])
    del report.ContentSequence
    with pytest.raises(MissingContentItem, match=r"no content \(Content Sequence \(0040,A730\)"):
        map_sr(report)


def test_not_tid_1500():
    report = sr.measurement_report([group()])
    report.ConceptNameCodeSequence = [sr.coded("18748-4", "LN", "Diagnostic imaging report")]
    del report.ContentTemplateSequence
    with pytest.raises(UnsupportedTemplate) as caught:
        map_sr(report)
    assert str(caught.value) == (
        "1: document title (LN,18748-4) 'Diagnostic imaging report' is not a document sr2fhir maps "
        "(TID 1500 Imaging Measurement Report, Key Object Selection, radiation dose report)")
    assert caught.value.path == "1"
    assert caught.value.template is None
    assert caught.value.title == "(LN,18748-4) 'Diagnostic imaging report'"


def test_report_with_nothing_mappable_names_the_first_skipped_item():
    stray = sr.num_item(sr.LENGTH, 3, sr.MM)  # a NUM outside any measurement group
    with pytest.raises(MissingContentItem) as caught:
        map_sr(sr.measurement_report([stray]))
    assert str(caught.value) == (
        "1: no measurement group, derived measurement or qualitative evaluation could be mapped "
        "(1 item(s) skipped; first: 1.5.1 (SCT,410668003): NUM directly in Imaging Measurements "
        "is not in a measurement group)")


def test_empty_measurements_container_is_an_error():
    with pytest.raises(MissingContentItem, match="no measurement group, derived measurement or qualitative evaluation"):
        map_sr(sr.measurement_report([]))


def test_missing_patient_id():
    with pytest.raises(MissingContentItem, match=r"no Patient ID \(0010,0020\)"):
        map_sr(sr.measurement_report([group()], patient_id=None))


def test_missing_study_instance_uid():
    report = sr.measurement_report([group()])
    del report.StudyInstanceUID
    with pytest.raises(MissingContentItem, match=r"no Study Instance UID \(0020,000D\)"):
        map_sr(report)


def test_invalid_study_instance_uid():
    report = sr.measurement_report([group()])
    report.StudyInstanceUID = "not-a-uid"
    with pytest.raises(InvalidValue, match="is not a valid UID"):
        map_sr(report)


def test_error_messages_carry_no_patient_data():
    report = sr.measurement_report([], patient_name="Secret^Person", patient_id="PID-SECRET")
    with pytest.raises(MissingContentItem) as caught:
        map_sr(report)
    assert "Secret" not in str(caught.value) and "PID-SECRET" not in str(caught.value)
