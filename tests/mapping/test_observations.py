"""Observations, Devices, Practitioner, BodyStructure and the reference graph, field by field."""

from __future__ import annotations

from decimal import Decimal
from io import BytesIO

import pydicom
import pytest

from mapping import MappingOptions, map_sr, serialize
from tests.support import sr_builders as sr
from tests.support.bundle_queries import deref, reference_to, one, profiles_of, resources

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"


def mapped(groups=(), **kwargs):
    return map_sr(sr.measurement_report(list(groups), **kwargs))


def planar_group(**kwargs):
    kwargs.setdefault("finding_site", sr.finding_site_item(sr.LUNG, laterality=sr.RIGHT, modifier=sr.UPPER))
    kwargs.setdefault("measurements", [
        sr.num_item(sr.LENGTH, "19.80", sr.MM, observation_uid=sr.uid("length")),
        sr.num_item(sr.AREA, 301.5, sr.MM2),
    ])
    kwargs.setdefault("qualitative", [sr.code_item(sr.MALIGNANCY, sr.HIGHLY_SUSPICIOUS)])
    return sr.measurement_group("1410", **kwargs)


class TestMeasurementGroup:
    def test_group_fields(self):
        bundle = mapped([planar_group(method=sr.coded("RID10300", "RADLEX", "Manual"))]).bundle
        group = one(bundle, "imaging-measurement-group")
        assert group["category"] == [{"coding": [{"system": DCM, "code": "125007", "display": "Measurement Group"}]}]
        assert group["code"] == {"coding": [{"system": SCT, "code": "49755003", "display": "Morphologically abnormal structure"}]}
        assert group["valueCodeableConcept"] == {"coding": [{"system": SCT, "code": "427359005", "display": "Solitary nodule of lung"}]}
        assert group["method"] == {"coding": [{"system": "http://radlex.org", "code": "RID10300", "display": "Manual"}]}
        assert group["identifier"] == [{
            "type": {"coding": [{"system": "http://hl7.org/fhir/uv/dicom-sr/CodeSystem/dicom-identifier-type",
                                 "code": "observation-uid", "display": "Observation UID"}]},
            "system": "urn:dicom:uid",
            "value": "urn:oid:" + sr.uid("group:1410:Lesion 1"),
        }]
        assert group["status"] == "final"
        assert group["partOf"][0]["type"] == "ImagingStudy"
        assert group["subject"] == {"type": "Patient", "identifier": {"system": "urn:oid:1.2.3.4", "value": "PID-1"}}

    def test_code_falls_back_to_measurement_group_without_finding_category(self):
        bundle = mapped([planar_group(finding_category=None)]).bundle
        assert one(bundle, "imaging-measurement-group")["code"]["coding"][0]["code"] == "125007"

    def test_has_member_lists_measurements_then_evaluations_in_document_order(self):
        bundle = mapped([planar_group()]).bundle
        members = [deref(bundle, ref) for ref in one(bundle, "imaging-measurement-group")["hasMember"]]
        assert [(profiles_of(m)[0], m["code"]["coding"][0]["code"]) for m in members] == [
            ("imaging-measurement", "410668003"),
            ("imaging-measurement", "42798000"),
            ("imaging-qualitative-evaluation", "RID36042"),
        ]

    def test_context_items_are_not_qualitative_evaluations(self):
        bundle = mapped([planar_group(session="1", qualitative=[])]).bundle
        assert resources(bundle, "imaging-qualitative-evaluation") == []

    @pytest.mark.parametrize("template", ["1410", "1411", "1501"])
    def test_every_group_template_maps(self, template):
        bundle = mapped([sr.measurement_group(template, measurements=[sr.num_item(sr.VOLUME, 5, sr.MM3)])]).bundle
        assert len(resources(bundle, "imaging-measurement-group")) == 1
        assert len(resources(bundle, "imaging-measurement")) == 1


