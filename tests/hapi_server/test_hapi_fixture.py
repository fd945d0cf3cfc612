"""The HAPI fixtures themselves: real servers (R5 and R4) and the real validator engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hapi_server import HapiServer
from tests.hapi_server.fixtures import hapi_r4, hapi_r5  # noqa: F401
from tests.hapi_server.validator import validate_with_engine
from tests.support.conformance import SHARED, require_shared

# UUIDv5-shaped client ids, as sr2fhir assigns them.
DEVICE_ID = "1c0f8a52-9d6e-5b1e-a3f0-5f2d8e7c4b19"
OBSERVATION_ID = "2d1f9b63-0e7f-5c2f-b4a1-6a3e9f8d5c20"
SELECTION_ID = "5a4b2e96-3ba2-5f52-a7d4-9d6b2cb08f53"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def _transaction(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r,
             "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }


def _device_and_observation(suffix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    device = {"resourceType": "Device", "id": DEVICE_ID,
              "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:1.2.826.0.1.3680043.10.1.{suffix}"}]}
    observation = {
        "resourceType": "Observation", "id": OBSERVATION_ID, "status": "final",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:1.2.826.0.1.3680043.10.2.{suffix}"}],
        "code": {"coding": [{"system": DCM, "code": "121206", "display": "Distance"}]},
        "device": {"reference": f"Device/{DEVICE_ID}"},
        "valueQuantity": {"value": 12.5, "unit": "mm", "system": "http://unitsofmeasure.org", "code": "mm"},
    }
    return device, observation


@pytest.mark.parametrize("version", ["r5", "r4"])
def test_transaction_with_uuid_ids_and_literal_reference(version: str, request: pytest.FixtureRequest) -> None:
    server: HapiServer = request.getfixturevalue(f"hapi_{version}")
    device, observation = _device_and_observation(version)

    response = server.post_bundle(_transaction(device, observation))

    assert response.status_code == 200, response.text
    statuses = [entry["response"]["status"] for entry in response.json()["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    found = server.search("Observation", {"device": f"Device/{DEVICE_ID}"})
    assert [r["id"] for r in found] == [OBSERVATION_ID]
    by_identifier = server.search("Observation", {"identifier": observation["identifier"][0]["system"] + "|"
                                                  + observation["identifier"][0]["value"]})
    assert [r["id"] for r in by_identifier] == [OBSERVATION_ID]
    assert server.count("Device", {"identifier": "urn:dicom:uid|" + device["identifier"][0]["value"]}) == 1
    assert server.get("Device", DEVICE_ID)["id"] == DEVICE_ID
    assert server.get("Device", "0b9d7e41-8c5f-5a0d-92e0-4e1c7d6b3a08") is None


@pytest.mark.parametrize("version", ["r5", "r4"])
def test_transaction_with_dangling_reference_is_refused(version: str, request: pytest.FixtureRequest) -> None:
    server: HapiServer = request.getfixturevalue(f"hapi_{version}")
    observation = {"resourceType": "Observation", "id": "3e2f0c74-1f80-5d30-85b2-7b4f0a9e6d31", "status": "final",
                   "code": {"text": "x"}, "device": {"reference": "Device/4f3a1d85-2a91-5e41-96c3-8c5a1baf7e42"}}

    response = server.post_bundle(_transaction(observation))

    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["diagnostics"] == ("HAPI-1094: Resource Device/4f3a1d85-2a91-5e41-96c3-8c5a1baf7e42 not found, "
                                    "specified in path: Observation.device")
    assert server.get("Observation", observation["id"]) is None


def test_r5_imaging_selection_put_and_search_by_code(hapi_r5: HapiServer) -> None:
    selection = {"resourceType": "ImagingSelection", "id": SELECTION_ID, "status": "available",
                 "code": {"coding": [{"system": DCM, "code": "111030", "display": "Image Region"}]}}

    response = hapi_r5.post_bundle(_transaction(selection))

    assert response.status_code == 200, response.text
    found = hapi_r5.search("ImagingSelection", {"code": f"{DCM}|111030"})
    assert [r["id"] for r in found] == [SELECTION_ID]
    # The built-in R5 "code" parameter (ImagingSelection.status) is overridden, not added to.
    assert hapi_r5.search("ImagingSelection", {"code": "available"}) == []


def test_r4_refuses_imaging_selection(hapi_r4: HapiServer) -> None:
    selection = {"resourceType": "ImagingSelection", "id": SELECTION_ID, "status": "available"}

    response = hapi_r4.post_bundle(_transaction(selection))

    assert response.status_code == 400
    assert response.json()["issue"][0]["diagnostics"] == (
        "HAPI-0450: Failed to parse request body as JSON resource. Error was: HAPI-1684: Unknown resource name "
        "\"ImagingSelection\" (this name is not known in FHIR version \"R4\")")
    put = httpx.put(f"{hapi_r4.base_url}/ImagingSelection/{SELECTION_ID}", json=selection,
                    headers={"Content-Type": "application/fhir+json"}, timeout=60)
    assert put.status_code == 404
    assert put.json()["issue"][0]["diagnostics"].startswith(
        "HAPI-0302: Unknown resource type 'ImagingSelection' - Server knows how to handle: [Account, ")


def test_validator_r4_valid_and_broken_observation(tmp_path: Path) -> None:
    valid = {"resourceType": "Observation", "id": "v1", "status": "final",
             "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
             "valueQuantity": {"value": 60, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}
    broken = {**valid, "id": "v2", "status": "bogus"}
    (tmp_path / "valid.json").write_text(json.dumps(valid))
    (tmp_path / "broken.json").write_text(json.dumps(broken))

    issues = validate_with_engine([tmp_path / "valid.json", tmp_path / "broken.json"], "r4")

    errors = {(Path(i["file"]).name, i["location"]) for i in issues if i["severity"] in ("error", "fatal")}
    assert errors == {("broken.json", "Observation.status")}
    # LOINC is not held offline: a warning, not an error.
    assert any(i["severity"] == "warning" and "http://loinc.org" in i["message"] for i in issues)


def test_validator_r5_ig_examples() -> None:
    """The IG's own examples against its profiles: the one error is an IG defect (see README.md)."""
    ig_dir = require_shared(SHARED / "spec" / "ig-json")
    definitions = {"StructureDefinition", "CodeSystem", "ValueSet", "ConceptMap", "ImplementationGuide"}
    examples = [path for path in sorted(ig_dir.glob("*.json"))
                if json.loads(path.read_text())["resourceType"] not in definitions]
    assert len(examples) == 28

    issues = validate_with_engine(examples, "r5", ig_dir)

    errors = [(Path(i["file"]).name, i["location"], i["messageId"]) for i in issues
              if i["severity"] in ("error", "fatal")]
    # derived-imaging-measurement slices derivedFrom by discriminator type@"reference" (a string),
    # so a Reference(Observation) matches both slices.
    assert errors == [("Observation-derived-imaging-measurement.json", "Observation.derivedFrom[0]",
                       "Validation_VAL_Profile_MatchMultiple")]
