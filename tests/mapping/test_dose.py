"""Radiation dose SRs -> the HL7 Radiation Dose Summary IG's Observation and Device, R5 and R4.

Built reports (``tests.support.dose_builders``) for TID 10011 CT, TID 10001 radiography,
fluoroscopy and mammography, TID 10021 radiopharmaceutical; the seven real vendor RDSRs of
``../shared/samples/real-dose`` with their totals asserted in the IG's units (values read from
the files with pydicom, converted by hand: 1 Gy.m2 = 10^7 mGy.cm2, 1 Gy = 1000 mGy).
"""

from __future__ import annotations

import copy
import json
import shutil
from decimal import Decimal
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from mapping import MappingOptions, map_sr, serialize
from mapping.documents import DocumentKind
from mapping.errors import InvalidValue, MissingContentItem
from tests.support import dose_builders as b
from tests.support.conformance import SHARED, require_shared
from tests.support.sr_builders import to_part10_bytes, uid

REAL_DOSE = SHARED / "samples" / "real-dose"
DOSE_IG = "http://hl7.org/fhir/uv/radiation-dose-summary"
SUMMARY_PROFILE = f"{DOSE_IG}/StructureDefinition/radiation-dose-summary"
DEVICE_PROFILE = f"{DOSE_IG}/StructureDefinition/modality-device"
ID_TYPES = f"{DOSE_IG}/CodeSystem/dicom-identifier-type"
DAR = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"


def _resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _summary(bundle: dict) -> dict:
    (observation,) = _resources(bundle, "Observation")
    return observation


def _components(observation: dict) -> dict[str, object]:
    """component code -> value (Decimal quantity with unit, int, or coding code)."""
    found = {}
    for component in observation["component"]:
        code = component["code"]["coding"][0]["code"]
        if "valueQuantity" in component:
            quantity = component["valueQuantity"]
            assert quantity["system"] == "http://unitsofmeasure.org" and quantity["code"] == quantity["unit"]
            found[code] = (Decimal(str(quantity["value"])), quantity["code"])
        elif "valueInteger" in component:
            found[code] = component["valueInteger"]
        else:
            found[code] = component["valueCodeableConcept"]["coding"][0]["code"]
    return found


def _map(ds, **options):
    return map_sr(ds, MappingOptions(**options))


# --- CT (TID 10011) ------------------------------------------------------------------------

def test_ct_report_gives_one_summary_with_the_dlp_total_and_a_ct_device():
    result = _map(b.ct_dose_report(accumulated=b.ct_accumulated_dose(("586.34", b.MGY_CM))))
    assert result.kind is DocumentKind.RADIATION_DOSE
    observation = _summary(result.bundle)
    assert _components(observation) == {"121058": "77477000", "113813": (Decimal("586.34"), "mGy.cm")}
    assert observation["code"]["coding"] == [{"system": "http://loinc.org", "code": "73569-6", "display":
                                              "Radiation exposure and protection information [Description] "
                                              "Document Diagnostic imaging"}]
    assert observation["valueString"] == "CT Dose Length Product Total = 586.34 mGy.cm"
    assert observation["effectiveDateTime"] == "2024-03-01T10:15:00+00:00"  # Start of X-Ray Irradiation
    assert observation["identifier"] == [{
        "type": {"coding": [{"system": ID_TYPES, "code": "sop-instance-uid", "display": "SOP Instance UID"}]},
        "system": "urn:dicom:uid", "value": f"urn:oid:{uid('dose-sr:10011')}"}]
    study = {"type": "ImagingStudy", "identifier": {
        "type": {"coding": [{"system": ID_TYPES, "code": "study-instance-uid", "display": "Study Instance UID"},
                            {"system": DCM, "code": "110180", "display": "Study Instance UID"}]},
        "system": "urn:dicom:uid", "value": f"urn:oid:{uid('dose-study')}"}}
    assert observation["partOf"] == [study] and observation["focus"] == [study]
    assert observation["subject"] == {"type": "Patient", "identifier": {"value": "PID-9"}}
    assert observation["basedOn"][0]["identifier"]["value"] == "ACC-9"
    assert "meta" not in observation  # R5: the IG is R4, no profile claimed
    (device,) = _resources(result.bundle, "Device")
    assert observation["device"] == {"reference": f"Device/{device['id']}"}
    assert device["type"] == [{"coding": [{"system": DCM, "code": "CT", "display": "Computed Tomography"}]}]
    assert device["manufacturer"] == "ACME Medical" and device["serialNumber"] == "XR-0042"
    assert device["displayName"] == "Irradiator 3000"
    assert {i["type"]["coding"][0]["code"]: i["value"] for i in device["identifier"]} == {
        "SNO": "XR-0042", "device-uid": f"urn:oid:{uid('xray-system')}"}
    assert [(n.path, n.reason) for n in result.skipped] == [
        ("1", "2 irradiation event container(s) (from 1.11) not mapped: the IG's summary is procedure-level")]


