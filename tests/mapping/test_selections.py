"""The ImagingSelection profiles, one test class per profile, asserted field by field."""

from __future__ import annotations

import pytest

from mapping import map_sr
from tests.support import sr_builders as sr
from tests.support.bundle_queries import coding, deref, reference_to, one, profiles_of, resources

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SOP_SYSTEM = "https://dicom.nema.org/medical/dicom/current/output/chtml/part04/sect_B.5"
CT = sr.CT_IMAGE_STORAGE
CT_1 = sr.uid("ct:1")
CT_2 = sr.uid("ct:2")
CT_SERIES = sr.uid("series:ct")
FRAME_OF_REFERENCE = sr.uid("for:ct")


def report(items, *, measurements=None, **report_kwargs):
    """Map a report with one TID 1410 group holding ``items``; return (bundle, skipped texts)."""
    group = sr.measurement_group(
        "1410", items=items, finding_site=sr.finding_site_item(sr.LUNG),
        measurements=measurements if measurements is not None else [sr.num_item(sr.LENGTH, 12.5, sr.MM)],
    )
    report_kwargs.setdefault("evidence", [(CT_SERIES, CT, CT_1), (CT_SERIES, CT, CT_2)])
    result = map_sr(sr.measurement_report([group], **report_kwargs))
    return result.bundle, [str(s) for s in result.skipped]


def group_observation(bundle):
    return one(bundle, "imaging-measurement-group")


def derived_from_profiles(bundle, observation):
    return sorted(p for ref in observation.get("derivedFrom", []) for p in profiles_of(deref(bundle, ref)))


