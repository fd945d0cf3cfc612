"""IG ``imaging-measurement-group``: one Observation per Measurement Group container."""

from __future__ import annotations

from . import concepts
from .body_structures import finding_site
from .content_tree import ContentNode
from .context import ReportContext
from .dates import Timing
from .devices import algorithm_identification
from .measurements import Inherited, imaging_measurement, qualitative_evaluation
from .observations import observation_skeleton
from .profiles import fixed
from .selections import group_selections, source_sr_content_item

__all__ = ["imaging_measurement_group"]

GROUP_TEMPLATES = frozenset({"1410", "1411", "1501"})

# Group items mapped once (the first one); a second one is noted.
_SINGLE = (concepts.FINDING, concepts.FINDING_CATEGORY, concepts.MEASUREMENT_METHOD,
           concepts.TRACKING_IDENTIFIER, concepts.TRACKING_UID, concepts.SOURCE_SERIES_FOR_SEGMENTATION)
# Group items other builders map: the BodyStructure (site, laterality, modifier, tracking ids),
# the algorithm Device, the selections (source series).
_MAPPED_ELSEWHERE = concepts.ITEM_CONTEXT | set(_SINGLE)


def imaging_measurement_group(node: ContentNode, ctx: ReportContext, inherited_device: str, parent_timing: Timing) -> str:
    """IG ``imaging-measurement-group``; DCM 125007 CONTAINER; TID 1410 / 1411 / 1501.

    Builds, in the IG's order, the finding-site BodyStructure, the ImagingSelections, one
    Observation per NUM and per qualitative CODE/TEXT child, then the group Observation whose
    ``hasMember`` lists them. ``inherited_device`` is the container's algorithm, the
    participant device or the equipment, in that order of precedence; ``parent_timing`` is the
    enclosing container's Observation DateTime (or the document's).
    """
    if node.template_id and node.template_id not in GROUP_TEMPLATES:
        ctx.note(node, f"measurement group declares TID {node.template_id}; mapped as a generic group")
    timing = ctx.timing(node, parent_timing)
    device = algorithm_identification(node, ctx) or inherited_device
    body_structure = finding_site(node, ctx)
    selections = group_selections(node, ctx, body_structure)
    method_node = node.first(concepts.MEASUREMENT_METHOD, "CODE")
    method = ctx.codes.codeable_concept(method_node.value) if method_node else None
    inherited = Inherited(
        device=device, timing=timing, derived_from=tuple(selections.by_slice.items()),
        body_structure=body_structure, method=method,
    )

    members = []
    for child in node.children:
        if child.value_type == "NUM":
            member = imaging_measurement(child, ctx, inherited)
        elif _is_qualitative(child):
            member = qualitative_evaluation(child, ctx, inherited)
        else:
            continue
        if member is not None:
            members.append(member)
    _note_unmapped(node, ctx)

    category_node = node.first(concepts.FINDING_CATEGORY, "CODE")
    code = ctx.codes.codeable_concept(category_node.value) if category_node else {"coding": [fixed.MEASUREMENT_GROUP]}
    resource = observation_skeleton(
        ctx, node, profile="imaging-measurement-group", category=fixed.MEASUREMENT_GROUP,
        code=code, timing=timing, device=device,
    )
    finding = node.first(concepts.FINDING, "CODE")
    if finding is not None:
        resource["valueCodeableConcept"] = ctx.codes.codeable_concept(finding.value)
    if body_structure:
        resource["bodyStructure"] = ctx.ref(body_structure)
    if method:
        resource["method"] = method
    if members:
        resource["hasMember"] = [ctx.ref(url) for url in members]
    derived_from = selections.references(ctx)
    source = source_sr_content_item(node, ctx)
    if source is not None:
        derived_from.append(ctx.ref(source))
    if derived_from:
        resource["derivedFrom"] = derived_from
    return ctx.bundle.add(resource)


def _is_qualitative(node: ContentNode) -> bool:
    """A CODE/TEXT child that is an evaluation, not group context (IG architecture.md list)."""
    return (
        node.value_type in ("CODE", "TEXT")
        and node.relationship in ("CONTAINS", None)
        and node.key not in concepts.NOT_QUALITATIVE
    )


def _note_unmapped(node: ContentNode, ctx: ReportContext) -> None:
    """Note the group's children that no builder maps (Activity Session, Time Point, ...)."""
    seen: set[tuple[str, str]] = set()
    for child in node.children:
        if child.value_type == "NUM" or child.value_type in concepts.SELECTION_VALUE_TYPES or _is_qualitative(child):
            continue
        if child.key in _SINGLE:
            if child.key in seen:
                ctx.note(child, f"a second {child.concept.meaning or child.label} in one measurement group; "
                                "only the first is mapped")
            seen.add(child.key)
        elif child.key not in _MAPPED_ELSEWHERE:
            ctx.note(child, f"{child.relationship or ''} {child.value_type} in a measurement group has no FHIR target "
                            "in the IG".lstrip())
