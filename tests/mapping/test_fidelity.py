"""Nothing in the SR is silently lost or merged: one test class per finding of the fidelity review.

Each test compares content (not only profile conformance): a value, a modifier, a time or a
site that the SR states must be in the Bundle, or named by a ``Skipped`` note.
"""

from __future__ import annotations

from decimal import Decimal
from io import BytesIO

import pydicom
import pytest

from mapping import MappingOptions, map_sr, serialize
from mapping.bundle import BundleBuilder, ConflictingResources
from tests.support import sr_builders as sr
from tests.support.bundle_queries import deref, one, resources
from tests.support.conformance import SAMPLES, require_shared
from tests.support.report_fixtures import fidelity_report

DERIVATION = sr.coded("121401", "DCM", "Derivation")
MEAN = sr.coded("373098007", "SCT", "Mean")
MAXIMUM = sr.coded("56851009", "SCT", "Maximum")
SUVBW = sr.coded("126401", "DCM", "SUVbw")
OUT_OF_RANGE = sr.coded("114009", "DCM", "Value out of range")
LIVER = sr.coded("10200004", "SCT", "Liver")
KIDNEY = sr.coded("64033007", "SCT", "Kidney")
LEFT = sr.coded("7771000", "SCT", "Left")
SOURCE_OF_MEASUREMENT = sr.coded("121112", "DCM", "Source of Measurement")
IMAGE_SOURCE = sr.coded("260753009", "SCT", "Source")
TIME_POINT = sr.coded("C2348792", "UMLS", "Time Point")


def group(**kwargs):
    kwargs.setdefault("finding_site", sr.finding_site_item(sr.LUNG))
    return sr.measurement_group("1411", **kwargs)


def measurements(bundle):
    return resources(bundle, "imaging-measurement")


def derived_num(value, derivation):
    return sr.num_item(SUVBW, value, sr.SUV_BW, children=[sr.code_item(DERIVATION, derivation, "HAS CONCEPT MOD")])


class TestDerivationAndModifiers:
    """Finding 1: a Mean and a Maximum of one measurement must not look alike."""

    def test_derivation_is_a_component_and_named_in_code_text(self):
        bundle = map_sr(sr.measurement_report([group(measurements=[derived_num(6.02, MEAN), derived_num(10.38, MAXIMUM)])])).bundle
        mean, maximum = measurements(bundle)
        assert mean["component"] == [{
            "code": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "121401",
                                 "display": "Derivation"}]},
            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "373098007", "display": "Mean"}]},
        }]
        assert mean["code"]["text"] == "SUVbw (Mean)"
        assert maximum["code"]["text"] == "SUVbw (Maximum)"
        assert maximum["component"][0]["valueCodeableConcept"]["coding"][0]["code"] == "56851009"

    def test_properties_are_components_and_inferred_from_values_are_noted(self):
        num = sr.num_item(SUVBW, 3, sr.SUV_BW, children=[
            sr.text_item(sr.coded("121405", "DCM", "Population description"), "Adults", "HAS PROPERTIES"),
            sr.num_item(sr.coded("121403", "DCM", "Level of Significance"), "0.05", sr.UNITY, "HAS PROPERTIES"),
            sr.num_item(sr.coded("A.15", "99TEST", "Parameter A"), 9.91, sr.UNITY, "INFERRED FROM"),
        ])
        result = map_sr(sr.measurement_report([group(measurements=[num])]))
        measurement = one(result.bundle, "imaging-measurement")
        assert [c.get("valueString") or c.get("valueQuantity") for c in measurement["component"]] == [
            "Adults", {"value": Decimal("0.05"), "unit": "no units", "system": "http://unitsofmeasure.org", "code": "1"}]
        assert "text" not in measurement["code"]  # properties describe the value; they do not rename it
        assert any(s.concept == "(99TEST,A.15)" and "INFERRED FROM NUM" in s.reason for s in result.skipped)

    def test_the_dcmqi_samples_observations_all_differ_in_more_than_the_value(self):
        for name in ("dcmqi_qin_headneck_sr", "dcmqi_tid1500writer_liver_example"):
            bundle = map_sr(pydicom.dcmread(require_shared(SAMPLES / f"{name}.dcm"))).bundle
            texts = [m["code"].get("text") for m in measurements(bundle) if m["code"]["coding"][0]["code"] in ("126401", "112031")]
            assert len(texts) == len(set(texts)) >= 4, (name, texts)


