"""What the C-STORE answer needs from an encoded dataset, without decoding it.

The handler must know, before it answers, the dataset's SOP Class and Instance UIDs and
that it has a Content Sequence, and refuse (0xC210) what is not well-formed. pydicom's
decode builds every element and every sequence item (~0.3 ms for a small SR, in the
association's thread and under the GIL); :func:`peek_sr` walks the element headers only:
defined lengths are jumped over, only undefined-length sequences and items are entered,
and just the two UIDs are read. The whole dataset is walked, so a truncated or overrun
dataset is refused as before. Values are not checked (neither were they by the decode,
which is lazy); the worker decodes and maps the instance, and dead-letters what it cannot.

Pure: bytes in, a :class:`SrPeek` out or :class:`MalformedDataset` raised.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["MalformedDataset", "SrPeek", "peek_sr"]

_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_CONTENT_SEQUENCE = 0x0040A730
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_MAX_DEPTH = 64
"""Nesting beyond this is refused (a hostile peer could otherwise recurse us out of stack)."""


class MalformedDataset(ValueError):
    """The bytes are not a well-formed dataset (truncated, a length past the end, a bad
    VR, a delimiter out of place); the message says where."""


@dataclass(frozen=True, slots=True)
class SrPeek:
    """The top level of an encoded dataset as far as the C-STORE answer needs it."""

    sop_class_uid: str
    sop_instance_uid: str
    has_content_sequence: bool


def peek_sr(data: bytes | bytearray | memoryview, *, implicit_vr: bool) -> SrPeek:
    """Walk a little-endian encoded dataset (no File Meta); raise :class:`MalformedDataset`
    unless every element, sequence and item ends inside it and where it says.

    Missing UIDs come back as empty strings (the caller compares them with the request)."""
    view = memoryview(data).cast("B")
    walker = _Walker(view, implicit_vr)
    found: dict[int, str] = {}
    has_content = False
    offset, end = 0, len(view)
    while offset < end:
        tag, value_offset, length, is_sequence = walker.header(offset)
        if is_sequence or (length == _UNDEFINED and tag not in (_ITEM, _ITEM_DELIMITER, _SEQUENCE_DELIMITER)):
            offset = walker.skip_sequence(value_offset, length, 1)
        elif tag in (_ITEM, _ITEM_DELIMITER, _SEQUENCE_DELIMITER):
            raise MalformedDataset(f"an item tag ({tag:08X}) at the top level, offset {offset}")
        else:
            offset = walker.after(value_offset, length, tag)
            if tag in (_SOP_CLASS_UID, _SOP_INSTANCE_UID):
                found[tag] = bytes(view[value_offset:offset]).decode("ascii", "replace").rstrip("\0 ").strip()
        has_content = has_content or tag == _CONTENT_SEQUENCE
    return SrPeek(found.get(_SOP_CLASS_UID, ""), found.get(_SOP_INSTANCE_UID, ""), has_content)


class _Walker:
    __slots__ = ("_explicit", "_view")

    _TAG_LENGTH = struct.Struct("<HHI")
    _TAG_VR_SHORT = struct.Struct("<HH2sH")
    _LONG_LENGTH = struct.Struct("<I")

    def __init__(self, view: memoryview, implicit_vr: bool) -> None:
        self._view = view
        self._explicit = not implicit_vr

    def header(self, offset: int, *, item_level: bool = False) -> tuple[int, int, int, bool]:
        """(tag, where the value starts, its length, whether it is a sequence) at ``offset``."""
        view = self._view
        if offset + 8 > len(view):
            raise MalformedDataset(f"truncated: an element header at offset {offset} runs past the end ({len(view)})")
        group, element, length = self._TAG_LENGTH.unpack_from(view, offset)
        tag = group << 16 | element
        if group == 0xFFFE or item_level or not self._explicit:
            return tag, offset + 8, length, False
        _, _, vr, short = self._TAG_VR_SHORT.unpack_from(view, offset)
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise MalformedDataset(f"element ({group:04X},{element:04X}) at offset {offset} has no VR ({vr!r})")
        if vr in _LONG_VRS:
            if offset + 12 > len(view):
                raise MalformedDataset(f"truncated: element ({group:04X},{element:04X}) at offset {offset}")
            return tag, offset + 12, self._LONG_LENGTH.unpack_from(view, offset + 8)[0], vr == b"SQ"
        return tag, offset + 8, short, False

    def after(self, value_offset: int, length: int, tag: int) -> int:
        end = value_offset + length
        if length == _UNDEFINED or end > len(self._view):
            raise MalformedDataset(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) of {length} bytes at offset "
                                   f"{value_offset} runs past the end of the dataset ({len(self._view)} bytes)")
        return end

    def skip_sequence(self, offset: int, length: int, depth: int) -> int:
        """Past a sequence's value (items) starting at ``offset``; returns where it ends."""
        if depth > _MAX_DEPTH:
            raise MalformedDataset(f"sequences nested deeper than {_MAX_DEPTH} at offset {offset}")
        if length != _UNDEFINED:
            return self.after(offset, length, _ITEM)  # defined length: its items are the worker's to read
        while True:
            tag, value_offset, item_length, _ = self.header(offset, item_level=True)
            if tag == _SEQUENCE_DELIMITER:
                return value_offset
            if tag != _ITEM:
                raise MalformedDataset(f"expected an item or sequence delimiter at offset {offset}, not {tag:08X}")
            offset = (self.after(value_offset, item_length, _ITEM) if item_length != _UNDEFINED
                      else self._skip_item(value_offset, depth))

    def _skip_item(self, offset: int, depth: int) -> int:
        """Past an undefined-length item's elements and its delimiter."""
        while True:
            tag, value_offset, length, is_sequence = self.header(offset)
            if tag == _ITEM_DELIMITER:
                return value_offset
            if tag in (_ITEM, _SEQUENCE_DELIMITER):
                raise MalformedDataset(f"an item tag ({tag:08X}) inside an item at offset {offset}")
            if is_sequence or length == _UNDEFINED:
                offset = self.skip_sequence(value_offset, length, depth + 1)
            else:
                offset = self.after(value_offset, length, tag)
