"""Exceptions raised by :mod:`fhir_client`.

``send()`` reports server behaviour in its :class:`~fhir_client.SendResult` and does
not raise for it. Exceptions are for misuse and for the helper calls whose callers
need an answer or nothing (``get_metadata``, ``resolve_reference``)::

    FhirClientError
     ├── ClientClosedError        the client was used after close
     ├── UnexpectedResponseError  a lookup/metadata call got an answer it cannot use
     └── TokenRequestError        the OAuth2 token endpoint refused or failed

Transport failures of ``get_metadata``/``resolve_reference`` surface as the httpx
``TransportError`` that caused them.
"""

from __future__ import annotations

__all__ = [
    "ClientClosedError",
    "FhirClientError",
    "TokenRequestError",
    "UnexpectedResponseError",
]


class FhirClientError(Exception):
    """Base class of every exception defined by :mod:`fhir_client`."""


class ClientClosedError(FhirClientError):
    """The :class:`~fhir_client.FhirClient` was used after it was closed."""


class UnexpectedResponseError(FhirClientError):
    """A response that the calling method cannot interpret.

    ``status_code`` is the HTTP status (``None`` when retrying ended on a transport
    error); ``diagnostics`` is human text without request or response bodies.
    """

    def __init__(self, message: str, *, status_code: int | None = None, diagnostics: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.diagnostics = diagnostics


class TokenRequestError(FhirClientError):
    """The OAuth2 token endpoint did not issue a token.

    ``status_code`` is the token endpoint's HTTP status (``None`` for an unusable
    2xx body); ``error`` is the OAuth2 ``error`` code when the endpoint sent one
    (e.g. ``invalid_client``). Secrets are never part of the message.
    """

    def __init__(self, message: str, *, status_code: int | None = None, error: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
