"""DICOM SR (TID 1500 Measurement Report) -> FHIR R5 transaction Bundle.

Pure functions following the HL7 *DICOM SR to FHIR Resource Mapping* IG
(``hl7.fhir.uv.dicom-sr``): ``map_sr(dataset, options)`` returns a :class:`MappingResult`
with the Bundle as plain dicts and the list of content items that were skipped. No I/O.
"""

from .bundle import serialize
from .errors import InvalidValue, MappingError, MissingContentItem, NotAnSR, Skipped, UnsupportedTemplate
from .options import FhirVersion, MappingOptions, R4ImagingSelection, WriteMode
from .report import MappingResult, map_sr, r4_form
from .sop_classes import SR_STORAGE_SOP_CLASSES, TID1500_SOP_CLASSES

__all__ = [
    "map_sr",
    "r4_form",
    "serialize",
    "MappingOptions",
    "MappingResult",
    "WriteMode",
    "FhirVersion",
    "R4ImagingSelection",
    "MappingError",
    "NotAnSR",
    "UnsupportedTemplate",
    "MissingContentItem",
    "InvalidValue",
    "Skipped",
    "SR_STORAGE_SOP_CLASSES",
    "TID1500_SOP_CLASSES",
]
