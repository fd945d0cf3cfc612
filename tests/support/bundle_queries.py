"""Small read-only queries over a FHIR Bundle (dicts), so tests read like the IG's wiring."""

from __future__ import annotations

IG = "http://hl7.org/fhir/uv/dicom-sr/StructureDefinition/"


def resources(bundle: dict, profile: str | None = None, resource_type: str | None = None) -> list[dict]:
    """Resources of the Bundle, optionally only those claiming ``profile`` (an IG profile id)."""
    found = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource_type and resource["resourceType"] != resource_type:
            continue
        if profile and IG + profile not in resource.get("meta", {}).get("profile", []):
            continue
        found.append(resource)
    return found


def one(bundle: dict, profile: str) -> dict:
    """The single resource claiming ``profile``; fails when there are none or several."""
    matches = resources(bundle, profile)
    assert len(matches) == 1, f"expected one {profile}, found {len(matches)}"
    return matches[0]


def full_url(bundle: dict, resource: dict) -> str:
    """The fullUrl of ``resource`` in ``bundle``."""
    for entry in bundle["entry"]:
        if entry["resource"] is resource:
            return entry["fullUrl"]
    raise AssertionError("resource not in bundle")


def reference_to(bundle: dict, resource: dict) -> str:
    """The reference the mapping writes to ``resource``: ``Type/id`` when the resource has an
    id (put mode), else its entry's fullUrl (conditional modes)."""
    if "id" in resource:
        return f"{resource['resourceType']}/{resource['id']}"
    return full_url(bundle, resource)


def deref(bundle: dict, reference: dict) -> dict:
    """The Bundle resource a literal reference (``Type/id`` or a ``urn:uuid:`` fullUrl) points at."""
    target = reference["reference"]
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if target in (entry["fullUrl"], f"{resource['resourceType']}/{resource.get('id')}"):
            return resource
    raise AssertionError(f"{target} does not resolve inside the bundle")


def profiles_of(resource: dict) -> list[str]:
    """IG profile ids the resource claims."""
    return [url.removeprefix(IG) for url in resource.get("meta", {}).get("profile", [])]


def coding(concept: dict) -> tuple[str, str]:
    """(system, code) of the first coding of a CodeableConcept."""
    first = concept["coding"][0]
    return first["system"], first["code"]
