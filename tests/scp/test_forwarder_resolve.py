"""scp.delivery.forwarder in ``reference_mode: resolve``: which logical references are looked up.

An identifier without a ``system`` is never searched for: a value alone (``Patient?identifier=PID-1``)
could match another issuer's patient, and linking the Observations to them is a patient-safety error.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from structlog.testing import capture_logs

from mapping import MappingOptions, map_sr
from scp.delivery.forwarder import FhirDelivery, resolve_logical_references
from tests.fhir_client.fakes import delivered, fhir_json, make_client
from tests.fhir_client.test_resolve import SearchServer
from tests.support.sr_builders import LENGTH, MM, measurement_group, measurement_report, num_item

STUDY_SYSTEM = "urn:dicom:uid"
STUDY_VALUE = "urn:oid:1.2.3.4.5"


def imaging_study_searchset(resource_id: str = "study-1") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": 1,
            "entry": [{"resource": {"resourceType": "ImagingStudy", "id": resource_id}, "search": {"mode": "match"}}]}


class OneMatchPerType:
    """Answers every search with exactly one match of the searched type (so a value-only Patient
    search *would* link to someone), a transaction POST with success; records every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST":
            return delivered()
        resource_type = request.url.path.rsplit("/", 1)[-1]
        return fhir_json(200, {"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [
            {"resource": {"resourceType": resource_type, "id": f"{resource_type.lower()}-1"}, "search": {"mode": "match"}}]})

    @property
    def searches(self) -> list[httpx.Request]:
        return [request for request in self.requests if request.method == "GET"]


def bundle_with(*references: dict[str, Any]) -> dict[str, Any]:
    """A transaction Bundle with one Observation per reference (as ``subject``)."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "id": f"obs-{n}", "subject": reference},
         "request": {"method": "PUT", "url": f"Observation/obs-{n}"}}
        for n, reference in enumerate(references)]}


def resolve(bundle: dict[str, Any], handler) -> list[dict[str, Any]]:
    async def go():
        client, _ = make_client(handler)
        async with client:
            with capture_logs() as logs:
                await resolve_logical_references(bundle, client)
        return logs

    return asyncio.run(go())


def test_only_the_reference_with_a_system_is_resolved_and_searched():
    patient = {"type": "Patient", "identifier": {"value": "PID-1", "assigner": {"display": "HOSPITAL A"}}}
    study = {"type": "ImagingStudy", "identifier": {"system": STUDY_SYSTEM, "value": STUDY_VALUE}}
    bundle = bundle_with(patient, study)
    server = SearchServer(fhir_json(200, imaging_study_searchset()))

    resolve(bundle, server)

    patient_ref, study_ref = (entry["resource"]["subject"] for entry in bundle["entry"])
    assert patient_ref == {"type": "Patient", "identifier": {"value": "PID-1", "assigner": {"display": "HOSPITAL A"}}}
    assert study_ref["reference"] == "ImagingStudy/study-1"
    assert study_ref["identifier"] == {"system": STUDY_SYSTEM, "value": STUDY_VALUE}
    (search,) = server.requests
    assert search.url.path == "/fhir/ImagingStudy"
    assert search.url.params["identifier"] == f"{STUDY_SYSTEM}|{STUDY_VALUE}"


def test_system_less_reference_stays_logical_even_when_the_value_alone_would_match():
    server = OneMatchPerType()
    bundle = bundle_with({"type": "Patient", "identifier": {"value": "PID-1"}},
                         {"type": "Patient", "identifier": {"system": "", "value": "PID-1"}})

    resolve(bundle, server)

    assert all("reference" not in entry["resource"]["subject"] for entry in bundle["entry"])
    assert server.requests == []


def test_one_log_line_per_distinct_system_less_identifier_without_the_value():
    server = OneMatchPerType()
    bundle = bundle_with({"type": "Patient", "identifier": {"value": "PID-SECRET-1"}},
                         {"type": "Patient", "identifier": {"value": "PID-SECRET-1"}},
                         {"type": "ServiceRequest", "identifier": {"value": "ACC-1"}})

    logs = resolve(bundle, server)

    left = [entry for entry in logs if entry["event"] == "reference_left_logical"]
    assert left == [
        {"event": "reference_left_logical", "log_level": "info", "resource_type": "Patient",
         "reason": "identifier has no system"},
        {"event": "reference_left_logical", "log_level": "info", "resource_type": "ServiceRequest",
         "reason": "identifier has no system"},
    ]
    assert "PID-SECRET-1" not in repr(logs)


def test_fhir_delivery_sends_a_non_uri_issuer_patient_as_a_logical_reference():
    """End to end from an SR whose Patient ID issuer is not a URI (it goes to assigner.display)."""
    group = measurement_group(measurements=[num_item(LENGTH, 12.5, MM)])
    ds = measurement_report([group], patient_id="PID-1", patient_id_issuer="HOSPITAL A")
    bundle = map_sr(ds, MappingOptions()).bundle
    server = OneMatchPerType()

    async def go():
        client, _ = make_client(server)
        async with client:
            return await FhirDelivery(client, reference_mode="resolve").deliver(bundle, ds.SOPInstanceUID)

    asyncio.run(go())

    assert [request.url.path for request in server.searches if request.url.path.endswith("/Patient")] == []
    assert all("|" in request.url.params["identifier"] for request in server.searches)
    (post,) = [request for request in server.requests if request.method == "POST"]
    sent = json.loads(post.content)
    subjects = [entry["resource"]["subject"] for entry in sent["entry"]
                if entry["resource"]["resourceType"] == "Observation"]
    assert subjects
    for subject in subjects:
        assert "reference" not in subject
        assert subject["type"] == "Patient"
        assert "system" not in subject["identifier"]
        assert subject["identifier"]["value"] == "PID-1"
        assert subject["identifier"]["assigner"] == {"display": "HOSPITAL A"}
    # References with a system were still looked up and linked.
    part_of = [ref for entry in sent["entry"] if entry["resource"]["resourceType"] == "Observation"
               for ref in entry["resource"].get("partOf", []) if ref.get("type") == "ImagingStudy"]
    assert part_of and all(ref["reference"] == "ImagingStudy/imagingstudy-1" for ref in part_of)
