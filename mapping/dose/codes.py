"""Concepts of the dose templates and the codings, profiles and identifier types of the dose IG.

DICOM concepts are ``(scheme, value)`` keys as :attr:`ContentNode.key` gives them (SRT codes
arrive as SCT). IG codings carry the exact displays of the IG's FSH (``input/fsh/*.fsh``):
patterns on codings match the display too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..coding import DCM_SYSTEM, SNOMED_SYSTEM
from .units import Dimension

__all__ = ["IG_BASE", "profile_url", "key", "fixed", "PROCEDURES_REPORTED", "Component", "COMPONENTS",
           "PROJECTION_TOTALS", "CT_TOTALS", "ADMINISTRATION_ITEMS", "MODALITY_BY_SOP_CLASS", "MODALITY_DISPLAYS"]

IG_BASE = "http://hl7.org/fhir/uv/radiation-dose-summary"
IDENTIFIER_TYPE_SYSTEM = f"{IG_BASE}/CodeSystem/dicom-identifier-type"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOINC = "http://loinc.org"


def profile_url(profile_id: str) -> str:
    """``http://hl7.org/fhir/uv/radiation-dose-summary/StructureDefinition/<id>``."""
    return f"{IG_BASE}/StructureDefinition/{profile_id}"


def key(scheme: str, value: str) -> tuple[str, str]:
    """A concept key as :attr:`ContentNode.key` gives it."""
    return (scheme, value)


def _coding(system: str, code: str, display: str) -> dict:
    return {"system": system, "code": code, "display": display}


class fixed:  # noqa: N801 - a namespace of constants
    """Codings the IG's profiles fix, and the procedure-reported and modality codes."""

    DOSE_SUMMARY = _coding(LOINC, "73569-6",
                           "Radiation exposure and protection information [Description] Document Diagnostic imaging")
    SOP_INSTANCE_UID = _coding(IDENTIFIER_TYPE_SYSTEM, "sop-instance-uid", "SOP Instance UID")
    STUDY_INSTANCE_UID = _coding(IDENTIFIER_TYPE_SYSTEM, "study-instance-uid", "Study Instance UID")
    APPLICATION_ENTITY = _coding(IDENTIFIER_TYPE_SYSTEM, "application-entity", "Application Entity")
    DEVICE_UID = _coding(IDENTIFIER_TYPE_SYSTEM, "device-uid", "Device UID")
    DEVICE_ID = _coding(IDENTIFIER_TYPE_SYSTEM, "device-id", "Device ID")
    SERIAL_NUMBER = _coding(V2_0203, "SNO", "Serial Number")
    PROCEDURE_REPORTED = _coding(DCM_SYSTEM, "121058", "Procedure reported")
    # The IG's Procedure Reported Type value set (procedure-reported-type-rds-vs).
    CT = _coding(SNOMED_SYSTEM, "77477000", "Computerized tomography")
    PROJECTION_X_RAY = _coding(DCM_SYSTEM, "113704", "Projection X-Ray")
    MAMMOGRAPHY = _coding(SNOMED_SYSTEM, "71651007", "Mammography")
    RADIOPHARMACEUTICAL_ADMINISTRATION = _coding(DCM_SYSTEM, "113502", "Radiopharmaceutical Administration")


PROCEDURES_REPORTED = {
    key("SCT", "77477000"): fixed.CT,
    key("DCM", "113704"): fixed.PROJECTION_X_RAY,
    key("SCT", "71651007"): fixed.MAMMOGRAPHY,
    key("DCM", "113502"): fixed.RADIOPHARMACEUTICAL_ADMINISTRATION,
}
"""Procedure Reported (DCM 121058) values the IG's value set holds, by concept key."""


@dataclass(frozen=True, slots=True)
class Component:
    """One component of the IG's component value set: its coding and what its value is.

    ``dimension`` for quantities (the IG unit is ``dimension.value``); ``integer`` for counts;
    neither for coded values (CodeableConcept).
    """

    coding: dict
    dimension: Dimension | None = None
    integer: bool = False

    @property
    def key(self) -> tuple[str, str]:
        """The DICOM concept this component reads, as a content-tree key."""
        scheme = "SCT" if self.coding["system"] == SNOMED_SYSTEM else "DCM"
        return (scheme, self.coding["code"])

    @property
    def display(self) -> str:
        return self.coding["display"]


def _dcm(code: str, display: str, dimension: Dimension | None = None, *, integer: bool = False) -> Component:
    return Component(_coding(DCM_SYSTEM, code, display), dimension, integer)


def _sct(code: str, display: str) -> Component:
    return Component(_coding(SNOMED_SYSTEM, code, display))


