"""IG ``derived-imaging-measurement``: TID 1420 NUMs in the Derived Imaging Measurements container."""

from __future__ import annotations

from . import concepts
from .content_tree import ContentNode
from .context import ReportContext
from .dates import Timing
from .devices import algorithm_identification
from .groups import imaging_measurement_group
from .modifiers import qualify, quantity
from .observations import observation_skeleton
from .profiles import fixed
from .selections import source_sr_content_item

__all__ = ["derived_imaging_measurements"]


def derived_imaging_measurements(container: ContentNode, ctx: ReportContext, parent_timing: Timing) -> list[str]:
    """Map a DCM 126011 container (TID 1420); return the fullUrls of the Observations made.

    Each NUM becomes a ``derived-imaging-measurement`` whose ``derivedFrom`` names the
    measurement groups it was derived from: the groups nested under the NUM, else the groups
    that are its siblings in the container (the profile needs at least one). Its device is a
    TID 4019 algorithm (the NUM's own, else the container's) or the equipment; the profile
    does not allow a participant device.
    """
    device = algorithm_identification(container, ctx) or ctx.equipment_device
    timing = ctx.timing(container, parent_timing)
    sibling_groups = [
        imaging_measurement_group(child, ctx, device, timing)
        for child in container.children
        if _is_group(child)
    ]
    made = list(sibling_groups)
    for child in container.children:
        if child.value_type == "NUM":
            url = derived_imaging_measurement(child, ctx, device, timing, sibling_groups)
            if url is not None:
                made.append(url)
    return made


def derived_imaging_measurement(node: ContentNode, ctx: ReportContext, device: str, parent_timing: Timing,
                                sibling_groups: list[str]) -> str | None:
    """IG ``derived-imaging-measurement``; NUM (CID 7465) in TID 1420."""
    if node.value.value is None:
        ctx.note(node, "derived NUM without a numeric value: derived-imaging-measurement requires valueQuantity")
        return None
    own_device = algorithm_identification(node, ctx) or device
    timing = ctx.timing(node, parent_timing)
    groups = [imaging_measurement_group(child, ctx, own_device, timing) for child in node.children if _is_group(child)]
    groups = groups or sibling_groups
    if not groups:
        ctx.note(node, "derived measurement names no measurement group to be derived from (derivedFrom needs one)")
        return None
    resource = observation_skeleton(
        ctx, node, profile="derived-imaging-measurement", category=fixed.DERIVED_IMAGING_MEASUREMENTS,
        code=ctx.codes.codeable_concept(node.concept), timing=timing, device=own_device,
    )
    resource["valueQuantity"] = quantity(node.value, ctx)
    qualify(node, ctx, nested_groups_mapped=True).apply(resource, node.concept.meaning if node.concept else "")
    derived_from = [ctx.ref(url) for url in groups]
    source = source_sr_content_item(node, ctx)
    if source is not None:
        derived_from.append(ctx.ref(source))
    resource["derivedFrom"] = derived_from
    return ctx.bundle.add(resource)


def _is_group(node: ContentNode) -> bool:
    return node.value_type == "CONTAINER" and node.key == concepts.MEASUREMENT_GROUP
