"""Whole reports that exercise every profile, for conformance tests and benchmarks."""

from __future__ import annotations

from pydicom.dataset import Dataset

from tests.support import sr_builders as sr

CT = sr.CT_IMAGE_STORAGE


def _region(graphic_type: str, data: list[float], image: int, **common) -> Dataset:
    return sr.scoord_item(graphic_type, data, sr.source_image(CT, sr.uid(f"ct:{image}")), **common)


def every_profile_report(sop_class_uid: str = sr.COMPREHENSIVE_3D_SR, *, observation_uids: bool = True) -> Dataset:
    """A TID 1500 report using every IG profile the SOP class can carry.

    SCOORD3D (3D regions, volume surfaces) only exists in Comprehensive 3D SR; for the other
    classes those items are left out.
    """
    with_3d = sop_class_uid == sr.COMPREHENSIVE_3D_SR

    def obs(name: str) -> dict:
        return {"observation_uid": sr.uid(name)} if observation_uids else {}

    def group(template: str, name: str, items: list[Dataset], **kwargs) -> Dataset:
        kwargs.setdefault("finding_site", sr.finding_site_item(sr.LUNG, laterality=sr.RIGHT))
        kwargs.setdefault("measurements", [sr.num_item(sr.LENGTH, 12.5, sr.MM, **obs(f"{name}:length"))])
        return sr.measurement_group(template, tracking_identifier=name, items=items,
                                    observation_uid=sr.uid(f"group:{name}") if observation_uids else None, **kwargs)

    rt_region = sr.composite_item(sr.REGION_IN_SPACE, sr.RT_STRUCTURE_SET_STORAGE, sr.uid("rtstruct"))
    rt_region.ContentSequence = [sr.text_item(sr.coded("130490", "DCM", "ROI Name"), "GTV", "HAS PROPERTIES")]
    source_items = [
        sr.uidref_item(sr.SOURCE_SERIES_FOR_SEGMENTATION, sr.uid(f"series:{CT}")),  # where the evidence puts CT images
        sr.image_item(sr.SOURCE_IMAGE_FOR_SEGMENTATION, CT, sr.uid("ct:1")),
        sr.image_item(sr.SOURCE_IMAGE_FOR_SEGMENTATION, CT, sr.uid("ct:2")),
    ]
    groups = [
        group("1410", "planar", [
            _region("POLYLINE", [10.5, 20.0, 30.25, 20.0, 30.25, 40.0, 10.5, 20.0], 1, **obs("region")),
            sr.image_item(sr.ILLUSTRATION_OF_ROI, sr.SECONDARY_CAPTURE, sr.uid("illustration")),
            sr.image_item(sr.VISUAL_EXPLANATION, sr.SECONDARY_CAPTURE, sr.uid("heatmap"), frames=[1]),
            sr.composite_item(sr.RWV_MAP, sr.RWV_MAPPING_STORAGE, sr.uid("rwv")),
            rt_region,
        ], algorithm=sr.algorithm_items("NoduleFinder", "2.1", parameters=["t=0.5"]),
            qualitative=[sr.code_item(sr.MALIGNANCY, sr.HIGHLY_SUSPICIOUS, **obs("malignancy")),
                         sr.text_item(sr.coded("121106", "DCM", "Comment"), "Spiculated")]),
        group("1410", "point", [_region("POINT", [5.0, 6.0], 2)]),
        group("1410", "multipoint", [_region("MULTIPOINT", [1.0, 2.0, 3.0, 4.0], 2)]),
        group("1410", "circle", [_region("CIRCLE", [50.0, 50.0, 50.0, 60.0], 1)], finding_site=None),
        group("1410", "ellipse", [_region("ELLIPSE", [10.0, 50.0, 90.0, 50.0, 50.0, 30.0, 50.0, 70.0], 1)]),
        group("1410", "multiframe", [sr.scoord_item(
            "POLYLINE", [1.0, 1.0, 2.0, 2.0], sr.source_image(sr.ENHANCED_CT_STORAGE, sr.uid("enhanced-ct"), frames=[2, 3]))]),
        group("1410", "segmentation-frame", [
            sr.image_item(sr.REFERENCED_SEGMENTATION_FRAME, sr.SEGMENTATION_STORAGE, sr.uid("seg"), segments=[2]),
            *source_items]),
        group("1411", "segment", [
            sr.image_item(sr.REFERENCED_SEGMENT, sr.SEGMENTATION_STORAGE, sr.uid("seg"), segments=[1, 3], **obs("segment")),
            *source_items], measurements=[sr.num_item(sr.VOLUME, 2480, sr.MM3, **obs("segment:volume"))]),
        group("1501", "generic", [], measurements=[sr.num_item(sr.AREA, 42, sr.MM2)]),
    ]
    if with_3d:
        groups += [
            group("1410", "region3d", [sr.scoord3d_item("ELLIPSOID", [float(v) for v in range(18)], sr.uid("for"), **obs("r3d"))]),
            group("1411", "surface", [
                sr.scoord3d_item("POINT", [123.5, 234.1, -23.7], sr.uid("for"), concept=sr.VOLUME_SURFACE), *source_items]),
        ]
    nested = sr.measurement_group("1410", tracking_identifier="derived-source", relationship="INFERRED FROM",
                                  finding_site=sr.finding_site_item(sr.LUNG),
                                  observation_uid=sr.uid("group:derived-source") if observation_uids else None,
                                  measurements=[sr.num_item(sr.DIAMETER, 21, sr.MM)])
    derived = sr.derived_measurements([
        sr.num_item(sr.coded("126031", "DCM", "Peak Value Within ROI"), 3.5, sr.UNITY, children=[nested], **obs("derived")),
    ])
    qualitative = sr.report_qualitative([
        sr.text_item(sr.coded("121106", "DCM", "Comment"), "Stable disease"),
        sr.code_item(sr.MALIGNANCY, sr.HIGHLY_SUSPICIOUS),
    ])
    return sr.measurement_report(
        groups, derived=derived, qualitative=qualitative, sop_class_uid=sop_class_uid,
        container_algorithm=sr.algorithm_items("Pipeline", "5.0"),
        device_observer_uid=sr.uid("cad"), device_observer_name="CAD node",
    )