def test_mapping_is_deterministic_and_the_device_is_shared_between_reports():
    first = _map(b.ct_dose_report(accumulated=b.ct_accumulated_dose()))
    again = _map(b.ct_dose_report(accumulated=b.ct_accumulated_dose()))
    other = _map(b.ct_dose_report(accumulated=b.ct_accumulated_dose(("12", b.MGY_CM)),
                                  sop_instance_uid=uid("another-ct-report")))
    assert serialize(first.bundle) == serialize(again.bundle)
    assert _resources(first.bundle, "Device") == _resources(other.bundle, "Device")
    assert _summary(first.bundle)["id"] != _summary(other.bundle)["id"]


@pytest.mark.parametrize(("value", "unit", "expected"), [
    ("586.34", "mGy.cm", "586.34"),
    ("586.34", "mGycm", "586.34"),  # vendor spelling, not UCUM
    ("0.58634", "Gy.cm", "586.34"),
    ("58.634", "cGy.cm", "586.34"),
    ("5.8634", "dGy.m", "58634"),
])
def test_ct_dlp_total_is_converted_to_mgy_cm(value, unit, expected):
    result = _map(b.ct_dose_report(accumulated=b.ct_accumulated_dose((value, b.ucum(unit)))))
    assert _components(_summary(result.bundle))["113813"] == (Decimal(expected), "mGy.cm")


@pytest.mark.parametrize(("value", "unit", "expected"), [
    ("0.00024126", "Gy.m2", "2412.6"),
    ("0.00024126", "Gym2", "2412.6"),
    ("24.126", "dGy.cm2", "2412.6"),
    ("241.26", "cGy.cm2", "2412.6"),
    ("2.4126", "Gy.cm2", "2412.6"),
    ("24.126", "uGy.m2", "241.26"),
    ("2412.6", "mGy.cm2", "2412.6"),
])
def test_dose_area_products_are_converted_to_mgy_cm2(value, unit, expected):
    ds = b.projection_dose_report(accumulated=[b.accumulated_x_ray_dose(dap=(value, b.ucum(unit)))])
    assert _components(_summary(_map(ds).bundle))["113722"] == (Decimal(expected), "mGy.cm2")


def test_unknown_unit_is_refused_with_a_note_and_the_other_totals_stay():
    ds = b.projection_dose_report(accumulated=[b.accumulated_x_ray_dose(
        dap=("12", b.ucum("R.cm2")), dose_rp=("0.5", b.GY), fluoro_time=("1", b.ucum("mGy")))])
    result = _map(ds)
    assert _components(_summary(result.bundle)) == {"121058": "113704", "113725": (Decimal("500.0"), "mGy")}
    reasons = {note.path: note.reason for note in result.skipped}
    assert reasons["1.8.2"] == ("Dose Area Product Total not mapped: unit 'R.cm2' is not a known spelling of a dose "
                                "in gray (expected mGy.cm2 or a convertible spelling such as Gy.m2, dGy.cm2, mGycm); "
                                "not converted")
    assert reasons["1.8.4"] == ("Total Fluoro Time not mapped: unit 'mGy' is not a known unit of time "
                                "(expected s, ms, min or h); not converted")


