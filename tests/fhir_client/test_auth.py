"""Authentication: basic, bearer and OAuth2 client credentials (cache, refresh, lock)."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import parse_qs

import httpx
from structlog.testing import capture_logs

from fhir_client import (
    BasicAuthSettings,
    BearerAuthSettings,
    EndpointProblem,
    OAuth2ClientCredentialsSettings,
    Outcome,
    RetrySettings,
)

from .fakes import FakeTime, delivered, fhir_json, fhir_settings, make_client, scripted, transaction_bundle

TOKEN_URL = "https://idp.example.org/token"
CLIENT_SECRET = "s3cr3t:with/odd chars"


def send_all(handler, count: int = 1, **kwargs):
    async def go():
        client, _time = make_client(handler, **kwargs)
        async with client:
            return [await client.send(transaction_bundle()) for _ in range(count)]

    return asyncio.run(go())


def oauth2(**overrides) -> OAuth2ClientCredentialsSettings:
    values = {
        "kind": "oauth2_client_credentials",
        "token_url": TOKEN_URL,
        "client_id": "sr2fhir",
        "client_secret": CLIENT_SECRET,
        "scope": "system/*.write",
    }
    values.update(overrides)
    return OAuth2ClientCredentialsSettings(**values)


class FakeAuthorizationServer:
    """Token endpoint plus FHIR endpoint; the FHIR side accepts only ``valid_tokens``."""

    def __init__(self, expires_in: int | None = 3600) -> None:
        self.token_requests: list[httpx.Request] = []
        self.fhir_requests: list[httpx.Request] = []
        self.fhir_authorizations: list[str | None] = []  # as received (the flow reuses the request object)
        self.valid_tokens: set[str] | None = None  # None = any token issued so far
        self.expires_in = expires_in
        self.token_failures: list[httpx.Response] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            self.token_requests.append(request)
            await asyncio.sleep(0)  # let concurrent flows run while the token is 'in flight'
            if self.token_failures:
                return self.token_failures.pop(0)
            body = {"access_token": f"tok-{len(self.token_requests)}", "token_type": "Bearer"}
            if self.expires_in is not None:
                body["expires_in"] = self.expires_in
            return httpx.Response(200, json=body)
        self.fhir_requests.append(request)
        self.fhir_authorizations.append(request.headers.get("Authorization"))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        issued = {f"tok-{n}" for n in range(1, len(self.token_requests) + 1)}
        accepted = self.valid_tokens if self.valid_tokens is not None else issued
        if token not in accepted:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return delivered()


class TestStaticAuth:
    def test_basic_auth_header(self):
        handler, seen = scripted(delivered())
        settings = fhir_settings(auth=BasicAuthSettings(kind="basic", username="bridge", password="pa:ss"))
        (result,) = send_all(handler, settings=settings)
        assert result.outcome is Outcome.DELIVERED
        expected = "Basic " + base64.b64encode(b"bridge:pa:ss").decode()
        assert seen[0].headers["Authorization"] == expected

    def test_bearer_header(self):
        handler, seen = scripted(delivered())
        settings = fhir_settings(auth=BearerAuthSettings(kind="bearer", token="abc.def"))
        send_all(handler, settings=settings)
        assert seen[0].headers["Authorization"] == "Bearer abc.def"

    def test_no_auth_sends_no_header(self):
        handler, seen = scripted(delivered())
        send_all(handler)
        assert "Authorization" not in seen[0].headers


class TestClientCredentials:
    def test_token_fetched_once_for_two_sends(self):
        server = FakeAuthorizationServer()
        results = send_all(server, count=2, settings=fhir_settings(auth=oauth2()))
        assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.DELIVERED]
        assert len(server.token_requests) == 1
        assert server.fhir_authorizations == ["Bearer tok-1", "Bearer tok-1"]

    def test_token_request_uses_client_secret_basic_by_default(self):
        server = FakeAuthorizationServer()
        send_all(server, settings=fhir_settings(auth=oauth2()))
        (token_request,) = server.token_requests
        assert token_request.method == "POST"
        form = parse_qs(token_request.content.decode())
        assert form == {"grant_type": ["client_credentials"], "scope": ["system/*.write"]}
        encoded = base64.b64decode(token_request.headers["Authorization"].removeprefix("Basic ")).decode()
        assert encoded == "sr2fhir:s3cr3t%3Awith%2Fodd%20chars"

    def test_token_request_with_client_secret_post(self):
        server = FakeAuthorizationServer()
        send_all(server, settings=fhir_settings(auth=oauth2(client_auth_method="client_secret_post", scope=None)))
        (token_request,) = server.token_requests
        form = parse_qs(token_request.content.decode())
        assert form == {
            "grant_type": ["client_credentials"],
            "client_id": ["sr2fhir"],
            "client_secret": [CLIENT_SECRET],
        }
        assert "Authorization" not in token_request.headers

    def test_refreshed_once_after_401_and_request_resent(self):
        server = FakeAuthorizationServer()
        server.valid_tokens = {"tok-2"}  # the first token is already revoked
        (result,) = send_all(server, settings=fhir_settings(auth=oauth2()))
        assert result.outcome is Outcome.DELIVERED
        assert result.attempts == 1
        assert len(server.token_requests) == 2
        assert server.fhir_authorizations == ["Bearer tok-1", "Bearer tok-2"]

    def test_second_401_is_not_refreshed_again_and_is_the_endpoints_fault(self):
        server = FakeAuthorizationServer()
        server.valid_tokens = set()  # nothing is ever accepted
        (result,) = send_all(server, settings=fhir_settings(auth=oauth2()))
        assert result.outcome is Outcome.ENDPOINT
        assert result.endpoint_problem is EndpointProblem.UNAUTHORIZED
        assert result.status_code == 401
        assert len(server.token_requests) == 2
        assert len(server.fhir_requests) == 2

    def test_token_cached_until_expiry_minus_margin(self):
        server = FakeAuthorizationServer(expires_in=300)
        time = FakeTime()

        async def go():
            client, _ = make_client(server, settings=fhir_settings(auth=oauth2()), time=time)
            async with client:
                await client.send(transaction_bundle())
                time.now += 260  # within 300 - 30 s margin
                await client.send(transaction_bundle())
                time.now += 20  # now past the margin
                await client.send(transaction_bundle())

        asyncio.run(go())
        assert len(server.token_requests) == 2
        assert server.fhir_authorizations == [
            "Bearer tok-1",
            "Bearer tok-1",
            "Bearer tok-2",
        ]

    def test_concurrent_sends_share_one_token_fetch(self):
        server = FakeAuthorizationServer()

        async def go():
            client, _ = make_client(server, settings=fhir_settings(auth=oauth2()))
            async with client:
                return await asyncio.gather(*(client.send(transaction_bundle()) for _ in range(5)))

        results = asyncio.run(go())
        assert all(r.outcome is Outcome.DELIVERED for r in results)
        assert len(server.token_requests) == 1
        assert len(server.fhir_requests) == 5

    def test_token_endpoint_failure_is_retried(self):
        server = FakeAuthorizationServer()
        server.token_failures = [httpx.Response(503)]
        (result,) = send_all(server, settings=fhir_settings(auth=oauth2()))
        assert result.outcome is Outcome.DELIVERED
        assert result.attempts == 2
        assert len(server.token_requests) == 2

    def test_refused_credentials_are_the_endpoints_fault_at_once_without_leaking_the_secret(self):
        server = FakeAuthorizationServer()
        server.token_failures = [httpx.Response(401, json={"error": "invalid_client"}) for _ in range(3)]
        retry = RetrySettings(max_attempts=3, jitter_s=0)
        with capture_logs() as logs:
            (result,) = send_all(server, settings=fhir_settings(auth=oauth2(), retry=retry))
        assert result.outcome is Outcome.ENDPOINT
        assert result.endpoint_problem is EndpointProblem.TOKEN_REFUSED
        assert result.status_code == 401
        assert result.attempts == 1  # not retried: the same secret is refused the same way
        assert len(server.token_requests) == 1
        assert server.fhir_requests == []
        assert "invalid_client" in result.diagnostics
        assert "token endpoint" in result.diagnostics
        assert CLIENT_SECRET not in result.diagnostics
        assert CLIENT_SECRET not in repr(logs)
        assert CLIENT_SECRET not in repr(oauth2())

    def test_400_invalid_client_is_the_endpoints_fault(self):
        server = FakeAuthorizationServer()
        server.token_failures = [httpx.Response(400, json={"error": "invalid_client"})]
        (result,) = send_all(server, settings=fhir_settings(auth=oauth2()))
        assert result.outcome is Outcome.ENDPOINT
        assert result.endpoint_problem is EndpointProblem.TOKEN_REFUSED
        assert "HTTP 400 (invalid_client)" in result.diagnostics

    def test_token_without_access_token_is_the_endpoints_fault(self):
        server = FakeAuthorizationServer()
        server.token_failures = [httpx.Response(200, json={"token_type": "Bearer"})]
        retry = RetrySettings(max_attempts=1, jitter_s=0)
        (result,) = send_all(server, settings=fhir_settings(auth=oauth2(), retry=retry))
        assert result.outcome is Outcome.ENDPOINT
        assert result.endpoint_problem is EndpointProblem.TOKEN_REFUSED
        assert "without an access_token" in result.diagnostics

    def test_fhir_503_after_token_is_retried_with_the_cached_token(self):
        handler, seen = scripted(fhir_json(503), delivered())
        server = FakeAuthorizationServer()

        async def routed(request: httpx.Request) -> httpx.Response:
            if str(request.url) == TOKEN_URL:
                return await server(request)
            return handler(request)

        (result,) = send_all(routed, settings=fhir_settings(auth=oauth2()))
        assert result.outcome is Outcome.DELIVERED
        assert len(server.token_requests) == 1
        assert [r.headers["Authorization"] for r in seen] == ["Bearer tok-1", "Bearer tok-1"]