def fidelity_report() -> Dataset:
    """Edge cases of the fidelity review in one report: modifiers, properties, a qualifier beside
    a value, inherited and partial Observation DateTimes, two finding sites, INFERRED FROM and
    TID 1501 source images, a source series without source images, a Time Point, DS digits.
    """
    derivation = sr.coded("121401", "DCM", "Derivation")
    suv = sr.coded("126401", "DCM", "SUVbw")
    source_of_measurement = sr.coded("121112", "DCM", "Source of Measurement")
    nums = [
        sr.num_item(suv, "6.020", sr.SUV_BW, children=[
            sr.code_item(derivation, sr.coded("373098007", "SCT", "Mean"), "HAS CONCEPT MOD"),
            sr.text_item(sr.coded("121405", "DCM", "Population description"), "Adults", "HAS PROPERTIES")]),
        sr.num_item(suv, "10.4", sr.SUV_BW, observation_datetime="2024", children=[
            sr.code_item(derivation, sr.coded("56851009", "SCT", "Maximum"), "HAS CONCEPT MOD"),
            sr.image_item(source_of_measurement, CT, sr.uid("ct:9"), frames=[3], relationship="INFERRED FROM"),
            sr.scoord_item("POLYLINE", [1.0, 2.0, 3.0, 4.0], sr.source_image(CT, sr.uid("ct:9")),
                           concept=source_of_measurement, relationship="INFERRED FROM")]),
        sr.num_item(sr.LENGTH, "-778", sr.MM, qualifier=sr.coded("114009", "DCM", "Value out of range")),
    ]
    items = [
        sr.finding_site_item(sr.coded("10200004", "SCT", "Liver")),
        sr.finding_site_item(sr.coded("64033007", "SCT", "Kidney"), laterality=sr.coded("7771000", "SCT", "Left")),
        sr.text_item(sr.coded("C2348792", "UMLS", "Time Point"), "baseline", "HAS OBS CONTEXT"),
        sr.image_item(sr.coded("260753009", "SCT", "Source"), CT, sr.uid("ct:7")),
        sr.image_item(sr.REFERENCED_SEGMENT, sr.SEGMENTATION_STORAGE, sr.uid("seg"), segments=[1]),
        sr.uidref_item(sr.SOURCE_SERIES_FOR_SEGMENTATION, sr.uid("series:ct")),
    ]
    group = sr.measurement_group("1411", items=items, measurements=nums, observation_datetime="20240215")
    report = sr.measurement_report([group], udi="{01}00844588003288{17}141120")
    container = next(i for i in report.ContentSequence if i.ValueType == "CONTAINER")
    container.ObservationDateTime = "20240214083000"
    return report
