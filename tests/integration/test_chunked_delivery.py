"""A large report delivered in transactions of at most 5 entries, by the real daemon to the real
loopback FHIR engine: in every write mode, and across a worker killed between two chunks."""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter
from typing import Any
from urllib.parse import unquote

import pydicom
import pytest

from fhir_client import split_transaction
from mapping import MappingOptions, map_sr
from tests.fhir_server.fixtures import fresh_fhir_server  # noqa: F401 - a pytest fixture
from tests.integration.test_daemon import send
from tests.integration.test_delivery import FAST_RETRY
from tests.support import sr_builders as sr
from tests.support.daemon_process import DaemonProcess, write_config
from tests.support.fault_proxy import DROP, PASS, FaultProxy, Hold

pytestmark = pytest.mark.integration

MAX_ENTRIES = 5
WRITE_MODES = ("put", "conditional", "conditional-update")
LITERAL = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")


def large_report() -> pydicom.Dataset:
    """10 groups of 4 measurements: 142 resources, 29 transactions of at most 5."""
    return sr.large_report(n_groups=10, measurements_per_group=4)


def config(tmp_path, base_url: str, write_mode: str):
    return write_config(tmp_path, fhir={"base_url": base_url, "max_entries_per_request": MAX_ENTRIES, **FAST_RETRY},
                        mapping={"write_mode": write_mode})


def references(value: Any):
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value["reference"]
        for child in value.values():
            yield from references(child)
    elif isinstance(value, list):
        for child in value:
            yield from references(child)


def key_of(entry: dict[str, Any]) -> tuple[str, str] | None:
    """(system, value) a conditional entry is keyed on; None for a PUT Type/id."""
    request = entry["request"]
    query = request.get("ifNoneExist") or (request["url"].split("?", 1)[1] if "?" in request["url"] else None)
    if query is None:
        return None
    system, value = unquote(query.removeprefix("identifier=")).split("|", 1)
    return system, value


def assert_delivered_once(server, bundle: dict[str, Any]) -> None:
    """Every resource of ``bundle`` is on the (fresh) server exactly once, and every literal
    reference between the stored resources resolves to a stored resource."""
    expected = Counter(entry["resource"]["resourceType"] for entry in bundle["entry"])
    stored = {(t, r["id"]): r for t in expected for r in server.search(t)}
    assert Counter(t for t, _ in stored) == expected
    for entry in bundle["entry"]:
        resource, key = entry["resource"], key_of(entry)
        if key is None:
            assert (resource["resourceType"], resource["id"]) in stored
        else:
            matches = [r for (t, _), r in stored.items() if t == resource["resourceType"]
                       and {"system": key[0], "value": key[1]} in [
                           {"system": i.get("system"), "value": i.get("value")} for i in r.get("identifier", [])]]
            assert len(matches) == 1, f"{resource['resourceType']} keyed on {key}: {len(matches)} on the server"
    literal = 0
    for resource in stored.values():
        for reference in references(resource):
            match = LITERAL.match(reference)
            assert match is not None, f"{reference!r} was stored unresolved"
            assert match.groups() in stored, f"{reference} does not resolve on the server"
            literal += 1
    assert literal >= len(bundle["entry"])


@pytest.mark.parametrize("write_mode", WRITE_MODES)
def test_a_large_report_arrives_whole_in_transactions_of_five(fresh_fhir_server, tmp_path, write_mode):
    server = fresh_fhir_server
    ds = large_report()
    bundle = map_sr(ds, MappingOptions(write_mode=write_mode)).bundle
    chunks = split_transaction(bundle, MAX_ENTRIES)
    with DaemonProcess(config(tmp_path, server.base_url, write_mode)) as daemon:
        assert send(daemon.port, ds) == [0x0000]
        delivered = daemon.wait_for("bundle_delivered", timeout_s=120)
        lines = daemon.named("bundle_chunk_delivered")
    assert delivered["resources"] == len(bundle["entry"]) == 142
    assert [(e["chunk"], e["chunks"], e["entries"]) for e in lines] == [
        (n, len(chunks), len(chunk["entry"])) for n, chunk in enumerate(chunks, start=1)]
    assert len(chunks) == 29 and all(e["entries"] <= MAX_ENTRIES for e in lines)
    assert_delivered_once(server, bundle)


@pytest.mark.parametrize("write_mode", ["put", "conditional"])
def test_a_worker_killed_between_chunks_resends_only_the_chunks_not_acknowledged(fresh_fhir_server, tmp_path,
                                                                                 write_mode):
    server = fresh_fhir_server
    ds = large_report()
    bundle = map_sr(ds, MappingOptions(write_mode=write_mode)).bundle
    chunks = split_transaction(bundle, MAX_ENTRIES)
    acknowledged = 3  # chunks 1-3 pass; the 4th request is held while the worker is killed
    held = Hold()
    with FaultProxy(server.base_url) as proxy:
        proxy.push(*[PASS] * acknowledged, held)
        with DaemonProcess(config(tmp_path, proxy.base_url, write_mode)) as daemon:
            assert send(daemon.port, ds) == [0x0000]
            assert held.arrived.wait(60), "the fourth chunk never came"
            # the third chunk's log line may still be in the pipe when the fourth request arrives
            daemon.wait_for("bundle_chunk_delivered", count=acknowledged)
            assert len(daemon.named("bundle_chunk_delivered")) == acknowledged
            (spawned,) = daemon.named("worker_spawned")
            os.kill(spawned["pid"], signal.SIGKILL)
            daemon.wait_for("worker_exited")
            held.release(DROP)  # its client is gone; the chunk never reached the server
            daemon.wait_for("worker_started", count=2)
            delivered = daemon.wait_for("bundle_delivered", timeout_s=120)
            resumed = daemon.named("bundle_chunks_resumed")
        posts = [entry for entry in proxy.log if entry.method == "POST"]
    assert delivered["resources"] == len(bundle["entry"])
    assert [e["chunks_done"] for e in resumed] == [acknowledged]
    # The proxy's log: chunks 1-3 once, the held 4th (dropped), then 4 to the end, each once.
    sent = [[e["fullUrl"] for e in json.loads(p.body)["entry"]] for p in posts]
    expected = [[e["fullUrl"] for e in chunk["entry"]] for chunk in chunks]
    assert [p.status for p in posts] == [200] * acknowledged + ["dropped"] + [200] * (len(chunks) - acknowledged)
    assert sent == expected[:acknowledged + 1] + expected[acknowledged:]
    assert_delivered_once(server, bundle)
