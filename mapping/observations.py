"""The part every IG Observation shares: identity, status, subject, study, timing, performer."""

from __future__ import annotations

from .content_tree import ContentNode
from .context import ReportContext
from .dates import Timing
from .profiles import fixed, profile_url
from .references import uid_identifier_value

__all__ = ["observation_skeleton", "observation_uid_identifier"]


def observation_uid_identifier(observation_uid: str) -> dict:
    """``identifier[observationUID]`` from Observation UID (0040,A171)."""
    return {
        "type": {"coding": [fixed.OBSERVATION_UID]},
        "system": "urn:dicom:uid",
        "value": uid_identifier_value(observation_uid),
    }


def observation_skeleton(
    ctx: ReportContext,
    node: ContentNode,
    *,
    profile: str,
    category: dict | None,
    code: dict,
    timing: Timing,
    device: str,
) -> dict:
    """An Observation of ``profile`` for ``node`` with the document-level context filled in.

    Callers add value, bodyStructure, method, derivedFrom and hasMember.
    """
    resource: dict = {
        "resourceType": "Observation",
        "id": ctx.id_for(node, profile),
        "meta": {"profile": [profile_url(profile)]},
    }
    if node.observation_uid:
        resource["identifier"] = [observation_uid_identifier(node.observation_uid)]
    if ctx.service_request is not None:
        resource["basedOn"] = [ctx.service_request]
    resource["partOf"] = [ctx.imaging_study()]
    resource["status"] = ctx.status
    if category is not None:
        resource["category"] = [{"coding": [category]}]
    resource["code"] = code
    resource["subject"] = ctx.subject
    resource["effectiveDateTime"] = timing.effective
    resource["issued"] = timing.issued
    if ctx.performer:
        resource["performer"] = list(ctx.performer)
    resource["device"] = ctx.ref(device)
    return resource
