"""The IG's ``radiation-dose-summary`` Observation (R5 shape; the R4 claim is added in :mod:`.r4`)."""

from __future__ import annotations

from pydicom.valuerep import PersonName

from ..coding import UCUM_SYSTEM
from ..content_tree import ContentNode
from ..context import ReportContext
from ..dates import to_timing
from ..ids import content_id
from ..participants import human_names
from ..references import uid_identifier_value
from . import codes
from .codes import fixed
from .components import DoseValue, Template

__all__ = ["dose_summary", "summary_text", "irradiation_authorizing_person", "effective"]


def dose_summary(root: ContentNode, ctx: ReportContext, *, procedure: dict, values: list[DoseValue],
                 effective_datetime: str, device: str | None, performer: dict | None) -> str:
    """Add the Observation for one dose report; return the reference to it."""
    sop_instance = {"type": {"coding": [fixed.SOP_INSTANCE_UID]}, "system": "urn:dicom:uid",
                    "value": uid_identifier_value(ctx.sop_instance_uid)}
    resource: dict = {
        "resourceType": "Observation",
        "id": ctx.id_for(root, "radiation-dose-summary"),
        "identifier": [sop_instance],
    }
    if ctx.service_request is not None:
        resource["basedOn"] = [ctx.service_request]
    resource["partOf"] = [_study(ctx)]
    resource["status"] = ctx.status
    resource["code"] = {"coding": [fixed.DOSE_SUMMARY]}
    resource["subject"] = ctx.subject
    resource["focus"] = [_study(ctx)]
    resource["effectiveDateTime"] = effective_datetime
    resource["issued"] = ctx.document_timing.issued
    if performer is not None:
        resource["performer"] = [performer]
    resource["valueString"] = summary_text(values)
    if device is not None:
        resource["device"] = ctx.ref(device)
    resource["component"] = [{"code": {"coding": [fixed.PROCEDURE_REPORTED]},
                               "valueCodeableConcept": {"coding": [procedure]}}]
    resource["component"] += [_component(value, ctx) for value in values]
    return ctx.bundle.add(resource, key_identifier=sop_instance)


def _study(ctx: ReportContext) -> dict:
    """The ImagingStudy by Study Instance UID, typed with the dose IG's code and the DICOM SR IG's."""
    reference = ctx.imaging_study()
    identifier = reference["identifier"]
    identifier["type"] = {"coding": [fixed.STUDY_INSTANCE_UID, *identifier["type"]["coding"]]}
    return reference


def _component(value: DoseValue, ctx: ReportContext) -> dict:
    component: dict = {"code": {"coding": [value.component.coding]}}
    if value.quantity is not None:
        unit = value.component.dimension.value
        component["valueQuantity"] = {"value": value.quantity, "unit": unit, "system": UCUM_SYSTEM, "code": unit}
    elif value.integer is not None:
        component["valueInteger"] = value.integer
    else:
        component["valueCodeableConcept"] = ctx.codes.codeable_concept(value.code)
    return component


def summary_text(values: list[DoseValue]) -> str:
    """``valueString``: "CT Dose Length Product Total = 586.34 mGy.cm, ..." as the IG's examples write it."""
    parts = []
    for value in values:
        if value.quantity is not None:
            shown = f"{value.quantity} {value.component.dimension.value}"
        elif value.integer is not None:
            shown = str(value.integer)
        else:
            shown = value.code.meaning or value.code.value
        if value.parts:
            shown += f" (sum of {', '.join(value.parts)})"
        parts.append(f"{value.component.display} = {shown}")
    return ", ".join(parts)


def effective(root: ContentNode, container: ContentNode, template: str, ctx: ReportContext) -> str:
    """``effectiveDateTime``: when the irradiation started.

    Start of X-Ray Irradiation (DCM 113809), else the earliest irradiation event's DateTime
    Started (DCM 111526) for X-ray; Radiopharmaceutical Start DateTime (DCM 123003) for an
    administration; else the document's Content Date/Time.
    """
    if template == Template.RADIOPHARMACEUTICAL:
        candidates = [n for n in container.children if n.key == codes.RADIOPHARMACEUTICAL_START]
    else:
        candidates = list(root.all(codes.START_OF_IRRADIATION))
        if not candidates:
            events = [e for e in root.all(codes.IRRADIATION_EVENT) if e.value_type == "CONTAINER"]
            started = [n for e in events for n in e.all(codes.DATETIME_STARTED)]
            candidates = sorted(started, key=lambda n: str(n.value))[:1]
    for node in candidates:
        if node.value_type != "DATETIME":
            continue
        timing = to_timing(str(node.value), ctx.document_zone, ctx.document_timing.issued)
        if timing is not None:
            return timing.effective
        ctx.note(node, f"{node.label} {node.value!r} is not a readable DICOM DateTime; used the Content Date/Time")
    return ctx.document_timing.effective


def irradiation_authorizing_person(nodes: list[ContentNode], ctx: ReportContext) -> dict | None:
    """``performer``: the TID 1020 Person Participant whose role is Irradiation Authorizing (DCM 113850).

    A Practitioner in the Bundle (Person ID (DCM 113871) as identifier, the issuer as its
    assigner, the first PN component group as name), shared between reports that name the same
    person, referenced literally with the name as ``display``: the IG's ``performer`` slice is
    discriminated by the referenced resource's type, which only a resolvable reference shows.
    None when the report names no such person.
    """
    for parent in nodes:
        for person in parent.all(codes.PERSON_NAME):
            role = person.first(codes.PERSON_ROLE_IN_PROCEDURE, "CODE")
            if role is None or role.value.key != codes.IRRADIATION_AUTHORIZING:
                continue
            resource: dict = {"resourceType": "Practitioner"}
            person_id = person.first(codes.PERSON_ID, "TEXT")
            if person_id is not None and str(person_id.value).strip():
                identifier: dict = {"value": str(person_id.value).strip()}
                issuer = person.first(codes.PERSON_ID_ISSUER, "TEXT")
                if issuer is not None and str(issuer.value).strip():
                    identifier["assigner"] = {"display": str(issuer.value).strip()}
                resource["identifier"] = [identifier]
            names = human_names(person.value) if person.value_type == "PNAME" else []
            if names:
                resource["name"] = [names[0][1]]
            if len(resource) == 1:
                ctx.note(person, "Irradiation Authorizing person has neither a Person ID nor a name: no performer")
                continue
            resource["id"] = content_id("irradiation-authorizing-person", resource)
            reference = ctx.ref(ctx.bundle.add(resource))
            display = _display_name(person.value) if person.value_type == "PNAME" else None
            if display:
                reference["display"] = display
            return reference
    return None


def _display_name(value: object) -> str | None:
    name = value if isinstance(value, PersonName) else PersonName(str(value))
    parts = [name.name_prefix, name.given_name, name.middle_name, name.family_name, name.name_suffix]
    shown = " ".join(p.strip() for p in parts if p and p.strip())
    return shown or None
