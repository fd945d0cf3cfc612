"""Client lifecycle (unopened/opened/closed) and the metadata call."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fhir_client import ClientClosedError, FhirClient, FhirSettings, Outcome, UnexpectedResponseError

from .fakes import delivered, fhir_json, make_client, scripted, transaction_bundle

CAPABILITY_STATEMENT = {"resourceType": "CapabilityStatement", "status": "active", "fhirVersion": "5.0.0"}


def test_closed_client_raises_for_every_call():
    handler, seen = scripted(delivered())

    async def go():
        client, _ = make_client(handler)
        async with client:
            pass
        assert client.is_closed
        calls = [
            lambda: client.send(transaction_bundle()),
            client.get_metadata,
            lambda: client.resolve_reference("Patient", "urn:oid:1.2.3.4", "1"),
        ]
        for call in calls:
            with pytest.raises(ClientClosedError):
                await call()

    asyncio.run(go())
    assert seen == []


def test_closed_client_cannot_be_reopened_and_close_is_idempotent():
    async def go():
        client, _ = make_client(scripted(delivered())[0])
        async with client:
            pass
        await client.aclose()
        with pytest.raises(ClientClosedError):
            async with client:
                pass

    asyncio.run(go())


def test_open_twice_is_refused():
    async def go():
        client, _ = make_client(scripted(delivered())[0])
        async with client:
            with pytest.raises(RuntimeError):
                async with client:
                    pass

    asyncio.run(go())


def test_usable_without_context_manager_until_aclose():
    handler, _ = scripted(delivered())

    async def go():
        client, _ = make_client(handler)
        result = await client.send(transaction_bundle())
        await client.aclose()
        return result

    assert asyncio.run(go()).outcome is Outcome.DELIVERED


def test_client_needs_a_base_url():
    with pytest.raises(ValueError, match="base_url"):
        FhirClient(FhirSettings(), transport=httpx.MockTransport(lambda request: delivered()))


def test_get_metadata_returns_the_capability_statement():
    handler, seen = scripted(fhir_json(200, CAPABILITY_STATEMENT))

    async def go():
        client, _ = make_client(handler)
        async with client:
            return await client.get_metadata()

    assert asyncio.run(go()) == CAPABILITY_STATEMENT
    assert seen[0].method == "GET"
    assert seen[0].url.path == "/fhir/metadata"
    assert seen[0].headers["Accept"] == "application/fhir+json"


@pytest.mark.parametrize(
    "response",
    [fhir_json(200, {"resourceType": "Patient"}), fhir_json(404), httpx.Response(200, text="<html/>")],
)
def test_get_metadata_rejects_other_answers_without_retrying(response):
    handler, seen = scripted(response)

    async def go():
        client, _ = make_client(handler)
        async with client:
            await client.get_metadata()

    with pytest.raises(UnexpectedResponseError) as caught:
        asyncio.run(go())
    assert caught.value.status_code == response.status_code
    assert len(seen) == 1
