"""FHIR releases by name: which ``CapabilityStatement.fhirVersion`` is R4 and which is R5."""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["FhirRelease", "release_of"]

FhirRelease = Literal["r4", "r5"]


def release_of(fhir_version: Any) -> FhirRelease | None:
    """``r4`` for 4.0.x, ``r5`` for 5.0.x (a CapabilityStatement's ``fhirVersion``), else None.

    4.3.x (R4B) is not R4: its resources differ, so it is refused like any other release.
    """
    text = str(fhir_version or "")
    if text == "4.0" or text.startswith("4.0."):
        return "r4"
    if text == "5.0" or text.startswith("5.0."):
        return "r5"
    return None
