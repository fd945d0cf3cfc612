"""DICOM coded concepts -> FHIR ``Coding`` / ``CodeableConcept``.

``CODING_SYSTEMS`` is the one table from DICOM Coding Scheme Designators (0008,0102) to FHIR
``system`` URIs; no other module spells a terminology URI. Designators not in the table fall
back to ``urn:oid:<Coding Scheme UID>`` when the SR's Coding Scheme Identification Sequence
(0008,0110) names one, else to ``FALLBACK_SYSTEM_PREFIX + designator``; the caller records a
note either way.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CODING_SYSTEMS",
    "FALLBACK_SYSTEM_PREFIX",
    "Concept",
    "CodingSystems",
    "DCM_SYSTEM",
    "UCUM_SYSTEM",
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
}

FALLBACK_SYSTEM_PREFIX = "urn:dicom:coding-scheme:"


@dataclass(frozen=True, slots=True)
class Concept:
    """A DICOM coded concept (Code Value or Long/URN Code Value, designator, meaning)."""

    value: str
    scheme: str
    meaning: str
    scheme_version: str | None = None

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

    def codeable_concept(self, concept: Concept) -> dict:
        """A FHIR ``CodeableConcept`` with one coding."""
        return {"coding": [self.coding(concept)]}
