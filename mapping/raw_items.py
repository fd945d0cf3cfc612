"""A fast reader for the raw bytes of an SR Content Sequence.

pydicom builds a full ``Dataset`` for every sequence item and converts every element it
touches, which is most of the cost of mapping a large report. The Content Sequence of a
dataset read from a file arrives as one raw element; this module splits its bytes into
items and elements with ``struct`` and decodes a value only when the tree reader asks for
it, as the VR requires (text through pydicom's character-set codecs, person names as
pydicom ``PersonName``). It handles little-endian transfer syntaxes, explicit and implicit
VR, defined and undefined lengths. Anything it cannot parse raises :class:`RawParseError`
and the caller falls back to pydicom.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

from pydicom.charset import decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.valuerep import PersonName

__all__ = ["RawItem", "RawParseError", "parse_sequence"]

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_TAG_LENGTH = struct.Struct("<HHI")
_TAG_VR_SHORT = struct.Struct("<HH2sH")
_U32 = struct.Struct("<I")
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC"})
_SPLIT_TEXT_VRS = frozenset({"SH", "LO", "UC"})
_ASCII_VRS = frozenset({"CS", "UI", "DA", "TM", "DT", "AS", "AE", "DS", "IS", "UR"})
_SHARED_ITEM_MAX = 512  # bytes: items up to this size are shared when identical (codes, not containers)
_T = TypeVar("_T")
_NUMBER_FORMATS = {"FL": "f", "FD": "d", "US": "H", "UL": "I", "SS": "h", "SL": "i", "UV": "Q", "SV": "q"}


class RawParseError(ValueError):
    """The bytes are not a well-formed little-endian sequence."""


class RawItem:
    """One sequence item: tag -> (VR, raw bytes or nested items), decoded on access.

    Immutable. Within one :func:`parse_sequence`, items of identical bytes (the coded concepts
    that repeat all through a report) are one shared object, so what is derived from one
    (:meth:`derived`) is computed once.
    """

    __slots__ = ("_elements", "_encodings", "_derived")

    def __init__(self, elements: dict[int, tuple[str, Any]], encodings: tuple[str, ...]) -> None:
        self._elements = elements
        self._encodings = encodings
        self._derived: dict[Callable[[RawItem], Any], Any] | None = None

    def derived(self, function: Callable[[RawItem], _T]) -> _T:
        """``function(self)``, computed on the first call and remembered (the item never
        changes); ``function`` must not depend on anything else, nor its result be mutated."""
        if self._derived is None:
            self._derived = {}
        elif function in self._derived:
            return self._derived[function]
        result = self._derived[function] = function(self)
        return result

    def __contains__(self, tag: int) -> bool:
        return tag in self._elements

    def value(self, tag: int) -> Any:
        """The decoded value of ``tag`` (None when absent), typed like pydicom's."""
        element = self._elements.get(tag)
        if element is None:
            return None
        vr, raw = element
        if vr == "SQ":
            return raw
        return _decode(vr, raw, self._encodings)


def parse_sequence(data: bytes, *, implicit_vr: bool, encodings: tuple[str, ...]) -> list[RawItem]:
    """Split the value bytes of a sequence element into items."""
    items, _ = _parse_items(memoryview(data), 0, len(data), implicit_vr, encodings, {})
    return items


def _parse_items(buf: memoryview, pos: int, end: int, implicit_vr: bool, encodings: tuple[str, ...],
                 shared: dict[bytes, RawItem]) -> tuple[list[RawItem], int]:
    items = []
    while pos < end:
        if pos + 8 > end:
            raise RawParseError("truncated item header")
        group, element, length = _TAG_LENGTH.unpack_from(buf, pos)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_DELIMITER:
            return items, pos
        if tag != _ITEM:
            raise RawParseError(f"expected an item tag, found ({group:04X},{element:04X})")
        if length == _UNDEFINED:
            elements, pos = _parse_elements(buf, pos, end, implicit_vr, encodings, shared, until_delimiter=True)
            items.append(RawItem(elements, encodings))
            continue
        if pos + length > end:
            raise RawParseError("item runs past the end of its sequence")
        key = bytes(buf[pos:pos + length]) if length <= _SHARED_ITEM_MAX else None
        item = shared.get(key) if key is not None else None
        if item is None:
            elements, _ = _parse_elements(buf, pos, pos + length, implicit_vr, encodings, shared, until_delimiter=False)
            item = RawItem(elements, encodings)
            if key is not None:
                shared[key] = item
        items.append(item)
        pos += length
    return items, pos


