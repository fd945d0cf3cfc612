"""Which kind of SR document an instance is, and what it says about the documents it replaces.

sr2fhir maps three kinds of document: the TID 1500 Imaging Measurement Report, the Key Object
Selection (TID 2010) and the radiation dose reports (TID 10001/10011 X-ray, TID 10021
radiopharmaceutical). Every other SR raises :class:`UnsupportedTemplate` naming its template and
title, so the daemon can count and drop it (``mapping.unmapped: ignore``).
"""

from __future__ import annotations

from enum import StrEnum

from pydicom.dataset import Dataset

from . import concepts
from .content_tree import ContentNode
from .errors import UnsupportedTemplate

__all__ = ["DocumentKind", "document_kind", "predecessor_uids",
           "KEY_OBJECT_SELECTION_SOP_CLASS", "DOSE_REPORT_SOP_CLASSES"]

_SR = "1.2.840.10008.5.1.4.1.1.88."
KEY_OBJECT_SELECTION_SOP_CLASS = _SR + "59"
# X-Ray Radiation Dose SR, Radiopharmaceutical Radiation Dose SR, Enhanced X-Ray Radiation Dose SR.
DOSE_REPORT_SOP_CLASSES = frozenset({_SR + "67", _SR + "68", _SR + "76"})

X_RAY_RADIATION_DOSE_REPORT = ("DCM", "113701")
RADIOPHARMACEUTICAL_RADIATION_DOSE_REPORT = ("DCM", "113500")
_DOSE_TITLES = frozenset({X_RAY_RADIATION_DOSE_REPORT, RADIOPHARMACEUTICAL_RADIATION_DOSE_REPORT})
_DOSE_TEMPLATES = frozenset({"10001", "10011", "10021"})


class DocumentKind(StrEnum):
    """The SR documents sr2fhir maps."""

    MEASUREMENT_REPORT = "measurement-report"
    KEY_OBJECT_SELECTION = "key-object-selection"
    RADIATION_DOSE = "radiation-dose"


def document_kind(sop_class_uid: str, root: ContentNode) -> DocumentKind:
    """The kind of ``root``'s document; :class:`UnsupportedTemplate` for one sr2fhir does not map."""
    if root.key == concepts.IMAGING_MEASUREMENT_REPORT or root.template_id == "1500":
        return DocumentKind.MEASUREMENT_REPORT
    if sop_class_uid == KEY_OBJECT_SELECTION_SOP_CLASS or root.template_id == "2010":
        return DocumentKind.KEY_OBJECT_SELECTION
    if sop_class_uid in DOSE_REPORT_SOP_CLASSES and root.key in _DOSE_TITLES or root.template_id in _DOSE_TEMPLATES:
        return DocumentKind.RADIATION_DOSE
    title = f"{root.label} {root.concept.meaning!r}" if root.concept else None
    if root.value_type != "CONTAINER":
        raise UnsupportedTemplate(f"root content item is {root.value_type}, not a CONTAINER", path=root.path,
                                  template=root.template_id, title=title)
    raise UnsupportedTemplate(
        f"document title {title or 'absent'}"
        + (f" (TID {root.template_id})" if root.template_id else "")
        + " is not a document sr2fhir maps (TID 1500 Imaging Measurement Report, Key Object Selection,"
        " radiation dose report)",
        path=root.path, template=root.template_id, title=title,
    )


def predecessor_uids(ds: Dataset) -> tuple[str, ...]:
    """SOP Instance UIDs in the Predecessor Documents Sequence (0040,A360), in order, no repeats.

    PS3.3 C.17.2.3: the documents this one replaces (an amended or corrected report).
    """
    found: list[str] = []
    for study in ds.get("PredecessorDocumentsSequence", None) or ():
        for series in study.get("ReferencedSeriesSequence", None) or ():
            for instance in series.get("ReferencedSOPSequence", None) or ():
                uid = str(instance.get("ReferencedSOPInstanceUID", "") or "").strip()
                if uid and uid not in found:
                    found.append(uid)
    return tuple(found)
