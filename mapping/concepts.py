"""The SR concepts the mapping recognises, as ``(scheme, value)`` keys.

Taken from pydicom's code dictionary where it has them, so each key is spelled once and by
name; the few it lacks are written out with the template row they come from.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = ["key"]


def key(code: Code) -> tuple[str, str]:
    """``(scheme, value)`` of a pydicom :class:`Code`."""
    return (code.scheme_designator, code.value)


# Document (TID 1500) and containers
IMAGING_MEASUREMENT_REPORT = key(codes.DCM.ImagingMeasurementReport)
IMAGING_MEASUREMENTS = key(codes.DCM.ImagingMeasurements)
DERIVED_IMAGING_MEASUREMENTS = key(codes.DCM.DerivedImagingMeasurements)
QUALITATIVE_EVALUATIONS = ("UMLS", "C0034375")  # TID 1500 row 12
MEASUREMENT_GROUP = key(codes.DCM.MeasurementGroup)

# Observer context (TID 1002 person, TID 1004 device)
OBSERVER_TYPE = key(codes.DCM.ObserverType)
PERSON = key(codes.DCM.Person)
DEVICE = key(codes.DCM.Device)
PERSON_OBSERVER_NAME = key(codes.DCM.PersonObserverName)
DEVICE_OBSERVER_UID = key(codes.DCM.DeviceObserverUID)
DEVICE_OBSERVER_NAME = key(codes.DCM.DeviceObserverName)
DEVICE_OBSERVER_MANUFACTURER = key(codes.DCM.DeviceObserverManufacturer)
DEVICE_OBSERVER_MODEL_NAME = key(codes.DCM.DeviceObserverModelName)
DEVICE_OBSERVER_SERIAL_NUMBER = key(codes.DCM.DeviceObserverSerialNumber)

# Measurement group (TID 1410 / 1411 / 1501)
ACTIVITY_SESSION = ("NCIt", "C67447")  # TID 1411 row 2
TRACKING_IDENTIFIER = key(codes.DCM.TrackingIdentifier)
TRACKING_UID = key(codes.DCM.TrackingUniqueIdentifier)
FINDING_CATEGORY = ("SCT", "276214006")  # TID 1501 row 4
FINDING = key(codes.DCM.Finding)
FINDING_SITE = key(codes.SCT.FindingSite)
LATERALITY = key(codes.SCT.Laterality)
TOPOGRAPHICAL_MODIFIER = key(codes.SCT.TopographicalModifier)
MEASUREMENT_METHOD = key(codes.SCT.MeasurementMethod)
GEOMETRIC_PURPOSE = key(codes.DCM.GeometricPurposeOfRegion)
TIME_POINT = ("DCM", "126070")  # TID 1502 "Subject Time Point Identifier"
TIME_POINT_UMLS = ("UMLS", "C2348792")  # "Time Point" as dcmqi and TID 1411 examples write it

# Image references and regions (TID 1410 / 1411 / 1501)
IMAGE_REGION = key(codes.DCM.ImageRegion)
ILLUSTRATION_OF_ROI = key(codes.DCM.IllustrationOfROI)
VISUAL_EXPLANATION = key(codes.DCM.VisualExplanation)
REGION_IN_SPACE = key(codes.DCM.RegionInSpace)
REAL_WORLD_VALUE_MAP = key(codes.DCM.RealWorldValueMapUsedForMeasurement)
REFERENCED_SEGMENT = key(codes.DCM.ReferencedSegment)
REFERENCED_SEGMENTATION_FRAME = key(codes.DCM.ReferencedSegmentationFrame)
SOURCE_IMAGE_FOR_SEGMENTATION = key(codes.DCM.SourceImageForSegmentation)
SOURCE_SERIES_FOR_SEGMENTATION = key(codes.DCM.SourceSeriesForSegmentation)
VOLUME_SURFACE = key(codes.DCM.VolumeSurface)
IMAGE_SOURCE = key(codes.SCT.Source)  # TID 1501 "Source" IMAGE

# Algorithm Identification (TID 4019)
ALGORITHM_NAME = key(codes.DCM.AlgorithmName)
ALGORITHM_VERSION = key(codes.DCM.AlgorithmVersion)
ALGORITHM_PARAMETERS = key(codes.DCM.AlgorithmParameters)
ALGORITHM_FAMILY = key(codes.DCM.AlgorithmFamily)
ALGORITHM_ITEMS = frozenset({ALGORITHM_NAME, ALGORITHM_VERSION, ALGORITHM_PARAMETERS, ALGORITHM_FAMILY})

# Group children that are context, not qualitative evaluations (IG architecture.md,
# "Imaging Measurement Group Relationship").
NOT_QUALITATIVE = frozenset({
    TRACKING_IDENTIFIER, FINDING, GEOMETRIC_PURPOSE, ACTIVITY_SESSION, FINDING_CATEGORY,
    FINDING_SITE, MEASUREMENT_METHOD, LATERALITY, TOPOGRAPHICAL_MODIFIER, TIME_POINT, TIME_POINT_UMLS,
}) | ALGORITHM_ITEMS

# Children of a measurement or evaluation that other builders map (algorithm Device, method,
# BodyStructure); anything else under it is a component or a note.
ITEM_CONTEXT = ALGORITHM_ITEMS | {MEASUREMENT_METHOD, FINDING_SITE, LATERALITY, TOPOGRAPHICAL_MODIFIER}

# Value types that ``selections.group_selections`` maps or notes.
SELECTION_VALUE_TYPES = frozenset({"IMAGE", "COMPOSITE", "SCOORD", "SCOORD3D", "WAVEFORM"})
