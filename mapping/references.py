"""Patient, ImagingStudy and ServiceRequest: referenced by identifier, never created.

The IG assumes these exist on the server; we emit logical references (``type`` +
``identifier``) that a server, or ``fhir_client`` in ``resolve`` mode, can turn into literal
ones. The ``type`` element is required for the profiles' reference-type slices.
"""

from __future__ import annotations

import re
from typing import Any

from pydicom.dataset import Dataset

from .attributes import text
from .errors import InvalidValue, MissingContentItem
from .profiles import fixed

__all__ = ["patient_reference", "imaging_study_reference", "service_request_reference", "uid_identifier_value",
           "study_instance_uid", "is_valid_uid"]

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


def uid_identifier_value(uid: str) -> str:
    """A DICOM UID as an identifier value: ``urn:oid:<uid>``."""
    return f"urn:oid:{uid}"


def patient_reference(ds: Dataset) -> dict:
    """Logical reference to the Patient: Patient ID (0010,0020) + its issuer."""
    patient_id = text(ds, "PatientID")
    if not patient_id:
        raise MissingContentItem(
            "no Patient ID (0010,0020): the Observations could not be linked to a patient"
        )
    issuer = _issuer(ds, "IssuerOfPatientIDQualifiersSequence", text(ds, "IssuerOfPatientID"))
    return {"type": "Patient", "identifier": _identifier(patient_id, *issuer)}


def imaging_study_reference(study_uid: str) -> dict:
    """Logical reference to the ImagingStudy by Study Instance UID (type DCM 110180)."""
    return {
        "type": "ImagingStudy",
        "identifier": {
            "type": {"coding": [fixed.STUDY_INSTANCE_UID]},
            "system": "urn:dicom:uid",
            "value": uid_identifier_value(study_uid),
        },
    }


def service_request_reference(ds: Dataset) -> dict | None:
    """Logical reference to the ServiceRequest by Accession Number (0008,0050), or None."""
    accession = text(ds, "AccessionNumber")
    if not accession:
        return None
    issuer = _issuer(ds, "IssuerOfAccessionNumberSequence", None)
    identifier = _identifier(accession, *issuer, type_coding=fixed.ACCESSION_ID)
    return {"type": "ServiceRequest", "identifier": identifier}


def _identifier(value: str, system: str | None, assigner: str | None, *, type_coding: dict | None = None) -> dict:
    identifier: dict[str, Any] = {"type": {"coding": [type_coding]}} if type_coding else {}
    if system:
        identifier["system"] = system
    identifier["value"] = value
    if assigner:
        identifier["assigner"] = {"display": assigner}
    return identifier


def study_instance_uid(ds: Dataset) -> str:
    """Study Instance UID (0020,000D); the Observations' mandatory ``partOf`` needs it."""
    uid = text(ds, "StudyInstanceUID")
    if not uid:
        raise MissingContentItem("no Study Instance UID (0020,000D): partOf[imagingStudyRef] is mandatory")
    if not is_valid_uid(uid):  # the value is not echoed: in a damaged file it may hold PHI
        raise InvalidValue("Study Instance UID (0020,000D) is not a valid UID")
    return uid


def is_valid_uid(uid: str) -> bool:
    """Dotted digits, at most 64 characters (PS3.5 9.1); lenient on the 64 (real SRs exceed it)."""
    return len(uid) <= 80 and bool(_OID.match(uid))


def _issuer(ds: Dataset, sequence: str, local: str | None) -> tuple[str | None, str | None]:
    """(system, assigner display) from an HL7v2 Hierarchic Designator sequence.

    Universal Entity ID (0040,0032) of type ISO becomes ``urn:oid:``; a value that is already
    an absolute URI is used as is; anything else (a DNS name, say) cannot be a FHIR system
    and goes to ``assigner.display``, as does the Local Namespace Entity ID (0040,0031).
    """
    items = ds.get(sequence)
    item = items[0] if items else None
    universal = text(item, "UniversalEntityID") if item is not None else None
    entity_type = (text(item, "UniversalEntityIDType") or "").upper() if item is not None else ""
    local = (text(item, "LocalNamespaceEntityID") if item is not None else None) or local
    if universal:
        if _OID.match(universal) and entity_type in ("ISO", ""):
            return f"urn:oid:{universal}", local
        if entity_type == "UUID" and not universal.lower().startswith("urn:"):
            return f"urn:uuid:{universal.lower()}", local
        if _URI.match(universal):
            return universal, local
        return None, local or universal
    return None, local

