"""Authentication flows for the FHIR connection, as :class:`httpx.Auth` objects.

An httpx ``Auth`` is a generator: it yields requests and receives responses, so
"fetch a token, send, refresh once on 401" lives in one flow outside the client
(httpx ``_auth.py``). Requests yielded by a flow go through the client's own
transport and connection pool, but not through the flow again.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from .errors import TokenRequestError
from .settings import (
    AuthSettings,
    BasicAuthSettings,
    BearerAuthSettings,
    NoAuthSettings,
    OAuth2ClientCredentialsSettings,
)

__all__ = ["BearerAuth", "ClientCredentialsAuth", "build_auth"]

TOKEN_EXPIRY_MARGIN_S = 30.0
"""A cached token is replaced this long before the server says it expires."""


class BearerAuth(httpx.Auth):
    """Send a fixed bearer token on every request."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the ``Authorization`` header and send the request once."""
        request.headers["Authorization"] = self._header
        yield request


@dataclass(frozen=True)
class _Token:
    access_token: str
    expires_at: float | None  # on the auth object's clock; None = until a 401


class ClientCredentialsAuth(httpx.Auth):
    """OAuth 2.0 client-credentials grant (RFC 6749 §4.4) with a cached token.

    The token is fetched on first use, kept until ``expires_in`` minus a margin, and
    refreshed once when the resource server answers 401, after which the request is
    sent once more. A lock makes concurrent requests share one token fetch. A token
    endpoint that does not issue a token raises :class:`TokenRequestError`.
    """

    def __init__(
        self,
        settings: OAuth2ClientCredentialsSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: _Token | None = None

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Not supported: this flow uses an asyncio lock."""
        raise RuntimeError("ClientCredentialsAuth only works with httpx.AsyncClient")
        yield request  # pragma: no cover  (makes this a generator)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Authorise ``request`` with a cached or fresh token; on 401 refresh once and resend."""
        async with self._lock:
            if self._token is None or self._is_expired(self._token):
                token_response = yield self._token_request(request)
                self._token = await self._read_token(token_response)
            used = self._token
        request.headers["Authorization"] = f"Bearer {used.access_token}"
        response = yield request
        if response.status_code != 401:
            return
        await response.aread()  # let the connection go back to the pool
        async with self._lock:
            if self._token is used:  # nobody refreshed it meanwhile
                token_response = yield self._token_request(request)
                self._token = await self._read_token(token_response)
            fresh = self._token
        request.headers["Authorization"] = f"Bearer {fresh.access_token}"
        yield request

    def _is_expired(self, token: _Token) -> bool:
        return token.expires_at is not None and self._clock() >= token.expires_at

    def _token_request(self, original: httpx.Request) -> httpx.Request:
        settings = self._settings
        form = {"grant_type": "client_credentials"}
        if settings.scope:
            form["scope"] = settings.scope
        auth_header: dict[str, str] = {}
        secret = settings.client_secret.get_secret_value()
        if settings.client_auth_method == "client_secret_post":
            form["client_id"] = settings.client_id
            form["client_secret"] = secret
        else:
            # RFC 6749 §2.3.1: id and secret are form-encoded before the Basic scheme.
            credentials = f"{quote(settings.client_id, safe='')}:{quote(secret, safe='')}"
            auth_header["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
        return httpx.Request(
            "POST",
            str(settings.token_url),
            data=form,
            headers={"Accept": "application/json", **auth_header},
            extensions={k: v for k, v in original.extensions.items() if k == "timeout"},
        )

    async def _read_token(self, response: httpx.Response) -> _Token:
        await response.aread()
        try:
            body = response.json()
        except ValueError:
            body = None
        if not response.is_success:
            error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else None
            detail = f" ({error})" if error else ""
            raise TokenRequestError(
                f"token endpoint answered HTTP {response.status_code}{detail}",
                status_code=response.status_code,
                error=error,
            )
        access_token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(access_token, str) or not access_token:
            raise TokenRequestError(
                f"token endpoint answered HTTP {response.status_code} without an access_token",
                status_code=response.status_code,
            )
        expires_in = body.get("expires_in")
        expires_at = None
        if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and expires_in >= 0:
            lifetime = max(expires_in - TOKEN_EXPIRY_MARGIN_S, expires_in / 2)
            expires_at = self._clock() + lifetime
        return _Token(access_token=access_token, expires_at=expires_at)


def build_auth(settings: AuthSettings, *, clock: Callable[[], float] = time.monotonic) -> httpx.Auth | None:
    """Return the :class:`httpx.Auth` for ``settings`` (``None`` for ``kind: none``)."""
    match settings:
        case NoAuthSettings():
            return None
        case BasicAuthSettings(username=username, password=password):
            return httpx.BasicAuth(username, password.get_secret_value())
        case BearerAuthSettings(token=token):
            return BearerAuth(token.get_secret_value())
        case OAuth2ClientCredentialsSettings():
            return ClientCredentialsAuth(settings, clock=clock)
    raise TypeError(f"unknown auth settings: {type(settings).__name__}")