class TestNumericValueQualifier:
    """Finding 2: a qualifier beside a value flags the value."""

    def test_qualifier_with_a_value_becomes_interpretation(self):
        num = sr.num_item(sr.LENGTH, 250, sr.MM, qualifier=OUT_OF_RANGE)
        measurement = one(map_sr(sr.measurement_report([group(measurements=[num])])).bundle, "imaging-measurement")
        assert measurement["valueQuantity"]["value"] == 250
        assert measurement["interpretation"] == [{"coding": [{
            "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "114009", "display": "Value out of range"}]}]


class TestObservationDateTime:
    """Finding 3: an item without (0040,A032) takes its nearest ancestor's."""

    def test_group_takes_the_imaging_measurements_containers_time(self):
        report = sr.measurement_report([group(measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])])
        container = next(i for i in report.ContentSequence if i.ValueType == "CONTAINER")
        container.ObservationDateTime = "20240215083000"
        bundle = map_sr(report).bundle
        for resource in (one(bundle, "imaging-measurement-group"), one(bundle, "imaging-measurement")):
            assert resource["effectiveDateTime"] == resource["issued"] == "2024-02-15T08:30:00+00:00"

    def test_own_time_beats_the_ancestors(self):
        num = sr.num_item(sr.LENGTH, 1, sr.MM, observation_datetime="20240216120000+0100")
        bundle = map_sr(sr.measurement_report([group(measurements=[num], observation_datetime="20240215")])).bundle
        assert one(bundle, "imaging-measurement")["effectiveDateTime"] == "2024-02-16T12:00:00+01:00"
        assert one(bundle, "imaging-measurement-group")["effectiveDateTime"] == "2024-02-15"


class TestPartialDates:
    """Finding 10: "2024" is not 2024-01-01T00:00:00."""

    @pytest.mark.parametrize(("dicom", "effective"), [("2024", "2024"), ("202403", "2024-03"), ("20240305", "2024-03-05")])
    def test_effective_keeps_the_precision_and_issued_is_the_documents(self, dicom, effective):
        bundle = map_sr(sr.measurement_report([group(measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)],
                                                     observation_datetime=dicom)])).bundle
        measurement = one(bundle, "imaging-measurement")
        assert measurement["effectiveDateTime"] == effective
        assert measurement["issued"] == "2024-03-01T10:15:00+00:00"  # Content Date/Time: an instant needs a time


class TestFindingSites:
    """Finding 4: every Finding Site, each with its own laterality."""

    def test_two_sites_two_structures(self):
        sites = [sr.finding_site_item(LIVER), sr.finding_site_item(KIDNEY, laterality=LEFT)]
        report = sr.measurement_report([group(finding_site=None, items=sites, measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])])
        result = map_sr(report)
        structures = one(result.bundle, "dicom-sr-finding-site")["includedStructure"]
        assert [(s["structure"]["coding"][0]["code"], s.get("laterality", {}).get("coding", [{}])[0].get("code"))
                for s in structures] == [("10200004", None), ("64033007", "7771000")]
        assert result.skipped == ()


