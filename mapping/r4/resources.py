"""R5 -> R4 for the resources the mapping makes besides ImagingSelection.

One function per resource type, each taking the R5 resource (IG profiles already removed
from ``meta``) and a :class:`Scope`, and returning a new R4 resource. Elements R4 has
unchanged are copied; R5-only elements become the R4 core extension where one exists
(``bodyStructure`` -> ``bodySite``), else a cross-version extension; an element with neither
is left out and reported through ``Scope.report`` (which turns it into a note).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .extensions import BODY_SITE, add_extensions, value_extension, xver_url
from .links import EntryIndex

__all__ = ["Scope", "CONVERTERS", "observation", "device", "body_structure", "practitioner"]

_RESOURCE_ELEMENTS = frozenset({
    "resourceType", "id", "meta", "implicitRules", "language", "text", "contained", "extension", "modifierExtension",
})
_VALUE_R4 = ("Quantity", "CodeableConcept", "String", "Boolean", "Integer", "Range", "Ratio", "SampledData", "Time",
             "DateTime", "Period")


@dataclass(frozen=True, slots=True)
class Scope:
    """What a converter needs besides the resource: the Bundle's entries (to know what a
    reference points at) and where to report an element that is left out."""

    index: EntryIndex
    report: Callable[[str], None]
    r5_profiles: tuple[str, ...] = ()  # the resource's meta.profile before the IG's were removed


def _copy_known(resource: dict, known: frozenset[str], special: frozenset[str], scope: Scope) -> dict:
    """The elements in ``known`` (R4 has them as R5 does); others not in ``special`` are
    reported and left out."""
    out = {}
    for key, value in resource.items():
        if key in known or key in _RESOURCE_ELEMENTS:
            out[key] = value
        elif key not in special:
            scope.report(f"{resource['resourceType']}.{key}")
    return out


# --- Observation --------------------------------------------------------------------------

_OBSERVATION_R4 = frozenset({
    "identifier", "basedOn", "status", "category", "code", "subject", "focus", "encounter",
    "effectiveDateTime", "effectivePeriod", "effectiveTiming", "effectiveInstant", "issued", "performer",
    *(f"value{t}" for t in _VALUE_R4), "dataAbsentReason", "interpretation", "note", "bodySite", "method",
    "specimen", "device", "referenceRange",
})
# R4 reference targets of the Observation elements whose R5 targets are wider.
_OBSERVATION_TARGETS = {
    "partOf": frozenset({"MedicationAdministration", "MedicationDispense", "MedicationStatement", "Procedure",
                         "Immunization", "ImagingStudy"}),
    "hasMember": frozenset({"Observation", "QuestionnaireResponse", "MolecularSequence"}),
    "derivedFrom": frozenset({"DocumentReference", "ImagingStudy", "Media", "QuestionnaireResponse", "Observation",
                              "MolecularSequence"}),
}
_COMPONENT_R4 = frozenset({"id", "extension", "modifierExtension", "code", *(f"value{t}" for t in _VALUE_R4),
                           "dataAbsentReason", "interpretation", "referenceRange"})
_OBSERVATION_SPECIAL = frozenset({*_OBSERVATION_TARGETS, "component", "bodyStructure", "triggeredBy",
                                  "instantiatesCanonical", "instantiatesReference"})


def observation(resource: dict, scope: Scope) -> dict:
    """R5 Observation -> R4 Observation.

    ``partOf`` / ``hasMember`` / ``derivedFrom`` references to types R4 does not allow there
    (ImagingSelection, GenomicStudy; on R4 an ImagingSelection is a Basic) move to the
    cross-version extension of that element (``valueReference``); ``bodyStructure`` becomes
    the R4 core ``bodySite`` extension; ``triggeredBy`` and ``instantiates[x]`` become
    cross-version extensions.
    """
    out = _copy_known(resource, _OBSERVATION_R4, _OBSERVATION_SPECIAL, scope)
    extensions: list[dict] = []
    if "instantiatesCanonical" in resource:
        extensions.append(value_extension(xver_url("Observation.instantiates[x]"), "canonical",
                                          resource["instantiatesCanonical"]))
    if "instantiatesReference" in resource:
        extensions.append(value_extension(xver_url("Observation.instantiates[x]"), "Reference",
                                          resource["instantiatesReference"]))
    for trigger in resource.get("triggeredBy", ()):
        extensions.append({"url": xver_url("Observation.triggeredBy"), "extension": [
            value_extension(key, kind, trigger[key])
            for key, kind in (("observation", "Reference"), ("type", "code"), ("reason", "string")) if key in trigger
        ]})
    if "bodyStructure" in resource:
        extensions.append(value_extension(BODY_SITE, "Reference", resource["bodyStructure"]))
    for element, allowed in _OBSERVATION_TARGETS.items():
        kept = []
        for reference in resource.get(element, ()):
            target = scope.index.target_type(reference)
            if target is None or target in allowed:
                kept.append(reference)
            else:
                extensions.append(value_extension(xver_url(f"Observation.{element}"), "Reference", reference))
        if kept:
            out[element] = kept
    if "component" in resource:
        out["component"] = [_component(component, scope) for component in resource["component"]]
    return _in_r4_order(add_extensions(out, extensions), resource)


def _component(component: dict, scope: Scope) -> dict:
    out = {}
    for key, value in component.items():
        if key in _COMPONENT_R4:
            out[key] = value
        else:
            scope.report(f"Observation.component.{key}")
    return out


def _in_r4_order(out: dict, r5: dict) -> dict:
    """``out`` with the elements the R5 resource had kept in the R5 order (extensions first)."""
    order = {key: position for position, key in enumerate(r5)}
    head = [key for key in out if key not in order]  # new elements (extension) stay where placed
    ordered = sorted((key for key in out if key in order), key=order.__getitem__)
    result = {}
    for key in ("resourceType", "id", "meta", "implicitRules", "language", "text", "contained"):
        if key in out:
            result[key] = out[key]
    for key in [*head, *ordered]:
        result.setdefault(key, out[key])
    return result


# --- Device -------------------------------------------------------------------------------

_DEVICE_R4 = frozenset({
    "identifier", "udiCarrier", "status", "statusReason", "distinctIdentifier", "manufacturer",
    "manufactureDate", "expirationDate", "lotNumber", "serialNumber", "modelNumber", "partNumber", "specialization",
    "owner", "contact", "location", "url", "note", "safety", "parent",
})
_DEVICE_SPECIAL = frozenset({"displayName", "name", "type", "version", "property"})
# R5 Device.name.type (device-nametype 5.0.0) -> R4 DeviceNameType (required binding).
_NAME_TYPES = {"registered-name": "udi-label-name", "user-friendly-name": "user-friendly-name",
               "patient-reported-name": "patient-reported-name"}
_GENERAL_EQUIPMENT = "http://hl7.org/fhir/uv/dicom-sr/StructureDefinition/dicom-general-equipment"


def device(resource: dict, scope: Scope) -> dict:
    """R5 Device -> R4 Device.

    ``displayName`` and ``name`` become ``deviceName`` (R4 requires a ``type`` from its
    DeviceNameType codes: the General Equipment's display name is its Manufacturer's Model
    Name, ``model-name``; any other display name is ``user-friendly-name``); ``type`` is 0..1
    in R4: the first stays, the others go to ``extension-Device.type``; a ``property`` value
    goes to R4's ``valueQuantity`` / ``valueCode`` lists (a string as a text-only concept).
    """
    out = _copy_known(resource, _DEVICE_R4, _DEVICE_SPECIAL, scope)
    extensions: list[dict] = []
    names = []
    if "displayName" in resource:
        kind = "model-name" if _GENERAL_EQUIPMENT in scope.r5_profiles else "user-friendly-name"
        names.append({"name": resource["displayName"], "type": kind})
    for name in resource.get("name", ()):
        names.append({"name": name["value"], "type": _NAME_TYPES.get(name.get("type", ""), "other")})
    if names:
        out["deviceName"] = names
    types = resource.get("type", ())
    if types:
        out["type"] = types[0]
        extensions += [value_extension(xver_url("Device.type"), "CodeableConcept", t) for t in types[1:]]
    if "version" in resource:
        out["version"] = [_version(version, scope) for version in resource["version"]]
    properties = [p for p in (_property(p, scope) for p in resource.get("property", ())) if p is not None]
    if properties:
        out["property"] = properties
    return _in_r4_order(add_extensions(out, extensions), resource)


def _version(version: dict, scope: Scope) -> dict:
    out = {key: value for key, value in version.items() if key in ("id", "extension", "type", "component", "value")}
    if "installDate" in version:
        install = value_extension(xver_url("Device.version.installDate"), "dateTime", version["installDate"])
        out = {"extension": [*version.get("extension", ()), install], **{k: v for k, v in out.items() if k != "extension"}}
    for key in set(version) - {"id", "extension", "type", "component", "value", "installDate"}:
        scope.report(f"Device.version.{key}")
    return out


def _property(prop: dict, scope: Scope) -> dict | None:
    out: dict[str, Any] = {key: prop[key] for key in ("id", "extension", "type") if key in prop}
    if "valueQuantity" in prop:
        out["valueQuantity"] = [prop["valueQuantity"]]
    elif "valueInteger" in prop:
        out["valueQuantity"] = [{"value": prop["valueInteger"]}]
    elif "valueCodeableConcept" in prop:
        out["valueCode"] = [prop["valueCodeableConcept"]]
    elif "valueString" in prop:
        out["valueCode"] = [{"text": prop["valueString"]}]
    elif "valueBoolean" in prop:
        out["valueCode"] = [{"text": "true" if prop["valueBoolean"] else "false"}]
    for key in set(prop) - {"id", "extension", "type", "valueQuantity", "valueInteger", "valueCodeableConcept",
                            "valueString", "valueBoolean"}:
        scope.report(f"Device.property.{key}")
    return out if "type" in out else None


# --- BodyStructure ------------------------------------------------------------------------

_BODY_STRUCTURE_R4 = frozenset({"identifier", "active", "morphology", "description", "image", "patient"})
_STRUCTURE_PARTS = ("structure", "laterality", "qualifier")


def body_structure(resource: dict, scope: Scope) -> dict:
    """R5 BodyStructure -> R4 BodyStructure.

    R4 has one ``location`` (+ ``locationQualifier``) where R5 has ``includedStructure``
    (1..*): the first included structure becomes ``location``, its laterality and qualifiers
    ``locationQualifier`` (laterality first); every further one is a complex
    ``extension-BodyStructure.includedStructure`` (nested ``structure``, ``laterality``,
    ``qualifier``), so no finding site is lost and the resource stays one resource (its id is
    what the Observations point at).
    """
    out = _copy_known(resource, _BODY_STRUCTURE_R4, frozenset({"includedStructure"}), scope)
    extensions = []
    for position, included in enumerate(resource.get("includedStructure", ())):
        for key in set(included) - {*_STRUCTURE_PARTS, "id", "extension"}:
            scope.report(f"BodyStructure.includedStructure.{key}")
        if position == 0:
            out["location"] = included["structure"]
            qualifiers = ([included["laterality"]] if "laterality" in included else []) + included.get("qualifier", [])
            if qualifiers:
                out["locationQualifier"] = qualifiers
            continue
        nested = [value_extension("structure", "CodeableConcept", included["structure"])]
        if "laterality" in included:
            nested.append(value_extension("laterality", "CodeableConcept", included["laterality"]))
        nested += [value_extension("qualifier", "CodeableConcept", q) for q in included.get("qualifier", ())]
        extensions.append({"url": xver_url("BodyStructure.includedStructure"), "extension": nested})
    result = add_extensions(out, extensions)
    ordered = {key: result[key] for key in result if key != "patient"}
    if "patient" in result:
        ordered["patient"] = result["patient"]
    return ordered


# --- Practitioner -------------------------------------------------------------------------

_PRACTITIONER_R4 = frozenset({"identifier", "active", "name", "telecom", "address", "gender", "birthDate", "photo",
                              "qualification"})


def practitioner(resource: dict, scope: Scope) -> dict:
    """R5 Practitioner -> R4 Practitioner: the same but for ``communication`` (R5: language +
    preferred; R4: the language only) and ``deceased[x]`` (reported, R4 has none)."""
    out = _copy_known(resource, _PRACTITIONER_R4, frozenset({"communication"}), scope)
    languages = []
    for communication in resource.get("communication", ()):
        languages.append(communication["language"])
        if "preferred" in communication:
            scope.report("Practitioner.communication.preferred")
    if languages:
        out["communication"] = languages
    return out


CONVERTERS: dict[str, Callable[[dict, Scope], dict]] = {
    "Observation": observation,
    "Device": device,
    "BodyStructure": body_structure,
    "Practitioner": practitioner,
}
