"""The R4 shape of a dose report's Bundle: the IG is R4-native, so R4 output claims its profiles.

Runs after the generic :func:`mapping.r4.to_r4` (which already made the Device an R4 Device). It
adds ``meta.profile`` to the ``radiation-dose-summary`` Observation and its ``modality-device``
Device and fills what those profiles require and R5 output leaves out when the SR does not say:

- ``Observation.performer`` (1..1, Irradiation Authorizing person): a Practitioner reference with
  the ``data-absent-reason`` extension (``unknown``);
- ``Device.identifier[aeTitle]`` (1..1): the Application Entity type with ``_value`` carrying
  ``data-absent-reason`` (``unknown``) when Station AE Title (0008,0055) is absent;
- ``Device.deviceName``: the ``manufacturer`` (manufacturer-name) and ``manufacturerModelName``
  (model-name) slices, from ``manufacturer`` and the model name ``to_r4`` wrote as a
  user-friendly-name.
"""

from __future__ import annotations

from .codes import fixed, profile_url

__all__ = ["finish_r4", "DATA_ABSENT_REASON"]

DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
_UNKNOWN = [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]


def finish_r4(bundle: dict) -> dict:
    """The R4 Bundle with the dose IG's profiles claimed and their required elements present."""
    by_reference = {}
    for entry in bundle.get("entry", ()):
        resource = entry["resource"]
        by_reference[entry["fullUrl"]] = resource
        if "id" in resource:
            by_reference[f"{resource['resourceType']}/{resource['id']}"] = resource
    for entry in bundle.get("entry", ()):
        resource = entry["resource"]
        if resource["resourceType"] != "Observation" or not _is_dose_summary(resource):
            continue
        _claim(resource, "radiation-dose-summary")
        if not resource.get("performer"):
            resource["performer"] = [{"extension": list(_UNKNOWN), "type": "Practitioner"}]
            _reorder(resource, "performer", after=("issued", "effectiveDateTime"))
        device = by_reference.get(resource.get("device", {}).get("reference", ""))
        if device is not None and device["resourceType"] == "Device":
            _modality_device(device)
    return bundle


def _is_dose_summary(resource: dict) -> bool:
    return any(c.get("system") == fixed.DOSE_SUMMARY["system"] and c.get("code") == fixed.DOSE_SUMMARY["code"]
               for c in resource.get("code", {}).get("coding", ()))


def _modality_device(device: dict) -> None:
    _claim(device, "modality-device")
    identifiers = device.setdefault("identifier", [])
    if not any(_has_type(i, fixed.APPLICATION_ENTITY) for i in identifiers):
        identifiers.insert(0, {"type": {"coding": [fixed.APPLICATION_ENTITY]}, "_value": {"extension": list(_UNKNOWN)}})
    names = []
    if device.get("manufacturer"):
        names.append({"name": device["manufacturer"], "type": "manufacturer-name"})
    for name in device.get("deviceName", ()):
        names.append({**name, "type": "model-name"} if name.get("type") == "user-friendly-name" else name)
    if names:
        device["deviceName"] = names
        _reorder(device, "deviceName", after=("serialNumber", "manufacturer", "identifier"))


def _has_type(identifier: dict, coding: dict) -> bool:
    return any(c.get("system") == coding["system"] and c.get("code") == coding["code"]
               for c in identifier.get("type", {}).get("coding", ()))


def _claim(resource: dict, profile_id: str) -> None:
    meta = dict(resource.get("meta", {}))
    meta["profile"] = [profile_url(profile_id)]
    ordered = {"resourceType": resource["resourceType"]}
    if "id" in resource:
        ordered["id"] = resource["id"]
    ordered["meta"] = meta
    ordered.update((k, v) for k, v in resource.items() if k not in ordered)
    resource.clear()
    resource.update(ordered)


def _reorder(resource: dict, key: str, *, after: tuple[str, ...]) -> None:
    """Move ``key`` behind the first of ``after`` present (JSON order is cosmetic, kept readable)."""
    anchor = next((a for a in after if a in resource), None)
    if anchor is None:
        return
    value = resource.pop(key)
    items = list(resource.items())
    resource.clear()
    for k, v in items:
        resource[k] = v
        if k == anchor:
            resource[key] = value
    resource.setdefault(key, value)
