"""The loopback FHIR R5 test server and the fault proxy, exercised with real sr2fhir Bundles.

One server serves the whole module (``fhir_server`` is session-scoped), so tests that share
it assert on what their own Bundle adds, not on absolute counts.

Transactions go through Medplum's own processor (fhir-router batch.ts), which refuses more than
50 updates in a transaction and more than 8 entries once one is conditional: Bundles larger
than that are sent the way the daemon sends them with ``fhir.max_entries_per_request``, split by
:func:`fhir_client.chunks.split_transaction`.
"""

from __future__ import annotations

import collections
import email.utils
import json
from collections.abc import Iterator

import httpx
import pytest

from fhir_client.chunks import split_transaction
from mapping import MappingOptions, map_sr, serialize
from tests.support import sr_builders as sr
from tests.support.fault_proxy import DROP, PASS, FaultProxy, delay, operation_outcome, reject_type, status
from tests.fhir_server import FhirServer
from tests.fhir_server.fixtures import fhir_server, fresh_fhir_server  # noqa: F401  (fixtures)
from tests.support.report_fixtures import every_profile_report

pytestmark = pytest.mark.integration

FHIR_HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
GROUP_PROFILE = "http://hl7.org/fhir/uv/dicom-sr/StructureDefinition/imaging-measurement-group"
DELAY_S = 0.2
CLOCK_SLACK_S = 0.001  # asyncio may wake a timer up to its clock resolution early
MEDPLUM_MAX_UPDATES = 50  # fhir-router batch.ts maxUpdates
MEDPLUM_MAX_CONDITIONAL_ENTRIES = 8  # fhir-router batch.ts maxSerializableTransactionEntries


def post_transaction(base_url: str, bundle: dict) -> httpx.Response:
    return httpx.post(f"{base_url}/", content=serialize(bundle), headers=FHIR_HEADERS, timeout=60)


