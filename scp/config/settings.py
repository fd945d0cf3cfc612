"""The daemon's settings: one frozen pydantic tree (:class:`Settings`), section by section.

Each package owns the model of its own knobs (:class:`fhir_client.FhirSettings`,
:class:`mapping.MappingOptions`); this module composes them with the service's own
sections. Every model is frozen and rejects unknown keys. Loading (YAML, environment,
messages) is :mod:`scp.config.loader`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ByteSize, ConfigDict, Field, ValidationInfo, field_validator,
                      model_validator)

from fhir_client import FhirSettings
from mapping import MappingOptions
from mapping.options import WriteMode

from .dicom import DicomSettings
from .fhir_servers import ServerName, apply_preset
from .fields import MIB, Frozen, LogLevel, Port, Seconds, lower

__all__ = [
    "AuditSettings",
    "FhirDeliverySettings",
    "ForwarderSettings",
    "HealthSettings",
    "LogSettings",
    "MappingSettings",
    "ReadinessSettings",
    "Settings",
    "SpoolSettings",
]


class AuditSettings(BaseModel):
    """The audit trail (see :mod:`scp.telemetry.audit`). ``path: null`` = no audit trail.

    ``include_phi``: put the SR's Patient ID into the events (off by default).
    ``send_to_fhir``: the worker also PUTs the events to the FHIR server (needs ``path`` and
    ``fhir.base_url``), ``send_batch_size`` per transaction, looking for new lines every
    ``send_interval_s`` when idle.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path | None = Path("audit/sr2fhir-audit.jsonl")
    include_phi: bool = False
    send_to_fhir: bool = False
    send_batch_size: Annotated[int, Field(ge=1, le=1000)] = 100
    send_interval_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5.0

    @field_validator("send_to_fhir")
    @classmethod
    def _sending_needs_the_file(cls, value: bool, info: ValidationInfo) -> bool:
        if value and "path" in info.data and info.data["path"] is None:
            raise ValueError("sends the events of the audit file and needs audit.path")
        return value


class ReadinessSettings(BaseModel):
    """When ``/readyz`` says 503 (see :mod:`scp.telemetry.health`).

    ``fhir_unreachable_after_s``: FHIR requests failing without a final answer for longer than
    this. ``max_pending``: more SR instances waiting for delivery than this (``null``: no
    limit). ``max_oldest_pending_age_s``: the oldest waiting instance is older (``null``: no
    limit).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    fhir_unreachable_after_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 300.0
    max_pending: Annotated[int, Field(ge=1)] | None = 10_000
    max_oldest_pending_age_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


class SpoolSettings(Frozen):
    """The durable spool between listener and forwarder (see :mod:`scp.spool`).

    Sizes are bytes; strings with units are accepted (``"64 MiB"``, ``"1GB"``).
    ``min_free_bytes``: refuse new instances (status 0xA700) when the file system holding
    ``directory`` has less free space. ``retention``: what happens to a delivered instance.
    """

    directory: Path = Path("spool")
    segment_max_bytes: Annotated[ByteSize, Field(ge=1)] = ByteSize(64 * MIB)
    retention: Literal["delete", "keep"] = "delete"
    min_free_bytes: Annotated[ByteSize, Field(ge=0)] = ByteSize(100 * MIB)
    remember_delivered_days: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 365.0
    """How long ``spool.db`` remembers what each delivered SR wrote, so that an amended or
    corrected SR arriving later can retire it (docs/RELIABILITY.md, "Amended and corrected reports")."""


FhirVersionSetting = Literal["auto", "r5", "r4"]


class FhirDeliverySettings(FhirSettings):
    """:class:`fhir_client.FhirSettings` plus what the service decides per server, under ``fhir``.

    With ``base_url`` unset, no client is made: each Bundle is written as JSON into
    ``outbox_directory`` instead. ``reference_mode: resolve`` looks references up on the
    server and therefore needs ``base_url``. ``server`` is a preset
    (:mod:`scp.config.fhir_servers`) that fills the keys below it leaves unset.
    ``version``: the FHIR release written (``auto``: the server's CapabilityStatement says,
    read before the first delivery; R5 for the outbox). ``r4_imaging_selection``: R5
    ImagingSelections as R4 ``Basic`` resources, or left out. ``write_mode``: how resources
    are keyed (see :class:`mapping.MappingOptions`).
    """

    outbox_directory: Path = Path("outbox")
    server: ServerName = "generic"
    version: FhirVersionSetting = "auto"
    r4_imaging_selection: Literal["basic", "omit"] = "basic"
    write_mode: WriteMode = "put"

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return apply_preset(data) if isinstance(data, dict) else data

    @field_validator("reference_mode")
    @classmethod
    def _resolve_needs_server(cls, value: str, info: ValidationInfo) -> str:
        if value == "resolve" and "base_url" in info.data and info.data["base_url"] is None:
            raise ValueError("'resolve' looks references up on the server and needs fhir.base_url")
        return value

    @property
    def writes_to_outbox(self) -> bool:
        """True when Bundles go to ``outbox_directory`` (no ``base_url``)."""
        return self.base_url is None


class MappingSettings(MappingOptions):
    """:class:`mapping.MappingOptions` plus what the service does with an SR it does not map.

    ``unmapped``: an SR that is none of the documents sr2fhir maps (TID 1500 Measurement
    Report, Key Object Selection, radiation dose report) is acknowledged, counted
    (``sr2fhir_unmapped_total``), logged once (``sr_not_mapped``, with its template and title)
    and dropped (``ignore``), or dead-lettered to ``spool/failed/`` (``dead-letter``).
    """

    unmapped: Literal["ignore", "dead-letter"] = "ignore"

    def options(self) -> MappingOptions:
        """The mapping's own options (without the service's keys)."""
        return MappingOptions(**self.model_dump(exclude={"unmapped"}))


class ForwarderSettings(Frozen):
    """The worker that maps spooled instances and delivers them (see :mod:`scp.delivery.forwarder`).

    ``concurrency``: Bundles in flight at once. ``poll_interval_s``: how often the spool is
    looked at when idle. ``batch_size``: spool items claimed per look. ``map_ahead_mb``: while
    delivery is held (the FHIR endpoint is down or refuses us), the oldest waiting SRs are
    mapped ahead, up to this many MiB of Bundles in memory, so the drain afterwards mostly
    sends (:mod:`scp.delivery.prepared`); 0 turns it off.
    """

    concurrency: int = Field(default=4, ge=1, le=64)
    poll_interval_s: Seconds = 0.2
    batch_size: int = Field(default=32, ge=1)
    map_ahead_mb: float = Field(default=16.0, ge=0, le=4096)


class LogSettings(Frozen):
    """Logging (see :mod:`scp.telemetry.logs`). ``format: auto`` = console on a TTY, JSON otherwise.
    ``include_phi``: let patient names, IDs and birth dates into the log (off by default)."""

    level: Annotated[LogLevel, BeforeValidator(lower)] = "info"
    format: Annotated[Literal["auto", "json", "console"], BeforeValidator(lower)] = "auto"
    include_phi: bool = False


class HealthSettings(Frozen):
    """An HTTP health endpoint for probes; ``port: null`` (the default) = no endpoint."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: Port | None = None
    readiness: ReadinessSettings = ReadinessSettings()
    worker_stale_after_s: Seconds = 60.0
    """The worker's heartbeat unchanged this long withholds the systemd watchdog."""