class COMPONENTS:  # noqa: N801 - a namespace of constants
    """The IG's component-radiation-dose-summary-vs, with displays as the IG writes them."""

    CT_DLP_TOTAL = _dcm("113813", "CT Dose Length Product Total", Dimension.DOSE_LENGTH)
    DOSE_RP_TOTAL = _dcm("113725", "Dose (RP) Total", Dimension.DOSE)
    ACCUMULATED_AGD = _dcm("111637", "Accumulated Average Glandular Dose", Dimension.DOSE)
    DAP_TOTAL = _dcm("113722", "Dose Area Product Total", Dimension.DOSE_AREA)
    FLUORO_DAP_TOTAL = _dcm("113726", "Fluoro Dose Area Product Total", Dimension.DOSE_AREA)
    ACQUISITION_DAP_TOTAL = _dcm("113727", "Acquisition Dose Area Product Total", Dimension.DOSE_AREA)
    TOTAL_FLUORO_TIME = _dcm("113730", "Total Fluoro Time", Dimension.TIME)
    TOTAL_RADIOGRAPHIC_FRAMES = _dcm("113731", "Total Number of Radiographic Frames", integer=True)
    ADMINISTERED_ACTIVITY = _dcm("113507", "Administered activity", Dimension.ACTIVITY)
    RADIOPHARMACEUTICAL = _sct("349358000", "Radiopharmaceuticals")
    RADIONUCLIDE = _sct("89457008", "Radioisotope")
    RADIOPHARMACEUTICAL_VOLUME = _dcm("123005", "Radiopharmaceutical Volume", Dimension.VOLUME)
    ROUTE_OF_ADMINISTRATION = _sct("410675002", "Route of administration")


# Per template: the accumulated (procedure-level) components, in the order they are written.
PROJECTION_TOTALS = (
    COMPONENTS.DOSE_RP_TOTAL, COMPONENTS.DAP_TOTAL, COMPONENTS.FLUORO_DAP_TOTAL, COMPONENTS.ACQUISITION_DAP_TOTAL,
    COMPONENTS.TOTAL_FLUORO_TIME, COMPONENTS.TOTAL_RADIOGRAPHIC_FRAMES, COMPONENTS.ACCUMULATED_AGD,
)
CT_TOTALS = (COMPONENTS.CT_DLP_TOTAL,)
ADMINISTRATION_ITEMS = (
    COMPONENTS.ADMINISTERED_ACTIVITY, COMPONENTS.RADIOPHARMACEUTICAL, COMPONENTS.RADIONUCLIDE,
    COMPONENTS.RADIOPHARMACEUTICAL_VOLUME, COMPONENTS.ROUTE_OF_ADMINISTRATION,
)

# DICOM concepts of the dose templates (PS3.16 TID 10001, 10002, 10011, 10012, 10021, 10022, 1020).
ACCUMULATED_X_RAY_DOSE = key("DCM", "113702")
CT_ACCUMULATED_DOSE = key("DCM", "113811")
ADMINISTRATION_EVENT = key("DCM", "113502")
PROCEDURE_REPORTED_CONCEPT = key("DCM", "121058")
ACQUISITION_PLANE = key("DCM", "113764")
ALL_PLANES = key("DCM", "113890")
LATERALITY = key("SCT", "272741003")
BOTH_BREASTS = key("SCT", "63762007")
START_OF_IRRADIATION = key("DCM", "113809")
DATETIME_STARTED = key("DCM", "111526")
IRRADIATION_EVENT = key("DCM", "113706")
CT_ACQUISITION = key("DCM", "113819")
RADIOPHARMACEUTICAL_START = key("DCM", "123003")
PERSON_NAME = key("DCM", "113870")
PERSON_ROLE_IN_PROCEDURE = key("DCM", "113875")
IRRADIATION_AUTHORIZING = key("DCM", "113850")
PERSON_ID = key("DCM", "113871")
PERSON_ID_ISSUER = key("DCM", "113872")
DEVICE_OBSERVER_UID = key("DCM", "121012")
DEVICE_OBSERVER_MANUFACTURER = key("DCM", "121014")
DEVICE_OBSERVER_MODEL_NAME = key("DCM", "121015")
DEVICE_OBSERVER_SERIAL_NUMBER = key("DCM", "121016")

# Modality (CID 33) of the irradiating device, from the SOP classes of the images it made.
_SOP = "1.2.840.10008.5.1.4.1.1."
MODALITY_BY_SOP_CLASS = {
    _SOP + "1": "CR",
    _SOP + "1.1": "DX", _SOP + "1.1.1": "DX",
    _SOP + "1.2": "MG", _SOP + "1.2.1": "MG", _SOP + "13.1.3": "MG", _SOP + "13.1.4": "MG", _SOP + "13.1.5": "MG",
    _SOP + "1.3": "IO", _SOP + "1.3.1": "IO",
    _SOP + "2": "CT", _SOP + "2.1": "CT", _SOP + "2.2": "CT",
    _SOP + "12.1": "XA", _SOP + "12.1.1": "XA", _SOP + "13.1.1": "XA",
    _SOP + "12.2": "RF", _SOP + "12.2.1": "RF",
}
MODALITY_DISPLAYS = {
    "CR": "Computed Radiography", "DX": "Digital Radiography", "MG": "Mammography", "IO": "Intra-oral Radiography",
    "CT": "Computed Tomography", "XA": "X-Ray Angiography", "RF": "Radio Fluoroscopy",
}