def transaction_response(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text[:2000]
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "transaction-response"
    return body


def deliver(base_url: str, bundle: dict, max_entries: int) -> tuple[dict, list[dict]]:
    """``bundle`` sent as transactions of at most ``max_entries`` entries, in order; the
    transaction-responses' entries as one Bundle, and the entries sent (in the same order)."""
    sent: list[dict] = []
    answered: list[dict] = []
    for chunk in split_transaction(bundle, max_entries):
        answered.extend(transaction_response(post_transaction(base_url, chunk))["entry"])
        sent.extend(chunk["entry"])
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": answered}, sent


def statuses(response_bundle: dict) -> collections.Counter[str]:
    return collections.Counter(entry["response"]["status"] for entry in response_bundle["entry"])


def targets(entries: list[dict]) -> list[tuple[str, str]]:
    """(resourceType, id) of each PUT entry, in order."""
    return [tuple(entry["request"]["url"].split("/")) for entry in entries]  # type: ignore[misc]


def locations(response_bundle: dict) -> list[tuple[str, str]]:
    """(resourceType, id) of each entry's response.location (Medplum's is ``Type/id``)."""
    return [tuple(entry["response"]["location"].split("/")[:2]) for entry in response_bundle["entry"]]  # type: ignore[misc]


def counts(server: FhirServer, bundle: dict) -> dict[str, int]:
    types = {entry["resource"]["resourceType"] for entry in bundle["entry"]}
    return {resource_type: server.count(resource_type) for resource_type in sorted(types)}


def with_references_resolved(resource: dict, full_urls: dict[str, str]) -> dict:
    """The resource as a server should store it: fullUrl references replaced by Type/id."""
    def resolve(value):
        if isinstance(value, dict):
            return {key: (full_urls.get(item, item) if isinstance(item, str) and key == "reference" else resolve(item))
                    for key, item in value.items()}
        if isinstance(value, list):
            return [resolve(item) for item in value]
        return value
    return resolve(resource)


@pytest.fixture(scope="module")
def every_profile_bundle() -> dict:
    return map_sr(every_profile_report()).bundle


@pytest.fixture(scope="module")
def first_delivery(fhir_server: FhirServer, every_profile_bundle: dict) -> tuple[dict, list[dict]]:  # noqa: F811
    """The every-profile Bundle (89 PUTs) sent once in transactions of at most 50 entries:
    the transaction-responses and the entries sent."""
    return deliver(fhir_server.base_url, every_profile_bundle, MEDPLUM_MAX_UPDATES)


class TestServer:
    def test_metadata_announces_r5_imaging_selection_and_transactions(self, fhir_server):  # noqa: F811
        response = httpx.get(f"{fhir_server.base_url}/metadata", headers=FHIR_HEADERS)

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/fhir+json")
        capability = response.json()
        assert capability["resourceType"] == "CapabilityStatement" and capability["fhirVersion"] == "5.0.0"
        (rest,) = capability["rest"]
        assert {"code": "transaction"} in rest["interaction"]
        imaging_selection = next(r for r in rest["resource"] if r["type"] == "ImagingSelection")
        assert {"name": "code", "definition": "http://hl7.org/fhir/SearchParameter/clinical-code",
                "type": "token"} in imaging_selection["searchParam"]

    def test_put_answers_201_then_200_and_unknown_ids_404(self, fhir_server):  # noqa: F811
        url = f"{fhir_server.base_url}/Device/put-status-check"
        device = {"resourceType": "Device", "id": "put-status-check", "displayName": "probe"}
        with httpx.Client(headers=FHIR_HEADERS) as client:
            created = client.put(url, json=device)
            updated = client.put(url, json=device)
            missing = client.get(f"{fhir_server.base_url}/Device/no-such-device")

        assert (created.status_code, updated.status_code) == (201, 200)
        assert created.headers["location"] == f"{url}/_history/1" and updated.headers["etag"] == 'W/"2"'
        assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"

    def test_a_failing_entry_fails_the_transaction_but_entries_before_it_stay(self, fhir_server):  # noqa: F811
        # Medplum's processor is not atomic over MemoryRepository (its withTransaction only runs
        # the callback): the PUT before the invalid one stays written.
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:3f1d7c52-1a3e-4a43-9a53-8f0b1b5d0001",
             "resource": {"resourceType": "Practitioner", "id": "atomic-1"},
             "request": {"method": "PUT", "url": "Practitioner/atomic-1"}},
            {"fullUrl": "urn:uuid:3f1d7c52-1a3e-4a43-9a53-8f0b1b5d0002",
             "resource": {"resourceType": "Device", "id": "atomic-2", "notAnR5Element": True},
             "request": {"method": "PUT", "url": "Device/atomic-2"}},
        ]}

        response = post_transaction(fhir_server.base_url, bundle)

        assert response.status_code == 400
        assert response.json()["issue"][0]["expression"] == ["Device.notAnR5Element"]
        assert fhir_server.get("Practitioner", "atomic-1") is not None
        assert fhir_server.get("Device", "atomic-2") is None

    def test_medplum_limits_are_refused_with_medplum_words(self, fhir_server):  # noqa: F811
        def practitioner(n: int, conditional: bool = False) -> dict:
            value = f"conditional-{n}" if conditional else str(n)
            resource = {"resourceType": "Practitioner",
                        "identifier": [{"system": "urn:example:limits", "value": value}]}
            if conditional:
                return {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}", "resource": resource,
                        "request": {"method": "PUT", "url": f"Practitioner?identifier=urn:example:limits|{value}"}}
            resource["id"] = f"limits-{n}"
            return {"resource": resource, "request": {"method": "PUT", "url": f"Practitioner/limits-{n}"}}

        def transaction(entries: list[dict]) -> dict:
            return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

        too_many_updates = post_transaction(fhir_server.base_url, transaction(
            [practitioner(n) for n in range(MEDPLUM_MAX_UPDATES + 1)]))
        too_many_conditional = post_transaction(fhir_server.base_url, transaction(
            [practitioner(n, conditional=True) for n in range(MEDPLUM_MAX_CONDITIONAL_ENTRIES + 1)]))
        at_the_limits = [post_transaction(fhir_server.base_url, transaction(entries)) for entries in (
            [practitioner(n) for n in range(MEDPLUM_MAX_UPDATES)],
            [practitioner(n, conditional=True) for n in range(MEDPLUM_MAX_CONDITIONAL_ENTRIES)])]

        assert too_many_updates.status_code == 400
        assert "Transaction contains more update operations than allowed" in too_many_updates.text
        assert too_many_conditional.status_code == 400
        assert "Transaction requires strict isolation but has too many entries" in too_many_conditional.text
        assert [response.status_code for response in at_the_limits] == [200, 200]
        assert fhir_server.count("Practitioner", {"identifier": "urn:example:limits|"}) == \
            MEDPLUM_MAX_UPDATES + MEDPLUM_MAX_CONDITIONAL_ENTRIES


