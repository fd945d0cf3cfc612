"""fhir_client: an async FHIR R5 client that delivers transaction Bundles reliably.

::

    async with FhirClient(settings) as client:
        result = await client.send(bundle)
        if result.outcome is Outcome.DELIVERED: ...

``send()`` returns a :class:`SendResult` whose :class:`Outcome` says what to do
with the Bundle (DELIVERED, REJECTED: dead-letter it, DEFERRED: keep it and try
later, ENDPOINT: keep it and hold everything until the endpoint is fixed, see
:class:`EndpointProblem`); it does not raise for server behaviour. The retry policy lives in
:mod:`fhir_client.retry`, authentication flows in :mod:`fhir_client.auth`;
:func:`split_transaction` (:mod:`fhir_client.chunks`) cuts a Bundle into transactions a
server that caps their size accepts. This package knows nothing about DICOM.
"""

from .chunks import ComponentTooLargeError, SplitError, split_transaction
from .client import FhirClient
from .errors import ClientClosedError, FhirClientError, TokenRequestError, UnexpectedResponseError
from .results import EndpointProblem, Outcome, SendResult
from .settings import (
    AuthSettings,
    BasicAuthSettings,
    BearerAuthSettings,
    FhirSettings,
    NoAuthSettings,
    OAuth2ClientCredentialsSettings,
    RetrySettings,
    TlsSettings,
)

__all__ = [
    "AuthSettings",
    "BasicAuthSettings",
    "BearerAuthSettings",
    "ClientClosedError",
    "ComponentTooLargeError",
    "EndpointProblem",
    "FhirClient",
    "FhirClientError",
    "FhirSettings",
    "NoAuthSettings",
    "OAuth2ClientCredentialsSettings",
    "Outcome",
    "RetrySettings",
    "SendResult",
    "SplitError",
    "TlsSettings",
    "TokenRequestError",
    "UnexpectedResponseError",
    "split_transaction",
]