class TestImagingMeasurement:
    def test_value_quantity_ucum(self):
        bundle = mapped([planar_group()]).bundle
        length = next(m for m in resources(bundle, "imaging-measurement") if m["code"]["coding"][0]["code"] == "410668003")
        # DS "19.80": the value keeps the digits the SR wrote (a FHIR decimal's precision is significant).
        assert length["valueQuantity"] == {"value": Decimal("19.80"), "unit": "millimeter", "system": UCUM, "code": "mm"}
        assert '"valueQuantity":{"value":19.80,' in serialize(bundle).decode()
        assert length["code"] == {"coding": [{"system": SCT, "code": "410668003", "display": "Length"}]}
        assert "category" not in length
        assert length["identifier"][0]["value"] == "urn:oid:" + sr.uid("length")

    def test_inherits_group_device_body_structure_method_and_selections(self):
        region = sr.scoord_item("POINT", [1.0, 2.0], sr.source_image(sr.CT_IMAGE_STORAGE, sr.uid("ct:1")))
        group = planar_group(items=[region], method=sr.coded("RID10300", "RADLEX", "Manual"),
                             algorithm=sr.algorithm_items("Finder", "1.0"))
        bundle = mapped([group]).bundle
        group_obs = one(bundle, "imaging-measurement-group")
        for member in (deref(bundle, ref) for ref in group_obs["hasMember"]):
            assert member["device"] == group_obs["device"]
            assert member["bodyStructure"] == group_obs["bodyStructure"]
            assert member["method"] == group_obs["method"]
            assert {"reference": reference_to(bundle, one(bundle, "image-region-2d"))} in member["derivedFrom"]

    def test_own_algorithm_overrides_the_groups_device(self):
        own = sr.num_item(sr.VOLUME, 12, sr.MM3, children=sr.algorithm_items("VolumeTool", "3.2"))
        bundle = mapped([planar_group(measurements=[own], qualitative=[])]).bundle
        measurement = one(bundle, "imaging-measurement")
        device = deref(bundle, measurement["device"])
        assert device["displayName"] == "VolumeTool"
        assert one(bundle, "imaging-measurement-group")["device"] != measurement["device"]

    def test_num_without_value_is_skipped_with_its_qualifier(self):
        failed = sr.num_item(sr.LENGTH, None, sr.MM, qualifier=sr.coded("114006", "DCM", "Measurement failure"))
        result = mapped([planar_group(measurements=[failed, sr.num_item(sr.AREA, 1, sr.MM2)])])
        assert [m["code"]["coding"][0]["code"] for m in resources(result.bundle, "imaging-measurement")] == ["42798000"]
        assert [str(s) for s in result.skipped] == [
            "1.5.1.6 (SCT,410668003): NUM without a numeric value (qualifier Measurement failure): "
            "imaging-measurement requires valueQuantity"
        ]

    def test_non_ucum_units_keep_their_coding_system(self):
        num = sr.num_item(sr.LENGTH, 2, sr.coded("px", "99ACME", "pixels"))
        result = mapped([planar_group(measurements=[num], qualitative=[])])
        assert one(result.bundle, "imaging-measurement")["valueQuantity"] == {
            "value": 2.0, "unit": "pixels", "system": "urn:dicom:coding-scheme:99ACME", "code": "px"}
        assert "coding scheme designator '99ACME' has no known FHIR system; used urn:dicom:coding-scheme:99ACME" in [
            s.reason for s in result.skipped]


