"""Observer context (TID 1001/1002/1004) and the IG ``dicom-participant-person`` Practitioner."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.valuerep import PersonName

from . import concepts
from .content_tree import ContentNode
from .context import ReportContext
from .profiles import profile_url

__all__ = ["Observer", "observers", "practitioner"]


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


def practitioner(observer: Observer, ctx: ReportContext) -> str | None:
    """IG ``dicom-participant-person``; PNAME DCM 121008 "Person Observer Name"; TID 1002.

    A TEXT name (seen in real SRs) is accepted as ``name.text``.
    """
    name_node = observer.items.get(concepts.PERSON_OBSERVER_NAME)
    if name_node is None:
        ctx.note(observer.node, "person observer without a Person Observer Name (DCM 121008)")
        return None
    if name_node.value_type == "PNAME":
        name = _human_name(name_node.value)
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


def _human_name(value: object) -> dict:
    person = value if isinstance(value, PersonName) else PersonName(str(value))
    name: dict = {}
    if person.family_name:
        name["family"] = person.family_name
    given = [part for part in (person.given_name, person.middle_name) if part]
    if given:
        name["given"] = given
    if person.name_prefix:
        name["prefix"] = [person.name_prefix]
    if person.name_suffix:
        name["suffix"] = [person.name_suffix]
    if not name and str(person).strip():
        name["text"] = str(person).strip()
    return name
