"""Field proof: a real Orthanc PACS auto-forwards what it stores to ``sr2fhir serve``.

Orthanc (Debian package ``orthanc``, run as its own process with its own configuration, see
``tests/support/orthanc_process.py``) has sr2fhir as a DICOM modality and a Lua rule
``OnStoredInstance -> SendToModality(instanceId, 'sr2fhir')``. The test uploads TID 1500 SRs of
several kinds and SOP classes, and a CT image, into Orthanc through its REST API; Orthanc
forwards each one with its own C-STORE SCU (DCMTK). sr2fhir must refuse the CT at negotiation
(its SCP accepts only SR classes) and keep serving, and the FHIR server must end up holding
exactly the resources ``map_sr`` gives for the SRs: nothing missing, extra or duplicated.
"""

from __future__ import annotations

import re
from collections import Counter
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mapping import map_sr
from tests.support import sr_builders as sr
from tests.support.daemon_process import DaemonProcess, write_config
from tests.integration.test_delivery import FAST_RETRY
from tests.support.orthanc_process import OrthancProcess, find_orthanc, forward_all_lua

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_orthanc() is None,
                       reason="the Orthanc binary is not installed (neither on PATH nor /usr/sbin/Orthanc; "
                              "Debian: apt-get install orthanc; scripts/test.sh installs it)"),
]

MODALITY = "sr2fhir"  # the symbolic name in Orthanc's DicomModalities
STUDY = sr.uid("orthanc:study")
CT_IMAGE = sr.uid("orthanc:ct:1")
CT_SERIES = sr.uid("orthanc:ct-series")
FRAME_OF_REFERENCE = sr.uid("orthanc:for")
# Every resource type the mapping writes, plus the ones it only references (never created).
RESOURCE_TYPES = ("Observation", "ImagingSelection", "Device", "BodyStructure", "Practitioner",
                  "Patient", "ImagingStudy", "ServiceRequest")
# Daemon events that mean something went wrong on its side.
TROUBLE_EVENTS = {"sr_store_failed", "sr_refused", "worker_exited", "worker_killed", "worker_not_started",
                  "bundle_rejected", "bundle_deferred", "listener_not_started", "spool_requeue_failed"}


# --- what Orthanc receives --------------------------------------------------------------------
def _part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return sr.to_part10_bytes(ds)


def _on_ct(graphic_type: str, data: list[float]) -> Dataset:
    return sr.scoord_item(graphic_type, data, sr.source_image(sr.CT_IMAGE_STORAGE, CT_IMAGE))


def _report(name: str, groups: list[Dataset], sop_class: str, **kwargs: Any) -> Dataset:
    return sr.measurement_report(groups, sop_class_uid=sop_class, sop_instance_uid=sr.uid(f"orthanc:{name}"),
                                 series_instance_uid=sr.uid("orthanc:sr-series"), study_instance_uid=STUDY,
                                 **kwargs)


def planar_report() -> Dataset:
    """Comprehensive SR: two TID 1410 planar groups on the CT image (POLYLINE, CIRCLE)."""
    groups = [
        sr.measurement_group(
            "1410", tracking_identifier="Orthanc lesion 1",
            finding_site=sr.finding_site_item(sr.LUNG, sr.RIGHT, sr.UPPER),
            algorithm=sr.algorithm_items("NoduleFinder", "2.1", parameters=["t=0.5"]),
            items=[_on_ct("POLYLINE", [10, 10, 40, 10, 40, 40, 10, 40, 10, 10])],
            measurements=[sr.num_item(sr.LENGTH, 21.5, sr.MM, observation_uid=sr.uid("orthanc:p1:len")),
                          sr.num_item(sr.AREA, 310.25, sr.MM2)],
            qualitative=[sr.code_item(sr.MALIGNANCY, sr.HIGHLY_SUSPICIOUS,
                                      observation_uid=sr.uid("orthanc:p1:qual"))]),
        sr.measurement_group(
            "1410", tracking_identifier="Orthanc lesion 2", finding_site=sr.finding_site_item(sr.LUNG),
            items=[_on_ct("CIRCLE", [50, 50, 50, 58])],
            measurements=[sr.num_item(sr.DIAMETER, 8, sr.MM)]),
    ]
    return _report("planar", groups, sr.COMPREHENSIVE_SR)


