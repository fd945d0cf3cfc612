"""Extension URLs and small builders for the R5 -> R4 transform.

Cross-version extensions follow FHIR's convention for using an element of another version
(``http://hl7.org/fhir/5.0/StructureDefinition/extension-<Resource>.<element path>``, as HL7's
``hl7.fhir.uv.xver-r5.r4`` package publishes them): a simple element is one extension with a
``value[x]``; a complex (backbone) element is one extension whose children are nested
extensions named by the child element's own name (a relative URL), one per value.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "XVER_R5",
    "BODY_SITE",
    "FHIR_TYPES",
    "IG_PROFILE_PREFIX",
    "xver_url",
    "value_extension",
    "add_extensions",
    "strip_ig_profiles",
]

XVER_R5 = "http://hl7.org/fhir/5.0/StructureDefinition/extension-"
# R4 core extension "Body Site" (context Element, valueReference(BodyStructure)).
BODY_SITE = "http://hl7.org/fhir/StructureDefinition/bodySite"
# The code system of resource type names that cross-version Basic resources use in Basic.code.
FHIR_TYPES = "http://hl7.org/fhir/fhir-types"
# Profiles of the R5 IG (hl7.fhir.uv.dicom-sr); an R4 resource cannot claim them.
IG_PROFILE_PREFIX = "http://hl7.org/fhir/uv/dicom-sr/StructureDefinition/"

# Keys a resource's JSON opens with; extensions are placed right after them.
_HEAD = ("resourceType", "id", "meta", "implicitRules", "language", "text", "contained")


def xver_url(path: str) -> str:
    """The cross-version extension URL of the R5 element ``path`` (``Observation.derivedFrom``)."""
    return XVER_R5 + path


def value_extension(url: str, fhir_type: str, value: Any) -> dict:
    """``{"url": url, "value<Type>": value}``; ``fhir_type`` is the FHIR type name (``Reference``)."""
    return {"url": url, f"value{fhir_type[0].upper()}{fhir_type[1:]}": value}


def add_extensions(resource: dict, extensions: list[dict]) -> dict:
    """A copy of ``resource`` with ``extensions`` appended to its ``extension``, placed where
    FHIR JSON puts it (after the resource's header elements). Nothing to add: ``resource``."""
    if not extensions:
        return resource
    out: dict = {}
    for key in _HEAD:
        if key in resource:
            out[key] = resource[key]
    out["extension"] = [*resource.get("extension", ()), *extensions]
    for key, value in resource.items():
        if key not in out:
            out[key] = value
    return out


def strip_ig_profiles(resource: dict) -> dict:
    """``resource`` without the R5 IG's profiles in ``meta.profile`` (and without an empty meta)."""
    meta = resource.get("meta")
    if not meta or "profile" not in meta:
        return resource
    profiles = [p for p in meta["profile"] if not p.startswith(IG_PROFILE_PREFIX)]
    new_meta = {k: v for k, v in meta.items() if k != "profile"}
    if profiles:
        new_meta["profile"] = profiles
    return {key: (new_meta if key == "meta" else value) for key, value in resource.items()
            if key != "meta" or new_meta}
