"""The C-STORE listener's settings from the configuration, the same for every listener process."""

from __future__ import annotations

from typing import Any

from ..config import Settings
from ..dicom.listener import ListenerPolicy


def listener_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``start_listener`` that come from ``settings`` (all but the address,
    the spool writer, TLS context and observers, which each caller owns)."""
    dicom = settings.dicom
    return {
        "ae_title": dicom.ae_title,
        "policy": ListenerPolicy(min_free_bytes=int(settings.spool.min_free_bytes)),
        "max_associations": dicom.max_associations,
        "allowed_calling_ae_titles": dicom.allowed_calling_ae_titles,
        "require_called_ae_title": dicom.require_called_ae_title,
        "acse_timeout_s": dicom.acse_timeout_s,
        "dimse_timeout_s": dicom.dimse_timeout_s,
        "network_timeout_s": dicom.network_timeout_s,
        "maximum_pdu_size": dicom.max_pdu_size,
        "tcp_nodelay": dicom.tcp_nodelay,
        "allowed_peers": dicom.allowed_peers,
        "reject_associations_below_min_free": True,
    }
