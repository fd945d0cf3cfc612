"""Every Bundle the mapping produces passes ../shared/tools/validate-ig with zero errors."""

from __future__ import annotations


import pydicom
import pytest

from mapping import MappingError, MappingOptions, map_sr, serialize
from tests.support import sr_builders as sr
from tests.support.bundle_queries import profiles_of, resources
from tests.support.conformance import SAMPLES, require_shared
from tests.support.report_fixtures import every_profile_report

ALL_PROFILES = {
    "imaging-measurement-group", "imaging-measurement", "imaging-qualitative-evaluation", "derived-imaging-measurement",
    "illustration-of-roi", "image-region-2d", "image-region-3d", "real-world-value-map", "referenced-segment",
    "referenced-segmentation-frame", "source-image-for-segmentation", "source-sr-content-item", "visual-explanation",
    "volume-surface", "algorithm-identification", "dicom-general-equipment", "dicom-participant-device",
    "dicom-participant-person", "dicom-sr-finding-site",
    "observation-imaging-selection",  # region-in-space with the real RT Structure Set UID (IG typo, see docs)
}
WITHOUT_3D = {"image-region-3d", "volume-surface"}

SOP_CLASSES = {
    "enhanced": sr.ENHANCED_SR,
    "comprehensive": sr.COMPREHENSIVE_SR,
    "comprehensive3d": sr.COMPREHENSIVE_3D_SR,
}


@pytest.mark.conformance
@pytest.mark.parametrize("write_mode", ["put", "conditional", "conditional-update"])
def test_every_profile_in_every_tid1500_sop_class_validates(write_mode, conformant):
    bundles = {}
    for name, sop_class in SOP_CLASSES.items():
        for observation_uids in (True, False):
            report = every_profile_report(sop_class, observation_uids=observation_uids)
            result = map_sr(report, MappingOptions(write_mode=write_mode))
            # The one deliberate gap in the fixture: a group with tracking ids but no finding site.
            assert [str(s) for s in result.skipped] == [
                f"1.8.6.{n} (DCM,{code}): tracking identifier without a Finding Site: no BodyStructure (it needs a structure)"
                for n, code in ((1, "112039"), (2, "112040"))]
            claimed = {p for r in resources(result.bundle) for p in profiles_of(r)}
            expected = ALL_PROFILES - (set() if sop_class == sr.COMPREHENSIVE_3D_SR else WITHOUT_3D)
            expected -= set() if observation_uids else {"source-sr-content-item"}
            assert claimed == expected, name
            bundles[f"{name}-{observation_uids}-{write_mode}"] = result.bundle
    conformant(**bundles)


@pytest.mark.conformance
def test_highdicom_written_reports_validate(conformant):
    bundles = {
        "planar": map_sr(sr.highdicom_planar_report(n_groups=3, measurements_per_group=2)).bundle,
        "volumetric": map_sr(sr.highdicom_volumetric_report()).bundle,
        "planar-enhanced": map_sr(sr.highdicom_planar_report(sop_class="enhanced")).bundle,
    }
    conformant(**bundles)


@pytest.mark.conformance
def test_real_sr_samples_map_and_validate(conformant):
    samples = sorted(require_shared(SAMPLES).glob("*.dcm"))
    assert samples, "no samples in ../shared/samples/real"
    bundles, refused = {}, {}
    for path in samples:
        try:
            bundles[path.stem] = map_sr(pydicom.dcmread(path)).bundle
        except MappingError as exc:
            refused[path.stem] = str(exc)
    # The TID 1500 samples map; the three that hold no TID 1500 are refused with the reason.
    assert sorted(bundles) == [
        "dcmqi_qin_headneck_sr", "dcmqi_tid1500writer_liver_example", "highdicom_sr_document",
        "highdicom_sr_document_with_multiple_groups", "hl7_ig_example_measurement_report",
    ]
    assert all("is not a document sr2fhir maps" in reason for reason in refused.values()), refused
    assert len(resources(bundles["dcmqi_qin_headneck_sr"], "imaging-measurement")) == 22
    conformant(**bundles)


@pytest.mark.conformance
def test_the_shipped_example_validates(conformant):
    from tests.test_example import EXAMPLE

    bundle = map_sr(pydicom.dcmread(EXAMPLE)).bundle
    serialize(bundle)  # serialisable as FHIR JSON
    conformant(example=bundle)