def test_the_only_total_unreadable_is_an_error_naming_the_container_and_the_reason():
    with pytest.raises(InvalidValue) as raised:
        _map(b.ct_dose_report(accumulated=b.ct_accumulated_dose(("12", b.MGY))))
    assert str(raised.value) == (
        "1.10 (DCM,113811): no readable procedure-level dose value: 1.10.2 CT Dose Length Product Total: "
        "unit 'mGy' measures a dose, not the mGy.cm this total is in; not converted")


def test_missing_accumulated_dose_container_is_an_error():
    with pytest.raises(MissingContentItem) as raised:
        _map(b.ct_dose_report(accumulated=None))
    assert str(raised.value) == ("1 (DCM,113701): TID 10011 CT radiation dose report without its CT Accumulated "
                                 "Dose Data (DCM 113811) container: the procedure totals are missing")
    with pytest.raises(MissingContentItem, match=r"Accumulated X-Ray Dose Data \(DCM 113702\)"):
        _map(b.projection_dose_report(events=[b.projection_event()]))


def test_empty_measured_value_is_noted_and_unreadable_number_is_noted():
    ds = b.projection_dose_report(accumulated=[b.accumulated_x_ray_dose(
        dap=("1.07E-05", b.GY_M2), dose_rp=(None, b.GY), frames=("2.5", b.ONE))])
    result = _map(ds)
    assert _components(_summary(result.bundle)) == {"121058": "113704", "113722": (Decimal("107"), "mGy.cm2")}
    reasons = {note.path: note.reason for note in result.skipped}
    assert reasons["1.8.3"] == "Dose (RP) Total not mapped: no numeric value (empty Measured Value Sequence)"
    assert reasons["1.8.4"] == ("Total Number of Radiographic Frames not mapped: 2.5 is not a whole number of "
                                "total number of radiographic frames")
    broken = b.projection_dose_report(accumulated=[b.accumulated_x_ray_dose(
        dap=("12", b.ucum("mGy.cm2")), dose_rp=("NaN", b.GY))])
    notes = {n.path: n.reason for n in _map(pydicom.dcmread(BytesIO(to_part10_bytes(broken)))).skipped}
    assert notes["1.8.3"] == "NUM: Numeric Value 'NaN' is not a finite decimal number"


# --- Projection X-ray (TID 10001) ----------------------------------------------------------

def test_fluoroscopy_totals_and_a_modality_from_the_acquired_images():
    ds = b.projection_dose_report(
        accumulated=[b.accumulated_x_ray_dose(
            dap=("0.00024126", b.GY_M2), dose_rp=("0.0117317", b.GY), fluoro_dap=("0.0002", b.GY_M2),
            acquisition_dap=("0.00004126", b.GY_M2), fluoro_time=("72.46", b.S), frames=("12", b.ONE),
            fluoro_dose_rp=("0.01", b.GY))],
        events=[b.projection_event(started="20240301101700", image=(b.RF_IMAGE_STORAGE, uid("rf-image"))),
                b.projection_event(started="20240301101600")])
    result = _map(ds)
    observation = _summary(result.bundle)
    assert _components(observation) == {
        "121058": "113704", "113725": (Decimal("11.7317"), "mGy"), "113722": (Decimal("2412.6"), "mGy.cm2"),
        "113726": (Decimal("2000"), "mGy.cm2"), "113727": (Decimal("412.6"), "mGy.cm2"),
        "113730": (Decimal("72.46"), "s"), "113731": 12}
    assert observation["effectiveDateTime"] == "2024-03-01T10:16:00+00:00"  # earliest event start
    (device,) = _resources(result.bundle, "Device")
    assert device["type"][0]["coding"][0]["code"] == "RF"


def test_radiography_without_images_is_dx_and_fluoroscopy_without_images_is_xa():
    radiography = b.projection_dose_report(accumulated=[b.accumulated_x_ray_dose(dap=("1.07E-05", b.GY_M2))])
    fluoroscopy = b.projection_dose_report(accumulated=[b.accumulated_x_ray_dose(
        dap=("1.07E-05", b.GY_M2), fluoro_time=("3", b.S))])
    assert _resources(_map(radiography).bundle, "Device")[0]["type"][0]["coding"][0]["code"] == "DX"
    assert _resources(_map(fluoroscopy).bundle, "Device")[0]["type"][0]["coding"][0]["code"] == "XA"


