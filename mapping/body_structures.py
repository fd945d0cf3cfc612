"""IG ``dicom-sr-finding-site`` BodyStructure from a group's Finding Sites and tracking ids."""

from __future__ import annotations

from . import concepts
from .content_tree import ContentNode
from .context import ReportContext
from .ids import content_id
from .profiles import fixed, profile_url
from .references import uid_identifier_value

__all__ = ["finding_site"]


def finding_site(node: ContentNode, ctx: ReportContext) -> str | None:
    """IG ``dicom-sr-finding-site``; SCT 363698007 + DCM 112039/112040; TID 300/1419/1410/1411/1501.

    Made whenever the node has a Finding Site (as the IG's worked example does, with or
    without laterality). Every Finding Site becomes one ``includedStructure`` (1..*) with its
    own laterality and topographical modifiers (its HAS CONCEPT MOD children); a laterality or
    modifier beside the sites applies to each site that has none of its own. With a Tracking
    UID the resource is shared between reports, keyed on its whole content (``ids.content_id``).
    Returns the fullUrl, or None when there is no Finding Site.
    """
    sites = [child for child in node.children if child.key == concepts.FINDING_SITE and child.value_type == "CODE"]
    tracking_id = node.first(concepts.TRACKING_IDENTIFIER, "TEXT")
    tracking_uid = node.first(concepts.TRACKING_UID, "UIDREF")
    if not sites:
        for tracking in (tracking_id, tracking_uid):
            if tracking is not None:
                ctx.note(tracking, "tracking identifier without a Finding Site: no BodyStructure (it needs a structure)")
        return None
    shared_laterality = node.first(concepts.LATERALITY, "CODE")
    shared_modifiers = _modifiers(node)
    structures = []
    for site in sites:
        structure: dict = {"structure": ctx.codes.codeable_concept(site.value)}
        laterality = site.first(concepts.LATERALITY, "CODE") or shared_laterality
        if laterality is not None:
            structure["laterality"] = ctx.codes.codeable_concept(laterality.value)
        modifiers = _modifiers(site) or shared_modifiers
        if modifiers:
            structure["qualifier"] = [ctx.codes.codeable_concept(m.value) for m in modifiers]
        for child in site.children:
            if child.key not in (concepts.LATERALITY, concepts.TOPOGRAPHICAL_MODIFIER):
                ctx.note(child, f"{child.value_type} under a Finding Site is not mapped (BodyStructure has no place for it)")
        structures.append(structure)

    identifiers = []
    if tracking_id is not None:
        identifiers.append({"type": {"coding": [fixed.TRACKING_IDENTIFIER]}, "value": tracking_id.value})
    if tracking_uid is not None:
        identifiers.append({
            "type": {"coding": [fixed.TRACKING_UID]},
            "system": "urn:dicom:uid",
            "value": uid_identifier_value(tracking_uid.value),
        })
    resource: dict = {
        "resourceType": "BodyStructure",
        "id": "",
        "meta": {"profile": [profile_url("dicom-sr-finding-site")]},
    }
    if identifiers:
        resource["identifier"] = identifiers
    resource["includedStructure"] = structures
    resource["patient"] = ctx.subject
    resource["id"] = content_id("finding-site", resource) if tracking_uid else ctx.id_for(node, "finding-site")
    return ctx.bundle.add(resource)


def _modifiers(node: ContentNode) -> list[ContentNode]:
    return [m for m in node.all(concepts.TOPOGRAPHICAL_MODIFIER) if m.value_type == "CODE"]
