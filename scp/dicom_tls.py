"""TLS for the DICOM listener (PS3.15 B.9 / BCP 195): the server-side :class:`ssl.SSLContext`.

TLS 1.2 is the minimum whatever is configured. With ``ca_certificates`` set, client
certificates are verified against it: required (``require_client_certificate``) or, if
not required, checked when a client presents one.

The ``check_*`` functions are what :mod:`scp.config` runs at load time, so that
``sr2fhir check-config`` reports an unusable certificate, key, CA bundle or cipher string
one line each, instead of ``sr2fhir serve`` failing to start. They raise
:class:`ValueError` with a message that names paths but never file contents.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import DicomTlsSettings

__all__ = [
    "MINIMUM_VERSION",
    "build_server_context",
    "check_ca_certificates",
    "check_certificate",
    "check_ciphers",
    "check_key_pair",
    "check_readable",
    "server_ssl_context",
]

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class _EncryptedKeyError(Exception):
    """Raised from the password callback: a daemon cannot answer a password prompt."""


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and block the daemon.
    raise _EncryptedKeyError


def build_server_context(
    *,
    certificate: str | os.PathLike[str],
    private_key: str | os.PathLike[str] | None = None,
    ca_certificates: str | os.PathLike[str] | None = None,
    require_client_certificate: bool = False,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    """A server context: our certificate chain (``private_key`` None = the key is in the
    ``certificate`` file), TLS 1.2+, and client-certificate verification against
    ``ca_certificates`` when given (mandatory if ``require_client_certificate``).

    Raises :class:`ValueError` for a configuration that makes no sense and
    :class:`ssl.SSLError`/:class:`OSError` for unusable files.
    """
    if require_client_certificate and ca_certificates is None:
        raise ValueError("require_client_certificate needs ca_certificates")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(certfile=str(certificate), keyfile=None if private_key is None else str(private_key),
                                password=_no_password)
    except _EncryptedKeyError:
        raise ValueError("the private key is encrypted; sr2fhir needs an unencrypted key file") from None
    if ciphers:
        context.set_ciphers(ciphers)  # TLS 1.2 suites; TLS 1.3 suites are OpenSSL's (all strong)
    if ca_certificates is not None:
        context.load_verify_locations(cafile=str(ca_certificates))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def server_ssl_context(tls: DicomTlsSettings) -> ssl.SSLContext | None:
    """The listener's context for the ``dicom.tls`` settings; ``None`` when TLS is off."""
    if not tls.enabled:
        return None
    assert tls.certificate is not None  # enforced by DicomTlsSettings
    return build_server_context(
        certificate=tls.certificate,
        private_key=tls.private_key,
        ca_certificates=tls.ca_certificates,
        require_client_certificate=tls.require_client_certificate,
        ciphers=tls.ciphers,
    )


# --------------------------------------------------------------------------- load-time checks


def check_readable(path: Path) -> None:
    """``path`` can be opened and read by this process."""
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def check_certificate(path: Path) -> None:
    """``path`` holds at least one PEM certificate."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except (ssl.SSLError, ValueError):
        raise ValueError(f"no PEM certificate in {path}") from None


def check_key_pair(certificate: Path, private_key: Path | None) -> None:
    """The certificate chain loads with its key (``private_key`` None: the key must be in
    the certificate file)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    keyfile = None if private_key is None else str(private_key)
    try:
        context.load_cert_chain(certfile=str(certificate), keyfile=keyfile, password=_no_password)
    except _EncryptedKeyError:
        raise ValueError(f"{private_key or certificate} holds an encrypted private key; "
                         "sr2fhir needs an unencrypted key file") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"{private_key} is not the private key of dicom.tls.certificate") from None
        if private_key is None:
            raise ValueError(f"required: dicom.tls.certificate ({certificate}) holds no private key") from None
        raise ValueError(f"no usable PEM private key in {private_key}") from None


def check_ca_certificates(path: Path) -> None:
    """``path`` holds at least one PEM CA certificate."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=str(path))
    except (ssl.SSLError, ValueError):
        raise ValueError(f"no PEM certificates in {path}") from None


def check_ciphers(ciphers: str) -> None:
    """OpenSSL selects at least one (TLS 1.2) cipher suite with this cipher string."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
    except ssl.SSLError:
        raise ValueError("no cipher suite matches this OpenSSL cipher string") from None