def test_biplane_totals_are_summed_and_an_all_planes_total_wins():
    planes = [b.accumulated_x_ray_dose(b.PLANE_A, dap=("0.0001", b.GY_M2), fluoro_time=("10", b.S)),
              b.accumulated_x_ray_dose(b.PLANE_B, dap=("0.0002", b.GY_M2), fluoro_time=("5", b.S))]
    observation = _summary(_map(b.projection_dose_report(accumulated=planes)).bundle)
    assert _components(observation)["113722"] == (Decimal("3000"), "mGy.cm2")
    assert _components(observation)["113730"] == (Decimal("15"), "s")
    assert observation["valueString"] == ("Dose Area Product Total = 3000 mGy.cm2 (sum of Plane A 1000 mGy.cm2, "
                                          "Plane B 2000 mGy.cm2), Total Fluoro Time = 15 s (sum of Plane A 10 s, "
                                          "Plane B 5 s)")
    total = b.accumulated_x_ray_dose(b.ALL_PLANES, dap=("0.00035", b.GY_M2))
    observation = _summary(_map(b.projection_dose_report(accumulated=[*planes, total])).bundle)
    assert _components(observation)["113722"] == (Decimal("3500"), "mGy.cm2")
    assert _components(observation)["113730"] == (Decimal("15"), "s")  # no All Planes value: the sum


def test_mammography_agd_per_breast_is_summed_and_both_breasts_wins():
    per_breast = [(b.LEFT_BREAST, ("1.30", b.MGY)), (b.RIGHT_BREAST, ("1.28", b.MGY))]
    ds = b.projection_dose_report(procedure=b.MAMMOGRAPHY, accumulated=[b.accumulated_mammography_dose(per_breast)])
    result = _map(ds)
    observation = _summary(result.bundle)
    assert _components(observation) == {"121058": "71651007", "111637": (Decimal("2.58"), "mGy")}
    assert observation["valueString"] == ("Accumulated Average Glandular Dose = 2.58 mGy "
                                          "(sum of Left breast 1.30 mGy, Right breast 1.28 mGy)")
    assert _resources(result.bundle, "Device")[0]["type"][0]["coding"][0]["code"] == "MG"
    both = b.projection_dose_report(procedure=b.MAMMOGRAPHY, accumulated=[b.accumulated_mammography_dose(
        [*per_breast, (b.BOTH_BREASTS, ("0.0026", b.GY))])])
    assert _components(_summary(_map(both).bundle))["111637"] == (Decimal("2.6"), "mGy")


def test_irradiation_authorizing_person_is_the_performer():
    ds = b.projection_dose_report(accumulated=[b.accumulated_x_ray_dose(dap=("1", b.ucum("Gy.cm2")))],
                                  extra=[b.authorizing_person()])
    bundle = _map(ds).bundle
    observation = _summary(bundle)
    [practitioner] = _resources(bundle, "Practitioner")
    assert practitioner["identifier"][0] == {"value": "RAD-7", "assigner": {"display": "ACME Hospital"}}
    assert practitioner["name"] == [{"family": "Curie", "given": ["Marie"]}]
    assert observation["performer"] == [{"reference": f"Practitioner/{practitioner['id']}", "display": "Marie Curie"}]
    # Shared: another report naming the same person points at the same Practitioner.
    other = b.projection_dose_report(accumulated=[b.accumulated_x_ray_dose(dap=("2", b.ucum("Gy.cm2")))],
                                     extra=[b.authorizing_person()], sop_instance_uid=uid("other-dose"))
    assert _resources(_map(other).bundle, "Practitioner")[0]["id"] == practitioner["id"]


# --- Radiopharmaceutical (TID 10021) -------------------------------------------------------

