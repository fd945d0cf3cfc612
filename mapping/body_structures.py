"""IG ``dicom-sr-finding-site`` BodyStructure from a group's Finding Site and tracking ids."""

from __future__ import annotations

from . import concepts
from .content_tree import ContentNode
from .context import ReportContext
from .ids import shared_id
from .profiles import fixed, profile_url
from .references import uid_identifier_value

__all__ = ["finding_site"]


def finding_site(node: ContentNode, ctx: ReportContext) -> str | None:
    """IG ``dicom-sr-finding-site``; SCT 363698007 + DCM 112039/112040; TID 300/1419/1410/1411/1501.

    Made whenever the node has a Finding Site (as the IG's worked example does, with or
    without laterality); shared between reports through the Tracking UID. Returns the fullUrl,
    or None when there is no Finding Site.
    """
    site = node.first(concepts.FINDING_SITE, "CODE")
    tracking_id = node.first(concepts.TRACKING_IDENTIFIER, "TEXT")
    tracking_uid = node.first(concepts.TRACKING_UID, "UIDREF")
    if site is None:
        if tracking_id or tracking_uid:
            ctx.note(node, "tracking identifiers without a Finding Site: no BodyStructure (it needs a structure)")
        return None
    structure: dict = {"structure": ctx.codes.codeable_concept(site.value)}
    laterality = site.first(concepts.LATERALITY, "CODE") or node.first(concepts.LATERALITY, "CODE")
    if laterality is not None:
        structure["laterality"] = ctx.codes.codeable_concept(laterality.value)
    modifiers = [m for m in site.children if m.key == concepts.TOPOGRAPHICAL_MODIFIER and m.value_type == "CODE"]
    modifiers += [m for m in node.all(concepts.TOPOGRAPHICAL_MODIFIER) if m.value_type == "CODE"]
    if modifiers:
        structure["qualifier"] = [ctx.codes.codeable_concept(m.value) for m in modifiers]

    identifiers = []
    natural = None
    if tracking_id is not None:
        identifiers.append({"type": {"coding": [fixed.TRACKING_IDENTIFIER]}, "value": tracking_id.value})
    if tracking_uid is not None:
        natural = {
            "type": {"coding": [fixed.TRACKING_UID]},
            "system": "urn:dicom:uid",
            "value": uid_identifier_value(tracking_uid.value),
        }
        identifiers.append(natural)
    resource_id = shared_id("finding-site", tracking_uid.value) if tracking_uid else ctx.id_for(node, "finding-site")
    resource: dict = {
        "resourceType": "BodyStructure",
        "id": resource_id,
        "meta": {"profile": [profile_url("dicom-sr-finding-site")]},
    }
    if identifiers:
        resource["identifier"] = identifiers
    resource["includedStructure"] = [structure]
    resource["patient"] = ctx.subject
    return ctx.bundle.add(resource, natural_identifier=natural)
