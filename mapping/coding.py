"""DICOM coded concepts -> FHIR ``Coding`` / ``CodeableConcept``.

``CODING_SYSTEMS`` is the one table from DICOM Coding Scheme Designators (0008,0102) to FHIR
``system`` URIs; no other module spells a terminology URI. Designators not in the table fall
back to ``urn:oid:<Coding Scheme UID>`` when the SR's Coding Scheme Identification Sequence
(0008,0110) names one, else to ``FALLBACK_SYSTEM_PREFIX + designator``; the caller records a
note either way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CODING_SYSTEMS",
    "FALLBACK_SYSTEM_PREFIX",
    "Concept",
    "CodingSystems",
    "DCM_SYSTEM",
    "UCUM_SYSTEM",
    "ucum_code",
]

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM_SYSTEM = "http://unitsofmeasure.org"
SNOMED_SYSTEM = "http://snomed.info/sct"

CODING_SYSTEMS: dict[str, str] = {
    "DCM": DCM_SYSTEM,
    "SCT": SNOMED_SYSTEM,
    "UCUM": UCUM_SYSTEM,
    "LN": "http://loinc.org",
    "UMLS": "http://terminology.hl7.org/CodeSystem/umls",
    "NCIt": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
    "RADLEX": "http://radlex.org",
    "RadLex": "http://radlex.org",
    "FMA": "http://purl.org/sig/ont/fma",
    "MSH": "urn:oid:2.16.840.1.113883.6.177",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICD-10-CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "RFC5646": "urn:ietf:bcp:47",
    "IBSI": "https://ibsi.readthedocs.io",
    "99LIDCQIICR": "http://cancerimagingarchive.net",
    # Retired SNOMED designators, kept as the SR wrote them beside the SNOMED CT translation.
    # SNOMED-RT has no FHIR system: DICOM gives SRT the SNOMED CT OID, but http://snomed.info/sct
    # admits only concept ids and expressions since R4, not the legacy "T-28000" style ids.
    # SNOMED International 3 has an HL7 terminology entry (retired, OID 2.16.840.1.113883.6.51).
    "SRT": "urn:dicom:coding-scheme:SRT",
    "SNM3": "http://terminology.hl7.org/CodeSystem/SNM3",
    "99SDM": "urn:dicom:coding-scheme:99SDM",
}

FALLBACK_SYSTEM_PREFIX = "urn:dicom:coding-scheme:"

# An annotation that opens a term and is directly followed by a unit symbol ("{SUVbw}g/ml"):
# DICOM CID 85 codes written so, which UCUM's grammar refuses (an annotation either stands alone
# or follows a unit symbol). Group 1: start or operator; 2: the annotation(s); 3: the symbol.
_LEADING_ANNOTATION = re.compile(r"(^|[./(])((?:\{[^{}]*\})+)([^./(){}]+)")


def ucum_code(code: str) -> str:
    """``code`` made valid UCUM where DICOM puts an annotation before a unit symbol.

    A code that opens with an annotation followed by a unit (``{SUVbw}g/ml``) gets the annotation
    at its end (``g/ml{SUVbw}``); an annotation elsewhere directly before a unit symbol moves behind
    that symbol (``mg/{x}dl`` -> ``mg/dl{x}``). Annotations are unity in UCUM, so the quantity's
    value and dimension are unchanged. Valid codes (``{ratio}``, ``{counts}/s``, ``mm``) are
    returned as they are.
    """
    if "{" not in code:
        return code
    opening = _LEADING_ANNOTATION.match(code)
    if opening is not None and opening.group(1) == "":
        annotation = opening.group(2)
        return _move_annotations(code[len(annotation):]) + annotation
    return _move_annotations(code)


def _move_annotations(code: str) -> str:
    return _LEADING_ANNOTATION.sub(lambda m: m.group(1) + m.group(3) + m.group(2), code)


@dataclass(frozen=True, slots=True)
class Concept:
    """A DICOM coded concept (Code Value or Long/URN Code Value, designator, meaning).

    ``original`` is the code as the SR wrote it when it was translated on reading (a retired
    SNOMED-RT id read as its SNOMED CT concept id), so nothing of the source is lost.
    """

    value: str
    scheme: str
    meaning: str
    scheme_version: str | None = None
    original: Concept | None = None

    @property
    def key(self) -> tuple[str, str]:
        """``(scheme, value)``, for table lookups (SRT codes arrive translated to SCT)."""
        return (self.scheme, self.value)

    def __str__(self) -> str:
        return f"({self.scheme},{self.value})"


class CodingSystems:
    """Designator -> system resolution for one SR, remembering unknown designators.

    ``scheme_uids`` comes from the SR's Coding Scheme Identification Sequence.
    """

    __slots__ = ("_scheme_uids", "unknown")

    def __init__(self, scheme_uids: dict[str, str] | None = None) -> None:
        self._scheme_uids = scheme_uids or {}
        self.unknown: dict[str, str] = {}

    def system(self, scheme: str) -> str:
        """The FHIR system URI for a DICOM coding scheme designator."""
        known = CODING_SYSTEMS.get(scheme)
        if known is not None:
            return known
        uid = self._scheme_uids.get(scheme)
        fallback = f"urn:oid:{uid}" if uid else FALLBACK_SYSTEM_PREFIX + scheme
        self.unknown.setdefault(scheme, fallback)
        return fallback

    def coding(self, concept: Concept) -> dict:
        """A FHIR ``Coding`` for the concept (display = Code Meaning)."""
        coding = {"system": self.system(concept.scheme), "code": concept.value}
        if concept.meaning:
            coding["display"] = concept.meaning
        return coding

    def codings(self, concept: Concept) -> list[dict]:
        """The concept's coding, then the SR's original code when it was translated on reading.

        Only for elements whose profile puts no pattern on ``coding``: a pattern applies to every
        repetition, so a second coding would break it (the IG's fixed codes never come from here).
        """
        codings = [self.coding(concept)]
        if concept.original is not None:
            codings.append(self.coding(concept.original))
        return codings

    def codeable_concept(self, concept: Concept) -> dict:
        """A FHIR ``CodeableConcept``: the concept's coding, plus the SR's original code if translated."""
        return {"coding": self.codings(concept)}