class TestQualitativeEvaluation:
    def test_code_and_text_values(self):
        text = sr.text_item(sr.coded("121106", "DCM", "Comment"), "Spiculated margin")
        bundle = mapped([planar_group(qualitative=[sr.code_item(sr.MALIGNANCY, sr.HIGHLY_SUSPICIOUS), text])]).bundle
        evaluations = resources(bundle, "imaging-qualitative-evaluation")
        assert [e["valueCodeableConcept"] for e in evaluations] == [
            {"coding": [{"system": "http://cancerimagingarchive.net", "code": "905",
                         "display": "5 out of 5 (Highly Suspicious for Cancer)"}]},
            {"text": "Spiculated margin"},
        ]
        for evaluation in evaluations:
            assert evaluation["category"] == [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/umls", "code": "C0034375",
                "display": "Qualitative Evaluations"}]}]

    def test_report_level_container(self):
        container = sr.report_qualitative([sr.text_item(sr.coded("121106", "DCM", "Comment"), "Stable disease")])
        bundle = mapped([], qualitative=container).bundle
        evaluation = one(bundle, "imaging-qualitative-evaluation")
        assert evaluation["valueCodeableConcept"] == {"text": "Stable disease"}
        assert profiles_of(deref(bundle, evaluation["device"])) == ["dicom-general-equipment"]
        assert "derivedFrom" not in evaluation and "bodyStructure" not in evaluation


class TestDerivedImagingMeasurement:
    def test_derived_from_nested_groups(self):
        nested = sr.measurement_group("1410", tracking_identifier="A", relationship="INFERRED FROM",
                                      measurements=[sr.num_item(sr.DIAMETER, 21, sr.MM)])
        derived = sr.derived_measurements([sr.num_item(sr.coded("126031", "DCM", "Peak Value Within ROI"), 3.5, sr.UNITY,
                                                       children=[nested], observation_uid=sr.uid("derived"))])
        bundle = mapped([planar_group()], derived=derived, device_observer_uid=sr.uid("dev-observer")).bundle
        measurement = one(bundle, "derived-imaging-measurement")
        assert measurement["category"] == [{"coding": [{"system": DCM, "code": "126011", "display": "Derived Imaging Measurements"}]}]
        assert measurement["valueQuantity"] == {"value": 3.5, "unit": "no units", "system": UCUM, "code": "1"}
        linked = [profiles_of(deref(bundle, ref))[0] for ref in measurement["derivedFrom"]]
        assert linked == ["imaging-measurement-group", "source-sr-content-item"]
        assert deref(bundle, measurement["derivedFrom"][0])["hasMember"]
        # A participant device is not allowed here: the equipment is used.
        assert profiles_of(deref(bundle, measurement["device"])) == ["dicom-general-equipment"]

    def test_without_any_group_is_skipped(self):
        derived = sr.derived_measurements([sr.num_item(sr.LENGTH, 3, sr.MM)])
        result = mapped([planar_group()], derived=derived)
        assert resources(result.bundle, "derived-imaging-measurement") == []
        assert any("names no measurement group" in s.reason for s in result.skipped)


