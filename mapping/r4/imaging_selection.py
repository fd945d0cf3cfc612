"""R5 ImagingSelection <-> R4 ``Basic`` with cross-version extensions, losslessly.

R4 has no ImagingSelection. HL7's cross-version package for R4 (``hl7.fhir.uv.xver-r5.r4``,
profile ``http://hl7.org/fhir/5.0/StructureDefinition/profile-ImagingSelection``) carries one
as a ``Basic``: ``Basic.code`` names the R5 resource type (``http://hl7.org/fhir/fhir-types``
``ImagingSelection``), ``identifier`` and ``subject`` use Basic's own elements, and every other
element is an extension ``http://hl7.org/fhir/5.0/StructureDefinition/extension-ImagingSelection.<element>``
(the selection's own ``code`` included, since Basic.code is taken). Backbone elements
(``instance``, its ``imageRegion2D``/``imageRegion3D``, ``performer``) are complex
extensions whose nested extensions are named by the child element (``uid``, ``sopClass``,
``subset``, ``regionType``, ``coordinate`` ...); a repeating element is repeated.

:func:`from_basic` is the exact inverse of :func:`to_basic` (same id, same values, same
``Decimal`` digits); only the IG's ``meta.profile`` is not carried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .extensions import FHIR_TYPES, strip_ig_profiles, value_extension, xver_url

__all__ = ["BASIC_CODE", "to_basic", "from_basic", "is_selection_basic", "UnknownElement"]

BASIC_CODE = {"coding": [{"system": FHIR_TYPES, "code": "ImagingSelection"}]}
_RESOURCE = "ImagingSelection"
# Elements of both resources, copied as they are (Resource/DomainResource + Basic's own).
_SHARED = ("id", "meta", "implicitRules", "language", "text", "contained", "extension", "modifierExtension",
           "identifier", "subject")


class UnknownElement(ValueError):
    """An element of the R5 resource that this module has no cross-version form for."""


@dataclass(frozen=True, slots=True)
class Element:
    """One R5 ImagingSelection element: FHIR type (None for a backbone element), repeats."""

    name: str
    fhir_type: str | None
    repeats: bool = False
    children: tuple[Element, ...] = ()


def _region(name: str) -> Element:
    return Element(name, None, True, (Element("regionType", "code"), Element("coordinate", "decimal", True)))


# R5 ImagingSelection (5.0.0) elements other than those Basic has, in R5 order.
ELEMENTS: tuple[Element, ...] = (
    Element("status", "code"),
    Element("issued", "instant"),
    Element("performer", None, True, (Element("function", "CodeableConcept"), Element("actor", "Reference"))),
    Element("basedOn", "Reference", True),
    Element("category", "CodeableConcept", True),
    Element("code", "CodeableConcept"),
    Element("studyUid", "id"),
    Element("derivedFrom", "Reference", True),
    Element("endpoint", "Reference", True),
    Element("seriesUid", "id"),
    Element("seriesNumber", "unsignedInt"),
    Element("frameOfReferenceUid", "id"),
    Element("bodySite", "CodeableReference"),
    Element("focus", "Reference", True),
    Element("instance", None, True, (
        Element("uid", "id"),
        Element("number", "unsignedInt"),
        Element("sopClass", "Coding"),
        Element("subset", "string", True),
        _region("imageRegion2D"),
        _region("imageRegion3D"),
    )),
)
_BY_NAME = {element.name: element for element in ELEMENTS}


def is_selection_basic(resource: dict) -> bool:
    """True for a Basic made by :func:`to_basic`."""
    return resource.get("resourceType") == "Basic" and resource.get("code") == BASIC_CODE


def to_basic(selection: dict, unknown: Callable[[str], None] | None = None) -> dict:
    """The R4 Basic carrying the R5 ImagingSelection ``selection`` (not modified).

    An element this module has no form for is left out and reported as ``unknown(path)``;
    without ``unknown`` it raises :class:`UnknownElement`: nothing is dropped silently.
    """
    report = unknown or _raise
    selection = strip_ig_profiles(selection)
    basic: dict = {"resourceType": "Basic"}
    extensions: list[dict] = []
    for key, value in selection.items():
        if key == "resourceType":
            continue
        if key in _SHARED:
            continue
        element = _BY_NAME.get(key)
        if element is None:
            report(f"{_RESOURCE}.{key}")
            continue
        extensions += _encode(element, value, _RESOURCE, report)
    for key in ("id", "meta", "implicitRules", "language", "text", "contained"):
        if key in selection:
            basic[key] = selection[key]
    all_extensions = [*selection.get("extension", ()), *extensions]
    if all_extensions:
        basic["extension"] = all_extensions
    for key in ("modifierExtension", "identifier"):
        if key in selection:
            basic[key] = selection[key]
    basic["code"] = BASIC_CODE
    if "subject" in selection:
        basic["subject"] = selection["subject"]
    return basic


def from_basic(basic: dict) -> dict:
    """The R5 ImagingSelection that :func:`to_basic` turned into ``basic`` (the inverse)."""
    if not is_selection_basic(basic):
        raise ValueError("not a Basic carrying an ImagingSelection")
    prefix = xver_url(f"{_RESOURCE}.")
    selection: dict = {"resourceType": _RESOURCE}
    values: dict[str, Any] = {}
    own_extensions = []
    for extension in basic.get("extension", ()):
        url = extension["url"]
        element = _BY_NAME.get(url[len(prefix):]) if url.startswith(prefix) else None
        if element is None:
            own_extensions.append(extension)
            continue
        _collect(values, element, _decode(element, extension))
    for key in ("id", "meta", "implicitRules", "language", "text", "contained"):
        if key in basic:
            selection[key] = basic[key]
    if own_extensions:
        selection["extension"] = own_extensions
    for key in ("modifierExtension", "identifier"):
        if key in basic:
            selection[key] = basic[key]
    if "subject" in basic:
        selection["subject"] = basic["subject"]
    selection.update(values)
    return selection


def _raise(path: str) -> None:
    raise UnknownElement(f"{path} has no R4 form here")


def _encode(element: Element, value: Any, parent: str, report: Callable[[str], None]) -> list[dict]:
    """Extensions for one element's value (a list when it repeats); ``parent`` is the R5
    path of the enclosing element for top-level ones, None inside a complex extension."""
    url = xver_url(f"{parent}.{element.name}") if parent else element.name
    items = value if element.repeats else [value]
    out = []
    for item in items:
        if element.fhir_type is None:
            nested: list[dict] = []
            for key, child_value in item.items():
                child = next((c for c in element.children if c.name == key), None)
                if child is None:
                    report(f"{_RESOURCE}.{element.name}.{key}")
                    continue
                nested += _encode(child, child_value, "", report)
            out.append({"url": url, "extension": nested})
        elif element.fhir_type == "CodeableReference":
            out.append(_codeable_reference(url, item, report))
        else:
            out.append(value_extension(url, element.fhir_type, item))
    return out


def _codeable_reference(url: str, value: dict, report: Callable[[str], None]) -> dict:
    """R4 has no CodeableReference: a reference alone is ``valueReference``, a concept alone
    ``valueCodeableConcept``, both are nested ``concept`` / ``reference`` extensions."""
    for key in sorted(set(value) - {"concept", "reference"}):
        report(f"{_RESOURCE}.bodySite.{key}")
    if "concept" in value and "reference" in value:
        return {"url": url, "extension": [value_extension("concept", "CodeableConcept", value["concept"]),
                                          value_extension("reference", "Reference", value["reference"])]}
    if "reference" in value:
        return value_extension(url, "Reference", value["reference"])
    return value_extension(url, "CodeableConcept", value["concept"])


def _decode(element: Element, extension: dict) -> Any:
    if element.fhir_type is None:
        item: dict[str, Any] = {}
        for nested in extension.get("extension", ()):
            child = next(c for c in element.children if c.name == nested["url"])
            _collect(item, child, _decode(child, nested))
        return item
    if element.fhir_type == "CodeableReference":
        if "valueReference" in extension:
            return {"reference": extension["valueReference"]}
        if "valueCodeableConcept" in extension:
            return {"concept": extension["valueCodeableConcept"]}
        parts = {nested["url"]: nested for nested in extension["extension"]}
        return {"concept": parts["concept"]["valueCodeableConcept"], "reference": parts["reference"]["valueReference"]}
    key = f"value{element.fhir_type[0].upper()}{element.fhir_type[1:]}"
    return extension[key]


def _collect(into: dict[str, Any], element: Element, value: Any) -> None:
    if element.repeats:
        into.setdefault(element.name, []).append(value)
    else:
        into[element.name] = value