class TestEveryProfileReport:
    def test_every_entry_is_stored(self, first_delivery, every_profile_bundle):
        response, sent = first_delivery
        assert len(response["entry"]) == len(sent) == len(every_profile_bundle["entry"])
        # Medplum answers 200 (not 201) for a PUT Type/id that created the resource
        assert statuses(response) == {"200": len(sent)}
        assert locations(response) == targets(sent)

    def test_every_resource_reads_back_as_sent(self, fhir_server, first_delivery, every_profile_bundle):  # noqa: F811
        full_urls = {entry["fullUrl"]: entry["request"]["url"] for entry in every_profile_bundle["entry"]}
        for entry in every_profile_bundle["entry"]:
            resource_type, resource_id = entry["request"]["url"].split("/")
            stored = fhir_server.get(resource_type, resource_id)
            assert stored is not None, entry["request"]["url"]
            stored_meta = stored.pop("meta")
            sent = with_references_resolved(entry["resource"], full_urls)
            sent_meta = sent.pop("meta", {})
            assert stored == sent
            assert stored_meta["profile"] == sent_meta["profile"]

    def test_the_group_observation_is_found_by_its_observation_uid(self, fhir_server, first_delivery):  # noqa: F811
        token = f"urn:dicom:uid|urn:oid:{sr.uid('group:planar')}"

        (group,) = fhir_server.search("Observation", {"identifier": token})

        assert GROUP_PROFILE in group["meta"]["profile"]

    def test_every_observation_uid_finds_its_observation(self, fhir_server, first_delivery,  # noqa: F811
                                                         every_profile_bundle):
        searched = 0
        for entry in every_profile_bundle["entry"]:
            resource = entry["resource"]
            for identifier in resource.get("identifier", []):
                if resource["resourceType"] == "Observation" and identifier["system"] == "urn:dicom:uid":
                    found = fhir_server.search("Observation", {"identifier": f"urn:dicom:uid|{identifier['value']}"})
                    assert [observation["id"] for observation in found] == [resource["id"]]
                    searched += 1
        assert searched >= 10

    def test_imaging_selections_are_found_by_code(self, fhir_server, first_delivery, every_profile_bundle):  # noqa: F811
        expected: dict[str, set[str]] = collections.defaultdict(set)
        for entry in every_profile_bundle["entry"]:
            if entry["resource"]["resourceType"] == "ImagingSelection":
                for coding in entry["resource"]["code"]["coding"]:
                    expected[f"{coding['system']}|{coding['code']}"].add(entry["resource"]["id"])
        assert len(expected) >= 3

        for token, ids in expected.items():
            found = {selection["id"] for selection in fhir_server.search("ImagingSelection", {"code": token})}
            assert ids <= found, token
        # R5's shared "code" parameter reads ImagingSelection.status; the server fixes it to .code
        assert fhir_server.search("ImagingSelection", {"code": "available"}) == []

    def test_sending_it_again_creates_nothing(self, fhir_server, first_delivery, every_profile_bundle):  # noqa: F811
        before = counts(fhir_server, every_profile_bundle)

        again, _ = deliver(fhir_server.base_url, every_profile_bundle, MEDPLUM_MAX_UPDATES)

        assert statuses(again) == {"200": len(every_profile_bundle["entry"])}
        assert locations(again) == locations(first_delivery[0])
        assert counts(fhir_server, every_profile_bundle) == before


def test_conditional_mode_twice_stores_each_resource_once(fresh_fhir_server):  # noqa: F811
    bundle = map_sr(every_profile_report(), MappingOptions(write_mode="conditional")).bundle
    per_type = collections.Counter(entry["resource"]["resourceType"] for entry in bundle["entry"])

    first, _ = deliver(fresh_fhir_server.base_url, bundle, MEDPLUM_MAX_CONDITIONAL_ENTRIES)
    second, _ = deliver(fresh_fhir_server.base_url, bundle, MEDPLUM_MAX_CONDITIONAL_ENTRIES)

    assert statuses(first) == {"201": len(bundle["entry"])}
    assert statuses(second) == {"200": len(bundle["entry"])}
    assert locations(second) == locations(first)
    assert counts(fresh_fhir_server, bundle) == dict(per_type)
    for entry in bundle["entry"]:
        search = entry["request"]["ifNoneExist"].removeprefix("identifier=")
        assert fresh_fhir_server.count(entry["request"]["url"], {"identifier": search}) == 1, search


def test_a_60_group_report_is_stored_whole(fhir_server):  # noqa: F811
    bundle = map_sr(sr.large_report(60, 4)).bundle
    assert len(bundle["entry"]) > 800

    response, sent = deliver(fhir_server.base_url, bundle, MEDPLUM_MAX_UPDATES)

    assert len(response["entry"]) == len(bundle["entry"])
    assert statuses(response) == {"200": len(bundle["entry"])}
    expected: dict[str, set[str]] = collections.defaultdict(set)
    for resource_type, resource_id in targets(sent):
        expected[resource_type].add(resource_id)
    for resource_type, ids in expected.items():
        stored = {resource["id"] for resource in fhir_server.search(resource_type, {"_elements": "id"})}
        assert ids <= stored, resource_type


