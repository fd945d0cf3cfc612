"""Settings of the DICOM side: the listener, its peers and its TLS (``dicom`` in config.yaml)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, FilePath, ValidationInfo, field_validator

from . import tls_files
from .fields import AETitle, Frozen, Network, Port, Seconds

__all__ = ["DicomPeer", "DicomSettings", "DicomTlsSettings"]


class DicomPeer(Frozen):
    """One sender allowed in by ``dicom.allowed_peers``: its calling AE title and the
    addresses (single addresses or CIDR networks) it may connect from."""

    ae_title: AETitle
    addresses: list[Network]

    @field_validator("addresses")
    @classmethod
    def _some_address(cls, value: list[Any]) -> list[Any]:
        if not value:
            raise ValueError("must list at least one address or network "
                             "(to allow any address, list the AE title in allowed_calling_ae_titles)")
        return value


class DicomTlsSettings(Frozen):
    """TLS on the DICOM port (see :mod:`scp.dicom.tls`); TLS 1.2 is the minimum.

    ``certificate``: our PEM certificate (chain); ``private_key``: its unencrypted PEM key,
    ``null`` if the key is inside ``certificate``. ``ca_certificates``: PEM bundle client
    certificates are verified against (checked when a client presents one; demanded with
    ``require_client_certificate``). ``ciphers``: OpenSSL cipher string for TLS 1.2 suites,
    ``null`` = OpenSSL's defaults. Every file given is checked at load time (exists, is
    readable, holds what it should), enabled or not.
    """

    enabled: bool = False
    certificate: FilePath | None = Field(default=None, validate_default=True)
    private_key: FilePath | None = Field(default=None, validate_default=True)
    require_client_certificate: bool = False
    ca_certificates: FilePath | None = Field(default=None, validate_default=True)
    ciphers: str | None = Field(default=None, min_length=1)

    @field_validator("certificate")
    @classmethod
    def _certificate_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            if info.data.get("enabled"):
                raise ValueError("required when dicom.tls.enabled is true")
            return value
        tls_files.check_readable(value)
        tls_files.check_certificate(value)
        return value

    @field_validator("private_key")
    @classmethod
    def _key_matches(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            tls_files.check_readable(value)
        certificate = info.data.get("certificate")  # absent when it was invalid
        if certificate is not None and (value is not None or info.data.get("enabled")):
            tls_files.check_key_pair(certificate, value)
        elif value is not None and "certificate" in info.data:
            raise ValueError("private_key is set but certificate is not")
        return value

    @field_validator("ca_certificates")
    @classmethod
    def _ca_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            if info.data.get("require_client_certificate"):
                raise ValueError("required when require_client_certificate is true "
                                 "(the CA certificates client certificates are verified against)")
            return value
        tls_files.check_readable(value)
        tls_files.check_ca_certificates(value)
        return value

    @field_validator("ciphers")
    @classmethod
    def _ciphers_usable(cls, value: str | None) -> str | None:
        if value is not None:
            tls_files.check_ciphers(value)
        return value


class DicomSettings(Frozen):
    """The C-STORE listener (see :mod:`scp.dicom.listener`).

    ``port`` 0 picks a free port (tests). ``max_pdu_size`` is the largest P-DATA PDU we
    accept, 0 = no limit. ``require_called_ae_title``: reject associations not addressed
    to ``ae_title``.

    Who may send: ``allowed_calling_ae_titles`` (from any address) plus ``allowed_peers``
    (an AE title from the listed addresses only); both empty = accept any caller. An AE
    title may be in only one of the two.

    ``listener_processes``: how many processes serve associations. 1 (the default): the
    daemon's own process, as before. ``auto`` (one per CPU core this process may run on) or
    N >= 2: the daemon accepts each connection and hands it to the association process
    serving the fewest (see :mod:`scp.dicom.acceptor`), so ``max_associations`` and the
    allow lists stay global; metrics, audit and logs are gathered in the daemon.
    """

    ae_title: AETitle = "SR2FHIR"
    host: str = Field(default="127.0.0.1", min_length=1)
    port: Port = 11112
    max_associations: int = Field(default=16, ge=1)
    max_pdu_size: int = Field(default=16382, ge=0, le=2**32 - 1)
    acse_timeout_s: Seconds = 30.0
    dimse_timeout_s: Seconds = 30.0
    network_timeout_s: Seconds = 60.0
    allowed_calling_ae_titles: list[AETitle] = Field(default_factory=list)
    allowed_peers: list[DicomPeer] = Field(default_factory=list)
    require_called_ae_title: bool = True
    tcp_nodelay: bool = True
    tls: DicomTlsSettings = DicomTlsSettings()
    listener_processes: Literal["auto"] | int = Field(default=1)

    @field_validator("listener_processes", mode="before")
    @classmethod
    def _process_count(cls, value: Any) -> Literal["auto"] | int:
        # One message for every bad value (not pydantic's one per union member); the
        # environment gives strings, so "4" and "AUTO" are taken too.
        text = value.strip().lower() if isinstance(value, str) else None
        if text == "auto":
            return "auto"
        if text is not None and text.isdigit():
            value = int(text)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
            raise ValueError(f"must be auto (one process per CPU core) or a number of processes from 1 to 64, "
                             f"not {value!r}")
        return value

    def listener_process_count(self) -> int:
        """``listener_processes`` as a number: ``auto`` is the CPU cores this process may use."""
        if self.listener_processes == "auto":
            try:
                return max(1, len(os.sched_getaffinity(0)))
            except (AttributeError, OSError):
                return max(1, os.cpu_count() or 1)
        return int(self.listener_processes)

    @field_validator("allowed_peers")
    @classmethod
    def _peers_not_also_unrestricted(cls, value: list[DicomPeer], info: ValidationInfo) -> list[DicomPeer]:
        anywhere = set(info.data.get("allowed_calling_ae_titles") or ())
        both = sorted({peer.ae_title for peer in value} & anywhere)
        if both:
            raise ValueError(f"{', '.join(both)} also in allowed_calling_ae_titles, which allows any address; "
                             "list each AE title in one of the two only")
        return value
