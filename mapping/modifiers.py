"""What qualifies a measured value: concept modifiers, properties and the Numeric Value Qualifier.

In TID 300 / TID 1419 a NUM's meaning is refined by its HAS CONCEPT MOD children (Derivation
DCM 121401: Mean, Maximum, ...; any other modifier) and described by its HAS PROPERTIES
children (TID 310: Normality, Level of Significance, Population description, ...). The IG
gives them no target (MAPPING.md §3.6 lists the gap). Dropping them makes a Mean and a
Maximum of one measurement indistinguishable, so each becomes an ``Observation.component``
(code = the item's concept, value = its value), and the modifiers' meanings are added to
``code.text`` ("SUVbw (Mean)") for readers that show only the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import concepts
from .coding import UCUM_SYSTEM, ucum_code
from .content_tree import ContentNode, NumValue
from .context import ReportContext

__all__ = ["QualifiedValue", "qualify", "quantity"]

_COMPONENT_RELATIONSHIPS = frozenset({"HAS CONCEPT MOD", "HAS PROPERTIES"})


@dataclass(slots=True)
class QualifiedValue:
    """The components, ``code.text`` and ``interpretation`` a NUM's children and qualifier give."""

    components: list[dict] = field(default_factory=list)
    modifier_texts: list[str] = field(default_factory=list)
    interpretation: dict | None = None

    def apply(self, resource: dict, concept_meaning: str) -> None:
        """Write them into an Observation whose ``code`` is already set."""
        if self.modifier_texts and concept_meaning:
            resource["code"]["text"] = f"{concept_meaning} ({', '.join(self.modifier_texts)})"
        if self.interpretation is not None:
            resource["interpretation"] = [self.interpretation]
        if self.components:
            resource["component"] = self.components


def qualify(node: ContentNode, ctx: ReportContext, *, nested_groups_mapped: bool = False) -> QualifiedValue:
    """Map a NUM's modifiers, properties and Numeric Value Qualifier; note every child left out.

    The Numeric Value Qualifier (0040,A301) of a NUM that has a value (e.g. DCM 114009 "Value
    out of range") says the value is not to be taken at face value: it becomes
    ``interpretation``, the element FHIR readers check for flags on a value, kept coded.
    ``nested_groups_mapped``: the caller maps measurement groups under the NUM (TID 1420).
    """
    result = QualifiedValue()
    num: NumValue = node.value
    if num.qualifier is not None:
        result.interpretation = ctx.codes.codeable_concept(num.qualifier)
    for child in node.children:
        if child.key in concepts.ITEM_CONTEXT or child.value_type in concepts.SELECTION_VALUE_TYPES:
            continue
        if nested_groups_mapped and child.key == concepts.MEASUREMENT_GROUP and child.value_type == "CONTAINER":
            continue
        component = _component(child, ctx) if child.relationship in _COMPONENT_RELATIONSHIPS else None
        if component is None:
            ctx.note(child, f"{child.relationship or ''} {child.value_type} under a measurement is not mapped "
                            "(the IG defines no target)".lstrip())
            continue
        result.components.append(component)
        if child.relationship == "HAS CONCEPT MOD":
            result.modifier_texts.append(_display(child))
    return result


def quantity(num: NumValue, ctx: ReportContext) -> dict:
    """FHIR Quantity from a NUM's value and Measurement Units Code Sequence (UCUM when coded so)."""
    result: dict = {"value": num.value}
    if num.unit is not None:
        if num.unit.meaning:
            result["unit"] = num.unit.meaning
        result["system"] = ctx.codes.system(num.unit.scheme)
        # DICOM writes some UCUM codes UCUM's grammar refuses ("{SUVbw}g/ml"): the valid equivalent
        result["code"] = ucum_code(num.unit.value) if result["system"] == UCUM_SYSTEM else num.unit.value
    return result


def _component(child: ContentNode, ctx: ReportContext) -> dict | None:
    if child.concept is None:
        return None
    component: dict = {"code": ctx.codes.codeable_concept(child.concept)}
    if child.value_type == "CODE":
        component["valueCodeableConcept"] = ctx.codes.codeable_concept(child.value)
    elif child.value_type == "TEXT":
        component["valueString"] = str(child.value)
    elif child.value_type == "NUM" and child.value.value is not None:
        component["valueQuantity"] = quantity(child.value, ctx)
    else:
        return None
    return component


def _display(child: ContentNode) -> str:
    if child.value_type == "CODE":
        return child.value.meaning or child.value.value
    if child.value_type == "NUM":
        unit = child.value.unit
        return f"{child.value.value} {unit.value}" if unit is not None else str(child.value.value)
    return str(child.value)
