"""Observations below a measurement group: ``imaging-measurement`` and ``imaging-qualitative-evaluation``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import concepts
from .body_structures import finding_site
from .content_tree import ContentNode, NumValue
from .context import ReportContext
from .dates import Timing
from .devices import algorithm_identification
from .modifiers import qualify, quantity
from .observations import observation_skeleton
from .profiles import fixed
from .selections import group_selections, source_sr_content_item

__all__ = ["Inherited", "imaging_measurement", "qualitative_evaluation", "quantity"]


@dataclass(frozen=True, slots=True)
class Inherited:
    """What a measurement or evaluation takes from its group unless it has its own."""

    device: str
    timing: Timing
    derived_from: tuple[tuple[str, str], ...] = ()  # (derivedFrom slice, fullUrl) of the group's selections
    body_structure: str | None = None
    method: dict | None = None


def imaging_measurement(node: ContentNode, ctx: ReportContext, parent: Inherited) -> str | None:
    """IG ``imaging-measurement``; NUM in a measurement group; TID 300 / TID 1419."""
    num: NumValue = node.value
    if num.value is None:
        why = f" (qualifier {num.qualifier.meaning or num.qualifier.value})" if num.qualifier else ""
        ctx.note(node, f"NUM without a numeric value{why}: imaging-measurement requires valueQuantity")
        return None
    own = _own_context(node, ctx, parent)
    resource = observation_skeleton(
        ctx, node, profile="imaging-measurement", category=None,
        code=ctx.codes.codeable_concept(node.concept), timing=own.timing, device=own.device,
    )
    resource["valueQuantity"] = quantity(num, ctx)
    qualify(node, ctx).apply(resource, node.concept.meaning if node.concept else "")
    _attach(resource, node, own, ctx)
    return ctx.bundle.add(resource)


def qualitative_evaluation(node: ContentNode, ctx: ReportContext, parent: Inherited) -> str:
    """IG ``imaging-qualitative-evaluation``; CODE/TEXT in a group or in the report's C0034375 container."""
    own = _own_context(node, ctx, parent)
    resource = observation_skeleton(
        ctx, node, profile="imaging-qualitative-evaluation", category=fixed.QUALITATIVE_EVALUATIONS,
        code=ctx.codes.codeable_concept(node.concept), timing=own.timing, device=own.device,
    )
    if node.value_type == "CODE":
        resource["valueCodeableConcept"] = ctx.codes.codeable_concept(node.value)
    else:
        resource["valueCodeableConcept"] = {"text": str(node.value)}
    _attach(resource, node, own, ctx)
    for child in node.children:
        if child.key not in concepts.ITEM_CONTEXT and child.value_type not in concepts.SELECTION_VALUE_TYPES:
            ctx.note(child, f"{child.value_type} under a qualitative evaluation is not mapped (the IG defines no target)")
    return ctx.bundle.add(resource)


def _own_context(node: ContentNode, ctx: ReportContext, parent: Inherited) -> Inherited:
    """The parent's context overridden by the node's own algorithm, method, site, time, images.

    The node's own image references replace the group's selection of the same kind (the
    ``derivedFrom`` slices are 0..1); the group's other selections still apply.
    """
    own = replace(parent, timing=ctx.timing(node, parent.timing))
    device = algorithm_identification(node, ctx)
    if device is not None:
        own = replace(own, device=device)
    method = node.first(concepts.MEASUREMENT_METHOD, "CODE")
    if method is not None:
        own = replace(own, method=ctx.codes.codeable_concept(method.value))
    site = finding_site(node, ctx) if node.first(concepts.FINDING_SITE, "CODE") else None
    if site is not None:
        own = replace(own, body_structure=site)
    selections = group_selections(node, ctx, own.body_structure)
    if selections.by_slice:
        merged = dict(parent.derived_from) | selections.by_slice
        own = replace(own, derived_from=tuple(merged.items()))
    return own


def _attach(resource: dict, node: ContentNode, own: Inherited, ctx: ReportContext) -> None:
    if own.body_structure:
        resource["bodyStructure"] = ctx.ref(own.body_structure)
    if own.method:
        resource["method"] = own.method
    derived_from = [ctx.ref(url) for _, url in own.derived_from]
    source = source_sr_content_item(node, ctx)
    if source is not None:
        derived_from.append(ctx.ref(source))
    if derived_from:
        resource["derivedFrom"] = derived_from