class TestSharedResources:
    """Finding 5: a shared id never carries two contents."""

    def test_one_tracking_uid_with_two_sites_gives_two_body_structures(self):
        shared = sr.uid("tracking:shared")
        groups = [group(tracking_uid=shared, finding_site=sr.finding_site_item(site),
                        measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)]) for site in (LIVER, KIDNEY)]
        bundle = map_sr(sr.measurement_report(groups)).bundle
        sites = resources(bundle, "dicom-sr-finding-site")
        assert len(sites) == 2 and sites[0]["id"] != sites[1]["id"]
        assert {s["includedStructure"][0]["structure"]["coding"][0]["code"] for s in sites} == {"10200004", "64033007"}
        groups_obs = resources(bundle, "imaging-measurement-group")
        assert [deref(bundle, g["bodyStructure"])["includedStructure"][0]["structure"]["coding"][0]["code"]
                for g in groups_obs] == ["10200004", "64033007"]

    def test_same_algorithm_other_parameters_gives_another_device(self):
        groups = [group(tracking_identifier=f"L{n}", algorithm=sr.algorithm_items("Seg", "1.0", [params]),
                        measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)]) for n, params in enumerate(("a=1", "a=2"))]
        bundle = map_sr(sr.measurement_report(groups)).bundle
        devices = resources(bundle, "algorithm-identification")
        assert sorted(d["property"][0]["valueString"] for d in devices) == ["a=1", "a=2"]
        assert len({d["id"] for d in devices}) == 2

    def test_a_software_upgrade_under_one_device_uid_is_another_device_across_reports(self):
        first = sr.measurement_report([group(measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])])
        second = sr.measurement_report([group(measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])], sop_instance_uid=sr.uid("sr2"))
        second.SoftwareVersions = "2.0"
        before, after = (one(map_sr(r).bundle, "dicom-general-equipment") for r in (first, second))
        assert before["identifier"] == after["identifier"]
        assert before["id"] != after["id"]  # a PUT of the second never rewrites what the first reports point at
        unchanged = one(map_sr(sr.measurement_report([group(measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])],
                                                     sop_instance_uid=sr.uid("sr3"))).bundle, "dicom-general-equipment")
        assert unchanged["id"] == before["id"]  # reports that say the same still meet on one resource

    def test_the_bundle_refuses_two_contents_under_one_id(self):
        builder = BundleBuilder()
        builder.add({"resourceType": "Device", "id": "x", "displayName": "A"})
        builder.add({"resourceType": "Device", "id": "x", "displayName": "A"})
        with pytest.raises(ConflictingResources):
            builder.add({"resourceType": "Device", "id": "x", "displayName": "B"})


class TestImageReferencesOutsideTheIgList:
    """Finding 6: a measurement keeps the images it was measured on."""

    def test_source_of_measurement_image_and_region(self):
        ct = sr.uid("ct:9")
        num = sr.num_item(sr.LENGTH, 4, sr.MM, children=[
            sr.image_item(SOURCE_OF_MEASUREMENT, sr.CT_IMAGE_STORAGE, ct, frames=[3], relationship="INFERRED FROM"),
            sr.scoord_item("POLYLINE", [1, 2, 3, 4], sr.source_image(sr.CT_IMAGE_STORAGE, ct),
                           concept=SOURCE_OF_MEASUREMENT, relationship="INFERRED FROM"),
        ])
        result = map_sr(sr.measurement_report([group(measurements=[num])]))
        measurement = one(result.bundle, "imaging-measurement")
        selections = [deref(result.bundle, ref) for ref in measurement["derivedFrom"]]
        by_code = {s["code"]["coding"][0]["code"]: s for s in selections}
        assert by_code["121112"]["instance"] == [{"uid": ct, "sopClass": by_code["121112"]["instance"][0]["sopClass"],
                                                  "subset": ["3"]}]
        assert by_code["111030"]["instance"][0]["imageRegion2D"] == [{"regionType": "polyline", "coordinate": [1.0, 2.0, 3.0, 4.0]}]
        assert result.skipped == ()

    def test_tid1501_source_image(self):
        image = sr.image_item(IMAGE_SOURCE, sr.CT_IMAGE_STORAGE, sr.uid("ct:7"))
        result = map_sr(sr.measurement_report([sr.measurement_group("1501", items=[image], finding_site=sr.finding_site_item(sr.LUNG),
                                                                    measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])]))
        group_obs = one(result.bundle, "imaging-measurement-group")
        source = next(deref(result.bundle, r) for r in group_obs["derivedFrom"]
                      if deref(result.bundle, r)["code"]["coding"][0]["code"] == "260753009")
        assert source["instance"][0]["uid"] == sr.uid("ct:7")
        assert result.skipped == ()


class TestUdi:
    """Finding 9: the GS1 form with braces, as the IG's own Device example writes it."""

    @pytest.mark.parametrize("udi", ["(01)00844588003288(17)141120", "{01}00844588003288{17}141120"])
    def test_both_gs1_forms(self, udi):
        result = map_sr(sr.measurement_report([group(measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])], udi=udi))
        assert one(result.bundle, "dicom-general-equipment")["udiCarrier"] == [{
            "deviceIdentifier": "00844588003288", "issuer": "http://hl7.org/fhir/NamingSystem/gs1-di", "carrierHRF": udi}]
        assert result.skipped == ()


