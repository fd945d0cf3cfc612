"""Deterministic builders for DICOM SR TID 1500 "Measurement Report" test documents.

Each test states only what it is about: build content items with the ``*_item`` helpers, wrap
them in :func:`measurement_group` (TID 1410 / 1411 / 1501) and :func:`measurement_report`
(TID 1500), then serialise with :func:`to_part10_bytes`.  Plain pydicom, so every attribute is
under the test's control.  Everything is deterministic: UIDs come from :func:`uid` (hashed
names), dates and times are fixed, so the same call gives byte-identical Part-10 output.

Attribute names follow PS3.3 C.17.3 (SR Document Content Module); template rows follow PS3.16
TID 1500, 1410, 1411, 1501, 1420 and 4019.  highdicom is only imported by the ``highdicom_*``
helpers, which build the same kind of document with an independent implementation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from io import BytesIO
from types import EllipsisType
from typing import TypedDict, Unpack

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

# --- SOP classes -----------------------------------------------------------------------------
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RWV_MAPPING_STORAGE = "1.2.840.10008.5.1.4.1.1.67"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def uid(name: str) -> str:
    """A stable UID (pydicom root + hash of ``name``): same name, same UID."""
    return str(generate_uid(entropy_srcs=["sr2fhir-tests", name]))


def _ds(**elements: object) -> Dataset:
    """A Dataset from keyword=value pairs; ``None`` values are left out."""
    ds = Dataset()
    for keyword, value in elements.items():
        if value is not None:
            setattr(ds, keyword, value)
    return ds


def coded(value: str, scheme: str, meaning: str, version: str | None = None) -> Dataset:
    """One Code Sequence item; values over 16 chars go to LongCodeValue, URNs to URNCodeValue."""
    kind = ("URNCodeValue" if value.startswith(("urn:", "http:", "https:"))
            else "LongCodeValue" if len(value) > 16 else "CodeValue")
    return _ds(**{kind: value}, CodingSchemeDesignator=scheme, CodingSchemeVersion=version,
               CodeMeaning=meaning)


# --- Concept names (PS3.16 DCM / SCT / NCIt / UMLS) ------------------------------------------
IMAGE_REGION = coded("111030", "DCM", "Image Region")
ILLUSTRATION_OF_ROI = coded("121200", "DCM", "Illustration of ROI")
VISUAL_EXPLANATION = coded("130401", "DCM", "Visual Explanation")
REGION_IN_SPACE = coded("130488", "DCM", "Region In Space")
RWV_MAP = coded("126100", "DCM", "Real World Value Map used for measurement")
REFERENCED_SEGMENT = coded("121191", "DCM", "Referenced Segment")
REFERENCED_SEGMENTATION_FRAME = coded("121214", "DCM", "Referenced Segmentation Frame")
SOURCE_IMAGE_FOR_SEGMENTATION = coded("121233", "DCM", "Source image for segmentation")
SOURCE_SERIES_FOR_SEGMENTATION = coded("121232", "DCM", "Source series for segmentation")
VOLUME_SURFACE = coded("121231", "DCM", "Volume Surface")
ORIGINAL_SOURCE = coded("111040", "DCM", "Original Source")
TRACKING_IDENTIFIER = coded("112039", "DCM", "Tracking Identifier")
TRACKING_UID = coded("112040", "DCM", "Tracking Unique Identifier")
FINDING = coded("121071", "DCM", "Finding")
FINDING_CATEGORY = coded("276214006", "SCT", "Finding category")
FINDING_SITE = coded("363698007", "SCT", "Finding Site")
LATERALITY = coded("272741003", "SCT", "Laterality")
TOPOGRAPHICAL_MODIFIER = coded("106233006", "SCT", "Topographical modifier")
MEASUREMENT_METHOD = coded("370129005", "SCT", "Measurement Method")
ALGORITHM_FAMILY = coded("111000", "DCM", "Algorithm Family")
ALGORITHM_NAME = coded("111001", "DCM", "Algorithm Name")
ALGORITHM_PARAMETERS = coded("111002", "DCM", "Algorithm Parameters")
ALGORITHM_VERSION = coded("111003", "DCM", "Algorithm Version")
ACTIVITY_SESSION = coded("C67447", "NCIt", "Activity Session")
MEASUREMENT_GROUP = coded("125007", "DCM", "Measurement Group")
IMAGING_MEASUREMENTS = coded("126010", "DCM", "Imaging Measurements")
DERIVED_IMAGING_MEASUREMENTS = coded("126011", "DCM", "Derived Imaging Measurements")
QUALITATIVE_EVALUATIONS = coded("C0034375", "UMLS", "Qualitative Evaluations")
IMAGING_MEASUREMENT_REPORT = coded("126000", "DCM", "Imaging Measurement Report")
LANGUAGE = coded("121049", "DCM", "Language of Content Item and Descendants")
OBSERVER_TYPE = coded("121005", "DCM", "Observer Type")
PERSON = coded("121006", "DCM", "Person")
DEVICE = coded("121007", "DCM", "Device")
PERSON_OBSERVER_NAME = coded("121008", "DCM", "Person Observer Name")
DEVICE_OBSERVER_UID = coded("121012", "DCM", "Device Observer UID")
DEVICE_OBSERVER_NAME = coded("121013", "DCM", "Device Observer Name")
PROCEDURE_REPORTED = coded("121058", "DCM", "Procedure reported")
LENGTH = coded("410668003", "SCT", "Length")
VOLUME = coded("118565006", "SCT", "Volume")
DIAMETER = coded("81827009", "SCT", "Diameter")
AREA = coded("42798000", "SCT", "Area")
# --- Values --------------------------------------------------------------------------------
ENGLISH = coded("eng", "RFC5646", "English")
IMAGING_PROCEDURE = coded("363679005", "SCT", "Imaging procedure")
ABNORMAL_STRUCTURE = coded("49755003", "SCT", "Morphologically abnormal structure")
LUNG_NODULE = coded("427359005", "SCT", "Solitary nodule of lung")
LUNG = coded("39607008", "SCT", "Lung")
RIGHT = coded("24028007", "SCT", "Right")
UPPER = coded("261183002", "SCT", "Upper")
MALIGNANCY = coded("RID36042", "RADLEX", "Malignancy")
HIGHLY_SUSPICIOUS = coded("905", "99LIDCQIICR", "5 out of 5 (Highly Suspicious for Cancer)")
# --- UCUM units ----------------------------------------------------------------------------
MM = coded("mm", "UCUM", "millimeter")
MM2 = coded("mm2", "UCUM", "square millimeter")
MM3 = coded("mm3", "UCUM", "cubic millimeter")
SUV_BW = coded("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")
UNITY = coded("1", "UCUM", "no units")

ItemList = Sequence[Dataset]


class Common(TypedDict, total=False):
    """Keyword arguments every content item accepts."""

    observation_uid: str | None  # (0040,A171)
    observation_datetime: str | None  # (0040,A032), DT


def _code(code: Dataset) -> list[Dataset]:
    """A one-item code sequence holding a private copy (so tests may mutate it safely)."""
    return [copy.deepcopy(code)]


def _item(value_type: str, concept: Dataset | None, relationship: str | None,
          children: Iterable[Dataset], common: Common, **value: object) -> Dataset:
    """A content item: relationship, value type, concept name, common attributes, value, children."""
    return _ds(RelationshipType=relationship, ValueType=value_type,
               ConceptNameCodeSequence=_code(concept) if concept is not None else None,
               ObservationUID=common.get("observation_uid"),
               ObservationDateTime=common.get("observation_datetime"),
               ContentSequence=list(children) or None, **value)


# --- Content items (PS3.3 C.17.3) ------------------------------------------------------------
def text_item(concept: Dataset | None, value: str, relationship: str = "CONTAINS",
              children: ItemList = (), **common: Unpack[Common]) -> Dataset:
    """TEXT item: TextValue (0040,A160)."""
    return _item("TEXT", concept, relationship, children, common, TextValue=value)


def code_item(concept: Dataset | None, value: Dataset, relationship: str = "CONTAINS",
              children: ItemList = (), **common: Unpack[Common]) -> Dataset:
    """CODE item: ConceptCodeSequence (0040,A168)."""
    return _item("CODE", concept, relationship, children, common, ConceptCodeSequence=_code(value))


def num_item(concept: Dataset | None, value: float | str | None, unit: Dataset,
             relationship: str = "CONTAINS", children: ItemList = (),
             qualifier: Dataset | None = None, **common: Unpack[Common]) -> Dataset:
    """NUM item: MeasuredValueSequence > NumericValue (DS) + MeasurementUnitsCodeSequence.

    ``value=None`` gives an empty MeasuredValueSequence; ``qualifier`` then goes to
    NumericValueQualifierCodeSequence (0040,A301), e.g. DCM 114006 "Measurement failure".
    """
    measured = [] if value is None else [_ds(
        MeasurementUnitsCodeSequence=_code(unit),
        NumericValue=value if isinstance(value, str) else format_number_as_ds(float(value)))]
    return _item("NUM", concept, relationship, children, common, MeasuredValueSequence=measured,
                 NumericValueQualifierCodeSequence=_code(qualifier) if qualifier is not None else None)


def uidref_item(concept: Dataset | None, value_uid: str, relationship: str = "CONTAINS",
                **common: Unpack[Common]) -> Dataset:
    """UIDREF item: UID (0040,A124)."""
    return _item("UIDREF", concept, relationship, (), common, UID=value_uid)


def pname_item(concept: Dataset | None, name: str, relationship: str = "HAS OBS CONTEXT",
               **common: Unpack[Common]) -> Dataset:
    """PNAME item: PersonName (0040,A123)."""
    return _item("PNAME", concept, relationship, (), common, PersonName=name)


def _sop_ref(sop_class_uid: str, sop_instance_uid: str, **more: object) -> Dataset:
    return _ds(ReferencedSOPClassUID=sop_class_uid, ReferencedSOPInstanceUID=sop_instance_uid, **more)


def image_item(concept: Dataset | None, sop_class_uid: str, sop_instance_uid: str, *,
               frames: list[int] | None = None, segments: list[int] | None = None,
               relationship: str = "CONTAINS", **common: Unpack[Common]) -> Dataset:
    """IMAGE item: ReferencedSOPSequence (+ ReferencedFrameNumber / ReferencedSegmentNumber)."""
    ref = _sop_ref(sop_class_uid, sop_instance_uid,
                   ReferencedFrameNumber=list(frames) if frames else None,
                   ReferencedSegmentNumber=list(segments) if segments else None)
    return _item("IMAGE", concept, relationship, (), common, ReferencedSOPSequence=[ref])


def source_image(sop_class_uid: str, sop_instance_uid: str, *,
                 frames: list[int] | None = None) -> Dataset:
    """The SELECTED FROM IMAGE child of an SCOORD (concept DCM 111040, as highdicom writes it)."""
    return image_item(ORIGINAL_SOURCE, sop_class_uid, sop_instance_uid, frames=frames,
                      relationship="SELECTED FROM")


def composite_item(concept: Dataset | None, sop_class_uid: str, sop_instance_uid: str,
                   relationship: str = "CONTAINS", **common: Unpack[Common]) -> Dataset:
    """COMPOSITE item: ReferencedSOPSequence (0008,1199)."""
    return _item("COMPOSITE", concept, relationship, (), common,
                 ReferencedSOPSequence=[_sop_ref(sop_class_uid, sop_instance_uid)])


def scoord_item(graphic_type: str, graphic_data: Sequence[float], source: Dataset | None,
                concept: Dataset | None = IMAGE_REGION, relationship: str = "CONTAINS",
                **common: Unpack[Common]) -> Dataset:
    """SCOORD item: GraphicType + GraphicData (FL, column/row pairs), ``source`` as child."""
    return _item("SCOORD", concept, relationship, [source] if source is not None else (), common,
                 GraphicType=graphic_type, GraphicData=[float(v) for v in graphic_data])


def scoord3d_item(graphic_type: str, graphic_data: Sequence[float], frame_of_reference_uid: str,
                  concept: Dataset | None = IMAGE_REGION, relationship: str = "CONTAINS",
                  **common: Unpack[Common]) -> Dataset:
    """SCOORD3D item: ReferencedFrameOfReferenceUID (3006,0024) + GraphicType/GraphicData (x,y,z)."""
    return _item("SCOORD3D", concept, relationship, (), common,
                 ReferencedFrameOfReferenceUID=frame_of_reference_uid, GraphicType=graphic_type,
                 GraphicData=[float(v) for v in graphic_data])


def container_item(concept: Dataset | None, children: ItemList, relationship: str | None = "CONTAINS",
                   template_id: str | None = None, continuity: str = "SEPARATE",
                   **common: Unpack[Common]) -> Dataset:
    """CONTAINER item; ``template_id`` -> ContentTemplateSequence (MappingResource DCMR)."""
    ds = _item("CONTAINER", concept, relationship, children, common, ContinuityOfContent=continuity)
    if template_id is not None:
        ds.ContentTemplateSequence = [_ds(MappingResource="DCMR", TemplateIdentifier=template_id)]
    ds.ContentSequence = list(children)
    return ds


def algorithm_items(name: str, version: str, parameters: Iterable[str] = (),
                    relationship: str = "HAS CONCEPT MOD",
                    family: Dataset | None = None) -> list[Dataset]:
    """TID 4019 Algorithm Identification: [CODE 111000 family], TEXT 111001, 111003, 111002*."""
    items = [code_item(ALGORITHM_FAMILY, family, relationship)] if family is not None else []
    items += [text_item(ALGORITHM_NAME, name, relationship),
              text_item(ALGORITHM_VERSION, version, relationship)]
    items += [text_item(ALGORITHM_PARAMETERS, p, relationship) for p in parameters]
    return items


def finding_site_item(site: Dataset, laterality: Dataset | None = None,
                      modifier: Dataset | None = None) -> Dataset:
    """HAS CONCEPT MOD CODE 363698007 with optional laterality / topographical modifier children."""
    children = []
    if laterality is not None:
        children.append(code_item(LATERALITY, laterality, "HAS CONCEPT MOD"))
    if modifier is not None:
        children.append(code_item(TOPOGRAPHICAL_MODIFIER, modifier, "HAS CONCEPT MOD"))
    return code_item(FINDING_SITE, site, "HAS CONCEPT MOD", children)


# --- Templates --------------------------------------------------------------------------------
def measurement_group(template: str = "1410", *, items: ItemList = (),
                      tracking_identifier: str | None = "Lesion 1",
                      tracking_uid: str | EllipsisType | None = ...,
                      finding_category: Dataset | EllipsisType | None = ...,
                      finding: Dataset | EllipsisType | None = ...,
                      finding_site: Dataset | None = None, method: Dataset | None = None,
                      algorithm: ItemList = (), measurements: ItemList = (),
                      qualitative: ItemList = (), observation_uid: str | EllipsisType | None = ...,
                      session: str | None = None, relationship: str = "CONTAINS",
                      observation_datetime: str | None = None) -> Dataset:
    """CONTAINER DCM 125007 "Measurement Group" for TID 1410 / 1411 / 1501.

    Children in template order: session, tracking id, tracking UID, finding category, finding,
    method, algorithm (TID 4019), finding site, ``items`` (regions / image references),
    ``measurements`` (NUMs) and ``qualitative`` (CODE/TEXT).  ``...`` means a stable default
    derived from the tracking identifier: tracking UID, abnormal-structure category, lung-nodule
    finding, group observation UID.  ``None`` leaves the item out.
    """
    key = tracking_identifier if tracking_identifier is not None else f"tid{template}"
    if tracking_uid is ...:
        tracking_uid = uid(f"tracking:{key}")
    if finding_category is ...:
        finding_category = ABNORMAL_STRUCTURE
    if finding is ...:
        finding = LUNG_NODULE
    if observation_uid is ...:
        observation_uid = uid(f"group:{template}:{key}")
    children: list[Dataset] = []
    if session is not None:
        children.append(text_item(ACTIVITY_SESSION, session, "HAS OBS CONTEXT"))
    if tracking_identifier is not None:
        children.append(text_item(TRACKING_IDENTIFIER, tracking_identifier, "HAS OBS CONTEXT"))
    if tracking_uid is not None:
        children.append(uidref_item(TRACKING_UID, tracking_uid, "HAS OBS CONTEXT"))
    if finding_category is not None:
        children.append(code_item(FINDING_CATEGORY, finding_category))
    if finding is not None:
        children.append(code_item(FINDING, finding))
    if method is not None:
        children.append(code_item(MEASUREMENT_METHOD, method))
    children += algorithm
    if finding_site is not None:
        children.append(finding_site)
    children += [*items, *measurements, *qualitative]
    return container_item(MEASUREMENT_GROUP, children, relationship, template_id=template,
                          observation_uid=observation_uid,
                          observation_datetime=observation_datetime)


def derived_measurements(items: ItemList) -> Dataset:
    """CONTAINER DCM 126011 "Derived Imaging Measurements" holding TID 1420 content."""
    return container_item(DERIVED_IMAGING_MEASUREMENTS, items)


def report_qualitative(items: ItemList) -> Dataset:
    """CONTAINER UMLS C0034375 "Qualitative Evaluations" at report level."""
    return container_item(QUALITATIVE_EVALUATIONS, items)


def _walk(items: Iterable[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _issuer(value: str | None) -> list[Dataset] | None:
    """Issuer sequence item: a URL is typed URI, anything else (OID, urn:oid:) ISO."""
    if value is None:
        return None
    return [_ds(UniversalEntityID=value, UniversalEntityIDType="URI" if "://" in value else "ISO")]


def _evidence(entries: Sequence[tuple[str, str, str]], study_uid: str) -> list[Dataset]:
    series: dict[str, list[Dataset]] = {}
    seen: set[tuple[str, str]] = set()
    for series_uid, sop_class, sop_instance in entries:
        if (series_uid, sop_instance) not in seen:
            seen.add((series_uid, sop_instance))
            series.setdefault(series_uid, []).append(_sop_ref(sop_class, sop_instance))
    return [_ds(StudyInstanceUID=study_uid, ReferencedSeriesSequence=[
        _ds(SeriesInstanceUID=series_uid, ReferencedSOPSequence=refs)
        for series_uid, refs in series.items()])]


def measurement_report(
    groups: ItemList = (), *, derived: Dataset | None = None, qualitative: Dataset | None = None,
    container_algorithm: ItemList = (), sop_class_uid: str = COMPREHENSIVE_SR,
    sop_instance_uid: str = uid("sr"), series_instance_uid: str = uid("sr-series"),
    study_instance_uid: str = uid("study"), patient_id: str | None = "PID-1",
    patient_id_issuer: str | None = "urn:oid:1.2.3.4", patient_name: str = "Doe^Jane",
    accession_number: str | None = "ACC-1",
    accession_issuer: str | None = "http://hospital.example.org/accession",
    person_observer: str | None = "Rad^Ann", device_observer_uid: str | None = None,
    device_observer_name: str | None = None, procedure_reported: Dataset | None = IMAGING_PROCEDURE,
    preliminary_flag: str | None = None, completion_flag: str = "COMPLETE",
    verification_flag: str = "UNVERIFIED", content_date: str = "20240301",
    content_time: str = "101500", timezone_offset: str | None = None,
    specific_character_set: str | None = "ISO_IR 192", manufacturer: str = "ACME Imaging",
    model_name: str = "Lesion Analyzer", device_uid: str | None = uid("device"),
    device_serial_number: str | None = "SN-0001", udi: str | None = None,
    evidence: Sequence[tuple[str, str, str]] | None = None, language: bool = True,
    with_measurements_container: bool = True,
) -> Dataset:
    """A complete TID 1500 SR document (Patient, Study, Series, Equipment, SR Document modules).

    Root CONTAINER 126000 (TID 1500): language, observer context (person 121005/121008, device
    121005/121012/121013), procedure reported, CONTAINER 126010 (``container_algorithm`` +
    ``groups``), then ``derived`` and ``qualitative``.  ``evidence`` entries are
    (series_uid, sop_class_uid, sop_instance_uid); ``None`` derives them from every IMAGE /
    COMPOSITE reference in the tree with one stable series per SOP class (``[]`` omits the
    sequence).  Optional ``str | None`` attributes are left out when ``None``.
    """
    children: list[Dataset] = []
    if language:
        children.append(code_item(LANGUAGE, ENGLISH, "HAS CONCEPT MOD"))
    if person_observer is not None:
        children += [code_item(OBSERVER_TYPE, PERSON, "HAS OBS CONTEXT"),
                     pname_item(PERSON_OBSERVER_NAME, person_observer)]
    if device_observer_uid is not None:
        children += [code_item(OBSERVER_TYPE, DEVICE, "HAS OBS CONTEXT"),
                     uidref_item(DEVICE_OBSERVER_UID, device_observer_uid, "HAS OBS CONTEXT")]
        if device_observer_name is not None:
            children.append(text_item(DEVICE_OBSERVER_NAME, device_observer_name, "HAS OBS CONTEXT"))
    if procedure_reported is not None:
        children.append(code_item(PROCEDURE_REPORTED, procedure_reported, "HAS CONCEPT MOD"))
    if with_measurements_container:
        children.append(container_item(IMAGING_MEASUREMENTS, [*container_algorithm, *groups]))
    children += [c for c in (derived, qualitative) if c is not None]
    root = container_item(IMAGING_MEASUREMENT_REPORT, children, None, template_id="1500")

    verifier = _ds(VerifyingObserverName=person_observer or "Rad^Ann",
                   VerifyingObserverIdentificationCodeSequence=[],
                   VerifyingOrganization="ACME Hospital",
                   VerificationDateTime=content_date + content_time)
    ds = _ds(
        # SOP Common
        SpecificCharacterSet=specific_character_set, SOPClassUID=sop_class_uid,
        SOPInstanceUID=sop_instance_uid, InstanceCreationDate=content_date,
        InstanceCreationTime=content_time, TimezoneOffsetFromUTC=timezone_offset,
        # Patient
        PatientName=patient_name, PatientID=patient_id, PatientBirthDate="", PatientSex="",
        IssuerOfPatientIDQualifiersSequence=_issuer(patient_id_issuer),
        # General Study
        StudyInstanceUID=study_instance_uid, StudyDate=content_date, StudyTime="090000",
        ReferringPhysicianName="", StudyID="STUDY-1", AccessionNumber=accession_number,
        IssuerOfAccessionNumberSequence=_issuer(accession_issuer),
        # SR Document Series
        Modality="SR", SeriesInstanceUID=series_instance_uid, SeriesNumber=99,
        ReferencedPerformedProcedureStepSequence=[],
        # General Equipment
        Manufacturer=manufacturer, ManufacturerModelName=model_name, SoftwareVersions="1.0",
        DeviceSerialNumber=device_serial_number, DeviceUID=device_uid,
        UDISequence=[_ds(UniqueDeviceIdentifier=udi)] if udi is not None else None,
        # SR Document General
        InstanceNumber=1, ContentDate=content_date, ContentTime=content_time,
        PreliminaryFlag=preliminary_flag, CompletionFlag=completion_flag,
        VerificationFlag=verification_flag,
        VerifyingObserverSequence=[verifier] if verification_flag == "VERIFIED" else None,
    )
    ds.PerformedProcedureCodeSequence = []
    if evidence is None:
        evidence = [(uid(f"series:{ref.ReferencedSOPClassUID}"), ref.ReferencedSOPClassUID,
                     ref.ReferencedSOPInstanceUID)
                    for item in _walk([root]) if item.ValueType in ("IMAGE", "COMPOSITE")
                    for ref in item.get("ReferencedSOPSequence", [])]
    if evidence:
        ds.CurrentRequestedProcedureEvidenceSequence = _evidence(evidence, study_instance_uid)
    # SR Document Content (root item has no RelationshipType)
    for elem in root:
        ds.add(elem)
    _add_file_meta(ds)
    return ds


def _add_file_meta(ds: Dataset) -> None:
    ds.file_meta = FileMetaDataset(_ds(
        MediaStorageSOPClassUID=ds.SOPClassUID, MediaStorageSOPInstanceUID=ds.SOPInstanceUID,
        TransferSyntaxUID=ExplicitVRLittleEndian, ImplementationClassUID=uid("implementation"),
        ImplementationVersionName="SR2FHIR_TESTS"))


def to_part10_bytes(ds: Dataset) -> bytes:
    """Serialise as a DICOM Part-10 file (preamble, file meta, explicit VR little endian)."""
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def with_undefined_lengths(ds: Dataset) -> Dataset:
    """``ds`` itself, every sequence and item marked to be written with undefined length
    (delimiters), as many modalities send them; bytes can then be patched in place."""
    for element in ds.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
    return ds


def ct_image_refs(n: int, *, series: str = "ct") -> list[tuple[str, str]]:
    """``n`` stable (CT Image Storage, SOP Instance UID) pairs, named after ``series``."""
    return [(CT_IMAGE_STORAGE, uid(f"{series}:image:{i}")) for i in range(1, n + 1)]


def large_report(n_groups: int = 60, measurements_per_group: int = 4) -> Dataset:
    """A big pure-pydicom report for benchmarks: one TID 1410 group per CT image with a POLYLINE
    region, ``measurements_per_group`` NUMs and one qualitative CODE, all with observation UIDs."""
    concepts = [(LENGTH, MM), (AREA, MM2), (VOLUME, MM3), (DIAMETER, MM)]
    groups = []
    for g, (sop_class, sop_uid) in enumerate(ct_image_refs(n_groups, series="large"), start=1):
        region = scoord_item("POLYLINE", [10, 10, 40, 10, 40, 40, 10, 40, 10, 10],
                             source_image(sop_class, sop_uid))
        nums = [num_item(concepts[m % 4][0], 1.5 * g + m, concepts[m % 4][1],
                         observation_uid=uid(f"large:{g}:num:{m}"))
                for m in range(measurements_per_group)]
        qual = code_item(MALIGNANCY, HIGHLY_SUSPICIOUS, observation_uid=uid(f"large:{g}:qual"))
        groups.append(measurement_group(
            tracking_identifier=f"Lesion {g}", finding_site=finding_site_item(LUNG, RIGHT),
            items=[region], measurements=nums, qualitative=[qual]))
    return measurement_report(groups, sop_instance_uid=uid("large-sr"))


# --- highdicom cross-checks (test-only dependency, imported lazily) --------------------------
def _synthetic_ct(index: int, series: str = "hd-ct") -> Dataset:
    """Header-only CT image of the default study/patient, usable as highdicom evidence."""
    return _ds(SOPClassUID=CT_IMAGE_STORAGE, SOPInstanceUID=uid(f"{series}:image:{index}"),
               StudyInstanceUID=uid("study"), SeriesInstanceUID=uid(f"series:{series}"),
               FrameOfReferenceUID=uid(f"for:{series}"), PatientName="Doe^Jane", PatientID="PID-1",
               PatientBirthDate="", PatientSex="", AccessionNumber="ACC-1", StudyID="STUDY-1",
               StudyDate="20240301", StudyTime="090000", ReferringPhysicianName="",
               Modality="CT", Manufacturer="ACME Imaging", InstanceNumber=index)


def _highdicom_document(groups: list, evidence: list[Dataset], sop_class: str, name: str) -> Dataset:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    context = hd.sr.ObservationContext(observer_person_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Rad^Ann")))
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=groups)
    cls = {"comprehensive3d": hd.sr.Comprehensive3DSR,
           "comprehensive": hd.sr.ComprehensiveSR, "enhanced": hd.sr.EnhancedSR}[sop_class]
    sr = cls(evidence=evidence, content=report[0], series_instance_uid=uid(f"{name}-series"),
             series_number=99, sop_instance_uid=uid(name), instance_number=1,
             manufacturer="ACME Imaging", is_complete=True, content_date="20240301",
             content_time="101500")
    # highdicom stamps "now" in three places; pin them so the output is byte-stable.
    sr.InstanceCreationDate, sr.InstanceCreationTime = "20240301", "101500"
    for item in sr.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = "20240301101500"
    return sr


def highdicom_planar_report(n_groups: int = 1, measurements_per_group: int = 2, *,
                            sop_class: str = "comprehensive3d") -> Dataset:
    """A TID 1500 written by highdicom: TID 1410 groups with a POLYLINE Image Region on synthetic
    CT images, tracking ids, finding site, algorithm id, UCUM-unit measurements and a QE.
    ``sop_class`` is "comprehensive3d", "comprehensive" or "enhanced".  Byte-stable."""
    import highdicom as hd
    import numpy as np
    from pydicom.sr.codedict import codes

    images = [_synthetic_ct(i) for i in range(1, n_groups + 1)]
    names = [(codes.SCT.Length, codes.UCUM.Millimeter), (codes.SCT.Area, codes.UCUM.SquareMillimeter)]
    groups = []
    for g, image in enumerate(images, start=1):
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array([[10.0, 10.0], [40.0, 10.0], [40.0, 40.0], [10.0, 10.0]]),
            source_image=hd.sr.SourceImageForRegion(image.SOPClassUID, image.SOPInstanceUID))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid(f"hd-planar:{g}"),
                                                         identifier=f"Lesion {g}"),
            referenced_region=region, finding_type=codes.SCT.Nodule,
            finding_category=codes.SCT.MorphologicallyAbnormalStructure,
            algorithm_id=hd.sr.AlgorithmIdentification(name="Lesion Analyzer", version="1.0"),
            finding_sites=[hd.sr.FindingSite(codes.SCT.Lung, laterality=codes.SCT.Right)],
            measurements=[hd.sr.Measurement(name=names[m % 2][0], value=10.0 * g + m,
                                            unit=names[m % 2][1])
                          for m in range(measurements_per_group)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                codes.DCM.LevelOfSignificance, codes.SCT.Moderate)]))
    return _highdicom_document(groups, images, sop_class, "hd-planar-sr")


def highdicom_volumetric_report(kinds: Sequence[str] = ("segment", "surface"), *,
                                sop_class: str = "comprehensive3d") -> Dataset:
    """A TID 1500 written by highdicom with one TID 1411 group per entry of ``kinds``:
    "segment" (Referenced Segment 121191 + source images) or "surface" (Volume Surface 121231,
    SCOORD3D ELLIPSOID, + source images).  Byte-stable."""
    import highdicom as hd
    import numpy as np
    from pydicom.sr.codedict import codes

    images = [_synthetic_ct(i, "hd-vol-ct") for i in (1, 2)]
    seg = _synthetic_ct(1, "hd-seg")
    seg.SOPClassUID, seg.Modality = SEGMENTATION_STORAGE, "SEG"
    sources = [hd.sr.SourceImageForSegmentation(i.SOPClassUID, i.SOPInstanceUID) for i in images]
    groups = []
    for g, kind in enumerate(kinds, start=1):
        roi: dict = {}
        if kind == "segment":
            roi["referenced_segment"] = hd.sr.ReferencedSegment(
                SEGMENTATION_STORAGE, seg.SOPInstanceUID, segment_number=g, source_images=sources)
        elif kind == "surface":
            axes = np.array([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0], [10.0, -8.0, 0.0],
                             [10.0, 8.0, 0.0], [10.0, 0.0, -5.0], [10.0, 0.0, 5.0]])
            roi["referenced_volume_surface"] = hd.sr.VolumeSurface(
                graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID, graphic_data=axes,
                frame_of_reference_uid=images[0].FrameOfReferenceUID, source_images=sources)
        else:
            raise ValueError(f"unknown volumetric ROI kind {kind!r}")
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid(f"hd-volumetric:{g}"),
                                                         identifier=f"Volume {g}"),
            finding_type=codes.SCT.Nodule, finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
            measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=1000.0 * g,
                                            unit=codes.UCUM.CubicMillimeter)], **roi))
    return _highdicom_document(groups, [*images, seg], sop_class, "hd-volumetric-sr")