class Settings(Frozen):
    """The whole configuration of the daemon; every section has defaults.

    ``fhir.write_mode`` is where the write mode lives; ``mapping.write_mode`` (its place in
    earlier releases) is still read when ``fhir.write_mode`` is not given, and
    ``mapping.write_mode`` always holds the mode in effect.
    """

    dicom: DicomSettings = DicomSettings()
    spool: SpoolSettings = SpoolSettings()
    fhir: FhirDeliverySettings = FhirDeliverySettings()
    mapping: MappingSettings = MappingSettings()
    forwarder: ForwarderSettings = ForwarderSettings()
    log: LogSettings = LogSettings()
    health: HealthSettings = HealthSettings()
    audit: AuditSettings = AuditSettings()

    @model_validator(mode="before")
    @classmethod
    def _one_write_mode(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fhir, mapping = _given(data.get("fhir")), _given(data.get("mapping"))
        for key in ("fhir_version", "r4_imaging_selection"):
            if key in mapping:
                raise ValueError(f"mapping.{key} is not a setting: use fhir.{key.removeprefix('fhir_')}")
        if "write_mode" in mapping and "write_mode" not in fhir:
            fhir["write_mode"] = mapping["write_mode"]
        elif "write_mode" in mapping and mapping["write_mode"] != fhir["write_mode"]:
            raise ValueError("mapping.write_mode and fhir.write_mode disagree: set only fhir.write_mode")
        mapping["write_mode"] = apply_preset(fhir).get("write_mode", "put")
        return {**data, "fhir": fhir, "mapping": mapping}

    @field_validator("audit")
    @classmethod
    def _audit_to_fhir_needs_a_server(cls, value: AuditSettings, info: ValidationInfo) -> AuditSettings:
        fhir = info.data.get("fhir")
        if value.send_to_fhir and fhir is not None and fhir.base_url is None:
            raise ValueError("send_to_fhir needs fhir.base_url (there is no FHIR server to send to)")
        return value

    @field_validator("health")
    @classmethod
    def _health_port_is_free(cls, value: HealthSettings, info: ValidationInfo) -> HealthSettings:
        dicom = info.data.get("dicom")
        if dicom is not None and value.port and value.port == dicom.port:
            raise ValueError(f"port {value.port} is already dicom.port; choose another")
        return value


def _given(section: Any) -> dict[str, Any]:
    """The keys a section was given, as a new dict (from raw data or from a model instance)."""
    if isinstance(section, BaseModel):
        return section.model_dump(exclude_unset=True)
    return dict(section) if isinstance(section, dict) else {}
