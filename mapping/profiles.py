"""Canonical URLs of the IG's profiles and the fixed codings their patterns demand.

The fixed codings carry the exact ``display`` of the compiled profiles: a pattern on a
Coding matches display too, so these are emitted as they are here, never from the SR's
Code Meaning.
"""

from __future__ import annotations

from .coding import DCM_SYSTEM

__all__ = ["profile_url", "IG_BASE", "SOP_CLASS_SYSTEM", "fixed"]

IG_BASE = "http://hl7.org/fhir/uv/dicom-sr"
SOP_CLASS_SYSTEM = "https://dicom.nema.org/medical/dicom/current/output/chtml/part04/sect_B.5"
IDENTIFIER_TYPE_SYSTEM = f"{IG_BASE}/CodeSystem/dicom-identifier-type"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
UMLS = "http://terminology.hl7.org/CodeSystem/umls"


def profile_url(profile_id: str) -> str:
    """``http://hl7.org/fhir/uv/dicom-sr/StructureDefinition/<id>``."""
    return f"{IG_BASE}/StructureDefinition/{profile_id}"


def _coding(system: str, code: str, display: str) -> dict:
    return {"system": system, "code": code, "display": display}


def _dcm(code: str, display: str) -> dict:
    return _coding(DCM_SYSTEM, code, display)


class fixed:  # noqa: N801 - a namespace of constants
    """Codings fixed by the IG profiles (code, category, identifier types)."""

    MEASUREMENT_GROUP = _dcm("125007", "Measurement Group")
    DERIVED_IMAGING_MEASUREMENTS = _dcm("126011", "Derived Imaging Measurements")
    QUALITATIVE_EVALUATIONS = _coding(UMLS, "C0034375", "Qualitative Evaluations")
    IMAGE_REGION = _dcm("111030", "Image Region")
    ILLUSTRATION_OF_ROI = _dcm("121200", "Illustration of ROI")
    VISUAL_EXPLANATION = _dcm("130401", "Visual Explanation")
    REGION_IN_SPACE = _dcm("130488", "Region In Space")
    REAL_WORLD_VALUE_MAP = _dcm("126100", "Real World Value Map used for measurement")
    REFERENCED_SEGMENT = _dcm("121191", "Referenced Segment")
    REFERENCED_SEGMENTATION_FRAME = _dcm("121214", "Referenced Segmentation Frame")
    SOURCE_IMAGE_FOR_SEGMENTATION = _dcm("121233", "Source image for segmentation")
    SOURCE_SERIES_FOR_SEGMENTATION = _dcm("121232", "Source series for segmentation")
    VOLUME_SURFACE = _dcm("121231", "Volume Surface")
    ORIGINAL_SOURCE = _dcm("111040", "Original Source")
    STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
    TRACKING_IDENTIFIER = _dcm("112039", "Tracking Identifier")
    TRACKING_UID = _dcm("112040", "Tracking Unique Identifier")
    ALGORITHM_PARAMETERS = _dcm("111002", "Algorithm Parameters")
    ACCESSION_ID = _coding(V2_0203, "ACSN", "Accession ID")
    OBSERVATION_UID = _coding(IDENTIFIER_TYPE_SYSTEM, "observation-uid", "Observation UID")
