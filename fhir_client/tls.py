"""The client-side TLS context for FHIR connections.

The DICOM SR to FHIR IG requires TLS 1.2 or later off trusted networks, so the
context refuses older protocol versions whatever else is configured.
"""

from __future__ import annotations

import ssl

from .settings import TlsSettings

__all__ = ["build_ssl_context"]


def build_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """Build the :class:`ssl.SSLContext` described by ``tls``.

    Trust comes from ``tls.ca_bundle`` when set, else from the operating system's
    store (where hospital IT installs its private CAs). ``verify=False`` disables
    certificate and host-name checks but still requires TLS 1.2+.
    """
    if tls.verify:
        cafile = str(tls.ca_bundle) if tls.ca_bundle is not None else None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.client_cert is not None:
        keyfile = str(tls.client_key) if tls.client_key is not None else None
        context.load_cert_chain(certfile=str(tls.client_cert), keyfile=keyfile)
    return context
