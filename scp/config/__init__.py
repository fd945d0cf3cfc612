"""Configuration: the settings models of every section and their loading.

Owns ``config.yaml``'s schema (:class:`Settings` and its sections), the environment overrides
and the one-line-per-problem errors. Depends on nothing else in :mod:`scp`. Public names:
:func:`load_settings`, :class:`ConfigError`, :data:`ENV_PREFIX`, :class:`Settings` and the
section models.
"""

from .dicom import DicomPeer, DicomSettings, DicomTlsSettings
from .fields import LogLevel
from .loader import ENV_PREFIX, ConfigError, load_settings
from .settings import (
    AuditSettings,
    FhirDeliverySettings,
    ForwarderSettings,
    HealthSettings,
    LogSettings,
    ReadinessSettings,
    Settings,
    SpoolSettings,
)

__all__ = [
    "ENV_PREFIX",
    "AuditSettings",
    "ConfigError",
    "DicomPeer",
    "DicomSettings",
    "DicomTlsSettings",
    "FhirDeliverySettings",
    "ForwarderSettings",
    "HealthSettings",
    "LogLevel",
    "LogSettings",
    "ReadinessSettings",
    "Settings",
    "SpoolSettings",
    "load_settings",
]