class TestDecimalPrecision:
    """Finding 11: "-778" stays -778, "4" stays 4, "19.80" stays 19.80."""

    @pytest.mark.parametrize(("ds", "json_text"), [("-778", "-778"), ("4", "4"), ("19.80", "19.80"), ("+5.0", "5.0"),
                                                   (".5", "0.5"), ("1.5E3", "1.5E+3")])
    def test_numeric_value_written_with_its_digits(self, ds, json_text):
        report = sr.measurement_report([group(measurements=[sr.num_item(sr.LENGTH, ds, sr.MM)])])
        for dataset in (report, pydicom.dcmread(BytesIO(sr.to_part10_bytes(report)))):  # both reading paths
            text = serialize(map_sr(dataset).bundle).decode()
            assert f'"valueQuantity":{{"value":{json_text},"unit"' in text


class TestItemsNoted:
    """Finding 12: source series without source images is mapped; Time Point is noted."""

    def test_source_series_alone_becomes_a_series_selection(self):
        items = [sr.image_item(sr.REFERENCED_SEGMENT, sr.SEGMENTATION_STORAGE, sr.uid("seg"), segments=[1]),
                 sr.uidref_item(sr.SOURCE_SERIES_FOR_SEGMENTATION, sr.uid("series:ct"))]
        result = map_sr(sr.measurement_report([group(items=items, measurements=[sr.num_item(sr.VOLUME, 1, sr.MM3)])]))
        segment = one(result.bundle, "referenced-segment")
        (series,) = [deref(result.bundle, ref) for ref in segment["focus"]]
        assert series["seriesUid"] == sr.uid("series:ct") and "instance" not in series
        assert series["code"]["coding"][0]["code"] == "121232"
        assert result.skipped == ()

    def test_time_point_is_noted(self):
        time_point = sr.text_item(TIME_POINT, "baseline", "HAS OBS CONTEXT")
        result = map_sr(sr.measurement_report([group(items=[time_point], measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])]))
        assert [s.concept for s in result.skipped] == ["(UMLS,C2348792)"]


@pytest.mark.conformance
def test_the_fidelity_report_validates_in_both_write_modes(conformant):
    report = fidelity_report()
    conformant(**{mode: map_sr(report, MappingOptions(write_mode=mode)).bundle for mode in ("put", "conditional")})


