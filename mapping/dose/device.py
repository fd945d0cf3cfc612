"""The irradiating modality as the IG's ``modality-device`` Device (R5 shape; R4 in :mod:`.r4`).

Source: the report's device observer (TID 1004 under the root: Device Observer UID,
Manufacturer, Model Name, Serial Number), which in an X-ray dose report is the X-ray system;
when the report has no device observer, the General Equipment Module. The observer's gaps are
filled from the General Equipment only when nothing both name differs: a converter (PixelMed, a
dose management system) writes its own General Equipment, which must not be mixed in. Shared between
reports: the id comes from the Device Observer UID, else manufacturer + serial number, else the
whole content.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from ..attributes import text
from ..content_tree import ContentNode, ImageRef
from ..context import ReportContext
from ..coding import DCM_SYSTEM
from ..ids import content_id, shared_id
from ..references import is_valid_uid, uid_identifier_value
from . import codes
from .codes import fixed

__all__ = ["modality_device", "modality_type"]


def modality_device(ds: Dataset, root: ContentNode, ctx: ReportContext, modality: str) -> str:
    """Add the Device of the irradiating modality (CID 33 ``modality``); return the reference to it."""
    observer = {key: _text(root.first(key)) for key in (
        codes.DEVICE_OBSERVER_UID, codes.DEVICE_OBSERVER_MANUFACTURER, codes.DEVICE_OBSERVER_MODEL_NAME,
        codes.DEVICE_OBSERVER_SERIAL_NUMBER)}
    equipment = {codes.DEVICE_OBSERVER_MANUFACTURER: text(ds, "Manufacturer"),
                 codes.DEVICE_OBSERVER_MODEL_NAME: text(ds, "ManufacturerModelName"),
                 codes.DEVICE_OBSERVER_SERIAL_NUMBER: text(ds, "DeviceSerialNumber")}
    from_observer = any(observer.values())
    uid_node = root.first(codes.DEVICE_OBSERVER_UID) if from_observer else None
    uid = observer[codes.DEVICE_OBSERVER_UID] if from_observer else text(ds, "DeviceUID")
    if not from_observer or _same_device(observer, equipment):
        # Gaps of the observer (often only its UID) filled from the General Equipment it agrees with.
        observer.update({k: observer[k] or v for k, v in equipment.items()})
    manufacturer = observer[codes.DEVICE_OBSERVER_MANUFACTURER]
    model = observer[codes.DEVICE_OBSERVER_MODEL_NAME]
    serial = observer[codes.DEVICE_OBSERVER_SERIAL_NUMBER]
    if uid and not is_valid_uid(uid):
        ctx.note(uid_node or "DeviceUID", "Device UID is not a valid UID: not used as the Device's identifier")
        uid = None
    resource: dict = {"resourceType": "Device", "id": ""}
    identifiers = []
    key_identifier = None
    if serial:
        identifiers.append({"type": {"coding": [fixed.SERIAL_NUMBER]}, "value": serial})
    ae_title = text(ds, "StationAETitle")
    if ae_title:
        identifiers.append({"type": {"coding": [fixed.APPLICATION_ENTITY]}, "value": ae_title})
    if uid:
        key_identifier = {"type": {"coding": [fixed.DEVICE_UID]}, "system": "urn:dicom:uid",
                          "value": uid_identifier_value(uid)}
        identifiers.append(key_identifier)
    device_id = None if from_observer else text(ds, "DeviceID")
    if device_id:
        identifiers.append({"type": {"coding": [fixed.DEVICE_ID]}, "value": device_id})
    if identifiers:
        resource["identifier"] = identifiers
    if manufacturer:
        resource["manufacturer"] = manufacturer
    if serial:
        resource["serialNumber"] = serial
    if model:
        resource["displayName"] = model
    resource["type"] = [{"coding": [{"system": DCM_SYSTEM, "code": modality,
                                     "display": codes.MODALITY_DISPLAYS[modality]}]}]
    if uid:
        resource["id"] = shared_id("modality-device", "uid", uid)
    elif serial and manufacturer:
        resource["id"] = shared_id("modality-device", "serial", manufacturer, serial)
    else:
        resource["id"] = content_id("modality-device", resource)
    return ctx.bundle.add(resource, key_identifier=key_identifier)


def _same_device(observer: dict, equipment: dict) -> bool:
    """No attribute that both name differs (case and spacing aside)."""
    def norm(value: str | None) -> str:
        return " ".join((value or "").split()).casefold()
    return all(norm(observer[k]) == norm(v) for k, v in equipment.items() if observer[k] and v)


def modality_type(ds: Dataset, root: ContentNode, template: str, mammography: bool, fluoroscopy: bool) -> str:
    """CID 33 modality of the irradiating device.

    CT for TID 10011, MG for a mammography procedure; for other projection X-ray, the modality of
    the first image SOP class the report references (its acquired images, else its evidence),
    else XA when the report has fluoroscopy totals (as the IG's own example), else DX.
    """
    if template == "10011":
        return "CT"
    if mammography:
        return "MG"
    for sop_class in _referenced_sop_classes(ds, root):
        modality = codes.MODALITY_BY_SOP_CLASS.get(sop_class)
        if modality is not None:
            return modality
    return "XA" if fluoroscopy else "DX"


def _referenced_sop_classes(ds: Dataset, root: ContentNode):
    stack = list(reversed(root.children))
    while stack:
        node = stack.pop()
        if isinstance(node.value, ImageRef):
            yield node.value.sop_class_uid
        stack.extend(reversed(node.children))
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(keyword) or ():
            for series in study.get("ReferencedSeriesSequence") or ():
                for instance in series.get("ReferencedSOPSequence") or ():
                    sop_class = text(instance, "ReferencedSOPClassUID")
                    if sop_class:
                        yield sop_class


def _text(node: ContentNode | None) -> str | None:
    """A TEXT or UIDREF value (vendors write the Device Observer UID as either), stripped."""
    if node is None or node.value_type not in ("TEXT", "UIDREF") or node.value is None:
        return None
    return str(node.value).strip() or None