class TestDevices:
    def test_general_equipment(self):
        bundle = mapped([planar_group()]).bundle
        device = one(bundle, "dicom-general-equipment")
        assert device["identifier"] == [{"system": "urn:dicom:uid", "value": "urn:oid:" + sr.uid("device")}]
        assert device["manufacturer"] == "ACME Imaging"
        assert device["displayName"] == "Lesion Analyzer"
        assert device["serialNumber"] == "SN-0001"

    def test_device_precedence_group_algorithm_then_container_then_participant_then_equipment(self):
        with_own = planar_group(tracking_identifier="own", algorithm=sr.algorithm_items("GroupAlgo", "1"))
        without = planar_group(tracking_identifier="none")
        bundle = mapped([with_own, without], container_algorithm=sr.algorithm_items("ContainerAlgo", "2")).bundle
        names = [deref(bundle, g["device"])["displayName"] for g in resources(bundle, "imaging-measurement-group")]
        assert names == ["GroupAlgo", "ContainerAlgo"]

        bundle = mapped([without], device_observer_uid=sr.uid("observer"), device_observer_name="CAD box").bundle
        device = deref(bundle, one(bundle, "imaging-measurement-group")["device"])
        assert profiles_of(device) == ["dicom-participant-device"]
        assert device["displayName"] == "CAD box"
        assert device["identifier"] == [{"system": "urn:dicom:uid", "value": "urn:oid:" + sr.uid("observer")}]

        bundle = mapped([without]).bundle
        assert profiles_of(deref(bundle, one(bundle, "imaging-measurement-group")["device"])) == ["dicom-general-equipment"]

    def test_algorithm_identification(self):
        algorithm = sr.algorithm_items("NoduleFinder", "2.1.0", parameters=["threshold=0.5"],
                                       family=sr.coded("123456", "99ACME", "Deep learning"))
        bundle = mapped([planar_group(algorithm=algorithm)]).bundle
        device = one(bundle, "algorithm-identification")
        assert device["displayName"] == "NoduleFinder"
        assert device["version"] == [{"value": "2.1.0"}]
        assert device["property"] == [{"type": {"coding": [{"system": DCM, "code": "111002", "display": "Algorithm Parameters"}]},
                                       "valueString": "threshold=0.5"}]
        assert device["type"][0]["coding"][0]["code"] == "123456"
        assert deref(bundle, device["parent"]) is one(bundle, "dicom-general-equipment")

    def test_shared_devices_get_the_same_id_across_reports(self):
        algorithm = sr.algorithm_items("NoduleFinder", "2.1.0")
        first = mapped([planar_group(algorithm=algorithm)], sop_instance_uid=sr.uid("sr-a")).bundle
        second = mapped([planar_group(algorithm=algorithm)], sop_instance_uid=sr.uid("sr-b")).bundle
        for profile in ("algorithm-identification", "dicom-general-equipment", "dicom-sr-finding-site"):
            assert one(first, profile)["id"] == one(second, profile)["id"], profile
        assert one(first, "imaging-measurement-group")["id"] != one(second, "imaging-measurement-group")["id"]


class TestPractitionerAndFindingSite:
    def test_person_observer_name_components(self):
        bundle = mapped([planar_group()], person_observer="Müller^Jürgen^Karl^Dr.").bundle
        practitioner = one(bundle, "dicom-participant-person")
        assert practitioner["name"] == [{"family": "Müller", "given": ["Jürgen", "Karl"], "prefix": ["Dr."]}]
        assert one(bundle, "imaging-measurement-group")["performer"] == [{"reference": reference_to(bundle, practitioner)}]

    def test_no_person_observer_means_no_performer(self):
        bundle = mapped([planar_group()], person_observer=None).bundle
        assert resources(bundle, "dicom-participant-person") == []
        assert "performer" not in one(bundle, "imaging-measurement-group")

    def test_finding_site_with_laterality_modifier_and_tracking_identifiers(self):
        bundle = mapped([planar_group(tracking_identifier="Nodule 1")]).bundle
        site = one(bundle, "dicom-sr-finding-site")
        assert site["includedStructure"] == [{
            "structure": {"coding": [{"system": SCT, "code": "39607008", "display": "Lung"}]},
            "laterality": {"coding": [{"system": SCT, "code": "24028007", "display": "Right"}]},
            "qualifier": [{"coding": [{"system": SCT, "code": "261183002", "display": "Upper"}]}],
        }]
        assert site["identifier"] == [
            {"type": {"coding": [{"system": DCM, "code": "112039", "display": "Tracking Identifier"}]}, "value": "Nodule 1"},
            {"type": {"coding": [{"system": DCM, "code": "112040", "display": "Tracking Unique Identifier"}]},
             "system": "urn:dicom:uid", "value": "urn:oid:" + sr.uid("tracking:Nodule 1")},
        ]
        assert site["patient"]["identifier"]["value"] == "PID-1"
        assert one(bundle, "imaging-measurement-group")["bodyStructure"] == {"reference": reference_to(bundle, site)}

    def test_srt_codes_are_translated_to_snomed_ct_and_keep_the_srs_code(self):
        site = sr.code_item(sr.coded("G-C0E3", "SRT", "Finding Site"), sr.coded("T-D00F7", "SRT", "Vertebral column"),
                            "HAS CONCEPT MOD")
        bundle = mapped([planar_group(finding_site=site)]).bundle
        assert one(bundle, "dicom-sr-finding-site")["includedStructure"][0]["structure"]["coding"] == [
            {"system": SCT, "code": "297171002", "display": "Vertebral column"},
            {"system": "urn:dicom:coding-scheme:SRT", "code": "T-D00F7", "display": "Vertebral column"}]


