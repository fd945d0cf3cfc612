"""Configuration models for the FHIR client.

Each package owns the model of its own knobs; ``scp/config.py`` composes
:class:`FhirSettings` into the daemon's settings tree. All models are frozen and
reject unknown keys, so a typo in ``config.yaml`` is an error with a dotted
location (``fhir.retry.max_backoff_s``) rather than a silently ignored key.

Authentication is a discriminated union on ``kind``::

    auth: {kind: none}
    auth: {kind: basic, username: ..., password: ...}
    auth: {kind: bearer, token: ...}
    auth: {kind: oauth2_client_credentials, token_url: ..., client_id: ..., client_secret: ...}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    HttpUrl,
    SecretStr,
    ValidationInfo,
    field_validator,
)

__all__ = [
    "AuthSettings",
    "BasicAuthSettings",
    "BearerAuthSettings",
    "FhirSettings",
    "NoAuthSettings",
    "OAuth2ClientCredentialsSettings",
    "RetrySettings",
    "TlsSettings",
]


class _Frozen(BaseModel):
    """Base for every settings model: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RetrySettings(_Frozen):
    """How long and how often a request is retried (see :mod:`fhir_client.retry`).

    Retrying stops at whichever limit comes first: ``max_attempts`` (0 means no
    attempt limit) or ``max_elapsed_s`` measured from the first attempt. A wait that
    would end past ``max_elapsed_s`` is not started.
    """

    max_attempts: int = Field(default=0, ge=0, description="0 = unlimited (bounded by max_elapsed_s)")
    max_elapsed_s: float = Field(default=86_400.0, gt=0, allow_inf_nan=False)
    initial_backoff_s: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    max_backoff_s: float = Field(default=60.0, ge=0, allow_inf_nan=False)
    jitter_s: float = Field(default=1.0, ge=0, allow_inf_nan=False)

    @field_validator("max_backoff_s")
    @classmethod
    def _max_not_below_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("initial_backoff_s")
        if initial is not None and value < initial:
            raise ValueError(
                f"max_backoff_s ({value}) must be greater than or equal to "
                f"initial_backoff_s ({initial})"
            )
        return value


class NoAuthSettings(_Frozen):
    """No authentication (trusted network or a gateway that adds it)."""

    kind: Literal["none"] = "none"


class BasicAuthSettings(_Frozen):
    """HTTP Basic authentication."""

    kind: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretStr


class BearerAuthSettings(_Frozen):
    """A static bearer token sent as ``Authorization: Bearer <token>``."""

    kind: Literal["bearer"]
    token: SecretStr

    @field_validator("token")
    @classmethod
    def _token_not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("token must not be empty")
        return value


class OAuth2ClientCredentialsSettings(_Frozen):
    """OAuth 2.0 client-credentials grant (RFC 6749 §4.4), e.g. SMART Backend Services
    with a shared secret. ``client_auth_method`` names how the client authenticates at
    the token endpoint (RFC 7591 ``token_endpoint_auth_method``)."""

    kind: Literal["oauth2_client_credentials"]
    token_url: HttpUrl
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    scope: str | None = None
    client_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"


AuthSettings = Annotated[
    NoAuthSettings | BasicAuthSettings | BearerAuthSettings | OAuth2ClientCredentialsSettings,
    Field(discriminator="kind"),
]
"""One of the authentication variants, chosen by its ``kind`` key."""


class TlsSettings(_Frozen):
    """TLS for the FHIR connection. TLS 1.2 is the minimum, whatever is configured.

    ``ca_bundle`` replaces the system trust store (typical for a hospital's private
    CA); ``client_cert``/``client_key`` enable mutual TLS (the key may also be inside
    ``client_cert``).
    """

    verify: bool = True
    ca_bundle: FilePath | None = None
    client_cert: FilePath | None = None
    client_key: FilePath | None = None

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle_needs_verify(cls, value: FilePath | None, info: ValidationInfo) -> FilePath | None:
        if value is not None and info.data.get("verify") is False:
            raise ValueError("ca_bundle is set but verify is false; remove one of them")
        return value

    @field_validator("client_key")
    @classmethod
    def _key_needs_cert(cls, value: FilePath | None, info: ValidationInfo) -> FilePath | None:
        if value is not None and info.data.get("client_cert") is None:
            raise ValueError("client_key is set but client_cert is not")
        return value


class FhirSettings(_Frozen):
    """Everything :class:`fhir_client.FhirClient` needs to talk to one FHIR R5 server.

    ``base_url`` may be left out: the daemon then writes Bundles to its outbox
    instead of creating a client. ``timeout_s`` applies to connecting, reading,
    writing and waiting for a pooled connection, each separately.
    ``max_entries_per_request`` caps the entries of one transaction (None: no cap); a
    larger Bundle is sent as several (:func:`fhir_client.split_transaction`).
    """

    base_url: HttpUrl | None = None
    timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    max_connections: int = Field(default=8, ge=1)
    retry: RetrySettings = RetrySettings()
    auth: AuthSettings = NoAuthSettings()
    tls: TlsSettings = TlsSettings()
    reference_mode: Literal["logical", "resolve"] = "logical"
    max_entries_per_request: int | None = Field(default=None, ge=1)
