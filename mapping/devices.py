"""The IG's Device profiles: general equipment, algorithm identification, participant device."""

from __future__ import annotations

import re

from pydicom.dataset import Dataset

from .attributes import text
from . import concepts
from .content_tree import ContentNode
from .context import ReportContext
from .ids import content_id, shared_id
from .profiles import fixed, profile_url
from .references import uid_identifier_value

__all__ = ["general_equipment", "algorithm_identification", "participant_device"]

# GS1 human-readable form: the Application Identifier in parentheses, or in braces as the
# IG's own Device example writes it.
_GS1_DI = re.compile(r"^[({]01[)}](\d{14})")
GS1_ISSUER = "http://hl7.org/fhir/NamingSystem/gs1-di"


def general_equipment(ds: Dataset, ctx: ReportContext) -> str:
    """IG ``dicom-general-equipment``; General Equipment Module (0008,0070), (0008,1090), (0018,1002).

    Always made: it is the fallback ``device`` of every Observation and the parent of the
    algorithm Devices. Shared between reports, keyed on its whole content (Device UID,
    manufacturer, model, serial, software versions, UDI: ``ids.content_id``), so a software
    upgrade under the same Device UID is a new resource, not a rewrite of the old one.
    """
    manufacturer = text(ds, "Manufacturer")
    model = text(ds, "ManufacturerModelName")
    serial = text(ds, "DeviceSerialNumber")
    device_uid = text(ds, "DeviceUID")
    resource: dict = {
        "resourceType": "Device",
        "id": "",
        "meta": {"profile": [profile_url("dicom-general-equipment")]},
    }
    key = None
    if device_uid:
        key = {"system": "urn:dicom:uid", "value": uid_identifier_value(device_uid)}
        resource["identifier"] = [key]
    udi = _udi_carrier(ds, ctx)
    if udi:
        resource["udiCarrier"] = udi
    if manufacturer:
        resource["manufacturer"] = manufacturer
    if serial:
        resource["serialNumber"] = serial
    if model:
        resource["displayName"] = model
    versions = ds.get("SoftwareVersions")
    if versions:
        values = [versions] if isinstance(versions, str) else list(versions)
        resource["version"] = [{"value": str(v)} for v in values if str(v).strip()]
    if len(resource) == 3:  # nothing identifies it: one per report, never shared
        resource["id"] = shared_id("equipment-unknown", ctx.sop_instance_uid)
    else:
        resource["id"] = content_id("equipment", resource)
    return ctx.bundle.add(resource, key_identifier=key)


def algorithm_identification(node: ContentNode, ctx: ReportContext) -> str | None:
    """IG ``algorithm-identification``; TID 4019 items (DCM 111001/111003/111002/111000) under ``node``.

    None when ``node`` has no Algorithm Name. Shared between reports, keyed on its whole content
    (name, version, parameters, family, parent equipment).
    """
    name = node.first(concepts.ALGORITHM_NAME, "TEXT")
    if name is None:
        return None
    version = node.first(concepts.ALGORITHM_VERSION, "TEXT")
    resource: dict = {
        "resourceType": "Device",
        "id": "",
        "meta": {"profile": [profile_url("algorithm-identification")]},
        "displayName": name.value,
    }
    families = [c for c in node.all(concepts.ALGORITHM_FAMILY) if c.value_type == "CODE"]
    if families:
        resource["type"] = [ctx.codes.codeable_concept(f.value) for f in families]
    if version is not None:
        resource["version"] = [{"value": version.value}]
    parameters = [c for c in node.all(concepts.ALGORITHM_PARAMETERS) if c.value_type == "TEXT"]
    if parameters:
        resource["property"] = [
            {"type": {"coding": [fixed.ALGORITHM_PARAMETERS]}, "valueString": p.value} for p in parameters
        ]
    resource["parent"] = ctx.ref(ctx.equipment_device)
    # Keyed on the parent's id, not its fullUrl, so both write modes key on the same identity.
    resource["id"] = content_id("algorithm", resource | {"parent": ctx.bundle.id_of(ctx.equipment_device)})
    return ctx.bundle.add(resource)


def participant_device(observer: dict[tuple[str, str], ContentNode], ctx: ReportContext, equipment_uid: str | None) -> str | None:
    """IG ``dicom-participant-device`` from a TID 1004 device observer context.

    ``observer`` maps concept keys to the observer-context items of one device observer.
    None when the observer is the equipment itself (same Device UID) or names nothing.
    """
    uid = _value(observer, concepts.DEVICE_OBSERVER_UID)
    if uid and uid == equipment_uid:
        return None
    name = _value(observer, concepts.DEVICE_OBSERVER_NAME)
    manufacturer = _value(observer, concepts.DEVICE_OBSERVER_MANUFACTURER)
    model = _value(observer, concepts.DEVICE_OBSERVER_MODEL_NAME)
    serial = _value(observer, concepts.DEVICE_OBSERVER_SERIAL_NUMBER)
    if not (uid or name or model):
        return None
    resource: dict = {
        "resourceType": "Device",
        "id": "",
        "meta": {"profile": [profile_url("dicom-participant-device")]},
    }
    key = None
    if uid:
        key = {"system": "urn:dicom:uid", "value": uid_identifier_value(uid)}
        resource["identifier"] = [key]
    if manufacturer:
        resource["manufacturer"] = manufacturer
    if serial:
        resource["serialNumber"] = serial
    if name or model:
        resource["displayName"] = name or model
    if model and name:
        resource["modelNumber"] = model
    resource["id"] = content_id("participant-device", resource)
    return ctx.bundle.add(resource, key_identifier=key)


def _udi_carrier(ds: Dataset, ctx: ReportContext) -> list[dict]:
    carriers = []
    for item in ds.get("UDISequence") or []:
        hrf = text(item, "UniqueDeviceIdentifier")
        match = _GS1_DI.match(hrf or "")
        if match is None:
            ctx.note("UDISequence", "UDI is not in GS1 human-readable form; udiCarrier not mapped")
            continue
        carriers.append({"deviceIdentifier": match.group(1), "issuer": GS1_ISSUER, "carrierHRF": hrf})
    return carriers


def _value(observer: dict[tuple[str, str], ContentNode], key: tuple[str, str]) -> str | None:
    node = observer.get(key)
    return str(node.value) if node is not None and node.value else None