class TestImageRegion2d:
    def polyline(self, data=(0.25, 0.25, 0.75, 0.25, 0.75, 0.75, 0.25, 0.75), graphic_type="POLYLINE", frames=None):
        return sr.scoord_item(graphic_type, list(data), sr.source_image(CT, CT_1, frames=frames))

    def test_polyline_copies_coordinates_in_order_with_instance_series_and_study(self):
        bundle, skipped = report([self.polyline()])
        selection = one(bundle, "image-region-2d")
        assert skipped == []
        assert selection["code"] == {"coding": [{"system": DCM, "code": "111030", "display": "Image Region"}]}
        assert selection["status"] == "available"
        assert selection["studyUid"] == sr.uid("study")
        assert selection["seriesUid"] == CT_SERIES
        assert selection["instance"] == [{
            "uid": CT_1,
            "sopClass": {"system": SOP_SYSTEM, "code": CT, "display": "CT Image Storage"},
            "imageRegion2D": [{"regionType": "polyline", "coordinate": [0.25, 0.25, 0.75, 0.25, 0.75, 0.75, 0.25, 0.75]}],
        }]
        assert selection["subject"]["identifier"]["value"] == "PID-1"
        assert selection["derivedFrom"][0]["identifier"]["value"] == "urn:oid:" + sr.uid("study")

    @pytest.mark.parametrize(("graphic_type", "data", "region_type"), [
        ("POINT", [12.5, 40.0], "point"),
        ("CIRCLE", [50.0, 50.0, 50.0, 60.0], "circle"),
        ("ELLIPSE", [10.0, 50.0, 90.0, 50.0, 50.0, 30.0, 50.0, 70.0], "ellipse"),
    ])
    def test_graphic_types_map_to_r5_region_types(self, graphic_type, data, region_type):
        bundle, _ = report([self.polyline(data, graphic_type)])
        regions = one(bundle, "image-region-2d")["instance"][0]["imageRegion2D"]
        assert regions == [{"regionType": region_type, "coordinate": data}]

    def test_multipoint_becomes_one_point_region_per_pair_each_on_its_own_instance_entry(self):
        bundle, _ = report([self.polyline([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "MULTIPOINT")])
        instances = one(bundle, "image-region-2d")["instance"]
        assert [i["uid"] for i in instances] == [CT_1, CT_1, CT_1]
        assert [i["imageRegion2D"] for i in instances] == [
            [{"regionType": "point", "coordinate": [1.0, 2.0]}],
            [{"regionType": "point", "coordinate": [3.0, 4.0]}],
            [{"regionType": "point", "coordinate": [5.0, 6.0]}],
        ]

    def test_float32_graphic_data_keeps_the_decimal_that_was_written(self):
        bundle, _ = report([self.polyline([0.1, 0.2, 0.3, 0.4], "POLYLINE")])
        assert one(bundle, "image-region-2d")["instance"][0]["imageRegion2D"][0]["coordinate"] == [0.1, 0.2, 0.3, 0.4]

    def test_referenced_frames_of_a_multiframe_image_go_to_subset(self):
        enhanced = sr.uid("enhanced-ct")
        scoord = sr.scoord_item("POINT", [5.0, 6.0], sr.source_image(sr.ENHANCED_CT_STORAGE, enhanced, frames=[3, 7]))
        bundle, _ = report([scoord], evidence=[])
        instance = one(bundle, "image-region-2d")["instance"][0]
        assert instance["uid"] == enhanced
        assert instance["subset"] == ["3", "7"]
        assert instance["sopClass"]["display"] == "Enhanced CT Image Storage"
        assert "seriesUid" not in one(bundle, "image-region-2d")  # no evidence: unknown series

    @pytest.mark.parametrize(("graphic_type", "data"), [
        ("POINT", [1.0, 2.0, 3.0]),
        ("POLYLINE", [1.0, 2.0, 3.0]),
        ("CIRCLE", [1.0, 2.0]),
        ("ELLIPSE", [1.0, 2.0, 3.0, 4.0]),
        ("MULTIPOINT", [1.0]),
    ])
    def test_odd_or_wrong_coordinate_counts_are_skipped_with_their_path(self, graphic_type, data):
        bundle, skipped = report([self.polyline(data, graphic_type)])
        assert resources(bundle, "image-region-2d") == []
        assert skipped == [f"1.5.1.6 (DCM,111030): SCOORD {graphic_type} with {len(data)} Graphic Data values is malformed"]

    def test_scoord_without_source_image_is_skipped_with_its_path(self):
        bundle, skipped = report([sr.scoord_item("POINT", [1.0, 2.0], None)])
        assert resources(bundle, "image-region-2d") == []
        assert skipped == ["1.5.1.6 (DCM,111030): SCOORD without a source image (no SELECTED FROM IMAGE child)"]

    def test_two_regions_in_a_group_share_one_selection_with_two_instances(self):
        bundle, _ = report([self.polyline([1, 2, 3, 4]), sr.scoord_item("POINT", [9.0, 9.0], sr.source_image(CT, CT_2))])
        selection = one(bundle, "image-region-2d")
        assert [i["uid"] for i in selection["instance"]] == [CT_1, CT_2]
        assert selection["seriesUid"] == CT_SERIES

    def test_group_and_its_measurements_are_derived_from_it(self):
        bundle, _ = report([self.polyline()])
        url = reference_to(bundle, one(bundle, "image-region-2d"))
        group = group_observation(bundle)
        measurement = one(bundle, "imaging-measurement")
        assert {"reference": url} in group["derivedFrom"]
        assert {"reference": url} in measurement["derivedFrom"]

    def test_body_site_points_at_the_groups_finding_site(self):
        bundle, _ = report([self.polyline()])
        body_site = one(bundle, "image-region-2d")["bodySite"]
        assert deref(bundle, body_site["reference"])["resourceType"] == "BodyStructure"


class TestImageRegion3d:
    def test_scoord3d_sets_frame_of_reference_and_instance_region(self):
        scoord = sr.scoord3d_item("ELLIPSOID", [float(v) for v in range(18)], FRAME_OF_REFERENCE,
                                  observation_uid=sr.uid("region3d"))
        bundle, skipped = report([scoord], sop_class_uid=sr.COMPREHENSIVE_3D_SR)
        selection = one(bundle, "image-region-3d")
        assert skipped == []
        assert selection["frameOfReferenceUid"] == FRAME_OF_REFERENCE
        assert selection["code"]["coding"][0]["code"] == "111030"
        # No image named: the region hangs on the SR content item that defines it.
        assert selection["instance"] == [{
            "uid": sr.uid("sr"),
            "sopClass": {"system": SOP_SYSTEM, "code": sr.COMPREHENSIVE_3D_SR, "display": "Comprehensive 3D SR Storage"},
            "subset": [sr.uid("region3d")],
            "imageRegion3D": [{"regionType": "ellipsoid", "coordinate": [float(v) for v in range(18)]}],
        }]
        assert selection["seriesUid"] == sr.uid("sr-series")
        assert "image-region-3d" in derived_from_profiles(bundle, group_observation(bundle))

    def test_source_images_of_the_group_carry_the_3d_region(self):
        items = [
            sr.scoord3d_item("POINT", [1.5, -2.0, 30.0], FRAME_OF_REFERENCE),
            sr.image_item(sr.SOURCE_IMAGE_FOR_SEGMENTATION, CT, CT_1),
            sr.image_item(sr.SOURCE_IMAGE_FOR_SEGMENTATION, CT, CT_2),
        ]
        bundle, _ = report(items, sop_class_uid=sr.COMPREHENSIVE_3D_SR)
        selection = one(bundle, "image-region-3d")
        assert [i["uid"] for i in selection["instance"]] == [CT_1, CT_2]
        assert all(i["imageRegion3D"] == [{"regionType": "point", "coordinate": [1.5, -2.0, 30.0]}] for i in selection["instance"])
        assert selection["seriesUid"] == CT_SERIES

    def test_malformed_scoord3d_is_skipped(self):
        bundle, skipped = report([sr.scoord3d_item("POLYGON", [1.0, 2.0, 3.0, 4.0], FRAME_OF_REFERENCE)])
        assert resources(bundle, "image-region-3d") == []
        assert skipped == ["1.5.1.6 (DCM,111030): SCOORD3D POLYGON with 4 Graphic Data values is malformed"]


class TestIllustrationOfRoi:
    def test_image_reference_with_sop_class_and_code(self):
        illustration = sr.uid("illustration")
        bundle, _ = report([sr.image_item(sr.ILLUSTRATION_OF_ROI, sr.SECONDARY_CAPTURE, illustration, frames=[2])])
        selection = one(bundle, "illustration-of-roi")
        assert selection["code"] == {"coding": [{"system": DCM, "code": "121200", "display": "Illustration of ROI"}]}
        assert selection["instance"] == [{
            "uid": illustration,
            "sopClass": {"system": SOP_SYSTEM, "code": sr.SECONDARY_CAPTURE, "display": "Secondary Capture Image Storage"},
            "subset": ["2"],
        }]
        assert "illustration-of-roi" in derived_from_profiles(bundle, group_observation(bundle))


class TestVisualExplanation:
    def test_image_reference(self):
        heatmap = sr.uid("heatmap")
        bundle, _ = report([sr.image_item(sr.VISUAL_EXPLANATION, sr.SECONDARY_CAPTURE, heatmap)])
        selection = one(bundle, "visual-explanation")
        assert selection["code"]["coding"] == [{"system": DCM, "code": "130401", "display": "Visual Explanation"}]
        assert selection["instance"][0]["uid"] == heatmap
        assert "visual-explanation" in derived_from_profiles(bundle, group_observation(bundle))


class TestRealWorldValueMap:
    def test_rwv_reference(self):
        rwv = sr.uid("rwv")
        bundle, _ = report([sr.composite_item(sr.RWV_MAP, sr.RWV_MAPPING_STORAGE, rwv)])
        selection = one(bundle, "real-world-value-map")
        assert selection["instance"] == [{
            "uid": rwv,
            "sopClass": {"system": SOP_SYSTEM, "code": sr.RWV_MAPPING_STORAGE, "display": "Real World Value Mapping Storage"},
        }]

    def test_wrong_sop_class_is_skipped(self):
        bundle, skipped = report([sr.composite_item(sr.RWV_MAP, CT, CT_1)])
        assert resources(bundle, "real-world-value-map") == []
        assert skipped == [f"1.5.1.6 (DCM,126100): Real World Value Map reference has SOP Class {CT}, not RWV Mapping Storage"]


class TestRegionInSpace:
    def item(self, with_roi=True):
        composite = sr.composite_item(sr.REGION_IN_SPACE, sr.RT_STRUCTURE_SET_STORAGE, sr.uid("rtstruct"))
        if with_roi:
            composite.ContentSequence = [sr.text_item(sr.coded("130490", "DCM", "ROI Name"), "GTV", "HAS PROPERTIES")]
        return composite

    def test_rt_structure_set_with_roi_subset_and_the_real_sop_class_uid(self):
        bundle, _ = report([self.item()])
        selection = next(r for r in resources(bundle, resource_type="ImagingSelection") if r["code"]["coding"][0]["code"] == "130488")
        # The IG fixes a mistyped SOP Class UID (11.2.840...); we keep DICOM's and claim the parent profile.
        assert profiles_of(selection) == ["observation-imaging-selection"]
        assert selection["instance"] == [{
            "uid": sr.uid("rtstruct"),
            "sopClass": {"system": SOP_SYSTEM, "code": sr.RT_STRUCTURE_SET_STORAGE, "display": "RT Structure Set Storage"},
            "subset": ["GTV"],
        }]
        assert {"reference": reference_to(bundle, selection)} in group_observation(bundle)["derivedFrom"]

    def test_without_roi_identification_is_skipped(self):
        bundle, skipped = report([self.item(with_roi=False)])
        assert all(r["code"]["coding"][0]["code"] != "130488" for r in resources(bundle, resource_type="ImagingSelection"))
        assert skipped == ["1.5.1.6 (DCM,130488): Region In Space without an ROI identification child (instance.subset is required)"]


def volumetric_report(items, **report_kwargs):
    group = sr.measurement_group("1411", items=items, finding_site=sr.finding_site_item(sr.LUNG),
                                 measurements=[sr.num_item(sr.VOLUME, 2480, sr.MM3)])
    seg = sr.uid("seg")
    report_kwargs.setdefault("evidence", [(CT_SERIES, CT, CT_1), (CT_SERIES, CT, CT_2), (sr.uid("series:seg"), sr.SEGMENTATION_STORAGE, seg)])
    result = map_sr(sr.measurement_report([group], sop_class_uid=sr.COMPREHENSIVE_3D_SR, **report_kwargs))
    return result.bundle, [str(s) for s in result.skipped]


SOURCE_ITEMS = [
    sr.uidref_item(sr.SOURCE_SERIES_FOR_SEGMENTATION, CT_SERIES),
    sr.image_item(sr.SOURCE_IMAGE_FOR_SEGMENTATION, CT, CT_1),
    sr.image_item(sr.SOURCE_IMAGE_FOR_SEGMENTATION, CT, CT_2),
]


class TestReferencedSegment:
    def test_one_instance_per_segment_number_with_focus_on_source_images(self):
        segment = sr.image_item(sr.REFERENCED_SEGMENT, sr.SEGMENTATION_STORAGE, sr.uid("seg"), segments=[1, 3],
                                observation_uid=sr.uid("segment-item"))
        bundle, skipped = volumetric_report([segment, *SOURCE_ITEMS])
        selection = one(bundle, "referenced-segment")
        assert skipped == []
        seg_class = {"system": SOP_SYSTEM, "code": sr.SEGMENTATION_STORAGE, "display": "Segmentation Storage"}
        assert selection["instance"] == [
            {"uid": sr.uid("seg"), "sopClass": seg_class, "subset": ["1"]},
            {"uid": sr.uid("seg"), "sopClass": seg_class, "subset": ["3"]},
        ]
        # seriesUid is the segmentation's own series (from the evidence), not the source series.
        assert selection["seriesUid"] == sr.uid("series:seg")
        focus = [deref(bundle, ref) for ref in selection["focus"]]
        assert [profiles_of(f) for f in focus] == [["source-image-for-segmentation"], ["source-sr-content-item"]]
        assert focus[1]["instance"][0]["subset"] == [sr.uid("segment-item")]
        assert "referenced-segment" in derived_from_profiles(bundle, group_observation(bundle))

    def test_non_segmentation_reference_is_skipped(self):
        bundle, skipped = volumetric_report([sr.image_item(sr.REFERENCED_SEGMENT, CT, CT_1, segments=[1])])
        assert resources(bundle, "referenced-segment") == []
        assert skipped == [f"1.5.1.6 (DCM,121191): reference has SOP Class {CT}, not Segmentation Storage"]

    def test_missing_segment_number_is_skipped(self):
        bundle, skipped = volumetric_report([sr.image_item(sr.REFERENCED_SEGMENT, sr.SEGMENTATION_STORAGE, sr.uid("seg"))])
        assert resources(bundle, "referenced-segment") == []
        assert skipped == ["1.5.1.6 (DCM,121191): segmentation reference without Referenced Segment Number (0062,000B)"]


class TestReferencedSegmentationFrame:
    def test_segment_number_to_subset(self):
        item = sr.image_item(sr.REFERENCED_SEGMENTATION_FRAME, sr.SEGMENTATION_STORAGE, sr.uid("seg"), segments=[2])
        bundle, _ = report([item, *SOURCE_ITEMS])
        selection = one(bundle, "referenced-segmentation-frame")
        assert selection["code"]["coding"][0] == {"system": DCM, "code": "121214", "display": "Referenced Segmentation Frame"}
        assert [i["subset"] for i in selection["instance"]] == [["2"]]
        assert profiles_of(deref(bundle, selection["focus"][0])) == ["source-image-for-segmentation"]

    def test_frame_numbers_when_no_segment_number(self):
        item = sr.image_item(sr.REFERENCED_SEGMENTATION_FRAME, sr.SEGMENTATION_STORAGE, sr.uid("seg"), frames=[4, 5])
        bundle, _ = report([item])
        assert [i["subset"] for i in one(bundle, "referenced-segmentation-frame")["instance"]] == [["4"], ["5"]]


class TestSourceImageForSegmentation:
    def test_all_source_images_with_the_source_series(self):
        segment = sr.image_item(sr.REFERENCED_SEGMENT, sr.SEGMENTATION_STORAGE, sr.uid("seg"), segments=[1])
        bundle, _ = volumetric_report([segment, *SOURCE_ITEMS], evidence=[])
        selection = one(bundle, "source-image-for-segmentation")
        assert selection["code"]["coding"][0]["code"] == "121233"
        assert selection["seriesUid"] == CT_SERIES
        assert [i["uid"] for i in selection["instance"]] == [CT_1, CT_2]
        assert "bodySite" not in selection


class TestVolumeSurface:
    def test_frame_of_reference_region_and_focus(self):
        surface = sr.scoord3d_item("POINT", [123.5, 234.1, -23.7], FRAME_OF_REFERENCE, concept=sr.VOLUME_SURFACE)
        bundle, _ = volumetric_report([surface, *SOURCE_ITEMS])
        selection = one(bundle, "volume-surface")
        assert selection["code"]["coding"][0] == {"system": DCM, "code": "121231", "display": "Volume Surface"}
        assert selection["frameOfReferenceUid"] == FRAME_OF_REFERENCE
        assert selection["seriesUid"] == CT_SERIES
        assert selection["instance"][0]["imageRegion3D"] == [{"regionType": "point", "coordinate": [123.5, 234.1, -23.7]}]
        assert profiles_of(deref(bundle, selection["focus"][0])) == ["source-image-for-segmentation"]
        assert "volume-surface" in derived_from_profiles(bundle, group_observation(bundle))


class TestVolumeSurfaceSeries:
    """``seriesUid`` is the Source series for segmentation (DCM 121232), never the SR's own."""

    def surface(self):
        return sr.scoord3d_item("POINT", [1.0, 2.0, 3.0], FRAME_OF_REFERENCE, concept=sr.VOLUME_SURFACE,
                                observation_uid=sr.uid("surface-item"))

    def test_source_series_without_images_gives_the_series_and_no_instance(self):
        bundle, skipped = volumetric_report([self.surface(), SOURCE_ITEMS[0]])
        selection = one(bundle, "volume-surface")
        assert selection["seriesUid"] == CT_SERIES
        assert selection["frameOfReferenceUid"] == FRAME_OF_REFERENCE
        # R5 holds the coordinates only under an instance, and the SR is not in CT_SERIES.
        assert "instance" not in selection
        assert skipped == [f"1.5.1.6 (DCM,121231): SCOORD3D coordinates not mapped: R5 holds imageRegion3D only under "
                           f"an instance, and no Source image for segmentation of series {CT_SERIES} is named to carry it"]
        focus = [deref(bundle, ref) for ref in selection["focus"]]
        assert [f["code"]["coding"][0]["code"] for f in focus] == ["121232", "111040"]
        assert focus[0]["seriesUid"] == CT_SERIES and "instance" not in focus[0]
        # The SR content item holding the coordinates stays reachable.
        assert focus[1]["instance"][0]["subset"] == [sr.uid("surface-item")]

    def test_no_source_series_no_images_the_sr_item_carries_the_region_without_a_series(self):
        bundle, skipped = volumetric_report([self.surface()])
        selection = one(bundle, "volume-surface")
        assert skipped == []
        assert "seriesUid" not in selection
        assert [(i["uid"], i["subset"]) for i in selection["instance"]] == [(sr.uid("sr"), [sr.uid("surface-item")])]
        assert selection["instance"][0]["imageRegion3D"] == [{"regionType": "point", "coordinate": [1.0, 2.0, 3.0]}]

    def test_source_images_without_source_series_take_their_evidence_series(self):
        bundle, _ = volumetric_report([self.surface(), *SOURCE_ITEMS[1:]])
        selection = one(bundle, "volume-surface")
        assert selection["seriesUid"] == CT_SERIES
        assert [i["uid"] for i in selection["instance"]] == [CT_1, CT_2]

    def test_a_source_image_of_another_series_is_never_under_the_source_series(self):
        other_series, ct_9 = sr.uid("series:other"), sr.uid("ct:9")
        items = [self.surface(), *SOURCE_ITEMS, sr.image_item(sr.SOURCE_IMAGE_FOR_SEGMENTATION, CT, ct_9)]
        bundle, skipped = volumetric_report(items, evidence=[(CT_SERIES, CT, CT_1), (CT_SERIES, CT, CT_2),
                                                             (other_series, CT, ct_9)])
        surface, sources = one(bundle, "volume-surface"), one(bundle, "source-image-for-segmentation")
        for selection in (surface, sources):
            assert selection["seriesUid"] == CT_SERIES
            assert [i["uid"] for i in selection["instance"]] == [CT_1, CT_2]
        # The stray image is selected on its own, under its own series, and named in a note.
        own = [r for r in resources(bundle, resource_type="ImagingSelection")
               if any(i["uid"] == ct_9 for i in r.get("instance", []))]
        assert [(r["seriesUid"], r["code"]["coding"][0]["code"]) for r in own] == [(other_series, "121233")]
        assert any(deref(bundle, ref) is own[0] for ref in group_observation(bundle)["derivedFrom"])
        assert skipped == [f"1.5.1.10 (DCM,121233): source image is in series {other_series} (evidence), not in the Source "
                           f"series for segmentation {CT_SERIES}: selected on its own, not under that series"]

    def test_a_source_series_uid_too_long_for_an_id_is_never_a_series_uid(self):
        long_uid = "1." + "2" * 64
        items = [self.surface(), sr.uidref_item(sr.SOURCE_SERIES_FOR_SEGMENTATION, long_uid), *SOURCE_ITEMS[1:]]
        bundle, skipped = volumetric_report(items)
        selection = one(bundle, "volume-surface")
        assert selection["seriesUid"] == CT_SERIES  # the images' own series, from the evidence
        assert all(r.get("seriesUid") != long_uid for r in resources(bundle, resource_type="ImagingSelection"))
        assert skipped == ["1.5.1.7 (DCM,121232): UID longer than 64 characters: cannot be a seriesUid (FHIR id)"]


class TestInstancesStayInTheirSeries:
    """No ``instance`` ever sits under the ``seriesUid`` of another series, for any selection kind."""

    @staticmethod
    def series_by_instance(ds):
        known = {ds.SOPInstanceUID: ds.SeriesInstanceUID}
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
            for series in study.ReferencedSeriesSequence:
                for ref in series.ReferencedSOPSequence:
                    known[ref.ReferencedSOPInstanceUID] = series.SeriesInstanceUID
        return known

    @pytest.mark.parametrize("with_source_series", [True, False])
    def test_every_profile_report(self, with_source_series):
        from tests.support.report_fixtures import every_profile_report

        ds = every_profile_report()
        if not with_source_series:
            measurements = next(c for c in ds.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010")
            for group in (g for g in measurements.ContentSequence if "ContentSequence" in g):
                group.ContentSequence = [c for c in group.ContentSequence
                                         if c.ConceptNameCodeSequence[0].CodeValue != "121232"]
        known = self.series_by_instance(ds)
        selections = resources(map_sr(ds).bundle, resource_type="ImagingSelection")
        kinds = {s["code"]["coding"][0]["code"] for s in selections}
        assert {"111030", "121231", "121191", "121214", "121233", "121200", "130401", "126100", "111040"} <= kinds
        for selection in selections:
            for instance in selection.get("instance", []):
                if "seriesUid" in selection and instance["uid"] in known:
                    assert known[instance["uid"]] == selection["seriesUid"], selection["code"]
        surface_series = {s.get("seriesUid") for s in selections if s["code"]["coding"][0]["code"] == "121231"}
        assert ds.SeriesInstanceUID not in surface_series

    def test_referenced_segment_not_in_the_evidence_has_no_series(self):
        segment = sr.image_item(sr.REFERENCED_SEGMENT, sr.SEGMENTATION_STORAGE, sr.uid("seg"), segments=[1])
        bundle, _ = volumetric_report([segment, *SOURCE_ITEMS], evidence=[(CT_SERIES, CT, CT_1), (CT_SERIES, CT, CT_2)])
        # 121232 is the source images' series (IG §4): the segmentation is not in it.
        assert "seriesUid" not in one(bundle, "referenced-segment")
        assert one(bundle, "source-image-for-segmentation")["seriesUid"] == CT_SERIES

    def test_images_of_two_series_in_one_selection_have_no_series(self):
        other = sr.uid("ct:other")
        items = [sr.image_item(sr.ILLUSTRATION_OF_ROI, CT, CT_1), sr.image_item(sr.ILLUSTRATION_OF_ROI, CT, other)]
        bundle, _ = report(items, evidence=[(CT_SERIES, CT, CT_1), (sr.uid("series:other"), CT, other)])
        assert "seriesUid" not in one(bundle, "illustration-of-roi")


class TestSourceSrContentItem:
    def test_each_item_with_an_observation_uid_gets_one(self):
        bundle, _ = report([], measurements=[sr.num_item(sr.LENGTH, 1, sr.MM, observation_uid=sr.uid("num"))])
        sources = resources(bundle, "source-sr-content-item")
        subsets = sorted(s["instance"][0]["subset"][0] for s in sources)
        group_uid = sr.uid("group:1410:Lesion 1")
        assert subsets == sorted([sr.uid("num"), group_uid])
        for source in sources:
            assert source["code"]["coding"][0] == {"system": DCM, "code": "111040", "display": "Original Source"}
            assert source["instance"][0]["uid"] == sr.uid("sr")
            assert source["instance"][0]["sopClass"]["code"] == sr.COMPREHENSIVE_SR
            assert source["seriesUid"] == sr.uid("sr-series")
        measurement = one(bundle, "imaging-measurement")
        linked = [deref(bundle, r) for r in measurement["derivedFrom"] if "source-sr-content-item" in profiles_of(deref(bundle, r))]
        assert [s["instance"][0]["subset"] for s in linked] == [[sr.uid("num")]]

    def test_none_without_observation_uids(self):
        group = sr.measurement_group("1410", observation_uid=None, measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])
        bundle = map_sr(sr.measurement_report([group])).bundle
        assert resources(bundle, "source-sr-content-item") == []
        assert "derivedFrom" not in one(bundle, "imaging-measurement")

    def test_option_turns_them_off(self):
        from mapping import MappingOptions

        bundle = map_sr(sr.measurement_report([sr.measurement_group("1410", measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])]),
                        MappingOptions(source_sr_content_items=False)).bundle
        assert resources(bundle, "source-sr-content-item") == []


def test_coding_helper_reads_first_coding():
    assert coding({"coding": [{"system": "s", "code": "c"}]}) == ("s", "c")
