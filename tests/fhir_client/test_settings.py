"""FhirSettings validation, auth union, TLS context."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from fhir_client import (
    BasicAuthSettings,
    FhirSettings,
    NoAuthSettings,
    OAuth2ClientCredentialsSettings,
    RetrySettings,
    TlsSettings,
)
from fhir_client.tls import build_ssl_context


def error_locations(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple]:
    return [error["loc"] for error in exc.value.errors()]


def test_defaults_follow_the_design():
    settings = FhirSettings()
    assert settings.base_url is None
    assert settings.timeout_s == 30
    assert settings.max_connections == 8
    assert settings.retry == RetrySettings(
        max_attempts=0, max_elapsed_s=86_400, initial_backoff_s=1, max_backoff_s=60, jitter_s=1
    )
    assert isinstance(settings.auth, NoAuthSettings)
    assert settings.tls.verify is True
    assert settings.reference_mode == "logical"


def test_max_backoff_below_initial_names_the_field():
    with pytest.raises(ValidationError) as caught:
        FhirSettings.model_validate({"retry": {"initial_backoff_s": 10, "max_backoff_s": 5}})
    assert error_locations(caught) == [("retry", "max_backoff_s")]
    assert "retry.max_backoff_s" in str(caught.value)
    assert "initial_backoff_s (10.0)" in str(caught.value)


@pytest.mark.parametrize(
    ("data", "location"),
    [
        ({"retry": {"max_attempts": -1}}, ("retry", "max_attempts")),
        ({"retry": {"max_elapsed_s": 0}}, ("retry", "max_elapsed_s")),
        ({"retry": {"jitter_s": -0.5}}, ("retry", "jitter_s")),
        ({"retry": {"initial_backoff_s": "nan"}}, ("retry", "initial_backoff_s")),
        ({"timeout_s": 0}, ("timeout_s",)),
        ({"max_connections": 0}, ("max_connections",)),
        ({"base_url": "ftp://example.org"}, ("base_url",)),
        ({"reference_mode": "literal"}, ("reference_mode",)),
        ({"retry": {"max_atempts": 3}}, ("retry", "max_atempts")),
        ({"tls": {"client_key": "/nonexistent/key.pem"}}, ("tls", "client_key")),
    ],
)
def test_impossible_values_are_reported_at_their_path(data, location):
    with pytest.raises(ValidationError) as caught:
        FhirSettings.model_validate(data)
    assert location in error_locations(caught)


def test_auth_is_chosen_by_kind():
    settings = FhirSettings.model_validate(
        {"auth": {"kind": "basic", "username": "bridge", "password": "pw"}}
    )
    assert isinstance(settings.auth, BasicAuthSettings)
    assert settings.auth.password.get_secret_value() == "pw"
    oauth = FhirSettings.model_validate(
        {
            "auth": {
                "kind": "oauth2_client_credentials",
                "token_url": "https://idp.example.org/token",
                "client_id": "sr2fhir",
                "client_secret": "x",
            }
        }
    )
    assert isinstance(oauth.auth, OAuth2ClientCredentialsSettings)
    assert oauth.auth.scope is None
    assert oauth.auth.client_auth_method == "client_secret_basic"


def test_auth_errors_carry_kind_and_field():
    with pytest.raises(ValidationError) as caught:
        FhirSettings.model_validate(
            {"auth": {"kind": "oauth2_client_credentials", "client_id": "a", "client_secret": "b"}}
        )
    assert ("auth", "oauth2_client_credentials", "token_url") in error_locations(caught)
    with pytest.raises(ValidationError) as caught:
        FhirSettings.model_validate({"auth": {"kind": "kerberos"}})
    assert error_locations(caught) == [("auth",)]
    with pytest.raises(ValidationError) as caught:
        FhirSettings.model_validate({"auth": {"kind": "bearer", "token": "  "}})
    assert ("auth", "bearer", "token") in error_locations(caught)


def test_secrets_do_not_show_in_repr():
    settings = FhirSettings.model_validate({"auth": {"kind": "bearer", "token": "very-secret"}})
    assert "very-secret" not in repr(settings)
    assert "very-secret" not in str(settings.model_dump())


def test_settings_are_frozen():
    settings = FhirSettings()
    with pytest.raises(ValidationError):
        settings.timeout_s = 5  # type: ignore[misc]


def test_tls_contradictions_are_reported(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not used")
    with pytest.raises(ValidationError) as caught:
        TlsSettings(verify=False, ca_bundle=bundle)
    assert error_locations(caught) == [("ca_bundle",)]
    with pytest.raises(ValidationError) as caught:
        TlsSettings(client_key=bundle)
    assert error_locations(caught) == [("client_key",)]


@pytest.mark.parametrize("verify", [True, False])
def test_ssl_context_requires_tls_1_2(verify):
    context = build_ssl_context(TlsSettings(verify=verify))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == (ssl.CERT_REQUIRED if verify else ssl.CERT_NONE)
    assert context.check_hostname is verify


def test_ssl_context_loads_the_configured_ca_bundle(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("this is not a certificate\n")
    with pytest.raises(ssl.SSLError):
        build_ssl_context(TlsSettings(ca_bundle=bundle))