def test_radiopharmaceutical_administration():
    ds = b.radiopharmaceutical_dose_report(events=[b.administration_event(activity=("10", b.ucum("mCi")))])
    result = _map(ds)
    observation = _summary(result.bundle)
    assert _components(observation) == {
        "121058": "113502", "113507": (Decimal("370"), "MBq"), "349358000": "35321007", "89457008": "77004003",
        "123005": (Decimal("5"), "cm3"), "410675002": "47625008"}
    assert observation["effectiveDateTime"] == "2024-03-01T09:30:00+00:00"  # Radiopharmaceutical Start DateTime
    assert _resources(result.bundle, "Device") == [] and "device" not in observation
    assert [n.reason for n in result.skipped if n.path == "1"] == [
        "radiopharmaceutical report: no modality-device Device (the administration has no irradiating modality; "
        "the device observer is the administering or measuring device)"]


def test_second_administration_is_noted_not_mapped():
    ds = b.radiopharmaceutical_dose_report(events=[b.administration_event(),
                                                   b.administration_event(start="20240301110000")])
    result = _map(ds)
    assert _components(_summary(result.bundle))["113507"] == (Decimal("370"), "MBq")
    assert any(n.path == "1.9" and "only the first is mapped" in n.reason for n in result.skipped)


# --- Write modes and R4 ----------------------------------------------------------------------

def test_conditional_modes_key_on_the_sr_uid_and_the_device_uid():
    result = _map(b.ct_dose_report(accumulated=b.ct_accumulated_dose()), write_mode="conditional")
    requests = {e["resource"]["resourceType"]: e["request"] for e in result.bundle["entry"]}
    assert requests["Observation"]["ifNoneExist"] == f"identifier=urn:dicom:uid|urn:oid:{uid('dose-sr:10011')}"
    assert requests["Device"]["ifNoneExist"] == f"identifier=urn:dicom:uid|urn:oid:{uid('xray-system')}"


def test_r4_claims_the_ig_profiles_and_fills_what_they_require():
    ds = b.ct_dose_report(accumulated=b.ct_accumulated_dose())
    bundle = _map(ds, fhir_version="r4").bundle
    observation = _summary(bundle)
    (device,) = _resources(bundle, "Device")
    assert observation["meta"] == {"profile": [SUMMARY_PROFILE]}
    assert device["meta"] == {"profile": [DEVICE_PROFILE]}
    assert observation["performer"] == [{"extension": [{"url": DAR, "valueCode": "unknown"}], "type": "Practitioner"}]
    assert device["identifier"][0] == {"type": {"coding": [{"system": ID_TYPES, "code": "application-entity",
                                                            "display": "Application Entity"}]},
                                       "_value": {"extension": [{"url": DAR, "valueCode": "unknown"}]}}
    assert device["deviceName"] == [{"name": "ACME Medical", "type": "manufacturer-name"},
                                    {"name": "Irradiator 3000", "type": "model-name"}]
    assert device["type"] == {"coding": [{"system": DCM, "code": "CT", "display": "Computed Tomography"}]}
    with_ae = _map(b.ct_dose_report(accumulated=b.ct_accumulated_dose(), station_ae_title="CT01",
                                    extra=[b.authorizing_person()]), fhir_version="r4").bundle
    ae = [i for i in _resources(with_ae, "Device")[0]["identifier"]
          if i["type"]["coding"][0]["code"] == "application-entity"]
    assert ae == [{"type": {"coding": [{"system": ID_TYPES, "code": "application-entity",
                                        "display": "Application Entity"}]}, "value": "CT01"}]
    assert _summary(with_ae)["performer"][0]["display"] == "Marie Curie"


# --- Real vendor RDSRs ------------------------------------------------------------------------

