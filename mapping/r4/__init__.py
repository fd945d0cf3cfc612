"""FHIR R4 output: a pure transform of the R5 transaction Bundle ``map_sr`` makes.

The R5 mapping stays the single source of truth; :func:`to_r4` rewrites its Bundle for
servers that speak only R4 (``MappingOptions(fhir_version="r4")`` applies it in ``map_sr``):

- ImagingSelection (R5-only) becomes a ``Basic`` with HL7 cross-version extensions
  (``imaging_selection="basic"``, lossless: :func:`from_basic` gives the R5 resource back)
  or is left out with every reference to it (``"omit"``, the IG's "FHIR Version 4
  compatibility");
- Observation, Device, BodyStructure and Practitioner take their R4 shapes; R5-only elements
  become the R4 core extension where there is one, else a cross-version extension
  (``http://hl7.org/fhir/5.0/StructureDefinition/extension-<Resource>.<element>``);
- the IG's R5 profiles are removed from ``meta.profile``: R4 resources claim core R4 only.

Every choice is in ``docs/mapping-decisions.md``, "FHIR R4 output".
"""

from .convert import ImagingSelectionMode, R4Conversion, to_r4
from .imaging_selection import BASIC_CODE, from_basic, is_selection_basic, to_basic

__all__ = ["to_r4", "R4Conversion", "ImagingSelectionMode", "to_basic", "from_basic", "is_selection_basic",
           "BASIC_CODE"]
