"""Write ``examples/measurement-report.dcm``: the TID 1500 SR the quick start converts.

Run from the repository root: ``python examples/make_example.py``. The output is
deterministic (fixed UIDs and dates); ``tests/test_example.py`` checks the shipped file
still equals what this script writes.

The report is synthetic (no real patient) and exercises most of the IG's profiles: a planar
group (TID 1410) with a polyline region, an illustration, measurements and a qualitative
evaluation; a volumetric group (TID 1411) with a referenced segment and its source images;
a derived measurement (TID 1420); and a report-level qualitative evaluation.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import sr_builders as sr  # noqa: E402

OUTPUT = Path(__file__).resolve().parent / "measurement-report.dcm"


def example_report() -> sr.Dataset:
    """The example TID 1500 document."""
    (ct_class, ct_1), (_, ct_2) = sr.ct_image_refs(2)
    seg = sr.uid("example:seg")
    planar = sr.measurement_group(
        "1410",
        tracking_identifier="Nodule 1",
        finding_site=sr.finding_site_item(sr.LUNG, laterality=sr.RIGHT, modifier=sr.UPPER),
        algorithm=sr.algorithm_items("NoduleFinder", "2.1.0", parameters=["threshold=0.5"]),
        items=[
            sr.scoord_item("POLYLINE", [10.5, 20.0, 30.25, 20.0, 30.25, 40.0, 10.5, 20.0],
                           sr.source_image(ct_class, ct_1), observation_uid=sr.uid("example:region")),
            sr.image_item(sr.ILLUSTRATION_OF_ROI, sr.SECONDARY_CAPTURE, sr.uid("example:illustration")),
        ],
        measurements=[
            sr.num_item(sr.LENGTH, 19.8, sr.MM, observation_uid=sr.uid("example:length")),
            sr.num_item(sr.AREA, 301.5, sr.MM2, observation_uid=sr.uid("example:area")),
        ],
        qualitative=[sr.code_item(sr.MALIGNANCY, sr.HIGHLY_SUSPICIOUS, observation_uid=sr.uid("example:malignancy"))],
    )
    volumetric = sr.measurement_group(
        "1411",
        tracking_identifier="Nodule 1 volume",
        finding_site=sr.finding_site_item(sr.LUNG),
        items=[
            sr.image_item(sr.REFERENCED_SEGMENT, sr.SEGMENTATION_STORAGE, seg, segments=[1]),
            sr.uidref_item(sr.SOURCE_SERIES_FOR_SEGMENTATION, sr.uid("series:ct")),
            sr.image_item(sr.SOURCE_IMAGE_FOR_SEGMENTATION, ct_class, ct_1),
            sr.image_item(sr.SOURCE_IMAGE_FOR_SEGMENTATION, ct_class, ct_2),
        ],
        measurements=[sr.num_item(sr.VOLUME, 2480.0, sr.MM3, observation_uid=sr.uid("example:volume"))],
    )
    derived = sr.derived_measurements([
        sr.num_item(sr.coded("126031", "DCM", "Peak Value Within ROI"), 1.0, sr.UNITY,
                    children=[sr.measurement_group("1410", tracking_identifier="Nodule 1 (derived)",
                                                   relationship="INFERRED FROM",
                                                   finding_site=sr.finding_site_item(sr.LUNG),
                                                   measurements=[sr.num_item(sr.DIAMETER, 21.0, sr.MM)])]),
    ])
    qualitative = sr.report_qualitative([
        sr.text_item(sr.coded("121106", "DCM", "Comment"), "Nodule grows; follow-up CT in 3 months."),
    ])
    return sr.measurement_report(
        [planar, volumetric], derived=derived, qualitative=qualitative,
        patient_name="Example^Patient", patient_id="EXAMPLE-0001",
    )


if __name__ == "__main__":
    OUTPUT.write_bytes(sr.to_part10_bytes(example_report()))
    print(f"wrote {OUTPUT.name}")