def _parse_elements(buf: memoryview, pos: int, end: int, implicit_vr: bool, encodings: tuple[str, ...],
                    shared: dict[bytes, RawItem], *, until_delimiter: bool) -> tuple[dict[int, tuple[str, Any]], int]:
    elements: dict[int, tuple[str, Any]] = {}
    while pos < end:
        if pos + 8 > end:
            raise RawParseError("truncated element header")
        if implicit_vr:
            group, element, length = _TAG_LENGTH.unpack_from(buf, pos)
            tag = group << 16 | element
            pos += 8
            if tag == _ITEM_DELIMITER:
                return elements, pos
            vr = _implicit_vr(tag, length)
        else:
            group, element, vr_bytes, length = _TAG_VR_SHORT.unpack_from(buf, pos)
            tag = group << 16 | element
            if tag == _ITEM_DELIMITER:
                return elements, pos + 8
            if vr_bytes in _LONG_VRS:
                if pos + 12 > end:
                    raise RawParseError("truncated element header")
                (length,) = _U32.unpack_from(buf, pos + 8)
                pos += 12
            else:
                pos += 8
            try:
                vr = vr_bytes.decode("ascii")
            except UnicodeDecodeError as exc:
                raise RawParseError("invalid VR") from exc
        if vr == "SQ" or (length == _UNDEFINED and vr == "UN"):
            if length == _UNDEFINED:
                # An undefined-length UN is a sequence encoded in implicit VR (PS3.5 6.2.2).
                value, pos = _parse_items(buf, pos, end, implicit_vr or vr == "UN", encodings,
                                          shared if implicit_vr or vr != "UN" else {})  # same VR encoding: share
            else:
                if pos + length > end:
                    raise RawParseError("sequence runs past the end of its item")
                value, _ = _parse_items(buf, pos, pos + length, implicit_vr, encodings, shared)
                pos += length
            elements[tag] = ("SQ", value)
            continue
        if length == _UNDEFINED or pos + length > end:
            raise RawParseError(f"element ({group:04X},{element:04X}) runs past the end of its item")
        elements[tag] = (vr, bytes(buf[pos:pos + length]))
        pos += length
    if until_delimiter:
        raise RawParseError("item without an Item Delimitation Item")
    return elements, pos


@lru_cache(maxsize=1024)
def _implicit_vr_known(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0] if " or " in vr else vr


def _implicit_vr(tag: int, length: int) -> str:
    vr = _implicit_vr_known(tag)
    if vr == "UN" and length == _UNDEFINED:
        return "SQ"
    return vr


def _decode(vr: str, raw: bytes, encodings: tuple[str, ...]) -> Any:
    if vr in _ASCII_VRS:
        if vr == "DS" and not raw.isascii():
            # Not a DS at all: decoded as pydicom then does, with the dataset's character set,
            # so both readers report the same text.
            text = _text(raw, encodings).rstrip(" \x00")
        else:
            text = raw.decode("latin-1").rstrip(" \x00")
        if vr == "UI":
            text = text.strip()
        values = text.split("\\") if "\\" in text else None
        if vr == "IS":
            return [int(v) for v in values] if values is not None else (int(text) if text.strip() else None)
        if vr == "DS":  # only SPACE pads a DS; other whitespace is the value's (and invalid)
            return [v.strip(" ") for v in values] if values is not None else (text.strip(" ") or None)
        if values is not None and vr != "UR":
            return [v.strip() for v in values]
        return text.strip() if vr in ("DA", "TM", "DT", "CS") else text
    if vr in _TEXT_VRS:
        # As pydicom does: only trailing SPACE/NUL padding goes, per value; leading blanks and
        # other whitespace stay, so both readers hand the mapper the same text.
        text = _text(raw, encodings).rstrip(" \x00")
        if vr in _SPLIT_TEXT_VRS and "\\" in text:
            return [v.rstrip(" \x00") for v in text.split("\\")]
        return text
    if vr == "PN":
        return PersonName(raw.rstrip(b" \x00"), list(encodings)) if raw.strip(b" \x00") else None
    if not raw:
        return None  # as pydicom's empty value for a binary or numeric VR
    number_format = _NUMBER_FORMATS.get(vr)
    if number_format is not None:
        size = struct.calcsize(number_format)
        if len(raw) % size:
            raise ValueError(f"{vr} value of {len(raw)} bytes is not a whole number of values")
        values = struct.unpack(f"<{len(raw) // size}{number_format}", raw)
        return values[0] if len(values) == 1 else list(values)
    return raw


def _text(raw: bytes, encodings: tuple[str, ...]) -> str:
    if encodings == ("UTF8",):
        return raw.decode("utf-8", errors="replace")
    if encodings == ("iso8859",):
        return raw.decode("latin-1")
    return decode_bytes(raw, list(encodings), {0x5C, 0x0D, 0x0A, 0x09, 0x0C})
