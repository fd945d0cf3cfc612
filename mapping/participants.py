"""Observer context (TID 1001/1002/1004) and the IG ``dicom-participant-person`` Practitioner."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.valuerep import PersonName

from . import concepts
from .content_tree import ContentNode
from .context import ReportContext
from .profiles import profile_url

__all__ = ["Observer", "observers", "practitioner", "human_names"]


@dataclass(slots=True)
class Observer:
    """One observer of TID 1002 (person) or TID 1004 (device), its items keyed by concept."""

    kind: str  # "person" | "device"
    node: ContentNode
    items: dict[tuple[str, str], ContentNode] = field(default_factory=dict)


def observers(node: ContentNode) -> list[Observer]:
    """The observers declared by ``node``'s HAS OBS CONTEXT children, in document order.

    Each Observer Type item (DCM 121005) opens an observer; the items after it belong to it.
    A Person Observer Name without a preceding Observer Type is a person (the default).
    """
    found: list[Observer] = []
    current: Observer | None = None
    for child in node.children:
        if child.relationship != "HAS OBS CONTEXT":
            continue
        if child.key == concepts.OBSERVER_TYPE and child.value_type == "CODE":
            kind = "device" if child.value.key == concepts.DEVICE else "person"
            current = Observer(kind, child)
            found.append(current)
        elif child.key == concepts.PERSON_OBSERVER_NAME:
            named = current is not None and concepts.PERSON_OBSERVER_NAME in current.items
            if current is None or current.kind != "person" or named:
                current = Observer("person", child)
                found.append(current)
            current.items[child.key] = child
        elif current is not None and child.key is not None:
            current.items.setdefault(child.key, child)
    return found


# HumanName.extension marking an ideographic or phonetic (syllabic) name; codes ABC | IDE | SYL
# (v3 NameRepresentationUse). The alphabetic name carries none.
_EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
# PN component groups (PS3.5 6.2.1.2) in value order: (name, EN-representation code).
_GROUPS = (("alphabetic", None), ("ideographic", "IDE"), ("phonetic", "SYL"))


def practitioner(observer: Observer, ctx: ReportContext) -> str | None:
    """IG ``dicom-participant-person``; PNAME DCM 121008 "Person Observer Name"; TID 1002.

    The name is the first non-empty PN component group (alphabetic, else ideographic, else
    phonetic, the last two marked with the EN-representation extension): the profile allows one
    ``Practitioner.name``, so further groups are noted as not mapped. A PN with no component
    gives no Practitioner. A TEXT name (seen in real SRs) is accepted as ``name.text``.
    """
    name_node = observer.items.get(concepts.PERSON_OBSERVER_NAME)
    if name_node is None:
        ctx.note(observer.node, "person observer without a Person Observer Name (DCM 121008)")
        return None
    if name_node.value_type == "PNAME":
        names = human_names(name_node.value)
        if not names:
            ctx.note(name_node, "Person Observer Name has no name component: no Practitioner")
        elif len(names) > 1:
            dropped = " and ".join(group for group, _ in names[1:])
            plural = "s" if len(names) > 2 else ""
            ctx.note(name_node, f"{dropped} component group{plural} not mapped: dicom-participant-person "
                                f"allows one Practitioner.name, given the {names[0][0]} group")
        name = names[0][1] if names else None
    else:
        name = {"text": str(name_node.value)}
    if not name:
        return None
    resource = {
        "resourceType": "Practitioner",
        "id": ctx.id_for(name_node, "practitioner"),
        "meta": {"profile": [profile_url("dicom-participant-person")]},
        "name": [name],
    }
    return ctx.bundle.add(resource)


def human_names(value: object) -> list[tuple[str, dict]]:
    """(group, HumanName) for each PN component group that has a component, in value order."""
    person = value if isinstance(value, PersonName) else PersonName(str(value))
    # The groups as pydicom splits them on "=" and decodes them with the SR's Specific Character Set.
    groups = (person.alphabetic, person.ideographic, person.phonetic)
    names = []
    for (group, representation), text in zip(_GROUPS, groups):
        name = _human_name(text)
        if name:
            if representation is not None:
                name = {"extension": [{"url": _EN_REPRESENTATION, "valueCode": representation}], **name}
            names.append((group, name))
    return names


def _human_name(group: str) -> dict:
    """HumanName of one component group ``family^given^middle^prefix^suffix`` ({} if all empty)."""
    family, given, middle, prefix, suffix = ([part.strip() for part in group.split("^")] + [""] * 5)[:5]
    name: dict = {}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [part for part in (given, middle) if part]
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name