REAL_TOTALS = {
    "CT-RDSR-GEPixelMed.dcm": ("CT", {"121058": "77477000", "113813": (Decimal("586.34"), "mGy.cm")}),
    "CT-RDSR-Siemens-Multi-1.dcm": ("CT", {"121058": "77477000", "113813": (Decimal("7.46"), "mGy.cm")}),
    "CT-RDSR-ToshibaPixelMed.dcm": ("CT", {"121058": "77477000", "113813": (Decimal("349.70"), "mGy.cm")}),
    # DAP 1.07E-05 Gy.m2; its Dose (RP) Total has an empty Measured Value Sequence.
    "DX-RDSR-Canon_CXDI.dcm": ("DX", {"121058": "113704", "113722": (Decimal("107"), "mGy.cm2"),
                                      "113727": (Decimal("107"), "mGy.cm2")}),
    # Accumulated AGD 1.30 mGy (left breast) + 1.28 mGy (right breast).
    "MG-RDSR-Hologic_2D.dcm": ("MG", {"121058": "71651007", "111637": (Decimal("2.58"), "mGy")}),
    "RF-RDSR-GE.dcm": ("XA", {
        "121058": "113704", "113725": (Decimal("11.7317"), "mGy"), "113722": (Decimal("2412.6"), "mGy.cm2"),
        "113726": (Decimal("2412.6"), "mGy.cm2"), "113727": (Decimal("0"), "mGy.cm2"),
        "113730": (Decimal("72.46"), "s"), "113731": 0}),
    "RF-RDSR-Philips_Allura.dcm": ("XA", {
        "121058": "113704", "113725": (Decimal("4.27128035068"), "mGy"),
        "113722": (Decimal("1535.6864017"), "mGy.cm2"), "113726": (Decimal("105.58274005"), "mGy.cm2"),
        "113727": (Decimal("1430.1036616"), "mGy.cm2"), "113730": (Decimal("13"), "s"), "113731": 27}),
}


@pytest.mark.parametrize("name", sorted(REAL_TOTALS))
def test_real_vendor_rdsr_totals_in_ig_units(name):
    ds = pydicom.dcmread(require_shared(REAL_DOSE / name))
    modality, totals = REAL_TOTALS[name]
    for version in ("r5", "r4"):
        bundle = _map(ds, fhir_version=version).bundle
        assert _components(_summary(bundle)) == totals
        (device,) = _resources(bundle, "Device")
        device_type = device["type"] if version == "r4" else device["type"][0]
        assert device_type["coding"][0]["code"] == modality


def test_real_hologic_device_takes_the_equipment_attributes_its_observer_leaves_out():
    ds = pydicom.dcmread(require_shared(REAL_DOSE / "MG-RDSR-Hologic_2D.dcm"))
    (device,) = _resources(_map(ds).bundle, "Device")
    assert (device["manufacturer"], device["displayName"], device["serialNumber"]) == (
        "HOLOGIC, Inc.", "Selenia Dimensions", "765467656")


def test_real_converter_equipment_is_not_mixed_into_the_observer():
    # GE CT converted by PixelMed: the General Equipment's serial is not the scanner's.
    ds = pydicom.dcmread(require_shared(REAL_DOSE / "CT-RDSR-GEPixelMed.dcm"))
    (device,) = _resources(_map(ds).bundle, "Device")
    assert device["serialNumber"] == "68967b629ad77362819b2946b6ecacb0454ad278" != ds.DeviceSerialNumber


# --- Conformance ------------------------------------------------------------------------------

def _built_reports() -> dict[str, object]:
    return {
        "ct": b.ct_dose_report(accumulated=b.ct_accumulated_dose(), extra=[b.authorizing_person()]),
        "fluoro": b.projection_dose_report(accumulated=[b.accumulated_x_ray_dose(
            dap=("0.0002", b.GY_M2), fluoro_time=("7", b.S), frames=("3", b.ONE))], station_ae_title="XA01",
            events=[b.projection_event(image=(b.RF_IMAGE_STORAGE, uid("rf")))]),
        "mammo": b.projection_dose_report(procedure=b.MAMMOGRAPHY, accumulated=[b.accumulated_mammography_dose(
            [(b.LEFT_BREAST, ("1.3", b.MGY)), (b.RIGHT_BREAST, ("1.2", b.MGY))])]),
        "nm": b.radiopharmaceutical_dose_report(),
    }


