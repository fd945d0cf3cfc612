"""Field proof for everything a PACS forwards: a mixed day of SRs through a real Orthanc into a
real HAPI FHIR server, R5 and R4.

Orthanc's auto-forwarding rule is per SOP class, so it sends every SR it stores: measurement
reports, an amended measurement report and its predecessor, CT / fluoroscopy / radiopharmaceutical
dose reports (built here, plus real vendor RDSRs from ``../shared/samples/real-dose``), Key Object
Selections (one of them a rejection note) and SR documents sr2fhir does not map. The FHIR server
must end up holding exactly what ``map_sr`` gives for the mapped documents, with the predecessor's
Observations and ImagingSelections ``entered-in-error``; the unmapped documents are acknowledged,
counted and dropped, and nothing is dead-lettered.
"""

from __future__ import annotations

import copy
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from mapping import MappingOptions, UnsupportedTemplate, map_sr
from tests.hapi_server.fixtures import hapi_r4, hapi_r5  # noqa: F401 - pytest fixtures
from tests.integration.test_hapi_delivery import assert_references_resolve, assert_stored, hapi_config
from tests.integration.test_observability import metric
from tests.support import dose_builders as dose
from tests.support import kos_builders as kos
from tests.support import sr_builders as sr
from tests.support.conformance import require_shared
from tests.support.daemon_process import DaemonProcess
from tests.support.orthanc_process import OrthancProcess, find_orthanc, forward_all_lua

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_orthanc() is None,
                       reason="the Orthanc binary is not installed (Debian: apt-get install orthanc; "
                              "scripts/test.sh installs it)"),
]

MODALITY = "sr2fhir"
REAL_DOSE = Path(__file__).resolve().parents[2].parent / "shared" / "samples" / "real-dose"
REAL_DOSE_FILES = ("CT-RDSR-Siemens-Multi-1.dcm", "RF-RDSR-Philips_Allura.dcm", "MG-RDSR-Hologic_2D.dcm")
XVER_STATUS = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ImagingSelection.status"
TROUBLE_EVENTS = {"sr_store_failed", "sr_refused", "worker_exited", "worker_killed", "worker_not_started",
                  "bundle_rejected", "bundle_deferred", "listener_not_started", "spool_requeue_failed"}


# --- the day's documents ----------------------------------------------------------------------
def _uid(version: str, name: str) -> str:
    return sr.uid(f"mixed-day:{version}:{name}")


def _measurement_report(version: str, name: str, diameter: float, **kwargs: Any) -> Dataset:
    group = sr.measurement_group(
        "1410", tracking_identifier=f"Mixed day lesion {name}", finding_site=sr.finding_site_item(sr.LUNG),
        items=[sr.scoord_item("CIRCLE", [50, 50, 50, 58], sr.source_image(sr.CT_IMAGE_STORAGE, _uid(version, "ct")))],
        measurements=[sr.num_item(sr.DIAMETER, diameter, sr.MM)])
    return sr.measurement_report([group], sop_instance_uid=_uid(version, name),
                                 series_instance_uid=_uid(version, "sr-series"),
                                 study_instance_uid=_uid(version, "study"), **kwargs)


def _amended(version: str, predecessor: Dataset) -> Dataset:
    """The corrected report: another measurement, and (0040,A360) naming the first report."""
    successor = _measurement_report(version, "measurement-amended", 9.5)
    reference = Dataset()
    reference.ReferencedSOPClassUID = predecessor.SOPClassUID
    reference.ReferencedSOPInstanceUID = predecessor.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = predecessor.SeriesInstanceUID
    series.ReferencedSOPSequence = [reference]
    study = Dataset()
    study.StudyInstanceUID = predecessor.StudyInstanceUID
    study.ReferencedSeriesSequence = [series]
    successor.PredecessorDocumentsSequence = [study]
    return successor


def _unmapped_text_report(version: str) -> Dataset:
    """A Basic Text SR radiology report: an SR sr2fhir does not map."""
    ds = _measurement_report(version, "text-report", 1.0, sop_class_uid=sr.BASIC_TEXT_SR)
    ds.ConceptNameCodeSequence = [sr.coded("18748-4", "LN", "Diagnostic imaging report")]
    del ds.ContentTemplateSequence
    ds.ContentSequence = [sr.text_item(sr.coded("121071", "DCM", "Finding"), "No acute findings.")]
    return ds


def _unmapped_cad_report(version: str) -> Dataset:
    """A Comprehensive SR with a title of a template sr2fhir does not map (TID 4000 Mammography CAD)."""
    ds = _measurement_report(version, "cad-report", 1.0)
    ds.ConceptNameCodeSequence = [sr.coded("111036", "DCM", "Mammography CAD Report")]
    ds.ContentTemplateSequence[0].TemplateIdentifier = "4000"
    return ds


