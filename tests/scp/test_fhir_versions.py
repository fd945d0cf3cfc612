"""``fhir.version: auto``: the release is read from the server's CapabilityStatement, over real HTTP."""

from __future__ import annotations

import asyncio
import json

import pytest

from fhir_client import EndpointProblem, FhirClient, FhirSettings, Outcome, SendResult
from fhir_client.releases import release_of
from scp.delivery.versions import VersionResolver
from tests.support.fault_proxy import FaultProxy, status

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def capability(fhir_version: str) -> bytes:
    return json.dumps({"resourceType": "CapabilityStatement", "fhirVersion": fhir_version}).encode()


def resolve(base_url: str, configured: str, times: int = 1) -> list[object]:
    async def go() -> list[object]:
        async with FhirClient(FhirSettings(base_url=base_url)) as client:
            resolver = VersionResolver(client, configured)
            return [await resolver.resolve() for _ in range(times)]
    return asyncio.run(go())


@pytest.mark.parametrize(("stated", "release"), [
    ("4.0.1", "r4"), ("4.0.0", "r4"), ("4.0", "r4"), ("5.0.0", "r5"), ("5.0.0-ballot", "r5"),
    ("4.3.0", None), ("3.0.2", None), ("6.0.0", None), ("", None), (None, None), (4.0, "r4"),
])
def test_release_of_a_fhir_version(stated, release):
    assert release_of(stated) == release


@pytest.mark.parametrize(("stated", "release"), [("4.0.1", "r4"), ("5.0.0", "r5")])
def test_auto_reads_the_release_once_and_keeps_it(stated, release):
    with FaultProxy("http://127.0.0.1:9") as proxy:
        proxy.set_mode(status(200, FHIR_JSON, capability(stated)))
        assert resolve(proxy.base_url, "auto", times=3) == [release] * 3
        assert [entry.path for entry in proxy.log] == ["/metadata"]


def test_a_configured_release_asks_nothing():
    with FaultProxy("http://127.0.0.1:9") as proxy:
        proxy.set_mode(status(200, FHIR_JSON, capability("5.0.0")))
        assert resolve(proxy.base_url, "r4") == ["r4"]  # the configuration wins: no request at all
        assert proxy.log == []


def test_an_unsupported_release_is_an_endpoint_problem_and_is_asked_again():
    with FaultProxy("http://127.0.0.1:9") as proxy:
        proxy.set_mode(status(200, FHIR_JSON, capability("3.0.2")))
        first, second = resolve(proxy.base_url, "auto", times=2)
    assert isinstance(first, SendResult) and first.outcome is Outcome.ENDPOINT
    assert first.endpoint_problem is EndpointProblem.UNSUPPORTED_VERSION
    assert "fhirVersion '3.0.2'" in first.diagnostics and "R4 (4.0.x) or R5 (5.0.x)" in first.diagnostics
    assert isinstance(second, SendResult)  # a failure is not cached: the next item asks again
    assert len(proxy.log) == 2


def test_an_unreachable_server_is_an_endpoint_problem():
    (answer,) = resolve("http://127.0.0.1:9/fhir", "auto")
    assert isinstance(answer, SendResult) and answer.endpoint_problem is EndpointProblem.UNREACHABLE
    assert "fhir.version: auto" in answer.diagnostics


@pytest.mark.parametrize(("code", "problem"), [(401, EndpointProblem.UNAUTHORIZED), (403, EndpointProblem.FORBIDDEN),
                                               (404, EndpointProblem.NOT_FHIR), (200, EndpointProblem.NOT_FHIR),
                                               (503, EndpointProblem.UNREACHABLE), (429, EndpointProblem.UNREACHABLE)])
def test_a_metadata_answer_without_a_capability_statement_names_the_problem(code, problem):
    with FaultProxy("http://127.0.0.1:9") as proxy:
        proxy.set_mode(status(code, {"Content-Type": "text/html"}, b"<html>login</html>"))
        (answer,) = resolve(proxy.base_url, "auto")
    assert isinstance(answer, SendResult) and answer.endpoint_problem is problem
    assert answer.status_code == code


def test_the_audit_trail_is_shipped_only_to_an_r5_server_and_an_r4_one_is_said_once(capsys):
    from types import SimpleNamespace

    from scp.service.worker import _audit_paused

    hold = SimpleNamespace(held=False)
    delivery = SimpleNamespace(versions=SimpleNamespace(release=None))
    paused = _audit_paused(hold, delivery)
    assert paused()  # the server's release is not known yet
    delivery.versions.release = "r5"
    assert not paused()
    hold.held = True
    assert paused()
    hold.held, delivery.versions.release = False, "r4"
    assert paused() and paused()
    assert capsys.readouterr().out.count("audit_not_sent_to_fhir") == 1