def _all_bundles(version: str) -> dict[str, dict]:
    datasets = dict(_built_reports())
    if REAL_DOSE.exists():
        datasets |= {path.stem: pydicom.dcmread(path) for path in sorted(REAL_DOSE.glob("*.dcm"))}
    return {f"{version}-{mode}-{name}": _map(ds, fhir_version=version, write_mode=mode).bundle
            for name, ds in datasets.items() for mode in ("put", "conditional", "conditional-update")}


def test_r5_bundles_pass_validate_ig(conformant):
    require_shared(REAL_DOSE)
    conformant(**_all_bundles("r5"))


# What the engine cannot check on sr2fhir's R4 output, one entry per Observation: the IG slices
# partOf and performer by the referenced resource's type, which it finds only by resolving the
# reference. sr2fhir references the ImagingStudy by identifier (it never writes one), and a report
# that names no Irradiation Authorizing person gets the data-absent "unknown" performer.
STUDY_SLICE = "Slice 'Observation.partOf:imagingStudyRef': a matching slice is required"
PERFORMER_SLICE = "Slice 'Observation.performer:irradiationAuthorizingPerson': a matching slice is required"
PERFORMER_CLOSED = "does not match any known slice defined in the profile " + SUMMARY_PROFILE


@pytest.mark.conformance
def test_validator_engine_r5_core_and_r4_against_the_compiled_dose_ig(tmp_path):
    """The HL7 validator engine: R5 core, and R4 core plus the dose IG's profiles compiled from its
    FSH (tests/dose_ig), which every R4 Observation and Device claims."""
    require_shared(REAL_DOSE)
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.skip("java and mvn are needed for the HAPI validator engine")
    from tests.dose_ig import validate_dose_r4
    from tests.hapi_server.validator import validate_with_engine

    paths: dict[str, list] = {"r5": [], "r4": []}
    named_performer: set[str] = set()
    for version in paths:
        for name, bundle in _all_bundles(version).items():
            if version == "r4":
                for entry in bundle["entry"]:
                    resource = entry["resource"]
                    expected = {"Observation": [SUMMARY_PROFILE], "Device": [DEVICE_PROFILE]}.get(
                        resource["resourceType"])
                    assert resource.get("meta", {}).get("profile") == expected, (name, resource["resourceType"])
                if any(e["resource"]["resourceType"] == "Practitioner" for e in bundle["entry"]):
                    named_performer.add(f"{name}.json")
            path = tmp_path / f"{name}.json"
            path.write_bytes(serialize(bundle))
            paths[version].append(path)
    assert named_performer, "no R4 Bundle with a named Irradiation Authorizing person"
    r5_errors = [i for i in validate_with_engine(paths["r5"], "r5") if i["severity"] in ("error", "fatal")]
    assert r5_errors == [], json.dumps(r5_errors[:20], indent=1)

    unexpected, per_file = [], {}
    for issue in validate_dose_r4(paths["r4"]):
        if issue["severity"] not in ("error", "fatal"):
            continue
        file = Path(issue["file"]).name
        kinds = per_file.setdefault(file, [])
        if STUDY_SLICE in issue["message"]:
            kinds.append("study")
        elif file not in named_performer and (PERFORMER_SLICE in issue["message"]
                                              or PERFORMER_CLOSED in issue["message"]):
            kinds.append("performer")
        else:
            unexpected.append(issue)
    assert unexpected == [], json.dumps(unexpected[:20], indent=1)
    for path in paths["r4"]:  # exactly the known limits, once per Observation, nothing hidden by them
        expected = ["study"] if path.name in named_performer else ["performer", "performer", "study"]
        assert sorted(per_file.get(path.name, [])) == expected, (path.name, per_file.get(path.name))


def test_template_from_title_and_content_when_the_sr_names_no_template():
    ct = b.ct_dose_report(accumulated=b.ct_accumulated_dose())
    projection = b.projection_dose_report(accumulated=[b.accumulated_x_ray_dose(dap=("1", b.ucum("Gy.cm2")))])
    for ds in (ct, projection):
        del ds.ContentTemplateSequence
    assert _components(_summary(_map(ct).bundle))["113813"] == (Decimal("586.34"), "mGy.cm")
    assert _components(_summary(_map(projection).bundle))["113722"] == (Decimal("1000"), "mGy.cm2")