class TestFaultProxy:
    @pytest.fixture
    def proxy(self, fhir_server: FhirServer) -> Iterator[FaultProxy]:  # noqa: F811
        with FaultProxy(fhir_server.base_url) as running:
            yield running

    @pytest.fixture
    def client(self) -> Iterator[httpx.Client]:
        with httpx.Client(headers=FHIR_HEADERS, timeout=60) as http:
            yield http

    def test_base_url_mirrors_the_upstream_path(self, proxy, fhir_server):  # noqa: F811
        assert proxy.base_url.endswith("/fhir/R5") and proxy.base_url != fhir_server.base_url

    def test_a_503_then_pass_is_in_the_log(self, proxy, client, every_profile_bundle):
        proxy.push(status(503, {"Retry-After": "0"}), PASS)
        body = serialize(split_transaction(every_profile_bundle, MEDPLUM_MAX_UPDATES)[0])

        refused = client.post(f"{proxy.base_url}/", content=body)
        accepted = client.post(f"{proxy.base_url}/", content=body)

        assert (refused.status_code, refused.headers["retry-after"]) == (503, "0")
        transaction_response(accepted)
        assert [(e.method, e.path, e.status, e.body) for e in proxy.log] == [
            ("POST", "/fhir/R5/", 503, body), ("POST", "/fhir/R5/", 200, body)]
        assert proxy.log[0].connection == proxy.log[1].connection  # keep-alive
        assert proxy.pending() == 0

    def test_status_sends_the_given_headers_and_operation_outcome(self, proxy, client):
        retry_at = email.utils.formatdate(usegmt=True)
        proxy.push(status(429, {"Retry-After": retry_at}),
                   status(400, body=operation_outcome("bad bundle", code="invalid")))

        throttled = client.get(f"{proxy.base_url}/metadata")
        rejected = client.get(f"{proxy.base_url}/metadata")

        assert (throttled.status_code, throttled.headers["retry-after"]) == (429, retry_at)
        assert rejected.status_code == 400 and rejected.headers["content-type"].startswith("application/fhir+json")
        assert rejected.json()["issue"][0] == {"severity": "error", "code": "invalid", "diagnostics": "bad bundle"}
        assert [entry.status for entry in proxy.log] == [429, 400]

    def test_drop_is_a_transport_error_for_the_client(self, proxy, client):
        proxy.push(DROP)

        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.get(f"{proxy.base_url}/metadata")
        recovered = client.get(f"{proxy.base_url}/metadata")

        assert recovered.status_code == 200
        dropped, passed = proxy.log
        assert (dropped.status, passed.status) == ("dropped", 200)
        assert dropped.connection != passed.connection

    def test_delay_holds_the_response_back(self, proxy, client):
        proxy.push(delay(DELAY_S))

        response = client.get(f"{proxy.base_url}/metadata")

        assert response.status_code == 200
        (entry,) = proxy.log
        # the proxy's own timestamps: read at .timestamp, answered at .responded (a lower bound only)
        assert entry.status == 200 and entry.responded - entry.timestamp >= DELAY_S - CLOCK_SLACK_S

    def test_reject_type_refuses_bundles_with_that_type_only(self, proxy, client, every_profile_bundle):
        proxy.set_mode(reject_type("Device", 422, "no devices"))
        without_devices = {"resourceType": "Bundle", "type": "transaction", "entry": [
            entry for entry in every_profile_bundle["entry"] if entry["request"]["url"].startswith("Practitioner/")]}

        rejected = client.post(f"{proxy.base_url}/", content=serialize(every_profile_bundle))
        accepted = client.post(f"{proxy.base_url}/", content=serialize(without_devices))

        assert rejected.status_code == 422
        assert rejected.json()["resourceType"] == "OperationOutcome" and "no devices" in rejected.text
        transaction_response(accepted)
        assert [entry.status for entry in proxy.log] == [422, 200]

    def test_pass_relays_status_and_headers(self, proxy, client, fhir_server):  # noqa: F811
        device = {"resourceType": "Device", "id": "proxied-device", "displayName": "via proxy"}

        created = client.put(f"{proxy.base_url}/Device/proxied-device", content=json.dumps(device))

        assert created.status_code in (200, 201)
        assert created.headers["location"].startswith(f"{fhir_server.base_url}/Device/proxied-device/_history/")
        assert created.json()["displayName"] == "via proxy"
        (entry,) = proxy.log
        assert (entry.method, entry.path, entry.status) == ("PUT", "/fhir/R5/Device/proxied-device", created.status_code)