def volumetric_report() -> Dataset:
    """Comprehensive 3D SR: a TID 1411 group (Referenced Segment + source images) and a TID 1410
    group with an SCOORD3D region."""
    sources = [sr.image_item(sr.SOURCE_IMAGE_FOR_SEGMENTATION, sr.CT_IMAGE_STORAGE, CT_IMAGE)]
    groups = [
        sr.measurement_group(
            "1411", tracking_identifier="Orthanc volume 1", finding_site=sr.finding_site_item(sr.LUNG, sr.RIGHT),
            items=[sr.image_item(sr.REFERENCED_SEGMENT, sr.SEGMENTATION_STORAGE, sr.uid("orthanc:seg"),
                                 segments=[1], observation_uid=sr.uid("orthanc:v1:segment")), *sources],
            measurements=[sr.num_item(sr.VOLUME, 2480, sr.MM3, observation_uid=sr.uid("orthanc:v1:vol"))]),
        sr.measurement_group(
            "1410", tracking_identifier="Orthanc region 3D", finding_site=sr.finding_site_item(sr.LUNG),
            items=[sr.scoord3d_item("ELLIPSOID", [0, 0, 0, 20, 0, 0, 10, -8, 0, 10, 8, 0, 10, 0, -5, 10, 0, 5],
                                    FRAME_OF_REFERENCE)],
            measurements=[sr.num_item(sr.VOLUME, 3351, sr.MM3)]),
    ]
    return _report("volumetric", groups, sr.COMPREHENSIVE_3D_SR,
                   device_observer_uid=sr.uid("orthanc:cad"), device_observer_name="CAD node")


def derived_report() -> Dataset:
    """Enhanced SR: a planar group, a TID 1501 group, a TID 1420 derived measurement inferred
    from a nested group, and report-level qualitative evaluations."""
    nested = sr.measurement_group("1410", tracking_identifier="Orthanc derived source", relationship="INFERRED FROM",
                                  finding_site=sr.finding_site_item(sr.LUNG),
                                  measurements=[sr.num_item(sr.DIAMETER, 21, sr.MM)])
    groups = [
        sr.measurement_group("1410", tracking_identifier="Orthanc lesion 3", finding_site=sr.finding_site_item(sr.LUNG),
                             items=[_on_ct("POINT", [5, 6])], measurements=[sr.num_item(sr.LENGTH, 4.5, sr.MM)]),
        sr.measurement_group("1501", tracking_identifier="Orthanc generic",
                             measurements=[sr.num_item(sr.AREA, 42, sr.MM2)]),
    ]
    derived = sr.derived_measurements([
        sr.num_item(sr.coded("126031", "DCM", "Peak Value Within ROI"), 3.5, sr.UNITY, children=[nested],
                    observation_uid=sr.uid("orthanc:derived")),
    ])
    qualitative = sr.report_qualitative([
        sr.text_item(sr.coded("121106", "DCM", "Comment"), "Stable disease"),
        sr.code_item(sr.MALIGNANCY, sr.HIGHLY_SUSPICIOUS),
    ])
    return _report("derived", groups, sr.ENHANCED_SR, derived=derived, qualitative=qualitative)


