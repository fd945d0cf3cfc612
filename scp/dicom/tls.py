"""TLS for the DICOM listener (PS3.15 B.9 / BCP 195): the server-side :class:`ssl.SSLContext`.

TLS 1.2 is the minimum whatever is configured. With ``ca_certificates`` set, client
certificates are verified against it: required (``require_client_certificate``) or, if
not required, checked when a client presents one.

The load-time checks of the same files are :mod:`scp.config.tls_files`.
"""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING

from ..config.tls_files import EncryptedKeyError, no_password

if TYPE_CHECKING:
    from ..config import DicomTlsSettings

__all__ = ["MINIMUM_VERSION", "build_server_context", "server_ssl_context"]

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


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
                                password=no_password)
    except EncryptedKeyError:
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
