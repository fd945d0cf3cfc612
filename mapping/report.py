"""TID 1500 Measurement Report -> one FHIR transaction Bundle (the entry point's work)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

from . import concepts
from .attributes import text
from .bundle import BundleBuilder
from .coding import CodingSystems
from .content_tree import READ_ERRORS, ContentNode, read_content_tree
from .context import Evidence, ReportContext
from .dates import Timing, parse_offset, to_instant, zone
from .derived import derived_imaging_measurements
from .devices import algorithm_identification, general_equipment, participant_device
from .errors import InvalidValue, MappingError, MissingContentItem, NotAnSR, Skipped, UnsupportedTemplate
from .groups import imaging_measurement_group
from .measurements import Inherited, qualitative_evaluation
from .options import MappingOptions
from .participants import observers, practitioner
from .r4 import to_r4
from .references import is_valid_uid, patient_reference, service_request_reference, study_instance_uid
from .sop_classes import SR_STORAGE_SOP_CLASSES

__all__ = ["MappingResult", "map_sr"]


@dataclass(frozen=True, slots=True)
class MappingResult:
    """The transaction Bundle (plain dicts) and what was skipped on the way."""

    bundle: dict
    skipped: tuple[Skipped, ...]


def map_sr(ds: Dataset, options: MappingOptions | None = None) -> MappingResult:
    """Map one SR instance (TID 1500) to a FHIR R5 transaction Bundle (R4 with
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
    _require_tid1500(root)
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
    ctx.equipment_device = general_equipment(ds, ctx)
    default_device = ctx.equipment_device
    for observer in observers(root):
        if observer.kind == "person":
            url = practitioner(observer, ctx)
            if url is not None:
                ctx.performer.append(ctx.ref(url))
        elif default_device == ctx.equipment_device:
            default_device = participant_device(observer.items, ctx, text(ds, "DeviceUID")) or default_device

    # PS3.3 C.17.3: items without an Observation DateTime take their nearest ancestor's.
    root_timing = ctx.timing(root, ctx.document_timing)
    observations = 0
    for child in root.children:
        if child.value_type != "CONTAINER" or child.relationship != "CONTAINS":
            continue
        if child.key == concepts.IMAGING_MEASUREMENTS:
            observations += _imaging_measurements(child, ctx, default_device, root_timing)
        elif child.key == concepts.DERIVED_IMAGING_MEASUREMENTS:
            observations += len(derived_imaging_measurements(child, ctx, root_timing))
        elif child.key == concepts.QUALITATIVE_EVALUATIONS:
            observations += _report_qualitative_evaluations(child, ctx, default_device, root_timing)
        else:
            ctx.note(child, "container is not one TID 1500 maps (Imaging Measurements, Derived, Qualitative Evaluations)")
    if observations == 0:
        raise MissingContentItem(
            "no measurement group, derived measurement or qualitative evaluation could be mapped"
            + (f" ({len(skipped)} item(s) skipped; first: {skipped[0]})" if skipped else ""),
            path=root.path,
        )
    for scheme, system in sorted(ctx.codes.unknown.items()):
        skipped.append(Skipped("", f"coding scheme designator {scheme!r} has no known FHIR system; used {system}"))
    bundle = ctx.bundle.build()
    if options.fhir_version == "r4":
        conversion = to_r4(bundle, imaging_selection=options.r4_imaging_selection)
        bundle = conversion.bundle
        skipped += conversion.notes
    return MappingResult(bundle, tuple(skipped))


def _imaging_measurements(container: ContentNode, ctx: ReportContext, default_device: str, parent_timing: Timing) -> int:
    """DCM 126010: a container-level TID 4019 algorithm overrides the default device."""
    device = algorithm_identification(container, ctx) or default_device
    timing = ctx.timing(container, parent_timing)
    count = 0
    for child in container.children:
        if child.value_type == "CONTAINER" and child.key == concepts.MEASUREMENT_GROUP:
            imaging_measurement_group(child, ctx, device, timing)
            count += 1
        elif child.key not in concepts.ALGORITHM_ITEMS:
            ctx.note(child, f"{child.value_type} directly in Imaging Measurements is not in a measurement group")
    return count


def _report_qualitative_evaluations(container: ContentNode, ctx: ReportContext, device: str, parent_timing: Timing) -> int:
    """UMLS C0034375 at report level: one evaluation per CODE/TEXT child."""
    inherited = Inherited(device=device, timing=ctx.timing(container, parent_timing))
    count = 0
    for child in container.children:
        if child.value_type in ("CODE", "TEXT"):
            qualitative_evaluation(child, ctx, inherited)
            count += 1
        else:
            ctx.note(child, f"{child.value_type} in Qualitative Evaluations is not an evaluation")
    return count


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


def _require_tid1500(root: ContentNode) -> None:
    if root.key == concepts.IMAGING_MEASUREMENT_REPORT or root.template_id == "1500":
        return
    if root.value_type != "CONTAINER":
        raise UnsupportedTemplate(f"root content item is {root.value_type}, not a CONTAINER", path=root.path)
    title = f"{root.label} {root.concept.meaning!r}" if root.concept else "without a document title"
    raise UnsupportedTemplate(
        f"document title {title} is not TID 1500 Imaging Measurement Report (126000, DCM)", path=root.path
    )


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