def mixed_day(version: str) -> dict[str, Dataset]:
    """Every document of the day, by name, in the order Orthanc receives them."""
    require_shared(REAL_DOSE)
    first = _measurement_report(version, "measurement", 12.0)
    day: dict[str, Dataset] = {
        "measurement": first,
        "ct-dose": dose.ct_dose_report(accumulated=dose.ct_accumulated_dose(),
                                      sop_instance_uid=_uid(version, "ct-dose")),
        "kos-of-interest": kos.key_object_selection(
            [kos.KeyObject(_uid(version, "ct"), series_uid=_uid(version, "ct-series"),
                           study_uid=_uid(version, "study"))],
            description="Key images for the tumour board", sop_instance_uid=_uid(version, "kos"),
            study_instance_uid=_uid(version, "study")),
        "text-report": _unmapped_text_report(version),
        "fluoro-dose": dose.projection_dose_report(
            accumulated=[dose.accumulated_x_ray_dose(dap=("0.00002206", dose.GY_M2), fluoro_time=("72.5", dose.ucum("s")))],
            events=[dose.projection_event()],
            sop_instance_uid=_uid(version, "fluoro-dose")),
        "measurement-amended": _amended(version, first),
        "nm-dose": dose.radiopharmaceutical_dose_report(sop_instance_uid=_uid(version, "nm-dose")),
        "kos-rejected": kos.key_object_selection(
            [kos.KeyObject(_uid(version, "ct-2"), series_uid=_uid(version, "ct-series"),
                           study_uid=_uid(version, "study"))],
            title=kos.REJECTED_FOR_QUALITY_REASONS, sop_instance_uid=_uid(version, "kos-rejected"),
            study_instance_uid=_uid(version, "study")),
        "cad-report": _unmapped_cad_report(version),
    }
    for name in REAL_DOSE_FILES:
        day[name] = pydicom.dcmread(REAL_DOSE / name)
    return day


UNMAPPED = ("text-report", "cad-report")


def _part10(ds: Dataset) -> bytes:
    ds = copy.deepcopy(ds)
    if getattr(ds, "file_meta", None) is None or "TransferSyntaxUID" not in ds.file_meta:
        sr._add_file_meta(ds)
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return sr.to_part10_bytes(ds)


# --- what the server must hold ----------------------------------------------------------------
def superseded(bundle: dict) -> dict:
    """``bundle`` as the server holds it once the report is superseded: its Observations and
    ImagingSelections (R4: the Basic that carries one) ``entered-in-error``. Written here, from
    the issue's words, rather than taken from the daemon's own code."""
    bundle = copy.deepcopy(bundle)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] in ("Observation", "ImagingSelection"):
            resource["status"] = "entered-in-error"
        elif resource["resourceType"] == "Basic":
            for extension in resource.get("extension", []):
                if extension["url"] == XVER_STATUS:
                    extension["valueCode"] = "entered-in-error"
    return bundle


def expected_resources(day: dict[str, Dataset], options: MappingOptions) -> dict[tuple[str, str], dict]:
    expected: dict[tuple[str, str], dict] = {}
    for name, ds in day.items():
        if name in UNMAPPED:
            with pytest.raises(UnsupportedTemplate):
                map_sr(ds, options)
            continue
        bundle = map_sr(ds, options).bundle
        if name == "measurement":
            bundle = superseded(bundle)
        for entry in bundle["entry"]:
            resource = entry["resource"]
            key = (resource["resourceType"], resource["id"])
            if key not in expected or name != "measurement":  # the predecessor's shared resources stay
                expected[key] = resource
    return expected


# --- the test ---------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["r5", "r4"])
def test_a_mixed_day_forwarded_by_orthanc_leaves_exactly_the_expected_resources(version, request, tmp_path):
    server = request.getfixturevalue(f"hapi_{version}")
    day = mixed_day(version)
    options = MappingOptions(fhir_version=version)
    expected = expected_resources(day, options)
    mapped = [name for name in day if name not in UNMAPPED]
    (tmp_path / "daemon").mkdir()
    (tmp_path / "orthanc").mkdir()

    config = hapi_config(tmp_path / "daemon", server.base_url)
    config.write_text(config.read_text(encoding="utf-8") + "health:\n  port: 0\n", encoding="utf-8")
    with DaemonProcess(config) as daemon:
        health = daemon.wait_for("health_endpoint_started")["port"]
        orthanc = OrthancProcess(tmp_path / "orthanc", modalities={MODALITY: ("SR2FHIR", "127.0.0.1", daemon.port)},
                                 lua=forward_all_lua(MODALITY))
        with orthanc:
            for name, ds in day.items():
                orthanc.upload(_part10(ds))
            assert len(orthanc.get("/instances")) == len(day), orthanc.log_excerpt()
            for name in mapped:
                uid = str(day[name].SOPInstanceUID)
                daemon.wait_for("bundle_delivered", lambda e, uid=uid: e.get("sop_instance_uid") == uid,
                                timeout_s=300)
            for name in UNMAPPED:
                uid = str(day[name].SOPInstanceUID)
                daemon.wait_for("sr_not_mapped", lambda e, uid=uid: e.get("sop_instance_uid") == uid)
            daemon.wait_for("report_superseded", lambda e: e.get("successor_uid") ==
                            str(day["measurement-amended"].SOPInstanceUID), timeout_s=300)
            assert orthanc.log_matching(r"Lua: Unable to send instance") == [], orthanc.log_excerpt()

        metrics = httpx.get(f"http://127.0.0.1:{health}/metrics").text
        assert sum(metric(metrics, "sr2fhir_unmapped_total", template=template) for template in ("none", "4000")) == 2
        assert metric(metrics, "sr2fhir_bundles_delivered_total") == len(mapped)
        trouble = [e for e in daemon.events
                   if e.get("event") in TROUBLE_EVENTS or e.get("level") in ("error", "critical", "exception")]
        assert not trouble, trouble
        assert daemon.terminate() == 0
    failed = tmp_path / "daemon" / "spool" / "failed"
    assert not failed.exists() or not any(failed.iterdir()), sorted(p.name for p in failed.iterdir())

    stored = assert_stored(server, expected)
    assert_references_resolve(server, stored)
    # Nothing else from these documents: no resource of the unmapped SRs, nothing twice.
    for name in UNMAPPED:
        assert not server.search("Observation", {"identifier": f"urn:ietf:rfc:3986|urn:oid:{day[name].SOPInstanceUID}"})
    predecessor = [key for key, resource in stored.items() if resource["resourceType"] == "Observation"
                   and resource.get("status") == "entered-in-error"]
    assert predecessor, "the amended report's predecessor is still current on the server"
