"""Load-time checks of the DICOM TLS files (certificate, key, CA bundle) and cipher string.

:mod:`scp.config` runs them while it validates ``dicom.tls``, so that ``sr2fhir check-config``
reports an unusable certificate, key, CA bundle or cipher string one line each, instead of
``sr2fhir serve`` failing to start. They raise :class:`ValueError` with a message that names
paths but never file contents.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = [
    "EncryptedKeyError",
    "check_ca_certificates",
    "check_certificate",
    "check_ciphers",
    "check_key_pair",
    "check_readable",
    "no_password",
]


class EncryptedKeyError(Exception):
    """Raised from the password callback: a daemon cannot answer a password prompt."""


def no_password() -> bytes:
    """OpenSSL's password callback: without one it would prompt on the terminal and block."""
    raise EncryptedKeyError


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
        context.load_cert_chain(certfile=str(certificate), keyfile=keyfile, password=no_password)
    except EncryptedKeyError:
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
