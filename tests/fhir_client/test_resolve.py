"""FhirClient.resolve_reference(): search by identifier, single match, cache."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fhir_client import RetrySettings, UnexpectedResponseError

from .fakes import BASE_URL, fhir_json, fhir_settings, make_client, operation_outcome

SYSTEM = "urn:oid:1.2.3.4"


def searchset(*ids: str, total: int | None = None, include: bool = False) -> dict:
    entries = [{"resource": {"resourceType": "Patient", "id": i}, "search": {"mode": "match"}} for i in ids]
    if include:
        entries.append({"resource": {"resourceType": "Organization", "id": "org"}, "search": {"mode": "include"}})
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    if total is not None:
        bundle["total"] = total
    return bundle


class SearchServer:
    """Answers every search with ``answers`` in turn (the last repeats) and counts calls."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


def resolve_twice(server: SearchServer, system: str | None = SYSTEM, value: str = "123-45", **kwargs):
    async def go():
        client, _ = make_client(server, **kwargs)
        async with client:
            first = await client.resolve_reference("Patient", system, value)
            second = await client.resolve_reference("Patient", system, value)
            return first, second

    return asyncio.run(go())


def test_one_match_gives_a_literal_reference_and_is_cached():
    server = SearchServer(fhir_json(200, searchset("123")))
    first, second = resolve_twice(server)
    assert first == second == "Patient/123"
    assert len(server.requests) == 1
    (request,) = server.requests
    assert request.method == "GET"
    assert request.url.path == "/fhir/Patient"
    assert request.url.params["identifier"] == f"{SYSTEM}|123-45"
    assert request.url.params["_elements"] == "id"


def test_include_entries_do_not_count_as_matches():
    server = SearchServer(fhir_json(200, searchset("123", include=True)))
    first, _ = resolve_twice(server)
    assert first == "Patient/123"


def test_zero_matches_give_none_and_are_asked_again():
    server = SearchServer(fhir_json(200, searchset()))
    assert resolve_twice(server) == (None, None)
    assert len(server.requests) == 2


def test_two_matches_give_none():
    server = SearchServer(fhir_json(200, searchset("1", "2")))
    assert resolve_twice(server) == (None, None)


def test_total_above_one_gives_none_even_with_one_entry_on_the_page():
    server = SearchServer(fhir_json(200, searchset("1", total=3)))
    assert resolve_twice(server) == (None, None)


def test_cache_key_includes_system_and_value():
    server = SearchServer(fhir_json(200, searchset("123")))

    async def go():
        client, _ = make_client(server)
        async with client:
            await client.resolve_reference("Patient", SYSTEM, "A")
            await client.resolve_reference("Patient", "urn:oid:9.9", "A")
            await client.resolve_reference("Patient", SYSTEM, "B")
            await client.resolve_reference("Patient", SYSTEM, "A")

    asyncio.run(go())
    assert len(server.requests) == 3


def test_search_token_is_escaped():
    server = SearchServer(fhir_json(200, searchset("123")))
    resolve_twice(server, system="urn:x|y", value="a|b,c$d\\e")
    assert server.requests[0].url.params["identifier"] == "urn:x\\|y|a\\|b\\,c\\$d\\\\e"


@pytest.mark.parametrize("system", [None, ""])
def test_missing_system_is_refused_and_nothing_is_searched(system):
    # A value alone could match another issuer's patient with the same ID.
    server = SearchServer(fhir_json(200, searchset("123")))
    with pytest.raises(ValueError, match="system is required"):
        resolve_twice(server, system=system)
    assert server.requests == []


def test_transient_error_is_retried():
    server = SearchServer(fhir_json(503), fhir_json(200, searchset("7")))
    first, _ = resolve_twice(server)
    assert first == "Patient/7"
    assert len(server.requests) == 2


def test_client_error_raises_with_status_and_diagnostics():
    server = SearchServer(fhir_json(400, operation_outcome("unknown search parameter _elements")))
    with pytest.raises(UnexpectedResponseError) as caught:
        resolve_twice(server)
    assert caught.value.status_code == 400
    assert "unknown search parameter" in caught.value.diagnostics


def test_transport_failure_after_retries_raises_the_transport_error():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    settings = fhir_settings(retry=RetrySettings(max_attempts=2, jitter_s=0))

    async def go():
        client, _ = make_client(refuse, settings=settings)
        async with client:
            return await client.resolve_reference("Patient", SYSTEM, "1")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(go())


@pytest.mark.parametrize("resource_type", ["patient", "Patient/1", "../metadata", "", "Patient?x=1"])
def test_resource_type_must_be_a_type_name(resource_type):
    async def go():
        client, _ = make_client(SearchServer(fhir_json(200, searchset())))
        async with client:
            await client.resolve_reference(resource_type, SYSTEM, "1")

    with pytest.raises(ValueError):
        asyncio.run(go())


def test_base_url_is_used_for_the_search():
    server = SearchServer(fhir_json(200, searchset("1")))
    resolve_twice(server)
    assert str(server.requests[0].url).startswith(f"{BASE_URL}/Patient?")
