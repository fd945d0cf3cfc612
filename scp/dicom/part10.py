"""Wrap a received dataset in the DICOM File Format (PS3.10) without decoding it.

pynetdicom's ``Event.encoded_dataset(include_meta=True)`` builds the File Meta Information
through pydicom Datasets, about 1 ms per instance on the listener's critical path; the
group is seven short elements, so it is packed here directly (Explicit VR Little Endian,
as PS3.10 7.1 requires for group 0002).
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

__all__ = ["part10_bytes"]

_PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _uid(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def _text(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b" " if len(data) % 2 else data


def part10_bytes(dataset: bytes, *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, 'DICM', File Meta Information and the dataset bytes exactly as received."""
    meta = b"".join((
        _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, 0x0002, b"UI", _uid(sop_class_uid)),
        _element(0x0002, 0x0003, b"UI", _uid(sop_instance_uid)),
        _element(0x0002, 0x0010, b"UI", _uid(transfer_syntax_uid)),
        _element(0x0002, 0x0012, b"UI", _uid(str(PYNETDICOM_IMPLEMENTATION_UID))),
        _element(0x0002, 0x0013, b"SH", _text(PYNETDICOM_IMPLEMENTATION_VERSION)),
    ))
    group_length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta)))
    return b"".join((_PREAMBLE, group_length, meta, dataset))
