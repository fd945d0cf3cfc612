"""The mapping's knobs (``mapping`` owns this model; the service's config composes it)."""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["MappingOptions", "WriteMode", "FhirVersion", "R4ImagingSelection"]

WriteMode = Literal["put", "conditional", "conditional-update"]
FhirVersion = Literal["r5", "r4"]
R4ImagingSelection = Literal["basic", "omit"]


class MappingOptions(BaseModel):
    """How Bundles are written.

    - ``write_mode``: ``put`` (default) writes every resource with ``PUT Type/<id>`` and a
      deterministic id; ``conditional`` uses ``POST`` + ``ifNoneExist`` on an identifier, for
      servers that refuse client-assigned ids; ``conditional-update`` uses
      ``PUT Type?identifier=<system>|<value>`` on the same identifier, for servers that refuse
      client-assigned ids but do conditional updates (Google Cloud Healthcare, Medplum).
    - ``default_timezone``: IANA name used for DICOM dates/times that carry no offset and no
      Timezone Offset From UTC (0008,0201).
    - ``source_sr_content_items``: emit ``source-sr-content-item`` ImagingSelections for
      content items that carry an Observation UID (0040,A171).
    - ``fhir_version``: ``r5`` (default, the IG's version) or ``r4``: the R5 Bundle rewritten
      for R4-only servers by ``mapping.r4.to_r4`` (docs/mapping-decisions.md, "FHIR R4 output").
    - ``r4_imaging_selection``: with ``r4``, ``basic`` (default) writes each ImagingSelection
      as an R4 ``Basic`` with cross-version extensions (lossless); ``omit`` leaves them out.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    write_mode: WriteMode = "put"
    default_timezone: str = "UTC"
    source_sr_content_items: bool = True
    fhir_version: FhirVersion = "r5"
    r4_imaging_selection: R4ImagingSelection = "basic"

    @field_validator("default_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as 'Europe/Berlin' or 'UTC')") from exc
        return value
