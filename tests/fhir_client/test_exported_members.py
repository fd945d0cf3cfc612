"""The public surface of fhir_client is exactly what __all__ lists (cf. httpx's test)."""

import fhir_client


def test_exported_members():
    assert fhir_client.__all__ == sorted(fhir_client.__all__)
    assert set(fhir_client.__all__) == {
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
    }
    for name in fhir_client.__all__:
        assert getattr(fhir_client, name) is not None