class TestDocumentContext:
    @pytest.mark.parametrize(("preliminary", "completion", "status"), [
        ("PRELIMINARY", "COMPLETE", "preliminary"),
        ("FINAL", "PARTIAL", "final"),
        (None, "COMPLETE", "final"),
        (None, "PARTIAL", "preliminary"),
    ])
    def test_status(self, preliminary, completion, status):
        bundle = mapped([planar_group()], preliminary_flag=preliminary, completion_flag=completion).bundle
        assert {o["status"] for o in resources(bundle, resource_type="Observation")} == {status}

    def test_issued_from_content_date_time_with_timezone_offset(self):
        bundle = mapped([planar_group()], content_date="20240301", content_time="101500", timezone_offset="-0500").bundle
        group = one(bundle, "imaging-measurement-group")
        assert group["issued"] == group["effectiveDateTime"] == "2024-03-01T10:15:00-05:00"

    def test_default_timezone_option_applies_without_an_offset(self):
        report = sr.measurement_report([planar_group()], content_date="20240115", content_time="093000.25")
        bundle = map_sr(report, MappingOptions(default_timezone="Europe/Berlin")).bundle
        assert one(bundle, "imaging-measurement-group")["issued"] == "2024-01-15T09:30:00.250+01:00"

    def test_observation_datetime_overrides_for_the_group_and_its_members(self):
        bundle = mapped([planar_group(observation_datetime="20231224183000+0100")]).bundle
        group = one(bundle, "imaging-measurement-group")
        assert group["issued"] == "2023-12-24T18:30:00+01:00"
        assert {deref(bundle, m)["issued"] for m in group["hasMember"]} == {"2023-12-24T18:30:00+01:00"}

    def test_references_by_identifier(self):
        bundle = mapped([planar_group()], accession_number="ACC-7", accession_issuer="http://hospital.example.org/acc").bundle
        group = one(bundle, "imaging-measurement-group")
        assert group["basedOn"] == [{"type": "ServiceRequest", "identifier": {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN", "display": "Accession ID"}]},
            "system": "http://hospital.example.org/acc", "value": "ACC-7"}}]
        assert group["partOf"] == [{"type": "ImagingStudy", "identifier": {
            "type": {"coding": [{"system": DCM, "code": "110180", "display": "Study Instance UID"}]},
            "system": "urn:dicom:uid", "value": "urn:oid:" + sr.uid("study")}}]

    def test_no_accession_means_no_based_on(self):
        bundle = mapped([planar_group()], accession_number=None).bundle
        assert all("basedOn" not in r for r in resources(bundle))

    @pytest.mark.parametrize(("charset", "name", "text"), [
        ("ISO_IR 192", "Łukasz^Zoë", "Läsion ö 肺"),
        ("ISO_IR 100", "Müller^Zoë", "Läsion ö"),
    ])
    def test_character_sets_decode(self, charset, name, text):
        comment = sr.text_item(sr.coded("121106", "DCM", "Comment"), text)
        report = sr.measurement_report([planar_group(qualitative=[comment])], specific_character_set=charset, person_observer=name)
        roundtrip = pydicom.dcmread(BytesIO(sr.to_part10_bytes(report)))
        bundle = map_sr(roundtrip).bundle
        assert one(bundle, "imaging-qualitative-evaluation")["valueCodeableConcept"] == {"text": text}
        family, given = name.split("^")
        assert one(bundle, "dicom-participant-person")["name"] == [{"family": family, "given": [given]}]