def ct_image() -> Dataset:
    """A minimal valid CT Image Storage instance (16x16, 12 bits stored) of the same study."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sr.CT_IMAGE_STORAGE, CT_IMAGE
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20240301", "090500"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "PID-1", "", ""
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = STUDY, "20240301", "090000"
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "STUDY-1", "ACC-1"
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", CT_SERIES, 1
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = FRAME_OF_REFERENCE, ""
    ds.Manufacturer = "ACME Imaging"
    ds.InstanceNumber, ds.ContentDate, ds.ContentTime = 1, "20240301", "090500"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber, ds.KVP = 1, 120
    ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 1.0
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = 16, 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.PixelData = (np.arange(256, dtype=np.uint16) * 16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = sr.uid("implementation")
    return ds


def expected_ids(datasets: list[Dataset]) -> dict[str, set[str]]:
    expected: dict[str, set[str]] = {}
    for ds in datasets:
        for entry in map_sr(ds).bundle["entry"]:
            expected.setdefault(entry["resource"]["resourceType"], set()).add(entry["resource"]["id"])
    return expected


# --- the test ---------------------------------------------------------------------------------
def test_orthanc_auto_forwards_srs_that_arrive_on_the_fhir_server_exactly_once_and_the_ct_is_refused(
        fresh_fhir_server, tmp_path):
    server = fresh_fhir_server
    (tmp_path / "daemon").mkdir()
    (tmp_path / "orthanc").mkdir()
    # Upload order: an SR, the CT, then the other SRs: forwarding must go on after the refusal.
    uploads: list[tuple[str, bytes]] = [
        ("planar", _part10(planar_report())),
        ("ct", _part10(ct_image())),
        ("volumetric", _part10(volumetric_report())),
        ("derived", _part10(derived_report(), ImplicitVRLittleEndian)),  # Orthanc proposes it as stored
        ("highdicom", _part10(sr.highdicom_planar_report(2, sop_class="enhanced"))),
    ]
    # What sr2fhir must produce: map_sr of exactly the bytes handed to Orthanc.
    srs = {name: pydicom.dcmread(BytesIO(data)) for name, data in uploads if name != "ct"}
    sr_uids = {str(ds.SOPInstanceUID) for ds in srs.values()}
    assert len(sr_uids) == len(srs)

    daemon = DaemonProcess(write_config(tmp_path / "daemon", fhir={"base_url": server.base_url, **FAST_RETRY}))
    with daemon:
        orthanc = OrthancProcess(tmp_path / "orthanc", modalities={MODALITY: ("SR2FHIR", "127.0.0.1", daemon.port)},
                                 lua=forward_all_lua(MODALITY))
        with orthanc:
            orthanc_ids = {name: orthanc.upload(data)["ID"] for name, data in uploads}
            assert len(orthanc.get("/instances")) == len(uploads), orthanc.log_excerpt()

            for ds in srs.values():
                uid = str(ds.SOPInstanceUID)
                delivered = daemon.wait_for("bundle_delivered", lambda e, uid=uid: e.get("sop_instance_uid") == uid)
                assert delivered["status_code"] == 200 and delivered["attempts"] == 1, delivered
                assert delivered["resources"] == len(map_sr(ds).bundle["entry"])

            # Orthanc's side: the Lua rule tried every stored instance; only the CT failed.
            ct_id = orthanc_ids["ct"]
            failed = orthanc.wait_for_log(rf"Lua: Unable to send instance {ct_id}\b")
            assert "SR2FHIR" in failed[0], orthanc.log_excerpt()
            for name, instance_id in orthanc_ids.items():
                assert orthanc.log_matching(rf"Lua: Sending instance {instance_id}\b"), f"{name} never forwarded"
            assert orthanc.log_matching(r"Lua: Unable to send instance") == failed, orthanc.log_excerpt()
            log = orthanc.log_text()  # the SRs after the CT were forwarded after its failure
            assert log.index(failed[0]) < log.index(f"Lua: Sending instance {orthanc_ids['volumetric']}")
            # Why: sr2fhir rejected the CT presentation context, so Orthanc never sent a C-STORE for it.
            assert orthanc.log_matching(r'has already rejected SOP class UID "1\.2\.840\.10008\.5\.1\.4\.1\.1\.2"'), \
                orthanc.log_excerpt()
            lua_jobs = [job for job in orthanc.jobs()
                        if job["Type"] == "SequenceOfOperations" and job["Content"].get("Description") == "Lua"]
            assert sum(job["Content"]["CountOperations"] for job in lua_jobs) == len(uploads), lua_jobs
            # A failed SendToModality does not fail Orthanc's Lua job: it is only logged.
            assert all(job["State"] in ("Running", "Success") for job in lua_jobs), lua_jobs
            assert orthanc.returncode is None, "Orthanc died" + orthanc.log_excerpt()

        # sr2fhir's side: the CT never reached the C-STORE handler, nothing went wrong, still serving.
        assert {e["sop_instance_uid"] for e in daemon.named("sr_spooled")} == sr_uids
        assert {e["calling_ae"] for e in daemon.named("sr_spooled")} == {"ORTHANC"}
        assert len(daemon.named("bundle_delivered")) == len(srs)
        # The mapping of what Orthanc sent skipped exactly what the mapping of the upload skips.
        skipped = sorted((e["sop_instance_uid"], str(e["content_path"]), e["reason"])
                         for e in daemon.named("mapping_item_skipped"))
        assert skipped == sorted((str(ds.SOPInstanceUID), str(note.path), note.reason)
                                 for ds in srs.values() for note in map_sr(ds).skipped)
        trouble = [e for e in daemon.events
                   if e.get("event") in TROUBLE_EVENTS or e.get("level") in ("error", "critical", "exception")]
        assert not trouble, trouble
        assert not [line for line in daemon.other_lines if "Traceback" in line or "Error" in line], daemon.other_lines
        assert daemon.process is not None and daemon.process.poll() is None, "the daemon died"
        assert daemon.terminate() == 0

    # The FHIR server holds exactly the union of what map_sr gives: nothing missing, extra or twice.
    expected = expected_ids(list(srs.values()))
    for resource_type in RESOURCE_TYPES:
        ids = expected.get(resource_type, set())
        stored = [resource["id"] for resource in server.search(resource_type)]
        duplicated = sorted(i for i, n in Counter(stored).items() if n > 1)
        assert not duplicated, f"{resource_type}: duplicated ids {duplicated[:5]}"
        assert set(stored) == ids, (f"{resource_type}: missing {sorted(ids - set(stored))[:5]}, "
                                    f"unexpected {sorted(set(stored) - ids)[:5]}")
        assert server.count(resource_type) == len(ids), resource_type
    # ... and every resource is the one mapped from the SR as uploaded: Orthanc's storage and its
    # C-STORE re-encoding changed nothing the mapping reads.
    for name, ds in srs.items():
        bundle = map_sr(ds).bundle
        literal = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
        for entry in bundle["entry"]:
            resource = entry["resource"]
            stored = server.get(resource["resourceType"], resource["id"])
            assert stored is not None, f"{name}: {resource['resourceType']}/{resource['id']} missing"
            assert _as_stored(stored, {}) == _as_stored(resource, literal), (
                f"{name}: {resource['resourceType']}/{resource['id']} differs from map_sr's")


def _as_stored(value: Any, literal: dict[str, str]) -> Any:
    """``value`` as a FHIR server keeps it: the transaction's ``urn:uuid:`` references resolved to
    ``Type/id``, and without what the server stamps (meta.versionId, meta.lastUpdated, ...)."""
    if isinstance(value, dict):
        out = {k: _as_stored(v, literal) for k, v in value.items() if k != "meta"}
        if isinstance(value.get("meta"), dict):
            meta = {k: v for k, v in value["meta"].items() if k in ("profile", "tag", "security")}
            if meta:
                out["meta"] = meta
        if isinstance(out.get("reference"), str):
            out["reference"] = literal.get(out["reference"], out["reference"])
        return out
    if isinstance(value, list):
        return [_as_stored(v, literal) for v in value]
    return value


def test_orthanc_helper_reports_a_start_failure_with_its_log(tmp_path):
    """An unusable configuration: the helper raises with Orthanc's own words, leaves nothing running."""
    from tests.support.orthanc_process import OrthancError

    orthanc = OrthancProcess(tmp_path, config={"LuaScripts": [str(tmp_path / "missing.lua")]})
    with pytest.raises(OrthancError) as raised:
        orthanc.start()
    assert re.search(r"missing\.lua", str(raised.value)), str(raised.value)
    assert orthanc.process is None
