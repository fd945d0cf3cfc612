"""SR Storage SOP classes (PS3.4 B.5): which exist, which can carry TID 1500."""

from __future__ import annotations

from functools import lru_cache

from pydicom.uid import UID

from .profiles import SOP_CLASS_SYSTEM

__all__ = ["SR_STORAGE_SOP_CLASSES", "TID1500_SOP_CLASSES", "sop_class_coding"]

_SR = "1.2.840.10008.5.1.4.1.1.88."

BASIC_TEXT_SR = _SR + "11"
ENHANCED_SR = _SR + "22"
COMPREHENSIVE_SR = _SR + "33"
COMPREHENSIVE_3D_SR = _SR + "34"
EXTENSIBLE_SR = _SR + "35"

# Every Storage SOP class whose IOD is an SR document (PS3.4 Table B.5-1).
SR_STORAGE_SOP_CLASSES: frozenset[str] = frozenset(
    _SR + suffix
    for suffix in (
        "11", "22", "33", "34", "35", "40", "50", "59", "65", "67", "68", "69", "70", "71",
        "72", "73", "74", "75", "76",
    )
)

# The SR classes whose value types and relationships admit a TID 1500 Measurement Report.
TID1500_SOP_CLASSES: frozenset[str] = frozenset({ENHANCED_SR, COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR, EXTENSIBLE_SR})


def sop_class_coding(sop_class_uid: str) -> dict:
    """The ``instance.sopClass`` Coding the IG uses (PS3.4 B.5 system, name as display)."""
    coding = {"system": SOP_CLASS_SYSTEM, "code": sop_class_uid}
    name = _uid_name(sop_class_uid)
    if name != sop_class_uid:
        coding["display"] = name
    return coding


@lru_cache(maxsize=256)
def _uid_name(uid: str) -> str:
    # pydicom validates the UID and searches its dictionary on each call: a report names the
    # same few SOP classes thousands of times.
    return UID(uid).name
