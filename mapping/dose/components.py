"""Procedure-level dose values of each dose template, read from the content tree in the IG's units.

- TID 10011 CT Radiation Dose: CT Accumulated Dose Data (DCM 113811, TID 10012) -> CT Dose
  Length Product Total.
- TID 10001 Projection X-Ray Radiation Dose (radiography, fluoroscopy, mammography): Accumulated
  X-Ray Dose Data (DCM 113702, TIDs 10002/10004/10005/10007), one container per plane -> Dose
  (RP) Total, the Dose Area Product totals, Total Fluoro Time, Total Number of Radiographic
  Frames, Accumulated Average Glandular Dose.
- TID 10021 Radiopharmaceutical Radiation Dose: Radiopharmaceutical Administration Event Data
  (DCM 113502, TID 10022) -> Administered activity, radiopharmaceutical, radionuclide, volume,
  route of administration.

A total repeated per plane or per breast is the "All Planes" / "Both breasts" value when there
is one, else the sum of the repeats (written out in the summary text).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal

from ..coding import Concept
from ..content_tree import ContentNode, NumValue
from ..context import ReportContext
from ..errors import InvalidValue, MissingContentItem
from . import codes
from .codes import COMPONENTS, Component
from .units import UnitProblem, plain_decimal, to_ig_unit

__all__ = ["DoseValue", "Template", "procedure_values"]


class Template:
    """Root templates of the dose reports."""

    PROJECTION = "10001"
    CT = "10011"
    RADIOPHARMACEUTICAL = "10021"


@dataclass(frozen=True, slots=True)
class DoseValue:
    """One component's value: a quantity in the IG unit, an integer or a code; ``parts`` says
    what a summed value is made of (e.g. ``("Left breast 1.30 mGy", "Right breast 1.28 mGy")``)."""

    component: Component
    quantity: Decimal | None = None
    integer: int | None = None
    code: Concept | None = None
    parts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Reading:
    """One NUM of a component, read and converted, with what distinguishes it from its repeats."""

    node: ContentNode
    value: Decimal
    qualifier: str  # plane or laterality, for the summary text
    whole: bool  # an "All Planes" / "Both breasts" value: the procedure's total itself


def procedure_values(root: ContentNode, template: str, ctx: ReportContext) -> tuple[list[DoseValue], ContentNode]:
    """The procedure-level values of the report and the container they come from.

    Raises :class:`MissingContentItem` when the template's accumulated container is absent and
    :class:`InvalidValue` when it holds no readable value (each reason is also a note).
    """
    problems: list[str] = []
    if template == Template.CT:
        containers = _containers(root, codes.CT_ACCUMULATED_DOSE, "CT Accumulated Dose Data (DCM 113811)",
                                 "TID 10011 CT radiation dose report")
        values = _totals(containers, codes.CT_TOTALS, ctx, problems)
    elif template == Template.PROJECTION:
        containers = _containers(root, codes.ACCUMULATED_X_RAY_DOSE, "Accumulated X-Ray Dose Data (DCM 113702)",
                                 "TID 10001 projection X-ray radiation dose report")
        values = _totals(containers, codes.PROJECTION_TOTALS, ctx, problems)
    else:
        containers = _containers(root, codes.ADMINISTRATION_EVENT,
                                 "Radiopharmaceutical Administration (DCM 113502) event data",
                                 "TID 10021 radiopharmaceutical radiation dose report")
        for extra in containers[1:]:
            ctx.note(extra, "further radiopharmaceutical administration in one report: only the first is mapped "
                            "(the IG's summary is one administration)")
        containers = containers[:1]
        values = _administration(containers[0], ctx, problems)
    if not any(v.quantity is not None or v.integer is not None for v in values):
        reasons = "; ".join(problems) or "it holds none of the IG's procedure totals"
        raise InvalidValue(f"no readable procedure-level dose value: {reasons}", path=containers[0].path,
                           concept=containers[0].label)
    return values, containers[0]


def _containers(root: ContentNode, concept: tuple[str, str], name: str, document: str) -> list[ContentNode]:
    found = [c for c in root.all(concept) if c.value_type == "CONTAINER"]
    if not found:
        raise MissingContentItem(f"{document} without its {name} container: the procedure totals are missing",
                                 path=root.path, concept=root.label)
    return found


def _totals(containers: list[ContentNode], components: Iterable[Component], ctx: ReportContext,
            problems: list[str]) -> list[DoseValue]:
    values = []
    for component in components:
        readings = list(_readings(containers, component, ctx, problems))
        if not readings:
            continue
        whole = [r for r in readings if r.whole]
        chosen = whole[:1] if whole else readings
        if component.integer:
            total = sum((r.value for r in chosen), Decimal(0))
            values.append(DoseValue(component, integer=int(total), parts=_parts(chosen, component)))
        else:
            total = sum((r.value for r in chosen[1:]), chosen[0].value)
            values.append(DoseValue(component, quantity=plain_decimal(total), parts=_parts(chosen, component)))
    return values


def _parts(chosen: list[_Reading], component: Component) -> tuple[str, ...]:
    if len(chosen) < 2:
        return ()
    unit = f" {component.dimension.value}" if component.dimension else ""
    return tuple(f"{r.qualifier or r.node.path} {plain_decimal(r.value)}{unit}" for r in chosen)


def _readings(containers: list[ContentNode], component: Component, ctx: ReportContext,
              problems: list[str]) -> Iterator[_Reading]:
    for container in containers:
        plane = _modifier(container, codes.ACQUISITION_PLANE)
        for node in container.all(component.key):
            if node.value_type != "NUM":
                continue
            value = read_number(node, component, ctx, problems)
            if value is None:
                continue
            laterality = _modifier(node, codes.LATERALITY)
            qualifier = laterality.meaning if laterality else (plane.meaning if plane and len(containers) > 1 else "")
            whole = (laterality is not None and laterality.key == codes.BOTH_BREASTS) or \
                    (plane is not None and plane.key == codes.ALL_PLANES)
            yield _Reading(node, value, qualifier, whole)


def _modifier(node: ContentNode, concept: tuple[str, str]) -> Concept | None:
    child = node.first(concept, "CODE")
    return child.value if child is not None else None


def read_number(node: ContentNode, component: Component, ctx: ReportContext, problems: list[str]) -> Decimal | None:
    """The NUM's value in the component's IG unit (an integral count for a count), or None with a note."""
    num: NumValue = node.value
    why = None
    if num.value is None:
        why = "no numeric value (empty Measured Value Sequence)"
    elif num.unit is None and not component.integer:
        why = "no Measurement Units Code Sequence: the unit is unknown and is not guessed"
    if why is None:
        value = num.value if isinstance(num.value, Decimal) else Decimal(repr(num.value))
        if component.integer:
            if value != value.to_integral_value():
                why = f"{value} is not a whole number of {component.display.lower()}"
            else:
                return value.to_integral_value()
        else:
            try:
                return to_ig_unit(value, num.unit.value, component.dimension)
            except UnitProblem as exc:
                why = f"{exc}; not converted"
    ctx.note(node, f"{component.display} not mapped: {why}")
    problems.append(f"{node.path} {component.display}: {why}")
    return None


def _administration(event: ContentNode, ctx: ReportContext, problems: list[str]) -> list[DoseValue]:
    values = []
    for component in codes.ADMINISTRATION_ITEMS:
        node = next((n for n in _subtree(event) if n.key == component.key), None)
        if node is None:
            continue
        if component.dimension is not None:
            if node.value_type != "NUM":
                ctx.note(node, f"{component.display} is {node.value_type}, not NUM: not mapped")
                continue
            value = read_number(node, component, ctx, problems)
            if value is not None:
                values.append(DoseValue(component, quantity=plain_decimal(value)))
        elif node.value_type == "CODE":
            values.append(DoseValue(component, code=node.value))
        else:
            ctx.note(node, f"{component.display} is {node.value_type}, not CODE: not mapped")
    return values


def _subtree(node: ContentNode) -> Iterator[ContentNode]:
    """Descendants, depth first in document order (TID 10022 nests some items one level down)."""
    for child in node.children:
        yield child
        yield from _subtree(child)
