"""Deterministic builders for radiation dose SRs: TID 10011 CT, TID 10001 projection X-ray
(radiography, fluoroscopy, mammography) and TID 10021 radiopharmaceutical dose reports.

Plain pydicom on top of the content-item helpers of :mod:`tests.support.sr_builders`; every
attribute is under the test's control. Template rows follow PS3.16 TID 10001/10002/10004/10005/
10007 (projection), 10011/10012/10013 (CT), 10021/10022 (radiopharmaceutical), 1004 (device
observer) and 1020 (person participant). A total is given as ``(value, unit)``; the unit is a
UCUM code item or any vendor spelling (``ucum("mGycm")``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.support.sr_builders import (
    ItemList, code_item, coded, container_item, image_item, num_item, pname_item, text_item, uid, uidref_item,
)

# --- SOP classes -----------------------------------------------------------------------------
X_RAY_RADIATION_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
RADIOPHARMACEUTICAL_RADIATION_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.68"
ENHANCED_X_RAY_RADIATION_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.76"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
RF_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.12.2"
MG_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"

# --- Concepts --------------------------------------------------------------------------------
X_RAY_RADIATION_DOSE_REPORT = coded("113701", "DCM", "X-Ray Radiation Dose Report")
RADIOPHARMACEUTICAL_RADIATION_DOSE_REPORT = coded("113500", "DCM", "Radiopharmaceutical Radiation Dose Report")
PROCEDURE_REPORTED = coded("121058", "DCM", "Procedure reported")
OBSERVER_TYPE = coded("121005", "DCM", "Observer Type")
DEVICE = coded("121007", "DCM", "Device")
DEVICE_OBSERVER_UID = coded("121012", "DCM", "Device Observer UID")
DEVICE_OBSERVER_NAME = coded("121013", "DCM", "Device Observer Name")
DEVICE_OBSERVER_MANUFACTURER = coded("121014", "DCM", "Device Observer Manufacturer")
DEVICE_OBSERVER_MODEL_NAME = coded("121015", "DCM", "Device Observer Model Name")
DEVICE_OBSERVER_SERIAL_NUMBER = coded("121016", "DCM", "Device Observer Serial Number")
START_OF_X_RAY_IRRADIATION = coded("113809", "DCM", "Start of X-Ray Irradiation")
END_OF_X_RAY_IRRADIATION = coded("113810", "DCM", "End of X-Ray Irradiation")
CT_ACCUMULATED_DOSE_DATA = coded("113811", "DCM", "CT Accumulated Dose Data")
TOTAL_NUMBER_OF_IRRADIATION_EVENTS = coded("113812", "DCM", "Total Number of Irradiation Events")
CT_DLP_TOTAL = coded("113813", "DCM", "CT Dose Length Product Total")
CT_ACQUISITION = coded("113819", "DCM", "CT Acquisition")
IRRADIATION_EVENT_UID = coded("113769", "DCM", "Irradiation Event UID")
CT_DOSE = coded("113829", "DCM", "CT Dose")
MEAN_CTDIVOL = coded("113830", "DCM", "Mean CTDIvol")
DLP = coded("113838", "DCM", "DLP")
ACCUMULATED_X_RAY_DOSE_DATA = coded("113702", "DCM", "Accumulated X-Ray Dose Data")
ACQUISITION_PLANE = coded("113764", "DCM", "Acquisition Plane")
DOSE_AREA_PRODUCT_TOTAL = coded("113722", "DCM", "Dose Area Product Total")
DOSE_RP_TOTAL = coded("113725", "DCM", "Dose (RP) Total")
FLUORO_DAP_TOTAL = coded("113726", "DCM", "Fluoro Dose Area Product Total")
ACQUISITION_DAP_TOTAL = coded("113727", "DCM", "Acquisition Dose Area Product Total")
FLUORO_DOSE_RP_TOTAL = coded("113728", "DCM", "Fluoro Dose (RP) Total")
TOTAL_FLUORO_TIME = coded("113730", "DCM", "Total Fluoro Time")
TOTAL_RADIOGRAPHIC_FRAMES = coded("113731", "DCM", "Total Number of Radiographic Frames")
ACCUMULATED_AGD = coded("111637", "DCM", "Accumulated Average Glandular Dose")
LATERALITY = coded("272741003", "SCT", "Laterality")
IRRADIATION_EVENT_X_RAY_DATA = coded("113706", "DCM", "Irradiation Event X-Ray Data")
DATETIME_STARTED = coded("111526", "DCM", "DateTime Started")
DOSE_AREA_PRODUCT = coded("122130", "DCM", "Dose Area Product")
ACQUIRED_IMAGE = coded("113795", "DCM", "Acquired Image")
PERSON_NAME = coded("113870", "DCM", "Person Name")
PERSON_ROLE_IN_PROCEDURE = coded("113875", "DCM", "Person Role in Procedure")
PERSON_ID = coded("113871", "DCM", "Person ID")
PERSON_ID_ISSUER = coded("113872", "DCM", "Person ID Issuer")
RADIOPHARMACEUTICAL_ADMINISTRATION = coded("113502", "DCM", "Radiopharmaceutical Administration")
RADIOPHARMACEUTICAL_AGENT = coded("349358000", "SCT", "Radiopharmaceutical agent")
RADIONUCLIDE = coded("89457008", "SCT", "Radionuclide")
ADMINISTERED_ACTIVITY = coded("113507", "DCM", "Administered activity")
RADIOPHARMACEUTICAL_VOLUME = coded("123005", "DCM", "Radiopharmaceutical Volume")
ROUTE_OF_ADMINISTRATION = coded("410675002", "SCT", "Route of administration")
RADIOPHARMACEUTICAL_START = coded("123003", "DCM", "Radiopharmaceutical Start DateTime")
ADMINISTRATION_EVENT_UID = coded("113503", "DCM", "Radiopharmaceutical Administration Event UID")

# --- Values ----------------------------------------------------------------------------------
COMPUTED_TOMOGRAPHY = coded("P5-08000", "SRT", "Computed Tomography X-Ray")
PROJECTION_X_RAY = coded("113704", "DCM", "Projection X-Ray")
MAMMOGRAPHY = coded("71651007", "SCT", "Mammography")
SINGLE_PLANE = coded("113622", "DCM", "Single Plane")
PLANE_A = coded("113620", "DCM", "Plane A")
PLANE_B = coded("113621", "DCM", "Plane B")
ALL_PLANES = coded("113890", "DCM", "All Planes")
LEFT_BREAST = coded("80248007", "SCT", "Left breast")
RIGHT_BREAST = coded("73056007", "SCT", "Right breast")
BOTH_BREASTS = coded("63762007", "SCT", "Both breasts")
IRRADIATION_AUTHORIZING = coded("113850", "DCM", "Irradiation Authorizing")
FDG = coded("35321007", "SCT", "Fluorodeoxyglucose F^18^")
FLUORINE_18 = coded("77004003", "SCT", "^18^Fluorine")
INTRAVENOUS_ROUTE = coded("47625008", "SCT", "Intravenous route")


def ucum(code: str, meaning: str | None = None, scheme: str = "UCUM") -> Dataset:
    """A unit code item; ``code`` may be a vendor spelling (``mGycm``, ``Gym2``)."""
    return coded(code, scheme, meaning or code)


MGY_CM = ucum("mGy.cm")
MGY = ucum("mGy")
GY = ucum("Gy")
GY_M2 = ucum("Gy.m2")
S = ucum("s")
ONE = ucum("1")
EVENTS = ucum("{events}")
MBQ = ucum("MBq")
CM3 = ucum("cm3")

Total = tuple[str | None, Dataset]  # (value, unit); value None -> empty Measured Value Sequence


def device_observer(*, uid_value: str | None = uid("xray-system"), manufacturer: str | None = "ACME Medical",
                    model: str | None = "Irradiator 3000", serial: str | None = "XR-0042",
                    name: str | None = "ROOM1") -> list[Dataset]:
    """TID 1004 Device Observer Identifying Attributes (HAS OBS CONTEXT under the root)."""
    items = [code_item(OBSERVER_TYPE, DEVICE, "HAS OBS CONTEXT")]
    if uid_value is not None:
        items.append(uidref_item(DEVICE_OBSERVER_UID, uid_value, "HAS OBS CONTEXT"))
    for concept, value in ((DEVICE_OBSERVER_NAME, name), (DEVICE_OBSERVER_MANUFACTURER, manufacturer),
                           (DEVICE_OBSERVER_MODEL_NAME, model), (DEVICE_OBSERVER_SERIAL_NUMBER, serial)):
        if value is not None:
            items.append(text_item(concept, value, "HAS OBS CONTEXT"))
    return items


def authorizing_person(name: str = "Curie^Marie", person_id: str | None = "RAD-7",
                       issuer: str | None = "ACME Hospital") -> Dataset:
    """TID 1020 Person Participant with role Irradiation Authorizing (DCM 113850)."""
    children = [code_item(PERSON_ROLE_IN_PROCEDURE, IRRADIATION_AUTHORIZING, "HAS PROPERTIES")]
    if person_id is not None:
        children.append(text_item(PERSON_ID, person_id, "HAS PROPERTIES"))
    if issuer is not None:
        children.append(text_item(PERSON_ID_ISSUER, issuer, "HAS PROPERTIES"))
    item = pname_item(PERSON_NAME, name, "CONTAINS")
    item.ContentSequence = children
    return item


def _totals(totals: dict[str, Total], concepts: dict[str, Dataset]) -> list[Dataset]:
    return [num_item(concepts[name], value, unit) for name, (value, unit) in totals.items()]


_PROJECTION_CONCEPTS = {
    "dap": DOSE_AREA_PRODUCT_TOTAL, "dose_rp": DOSE_RP_TOTAL, "fluoro_dap": FLUORO_DAP_TOTAL,
    "acquisition_dap": ACQUISITION_DAP_TOTAL, "fluoro_dose_rp": FLUORO_DOSE_RP_TOTAL,
    "fluoro_time": TOTAL_FLUORO_TIME, "frames": TOTAL_RADIOGRAPHIC_FRAMES,
}


def accumulated_x_ray_dose(plane: Dataset = SINGLE_PLANE, **totals: Total) -> Dataset:
    """TID 10002 Accumulated X-Ray Dose (with TID 10004/10007 totals) for one plane.

    ``totals`` keys: dap, dose_rp, fluoro_dap, acquisition_dap, fluoro_dose_rp, fluoro_time, frames.
    """
    return container_item(ACCUMULATED_X_RAY_DOSE_DATA, [
        code_item(ACQUISITION_PLANE, plane, "HAS CONCEPT MOD"), *_totals(totals, _PROJECTION_CONCEPTS)])


def accumulated_mammography_dose(agd: Sequence[tuple[Dataset, Total]]) -> Dataset:
    """TID 10005 Accumulated Mammography X-Ray Dose: one Accumulated AGD per laterality."""
    items = [code_item(ACQUISITION_PLANE, SINGLE_PLANE, "HAS CONCEPT MOD")]
    for laterality, (value, unit) in agd:
        item = num_item(ACCUMULATED_AGD, value, unit)
        item.ContentSequence = [code_item(LATERALITY, laterality, "HAS CONCEPT MOD")]
        items.append(item)
    return container_item(ACCUMULATED_X_RAY_DOSE_DATA, items)


def projection_event(dap: Total = ("0.00002206", GY_M2), started: str = "20240301101600",
                     image: tuple[str, str] | None = None) -> Dataset:
    """TID 10003 Irradiation Event X-Ray Data (per-event details sr2fhir does not map)."""
    items = [code_item(ACQUISITION_PLANE, SINGLE_PLANE, "HAS CONCEPT MOD"),
             _datetime_item(DATETIME_STARTED, started),
             uidref_item(IRRADIATION_EVENT_UID, uid(f"event:{started}")), num_item(DOSE_AREA_PRODUCT, *dap)]
    if image is not None:
        items.append(image_item(ACQUIRED_IMAGE, *image))
    return container_item(IRRADIATION_EVENT_X_RAY_DATA, items)


def ct_accumulated_dose(dlp_total: Total = ("586.34", MGY_CM), events: int = 2) -> Dataset:
    """TID 10012 CT Accumulated Dose Data."""
    return container_item(CT_ACCUMULATED_DOSE_DATA, [
        num_item(TOTAL_NUMBER_OF_IRRADIATION_EVENTS, events, EVENTS), num_item(CT_DLP_TOTAL, *dlp_total)],
        template_id="10012")


def ct_acquisition(ctdivol: str = "12.5", dlp: str = "293.17", n: int = 1) -> Dataset:
    """TID 10013 CT Irradiation Event Data (per-event details sr2fhir does not map)."""
    return container_item(CT_ACQUISITION, [
        uidref_item(IRRADIATION_EVENT_UID, uid(f"ct-event:{n}")),
        container_item(CT_DOSE, [num_item(MEAN_CTDIVOL, ctdivol, MGY), num_item(DLP, dlp, MGY_CM)]),
    ], template_id="10013")


def _datetime_item(concept: Dataset, value: str, relationship: str = "CONTAINS") -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = "DATETIME"
    item.ConceptNameCodeSequence = [concept]
    item.DateTime = value
    return item


def ct_dose_report(*, accumulated: Dataset | None = None, events: ItemList | None = None, **document) -> Dataset:
    """A TID 10011 CT Radiation Dose SR (X-Ray Radiation Dose SR Storage)."""
    content = [
        code_item(PROCEDURE_REPORTED, COMPUTED_TOMOGRAPHY, "HAS CONCEPT MOD"),
        *document.pop("observer", device_observer()),
        _datetime_item(START_OF_X_RAY_IRRADIATION, document.pop("start", "20240301101500"), "HAS OBS CONTEXT"),
        _datetime_item(END_OF_X_RAY_IRRADIATION, "20240301101900", "HAS OBS CONTEXT"),
    ]
    if accumulated is not None:
        content.append(accumulated)
    content += list(events if events is not None else [ct_acquisition(n=1), ct_acquisition(n=2)])
    content += document.pop("extra", [])
    return dose_document(X_RAY_RADIATION_DOSE_REPORT, "10011", content, **document)


def projection_dose_report(*, accumulated: ItemList = (), events: ItemList = (),
                           procedure: Dataset = PROJECTION_X_RAY, **document) -> Dataset:
    """A TID 10001 Projection X-Ray Radiation Dose SR: ``accumulated`` containers (one per plane)."""
    content = [code_item(PROCEDURE_REPORTED, procedure, "HAS CONCEPT MOD"),
               *document.pop("observer", device_observer())]
    if "start" in document:
        content.append(_datetime_item(START_OF_X_RAY_IRRADIATION, document.pop("start"), "HAS OBS CONTEXT"))
    content += [*accumulated, *events, *document.pop("extra", [])]
    return dose_document(X_RAY_RADIATION_DOSE_REPORT, "10001", content, **document)


def administration_event(*, activity: Total = ("370", MBQ), agent: Dataset | None = FDG,
                         radionuclide: Dataset | None = FLUORINE_18, volume: Total | None = ("5", CM3),
                         route: Dataset | None = INTRAVENOUS_ROUTE, start: str | None = "20240301093000") -> Dataset:
    """TID 10022 Radiopharmaceutical Administration Event Data."""
    items = []
    if agent is not None:
        items.append(code_item(RADIOPHARMACEUTICAL_AGENT, agent))
    if radionuclide is not None:
        items.append(code_item(RADIONUCLIDE, radionuclide, "HAS PROPERTIES"))
    items.append(uidref_item(ADMINISTRATION_EVENT_UID, uid(f"administration:{start}")))
    if start is not None:
        items.append(_datetime_item(RADIOPHARMACEUTICAL_START, start))
    items.append(num_item(ADMINISTERED_ACTIVITY, *activity))
    if volume is not None:
        items.append(num_item(RADIOPHARMACEUTICAL_VOLUME, *volume))
    if route is not None:
        items.append(code_item(ROUTE_OF_ADMINISTRATION, route))
    return container_item(RADIOPHARMACEUTICAL_ADMINISTRATION, items, template_id="10022")


def radiopharmaceutical_dose_report(*, events: ItemList | None = None, **document) -> Dataset:
    """A TID 10021 Radiopharmaceutical Radiation Dose SR."""
    content = [code_item(PROCEDURE_REPORTED, RADIOPHARMACEUTICAL_ADMINISTRATION, "HAS CONCEPT MOD"),
               *document.pop("observer", device_observer(model="Dose Calibrator", serial="DC-1")),
               *(events if events is not None else [administration_event()])]
    document.setdefault("sop_class_uid", RADIOPHARMACEUTICAL_RADIATION_DOSE_SR)
    return dose_document(RADIOPHARMACEUTICAL_RADIATION_DOSE_REPORT, "10021", content, **document)


def dose_document(title: Dataset, template_id: str | None, content: ItemList, *,
                  sop_class_uid: str = X_RAY_RADIATION_DOSE_SR, sop_instance_uid: str | None = None,
                  study_instance_uid: str = uid("dose-study"), patient_id: str = "PID-9",
                  accession_number: str | None = "ACC-9", station_ae_title: str | None = None,
                  manufacturer: str = "ACME Medical", model_name: str = "Irradiator 3000",
                  device_serial_number: str | None = "XR-0042", content_date: str = "20240301",
                  content_time: str = "102000") -> Dataset:
    """The SR document around a dose report's content (Patient, Study, Series, Equipment, SR modules)."""
    root = container_item(title, list(content), None, template_id=template_id)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid or uid(f"dose-sr:{template_id}")
    ds.PatientName = "Doe^John"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_instance_uid
    ds.StudyDate, ds.StudyTime = content_date, "090000"
    if accession_number is not None:
        ds.AccessionNumber = accession_number
    ds.Modality = "SR"
    ds.SeriesInstanceUID = uid(f"dose-series:{template_id}")
    ds.SeriesNumber = 999
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model_name
    if device_serial_number is not None:
        ds.DeviceSerialNumber = device_serial_number
    if station_ae_title is not None:
        ds.StationAETitle = station_ae_title
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = content_date, content_time
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    for element in root:
        ds.add(element)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
