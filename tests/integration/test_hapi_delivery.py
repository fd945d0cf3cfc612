"""The test corpus delivered by the real daemon to the real HAPI FHIR JPA server, R5 and R4.

HAPI processes the transactions itself (referential integrity on write, its own conditional
reference and conditional update handling); the tests read the result back through HAPI's
search API. The servers are shared by the tests of this module (session fixtures), so every
assertion is about what a test's own reports put there.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from pydicom.dataset import Dataset

from fhir_client import split_transaction
from mapping import MappingOptions, map_sr
from tests.hapi_server import HapiServer
from tests.hapi_server.fixtures import hapi_r4, hapi_r5  # noqa: F401 - pytest fixtures
from tests.integration.test_chunked_delivery import key_of, references
from tests.integration.test_daemon import send
from tests.support import sr_builders as sr
from tests.support.conformance import SAMPLES, require_shared
from tests.support.corpus import built_reports, real_samples
from tests.support.daemon_process import DaemonProcess, write_config
from tests.support.fault_proxy import DROP, PASS, FaultProxy, Hold

pytestmark = pytest.mark.integration

FAST_RETRY = {"retry": {"initial_backoff_s": 0.05, "max_backoff_s": 0.5, "jitter_s": 0.0, "max_elapsed_s": 300}}
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def corpus() -> dict[str, Dataset]:
    """Every report kind the tests build, and the real TID 1500 samples of ../shared."""
    require_shared(SAMPLES)
    reports = {**built_reports(), **real_samples()}
    assert len(reports) >= 13
    return reports


def hapi_config(tmp_path, base_url: str, **fhir: Any):
    return write_config(tmp_path, fhir={"base_url": base_url, "server": "hapi", "version": "auto", **FAST_RETRY, **fhir},
                        forwarder={"poll_interval_s": 0.05, "concurrency": 4})


def deliver(daemon: DaemonProcess, datasets: list[Dataset], *, timeout_s: float = 600) -> float:
    """C-STORE ``datasets`` once to the running daemon and wait for every delivery; the seconds."""
    start = time.monotonic()
    assert send(daemon.port, *datasets) == [0x0000] * len(datasets)
    settled(daemon, len(datasets), timeout_s)
    return time.monotonic() - start


def settled(daemon: DaemonProcess, count: int, timeout_s: float = 600) -> None:
    """Wait for ``count`` deliveries; fail at once, with the reason, when one is dead-lettered."""
    deadline = time.monotonic() + timeout_s
    while True:
        rejected = daemon.named("bundle_rejected")
        assert not rejected, f"dead-lettered: {rejected[0].get('reason')}"
        try:
            daemon.wait_for("bundle_delivered", count=count, timeout_s=5)
            return
        except AssertionError:
            if time.monotonic() > deadline or daemon.process.poll() is not None:
                raise


def by_key(bundles: list[dict]) -> dict[tuple[str, str], dict]:
    """Every resource of ``bundles`` by (type, id), each once (shared resources are identical)."""
    return {(e["resource"]["resourceType"], e["resource"]["id"]): e["resource"] for b in bundles for e in b["entry"]}


def assert_stored(server, expected: dict[tuple[str, str], dict]) -> dict[tuple[str, str], dict]:
    """Each expected resource is on the server with its content; return what the server holds."""
    stored = {}
    for (resource_type, resource_id), resource in expected.items():
        found = server.get(resource_type, resource_id)
        assert found is not None, f"{resource_type}/{resource_id} is not on the server"
        stored[(resource_type, resource_id)] = found
        for element in ("code", "identifier", "category", "status", "subject", "derivedFrom", "hasMember", "partOf",
                        "studyUid", "seriesUid", "instance", "deviceName", "location", "extension"):
            if element in resource:
                assert _plain(found.get(element)) == _plain(resource[element]), \
                    f"{resource_type}/{resource_id}.{element} differs on the server"
        if "valueQuantity" in resource:
            assert Decimal(str(found["valueQuantity"]["value"])) == Decimal(str(resource["valueQuantity"]["value"]))
            assert found["valueQuantity"]["code"] == resource["valueQuantity"]["code"]
    return stored


def assert_references_resolve(server, stored: dict[tuple[str, str], dict]) -> int:
    """Every literal reference of the stored resources points at a resource the server holds."""
    resolved = 0
    known = set(stored)
    for resource in stored.values():
        for reference in references(resource):
            resource_type, _, resource_id = reference.partition("/")
            if (resource_type, resource_id) not in known:
                assert server.get(resource_type, resource_id) is not None, f"{reference} does not resolve"
                known.add((resource_type, resource_id))
            resolved += 1
    return resolved


def _plain(value: Any) -> Any:
    """JSON-equal form (Decimals as numbers, the server's extra keys on references kept)."""
    return json.loads(json.dumps(value, default=float))


def counts(server, types) -> dict[str, int]:
    return {t: server.count(t) for t in types}


def report_figure(name: str, n: int, seconds: float, resources: int) -> None:
    print(f"\n[figure] {name}: {n} SRs, {resources} resources in {seconds:.1f} s = "
          f"{n / seconds:.2f} SR/s, {resources / seconds:.0f} resources/s")


def deliver_corpus(daemon: DaemonProcess, server, release: str) -> tuple[dict[str, Dataset], dict[tuple[str, str], dict]]:
    """Deliver the corpus once and check what it left: every resource with its content, references
    resolving, the release read from the server, no dead letter. Returns (reports, expected)."""
    reports = corpus()
    options = MappingOptions(fhir_version=release)
    expected = by_key([map_sr(ds, options).bundle for ds in reports.values()])
    seconds = deliver(daemon, list(reports.values()))
    assert daemon.named("bundle_rejected") == []
    assert [e["fhir_version"] for e in daemon.named("fhir_version_resolved")] == [release]
    report_figure(f"HAPI {release.upper()}, one transaction per SR", len(reports), seconds, len(expected))
    stored = assert_stored(server, expected)
    assert assert_references_resolve(server, stored) > len(expected)
    return reports, expected


def test_the_corpus_reaches_hapi_r5_whole_and_a_resend_duplicates_nothing(hapi_r5, tmp_path):
    server = hapi_r5
    with DaemonProcess(hapi_config(tmp_path, server.base_url)) as daemon:
        reports, expected = deliver_corpus(daemon, server, "r5")
        types = sorted(Counter(t for t, _ in expected))
        assert {"Observation", "ImagingSelection", "Device", "BodyStructure", "Practitioner"} <= set(types)
        before = counts(server, types)

        # HAPI's search API finds what the mapping linked.
        derived = [(key, r) for key, r in expected.items() if key[0] == "Observation"
                   for ref in r.get("derivedFrom", []) if ref.get("reference", "").startswith("ImagingSelection/")]
        assert derived
        for (_, observation_id), resource in derived[:20]:
            target = next(ref["reference"] for ref in resource["derivedFrom"]
                          if ref.get("reference", "").startswith("ImagingSelection/"))
            found = {r["id"] for r in server.search("Observation", {"derived-from": target})}
            assert observation_id in found
        illustrations = {i for (t, i), r in expected.items() if t == "ImagingSelection"
                         and any(c.get("code") == "121200" for c in r["code"]["coding"])}
        assert illustrations
        found = {r["id"] for r in server.search("ImagingSelection", {"code": f"{DCM}|121200"})}
        assert illustrations <= found
        group = next(r for (t, _), r in expected.items() if t == "Observation" and r.get("hasMember"))
        uid = next(i for i in group["identifier"] if i.get("system") == "urn:dicom:uid")
        # (Several corpus reports are built from one template and share Observation UIDs.)
        carrying = {i for (t, i), r in expected.items() if t == "Observation" and uid in r.get("identifier", [])}
        found = [r["id"] for r in server.search("Observation", {"identifier": f"urn:dicom:uid|{uid['value']}"})]
        assert sorted(found) == sorted(carrying) and group["id"] in carrying

        # The same SRs again: every resource is rewritten in place, nothing is added.
        assert send(daemon.port, *reports.values()) == [0x0000] * len(reports)
        settled(daemon, 2 * len(reports))
        assert counts(server, types) == before


def test_the_corpus_reaches_hapi_r4_in_r4_shape(hapi_r4, tmp_path):
    server = hapi_r4
    with DaemonProcess(hapi_config(tmp_path, server.base_url)) as daemon:
        reports, expected = deliver_corpus(daemon, server, "r4")
        types = Counter(t for t, _ in expected)
        assert "ImagingSelection" not in types and types["Basic"] > 0
        selections = {i for (t, i), r in expected.items() if t == "Basic"}
        found = {r["id"] for r in server.search("Basic", {"code": "http://hl7.org/fhir/fhir-types|ImagingSelection"})}
        assert selections <= found
        before = counts(server, sorted(types))
        assert send(daemon.port, *reports.values()) == [0x0000] * len(reports)
        settled(daemon, 2 * len(reports))
        assert counts(server, sorted(types)) == before


def test_r4_with_ids_keyed_on_identifiers_in_transactions_of_eight(tmp_path):
    """What the medplum preset sends (R4, conditional-update, 8 entries), against HAPI R4.

    On a server of its own: a Device is keyed on its Device UID in this mode, and the shared
    R4 server already holds the put-mode Devices of the same UIDs (HAPI answers 412 "Multiple
    resources match" to a conditional update then, as any server would).
    """
    with HapiServer("r4") as server:
        _deliver_keyed_on_identifiers(server, tmp_path)


def _deliver_keyed_on_identifiers(server: HapiServer, tmp_path) -> None:
    reports = {name: ds for name, ds in built_reports().items() if name in ("every-profile-comprehensive3d", "fidelity")}
    for name, ds in reports.items():  # resources of their own: not those the other R4 test wrote
        ds.SOPInstanceUID = sr.uid(f"conditional-update-{name}")
    options = MappingOptions(fhir_version="r4", write_mode="conditional-update")
    bundles = [map_sr(ds, options).bundle for ds in reports.values()]
    config = hapi_config(tmp_path, server.base_url, write_mode="conditional-update", max_entries_per_request=8)
    with DaemonProcess(config) as daemon:
        seconds = deliver(daemon, list(reports.values()))
        assert daemon.named("bundle_rejected") == []
        chunks = daemon.named("bundle_chunk_delivered")
        assert chunks and all(e["entries"] <= 8 for e in chunks)
        assert send(daemon.port, *reports.values()) == [0x0000] * len(reports)
        settled(daemon, 2 * len(reports))
    report_figure("HAPI R4, conditional-update, chunks of 8", len(reports), seconds,
                  sum(len(b["entry"]) for b in bundles))
    for bundle in bundles:
        for entry in bundle["entry"]:
            system, value = key_of(entry)
            resource_type = entry["resource"]["resourceType"]
            found = server.search(resource_type, {"identifier": f"{system}|{value}"})
            assert len(found) == 1, f"{resource_type} keyed on {system}|{value}: {len(found)} on the server"


def test_a_worker_killed_between_chunks_to_hapi_r5_resends_only_what_was_not_acknowledged(hapi_r5, tmp_path):
    server = hapi_r5
    ds = sr.large_report(n_groups=8, measurements_per_group=4)
    ds.SOPInstanceUID = sr.uid("hapi-chunks-kill")
    bundle = map_sr(ds, MappingOptions(fhir_version="r5")).bundle
    chunks = split_transaction(bundle, 7)
    acknowledged = 4
    held = Hold()
    with FaultProxy(server.base_url) as proxy:
        proxy.push(*[PASS] * (1 + acknowledged), held)  # GET /metadata, then four chunks
        config = hapi_config(tmp_path, proxy.base_url, max_entries_per_request=7)
        with DaemonProcess(config) as daemon:
            assert send(daemon.port, ds) == [0x0000]
            assert held.arrived.wait(120), "the fifth chunk never came"
            assert len(daemon.named("bundle_chunk_delivered")) == acknowledged
            (spawned,) = daemon.named("worker_spawned")
            os.kill(spawned["pid"], signal.SIGKILL)
            daemon.wait_for("worker_exited")
            held.release(DROP)
            daemon.wait_for("worker_started", count=2)
            daemon.wait_for("bundle_delivered", timeout_s=300)
            resumed = daemon.named("bundle_chunks_resumed")
        posts = [entry for entry in proxy.log if entry.method == "POST"]
    assert [e["chunks_done"] for e in resumed] == [acknowledged]
    sent = [[e["fullUrl"] for e in json.loads(p.body)["entry"]] for p in posts]
    expected = [[e["fullUrl"] for e in chunk["entry"]] for chunk in chunks]
    assert sent == expected[:acknowledged + 1] + expected[acknowledged:]
    assert [p.status for p in posts] == [200] * acknowledged + ["dropped"] + [200] * (len(chunks) - acknowledged)
    stored = assert_stored(server, by_key([bundle]))
    assert_references_resolve(server, stored)
