"""Deterministic builders for DICOM Key Object Selection documents (PS3.3 A.35.4, TID 2010).

:func:`key_object_selection` writes the document with plain pydicom, so every attribute is under
the test's control: the title (CID 7010), Document Title Modifiers, observer context (TID 1002),
Key Object Description and the referenced instances (:class:`KeyObject`), with the Current
Requested Procedure Evidence Sequence (0040,A375) derived from them unless the test gives its
own. :func:`highdicom_key_object_selection` builds one with highdicom's independent
implementation. UIDs come from :func:`tests.support.sr_builders.uid`, dates are fixed: the same
call gives the same dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.support.sr_builders import (
    CT_IMAGE_STORAGE, DEVICE, DEVICE_OBSERVER_NAME, DEVICE_OBSERVER_UID, ENGLISH, LANGUAGE, OBSERVER_TYPE, PERSON,
    PERSON_OBSERVER_NAME, code_item, coded, container_item, pname_item, text_item, uid, uidref_item,
)

__all__ = [
    "KEY_OBJECT_SELECTION_STORAGE", "ENHANCED_CT_STORAGE", "MR_IMAGE_STORAGE", "ECG_12_LEAD_STORAGE", "KeyObject",
    "key_object_selection",
    "highdicom_key_object_selection", "OF_INTEREST", "BEST_IN_SET", "FOR_TEACHING", "REJECTED_FOR_QUALITY_REASONS",
    "REJECTED_FOR_PATIENT_SAFETY_REASONS", "INCORRECT_MODALITY_WORKLIST_ENTRY", "DATA_RETENTION_POLICY_EXPIRED",
    "REJECTION_TITLES", "KEY_OBJECT_DESCRIPTION", "DOCUMENT_TITLE_MODIFIER", "IMAGE_ARTIFACTS",
]

KEY_OBJECT_SELECTION_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ECG_12_LEAD_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.1"

# CID 7010 Key Object Selection Document Titles
OF_INTEREST = coded("113000", "DCM", "Of Interest")
BEST_IN_SET = coded("113013", "DCM", "Best In Set")
FOR_TEACHING = coded("113004", "DCM", "For Teaching")
REJECTED_FOR_QUALITY_REASONS = coded("113001", "DCM", "Rejected for Quality Reasons")
REJECTED_FOR_PATIENT_SAFETY_REASONS = coded("113037", "DCM", "Rejected for Patient Safety Reasons")
INCORRECT_MODALITY_WORKLIST_ENTRY = coded("113038", "DCM", "Incorrect Modality Worklist Entry")
DATA_RETENTION_POLICY_EXPIRED = coded("113039", "DCM", "Data Retention Policy Expired")
REJECTION_TITLES = (REJECTED_FOR_QUALITY_REASONS, REJECTED_FOR_PATIENT_SAFETY_REASONS,
                    INCORRECT_MODALITY_WORKLIST_ENTRY, DATA_RETENTION_POLICY_EXPIRED)
# TID 2010 rows
KEY_OBJECT_DESCRIPTION = coded("113012", "DCM", "Key Object Description")
DOCUMENT_TITLE_MODIFIER = coded("113011", "DCM", "Document Title Modifier")
# CID 7011 Rejected for Quality Reasons
IMAGE_ARTIFACTS = coded("111207", "DCM", "Image artifact(s)")


@dataclass(frozen=True)
class KeyObject:
    """One referenced instance: where it lives (study, series) and how it is referenced."""

    sop_instance_uid: str
    series_uid: str = uid("kos:series:ct")
    study_uid: str = uid("study")
    sop_class_uid: str = CT_IMAGE_STORAGE
    frames: tuple[int, ...] = ()
    segments: tuple[int, ...] = ()
    value_type: str = "IMAGE"  # IMAGE | COMPOSITE | WAVEFORM


def _ds(**elements: object) -> Dataset:
    ds = Dataset()
    for keyword, value in elements.items():
        if value is not None:
            setattr(ds, keyword, value)
    return ds


def _reference_item(key_object: KeyObject) -> Dataset:
    """TID 2010 rows 5-7: a CONTAINS IMAGE / COMPOSITE / WAVEFORM item without concept name."""
    ref = _ds(ReferencedSOPClassUID=key_object.sop_class_uid, ReferencedSOPInstanceUID=key_object.sop_instance_uid,
              ReferencedFrameNumber=list(key_object.frames) or None,
              ReferencedSegmentNumber=list(key_object.segments) or None)
    return _ds(RelationshipType="CONTAINS", ValueType=key_object.value_type, ReferencedSOPSequence=[ref])


def _evidence(objects: Sequence[KeyObject]) -> list[Dataset]:
    """Current Requested Procedure Evidence Sequence: study > series > instances, in first-seen order."""
    studies: dict[str, dict[str, dict[str, str]]] = {}
    for obj in objects:
        series = studies.setdefault(obj.study_uid, {}).setdefault(obj.series_uid, {})
        series.setdefault(obj.sop_instance_uid, obj.sop_class_uid)
    return [_ds(StudyInstanceUID=study, ReferencedSeriesSequence=[
        _ds(SeriesInstanceUID=series_uid, ReferencedSOPSequence=[
            _ds(ReferencedSOPClassUID=sop_class, ReferencedSOPInstanceUID=instance)
            for instance, sop_class in instances.items()])
        for series_uid, instances in series.items()]) for study, series in studies.items()]


def key_object_selection(
    objects: Sequence[KeyObject], *, title: Dataset | None = OF_INTEREST, description: str | None = None,
    descriptions: Sequence[str] = (), modifiers: Sequence[Dataset] = (), person_observer: str | None = None,
    device_observer_uid: str | None = None, device_observer_name: str | None = None, language: bool = False,
    evidence: Sequence[KeyObject] | None = None, extra_items: Sequence[Dataset] = (),
    sop_class_uid: str = KEY_OBJECT_SELECTION_STORAGE, sop_instance_uid: str = uid("kos"),
    study_instance_uid: str = uid("study"), series_instance_uid: str = uid("kos-series"),
    patient_id: str | None = "PID-1", accession_number: str | None = "ACC-1", content_date: str = "20240301",
    content_time: str = "101500", timezone_offset: str | None = None, device_uid: str | None = uid("kos-device"),
    identical_documents: Sequence[tuple[str, str, str]] = (), template_id: str | None = "2010",
) -> Dataset:
    """A Key Object Selection Document (Patient, Study, KO Series, Equipment, Key Object Document).

    Root CONTAINER ``title`` (TID 2010): language, ``modifiers`` (DCM 113011), observer context
    (person 121008 and/or device 121012/121013), Key Object Description(s) (``description`` then
    ``descriptions``), ``extra_items``, then one reference per object. ``evidence`` lists the
    instances the Current Requested Procedure Evidence Sequence names (default: ``objects``; ``[]``
    leaves it out). ``identical_documents`` are (study, series, SOP instance) of copies.
    """
    children: list[Dataset] = []
    if language:
        children.append(code_item(LANGUAGE, ENGLISH, "HAS CONCEPT MOD"))
    children += [code_item(DOCUMENT_TITLE_MODIFIER, modifier, "HAS CONCEPT MOD") for modifier in modifiers]
    if person_observer is not None:
        children += [code_item(OBSERVER_TYPE, PERSON, "HAS OBS CONTEXT"),
                     pname_item(PERSON_OBSERVER_NAME, person_observer)]
    if device_observer_uid is not None:
        children += [code_item(OBSERVER_TYPE, DEVICE, "HAS OBS CONTEXT"),
                     uidref_item(DEVICE_OBSERVER_UID, device_observer_uid, "HAS OBS CONTEXT")]
        if device_observer_name is not None:
            children.append(text_item(DEVICE_OBSERVER_NAME, device_observer_name, "HAS OBS CONTEXT"))
    for text in ([description] if description is not None else []) + list(descriptions):
        children.append(text_item(KEY_OBJECT_DESCRIPTION, text))
    children += list(extra_items)
    children += [_reference_item(obj) for obj in objects]
    root = container_item(title, children, None, template_id=template_id)

    ds = _ds(
        SpecificCharacterSet="ISO_IR 192", SOPClassUID=sop_class_uid, SOPInstanceUID=sop_instance_uid,
        InstanceCreationDate=content_date, InstanceCreationTime=content_time, TimezoneOffsetFromUTC=timezone_offset,
        PatientName="Doe^Jane", PatientID=patient_id, PatientBirthDate="", PatientSex="",
        StudyInstanceUID=study_instance_uid, StudyDate=content_date, StudyTime="090000", ReferringPhysicianName="",
        StudyID="STUDY-1", AccessionNumber=accession_number,
        Modality="KO", SeriesInstanceUID=series_instance_uid, SeriesNumber=98,
        Manufacturer="ACME Imaging", ManufacturerModelName="Key Image Tool", DeviceUID=device_uid,
        InstanceNumber=1, ContentDate=content_date, ContentTime=content_time,
    )
    ds.ReferencedPerformedProcedureStepSequence = []
    chosen = list(objects) if evidence is None else list(evidence)
    ds.CurrentRequestedProcedureEvidenceSequence = _evidence(chosen)
    if not chosen:
        del ds.CurrentRequestedProcedureEvidenceSequence
    if identical_documents:
        ds.IdenticalDocumentsSequence = [
            _ds(StudyInstanceUID=study, ReferencedSeriesSequence=[_ds(SeriesInstanceUID=series, ReferencedSOPSequence=[
                _ds(ReferencedSOPClassUID=KEY_OBJECT_SELECTION_STORAGE, ReferencedSOPInstanceUID=instance)])])
            for study, series, instance in identical_documents]
    for elem in root:
        ds.add(elem)
    ds.file_meta = FileMetaDataset(_ds(
        MediaStorageSOPClassUID=ds.SOPClassUID, MediaStorageSOPInstanceUID=ds.SOPInstanceUID,
        TransferSyntaxUID=ExplicitVRLittleEndian, ImplementationClassUID=uid("implementation"),
        ImplementationVersionName="SR2FHIR_TESTS"))
    return ds


def _synthetic_image(index: int, series: str, sop_class_uid: str, frames: int | None = None) -> Dataset:
    """Header-only image of the default study/patient, usable as highdicom evidence."""
    return _ds(SOPClassUID=sop_class_uid, SOPInstanceUID=uid(f"hd-kos:{series}:{index}"),
               StudyInstanceUID=uid("study"), SeriesInstanceUID=uid(f"hd-kos:series:{series}"),
               PatientName="Doe^Jane", PatientID="PID-1", PatientBirthDate="", PatientSex="",
               AccessionNumber="ACC-1", StudyID="STUDY-1", StudyDate="20240301", StudyTime="090000",
               ReferringPhysicianName="", Modality="CT", Manufacturer="ACME Imaging", InstanceNumber=index,
               NumberOfFrames=frames)


def highdicom_key_object_selection(
    description: str | None = "Key images for the tumour board",
) -> tuple[Dataset, list[Dataset]]:
    """A KOS written by highdicom (``hd.ko``): two CT images of one series and an Enhanced CT image
    of another, person and device observers. Returns (document, the referenced image headers)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    images = [_synthetic_image(1, "ct", CT_IMAGE_STORAGE), _synthetic_image(2, "ct", CT_IMAGE_STORAGE),
              _synthetic_image(1, "enhanced", ENHANCED_CT_STORAGE, frames=4)]
    person = hd.sr.ObserverContext(observer_type=codes.DCM.Person,
                                   observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                                       name="Rad^Ann"))
    device = hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                   observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                                       uid=uid("hd-kos:device"), name="Key Image Tool"))
    content = hd.ko.KeyObjectSelection(document_title=codes.DCM.OfInterest, referenced_objects=images,
                                       observer_person_context=person, observer_device_context=device,
                                       description=description)
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=images, content=content, series_instance_uid=uid("hd-kos-series"), series_number=98,
        sop_instance_uid=uid("hd-kos"), instance_number=1, manufacturer="ACME Imaging")
    # highdicom stamps "now"; pin it so the output is stable.
    document.ContentDate, document.ContentTime = "20240301", "101500"
    document.InstanceCreationDate, document.InstanceCreationTime = "20240301", "101500"
    return document, images