class TestRetiredSnomedCodes:
    """SNOMED-RT (SRT) codes: translated to SNOMED CT, the SR's own code kept as a second coding
    wherever the element is a CodeableConcept without a pattern on ``coding``."""

    SCT = "http://snomed.info/sct"
    SRT = "urn:dicom:coding-scheme:SRT"
    LUNG_SRT = sr.coded("T-28000", "SRT", "Lung")
    RIGHT_SRT = sr.coded("G-A100", "SRT", "Right")
    ANTERIOR_SRT = sr.coded("R-404CC", "SRT", "Anterior")
    ABNORMAL_SRT = sr.coded("M-01000", "SRT", "Morphologically abnormal structure")
    LENGTH_SRT = sr.coded("G-D7FE", "SRT", "Length")
    MAXIMUM_SRT = sr.coded("G-A437", "SRT", "Maximum")
    MEAN_SRT = sr.coded("R-00317", "SRT", "Mean")

    def pair(self, sct, srt, meaning):
        return [{"system": self.SCT, "code": sct, "display": meaning},
                {"system": self.SRT, "code": srt, "display": meaning}]

    def report(self):
        length = sr.num_item(self.LENGTH_SRT, 12.5, sr.MM, children=[
            sr.code_item(DERIVATION, self.MEAN_SRT, "HAS CONCEPT MOD")])
        evaluation = sr.code_item(sr.MALIGNANCY, self.ABNORMAL_SRT)
        group = sr.measurement_group(
            "1410", finding_category=self.ABNORMAL_SRT, finding=self.ABNORMAL_SRT, method=self.MAXIMUM_SRT,
            algorithm=sr.algorithm_items("Finder", "1.0", family=self.MAXIMUM_SRT),
            finding_site=sr.finding_site_item(self.LUNG_SRT, laterality=self.RIGHT_SRT, modifier=self.ANTERIOR_SRT),
            items=[sr.image_item(sr.ILLUSTRATION_OF_ROI, sr.SECONDARY_CAPTURE, sr.uid("srt:illustration"))],
            measurements=[length, sr.num_item(sr.DIAMETER, 3, sr.MM)], qualitative=[evaluation])
        return sr.measurement_report([group])

    def test_second_coding_on_observations_where_the_profiles_allow_it(self):
        result = map_sr(self.report())
        bundle = result.bundle
        group = one(bundle, "imaging-measurement-group")
        abnormal = self.pair("49755003", "M-01000", "Morphologically abnormal structure")
        assert group["code"]["coding"] == abnormal  # Finding category value
        assert group["valueCodeableConcept"]["coding"] == abnormal  # Finding
        assert group["method"]["coding"] == self.pair("56851009", "G-A437", "Maximum")
        assert deref(bundle, group["device"])["type"] == [{"coding": self.pair("56851009", "G-A437", "Maximum")}]
        length, diameter = measurements(bundle)
        assert length["code"]["coding"] == self.pair("410668003", "G-D7FE", "Length")
        assert length["component"][0]["valueCodeableConcept"]["coding"] == self.pair("373098007", "R-00317", "Mean")
        assert one(bundle, "imaging-qualitative-evaluation")["valueCodeableConcept"]["coding"] == abnormal
        # Where the SR wrote SNOMED CT, or a designator never translated, there is one coding.
        assert diameter["code"]["coding"] == [{"system": self.SCT, "code": "81827009", "display": "Diameter"}]
        assert [c["code"] for c in one(bundle, "imaging-qualitative-evaluation")["code"]["coding"]] == ["RID36042"]
        # Elements whose profile fixes a pattern on coding keep exactly that one coding.
        assert group["category"] == [{"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                                  "code": "125007", "display": "Measurement Group"}]}]
        assert len(one(bundle, "illustration-of-roi")["code"]["coding"]) == 1
        # A Quantity holds one code: units are never doubled (and UCUM is never translated).
        assert length["valueQuantity"]["code"] == "mm"
        assert not [s for s in result.skipped if "SRT" in str(s)]  # SRT is a known designator, no note

    def test_second_coding_on_the_finding_site_body_structure(self):
        structure = one(map_sr(self.report()).bundle, "dicom-sr-finding-site")["includedStructure"]
        assert structure == [{
            "structure": {"coding": self.pair("39607008", "T-28000", "Lung")},
            "laterality": {"coding": self.pair("24028007", "G-A100", "Right")},
            "qualifier": [{"coding": self.pair("255549009", "R-404CC", "Anterior")}],
        }]

    def test_concept_keys_still_match_after_translation(self):
        """An SRT Finding Site / Laterality concept name is recognised as its SNOMED CT key."""
        site = sr.code_item(sr.coded("G-C0E3", "SRT", "Finding Site"), self.LUNG_SRT, "HAS CONCEPT MOD")
        bundle = map_sr(sr.measurement_report([sr.measurement_group(
            "1410", finding_site=site, measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])])).bundle
        assert one(bundle, "dicom-sr-finding-site")["includedStructure"][0]["structure"]["coding"][1]["code"] == "T-28000"

    def test_snm3_is_read_as_srt_and_keeps_its_own_system(self):
        lung_snm3 = sr.coded("T-28000", "SNM3", "Lung")
        bundle = map_sr(sr.measurement_report([sr.measurement_group(
            "1410", finding_site=sr.finding_site_item(lung_snm3), measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])])).bundle
        assert one(bundle, "dicom-sr-finding-site")["includedStructure"][0]["structure"]["coding"] == [
            {"system": self.SCT, "code": "39607008", "display": "Lung"},
            {"system": "http://terminology.hl7.org/CodeSystem/SNM3", "code": "T-28000", "display": "Lung"}]

    def test_a_plain_image_selection_keeps_the_original_code_too(self):
        source = sr.image_item(sr.coded("G-C05F", "SRT", "Source"), sr.CT_IMAGE_STORAGE, sr.uid("srt:ct"))
        bundle = map_sr(sr.measurement_report([sr.measurement_group(
            "1501", items=[source], measurements=[sr.num_item(sr.AREA, 4, sr.MM2)])])).bundle
        selection = next(r for r in resources(bundle, resource_type="ImagingSelection")
                         if any(i["uid"] == sr.uid("srt:ct") for i in r.get("instance", [])))
        assert selection["code"]["coding"] == self.pair("260753009", "G-C05F", "Source")

    @pytest.mark.conformance
    def test_bundles_with_srt_codes_validate_in_both_write_modes(self, conformant):
        report = self.report()
        conformant(**{mode: map_sr(report, MappingOptions(write_mode=mode)).bundle for mode in ("put", "conditional")})
