"""TID 1500 Measurement Report -> one FHIR transaction Bundle (the entry point's work)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

from . import dose
from .attributes import text
from .bundle import BundleBuilder
from .coding import CodingSystems
from .content_tree import READ_ERRORS, ContentNode, read_content_tree
from .context import Evidence, ReportContext
from .dates import Timing, parse_offset, to_instant, zone
from .documents import DocumentKind, document_kind, predecessor_uids
from .errors import InvalidValue, MappingError, MissingContentItem, NotAnSR, Skipped
from .key_objects import map_key_object_selection
from .measurement_report import map_measurement_report
from .options import MappingOptions
from .r4 import to_r4
from .references import is_valid_uid, patient_reference, service_request_reference, study_instance_uid
from .sop_classes import SR_STORAGE_SOP_CLASSES

__all__ = ["MappingResult", "map_sr", "r4_form"]


@dataclass(frozen=True, slots=True)
class MappingResult:
    """The transaction Bundle (plain dicts), what was skipped on the way, the kind of document,
    and the SOP Instance UIDs of the documents it replaces (Predecessor Documents Sequence)."""

    bundle: dict
    skipped: tuple[Skipped, ...]
    kind: DocumentKind = DocumentKind.MEASUREMENT_REPORT
    predecessors: tuple[str, ...] = ()


_MAPPERS: dict[DocumentKind, Callable[[Dataset, ContentNode, ReportContext], None]] = {
    DocumentKind.MEASUREMENT_REPORT: map_measurement_report,
    DocumentKind.KEY_OBJECT_SELECTION: map_key_object_selection,
    DocumentKind.RADIATION_DOSE: dose.map_radiation_dose,
}


def map_sr(ds: Dataset, options: MappingOptions | None = None) -> MappingResult:
    """Map one SR instance (TID 1500, Key Object Selection, dose report) to a FHIR R5 transaction Bundle (R4 with
    ``options.fhir_version == "r4"``: the R5 Bundle through :func:`mapping.r4.to_r4`).

    Pure: no I/O, no logging, no clock. The same dataset and options give the same Bundle.
    Raises :class:`MappingError` (with the content-item path) only when no meaningful Bundle
    can be made; everything else skipped is listed in ``MappingResult.skipped``.
    """
    options = options or MappingOptions()
    try:
        return _map(ds, options)
    except MappingError:
        raise
    except READ_ERRORS as exc:
        raise InvalidValue(f"unreadable attribute in the SR dataset ({type(exc).__name__}: {str(exc)[:160]})") from exc


def _map(ds: Dataset, options: MappingOptions) -> MappingResult:
    sop_class_uid = _sop_class(ds)
    sop_instance_uid = text(ds, "SOPInstanceUID")
    if not sop_instance_uid:
        raise InvalidValue("no SOP Instance UID (0008,0018)")
    if not is_valid_uid(sop_instance_uid):
        raise InvalidValue("SOP Instance UID (0008,0018) is not a valid UID")
    if "ContentSequence" not in ds:
        raise MissingContentItem("the SR has no content (Content Sequence (0040,A730) is absent or empty)")
    skipped: list[Skipped] = []
    root = read_content_tree(ds, skipped)
    kind = document_kind(sop_class_uid, root)
    if not root.children:
        raise MissingContentItem("the SR has no readable content items", path=root.path)

    document_zone = parse_offset(text(ds, "TimezoneOffsetFromUTC")) or zone(options.default_timezone)
    document_issued = _document_instant(ds, document_zone)
    ctx = ReportContext(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        series_uid=text(ds, "SeriesInstanceUID"),
        study_uid=study_instance_uid(ds),
        subject=patient_reference(ds),
        service_request=service_request_reference(ds),
        document_timing=Timing(document_issued, document_issued),
        document_zone=document_zone,
        status=_status(ds),
        evidence=_evidence(ds, skipped),
        codes=CodingSystems(_coding_scheme_uids(ds)),
        bundle=BundleBuilder(options.write_mode),
        skipped=skipped,
        options=options,
    )
    _MAPPERS[kind](ds, root, ctx)
    for scheme, system in sorted(ctx.codes.unknown.items()):
        skipped.append(Skipped("", f"coding scheme designator {scheme!r} has no known FHIR system; used {system}"))
    result = MappingResult(ctx.bundle.build(), tuple(skipped), kind, predecessor_uids(ds))
    return r4_form(result, options) if options.fhir_version == "r4" else result


def r4_form(result: MappingResult, options: MappingOptions) -> MappingResult:
    """The R5 ``result`` of :func:`map_sr` in R4 form: what ``map_sr`` gives for the same SR
    with ``options.fhir_version == "r4"`` (pure; ``result`` is not modified). Raises
    :class:`MissingContentItem` for a Key Object Selection when ImagingSelections are left out
    of R4 (``r4_imaging_selection == "omit"``): nothing would be sent."""
    if result.kind is DocumentKind.KEY_OBJECT_SELECTION and options.r4_imaging_selection == "omit":
        raise MissingContentItem("a Key Object Selection maps only to ImagingSelections, and they are left out of "
                                 "R4 Bundles (r4_imaging_selection 'omit')")
    conversion = to_r4(result.bundle, imaging_selection=options.r4_imaging_selection)
    bundle = conversion.bundle
    if result.kind is DocumentKind.RADIATION_DOSE:
        bundle = dose.finish_r4(bundle)
    return MappingResult(bundle, result.skipped + tuple(conversion.notes), result.kind, result.predecessors)


def _sop_class(ds: Dataset) -> str:
    sop_class_uid = text(ds, "SOPClassUID")
    if not sop_class_uid:
        raise NotAnSR("no SOP Class UID (0008,0016): not a DICOM composite instance")
    if sop_class_uid not in SR_STORAGE_SOP_CLASSES:
        if not is_valid_uid(sop_class_uid):  # never echo an unchecked value: it may hold PHI
            raise NotAnSR("SOP Class UID (0008,0016) is not a valid UID: not a readable DICOM instance")
        name = UID(sop_class_uid).name
        label = f"{name} ({sop_class_uid})" if name != sop_class_uid else sop_class_uid
        raise NotAnSR(f"SOP Class {label} is not a Structured Report storage class")
    return sop_class_uid


def _document_instant(ds: Dataset, document_zone) -> str:
    """Content Date/Time, else Instance Creation, else Study Date/Time, as an instant."""
    for date_keyword, time_keyword in (
        ("ContentDate", "ContentTime"), ("InstanceCreationDate", "InstanceCreationTime"), ("StudyDate", "StudyTime"),
    ):
        date = text(ds, date_keyword)
        if date:
            instant = to_instant(date + (text(ds, time_keyword) or ""), document_zone)
            if instant is not None:
                return instant
    raise InvalidValue("no readable Content Date/Time (0008,0023)/(0008,0033): Observation.issued is mandatory")


def _status(ds: Dataset) -> str:
    """Preliminary Flag (0040,A496) lower-cased; absent: final when COMPLETE, else preliminary."""
    flag = (text(ds, "PreliminaryFlag") or "").upper()
    if flag in ("PRELIMINARY", "FINAL"):
        return flag.lower()
    return "final" if (text(ds, "CompletionFlag") or "").upper() == "COMPLETE" else "preliminary"


def _evidence(ds: Dataset, skipped: list[Skipped]) -> dict[str, Evidence]:
    """Referenced SOP Instance UID -> study and series, from (0040,A375) and (0040,A385)."""
    found: dict[str, Evidence] = {}
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        try:
            for study in ds.get(keyword) or []:
                study_uid = text(study, "StudyInstanceUID")
                for series in study.get("ReferencedSeriesSequence") or []:
                    series_uid = text(series, "SeriesInstanceUID")
                    for instance in series.get("ReferencedSOPSequence") or []:
                        uid = text(instance, "ReferencedSOPInstanceUID")
                        if uid and study_uid and series_uid:
                            found.setdefault(uid, Evidence(study_uid, series_uid))
        except READ_ERRORS as exc:
            skipped.append(Skipped("", f"{keyword} unreadable ({type(exc).__name__}); series UIDs from it not used"))
    return found


def _coding_scheme_uids(ds: Dataset) -> dict[str, str]:
    """Coding Scheme Identification Sequence (0008,0110): designator -> Coding Scheme UID."""
    uids = {}
    for item in ds.get("CodingSchemeIdentificationSequence") or []:
        designator = text(item, "CodingSchemeDesignator")
        uid = text(item, "CodingSchemeUID")
        if designator and uid:
            uids[designator] = uid
    return uids
