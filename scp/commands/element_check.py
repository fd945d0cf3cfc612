"""Prove that pydicom can decode every element of a dataset, without building its Datasets.

``sr2fhir convert`` rejects a file with any undecodable value (a 6-byte FL, an IS that is not
a number, ...) with one error line, even when the mapping would only skip the content item.
``Dataset.walk`` finds those by decoding everything, and building a pydicom ``Dataset`` per
sequence item is most of its cost. Here the items of each sequence are split from their raw
bytes with ``struct`` and every leaf element goes through pydicom's own converter
(the hooks of :func:`pydicom.dataelem.convert_raw_data_element`, which ``walk`` runs on
every element), so
an undecodable value raises exactly what ``walk`` would. The dataset stays undecoded, so
``map_sr`` still takes its fast raw path afterwards.

Whatever this reader does not handle (big-endian or deflated data, a malformed sequence, an
undefined-length UN) falls back to ``Dataset.walk``, and pydicom gives its own verdict.
"""

from __future__ import annotations

import re
import struct
from collections.abc import MutableSequence

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.hooks import hooks
from pydicom.tag import BaseTag
from pydicom.valuerep import VR

__all__ = ["check_every_element"]

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_SPECIFIC_CHARACTER_SET = 0x00080005
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_KNOWN_VRS = {v.value.encode("ascii"): v.value for v in VR}  # VR bytes -> VR
_TAG_LENGTH = struct.Struct("<HHI")
_TAG_VR_SHORT = struct.Struct("<HH2sH")
_U32 = struct.Struct("<I")
# A UID that pydicom's UI regex accepts (no leading zeros), padded with at most one NUL: every
# Observation and referenced instance UID is unique, so no two are alike to skip as repeats.
_PLAIN_UID = re.compile(rb"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*\x00?")


class _Unhandled(Exception):
    """This reader does not parse these bytes: let pydicom (``Dataset.walk``) read them."""


def check_every_element(ds: Dataset) -> None:
    """Decode every element of ``ds`` once and drop the result; raise what pydicom raises.

    ``ds`` is what ``pydicom.dcmread`` returned (elements still raw); it is not modified.
    """
    try:
        _check_dataset(ds, [default_encoding], {})
    except _Unhandled:
        ds.walk(lambda _ds, _elem: None)


def _check_dataset(ds: Dataset, parent_encodings: MutableSequence[str] | str, seen: dict[object, set[bytes]]) -> None:
    encodings = _encodings(ds, parent_encodings)
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if not isinstance(raw, RawDataElement):
            # pydicom reads an undefined-length sequence while reading the file: its items are
            # Datasets whose own elements are still raw.
            if raw.VR == "SQ":
                for item in raw.value:
                    _check_dataset(item, encodings, seen)
            continue
        if not raw.is_little_endian or raw.value is None:
            raise _Unhandled
        vr = raw.VR or _dictionary_vr(raw.tag)
        if raw.length == _UNDEFINED and vr not in ("SQ", None):
            raise _Unhandled  # an undefined-length UN or encapsulated value: pydicom's business
        if vr == "SQ" or (vr is None and raw.length == _UNDEFINED):
            data = raw.value
            _SequenceChecker(raw.is_implicit_VR, seen).items(data, 0, len(data), encodings)
        else:
            _convert(raw, encodings, ds)


def _convert(raw: RawDataElement, encodings: MutableSequence[str] | str, ds: Dataset | None = None) -> object:
    """What ``Dataset.__getitem__`` does to a raw element (the VR lookup and the value
    conversion hooks of :func:`pydicom.dataelem.convert_raw_data_element`), minus building the
    ``DataElement``."""
    data: dict[str, object] = {}
    hooks.raw_element_vr(raw, data, encoding=encodings, ds=ds)
    hooks.raw_element_value(raw, data, encoding=encodings, ds=ds)
    return data["value"]


def _encodings(ds: Dataset, parent_encodings: MutableSequence[str] | str) -> MutableSequence[str] | str:
    charset = ds.get(_SPECIFIC_CHARACTER_SET)
    return convert_encodings(charset.value) if charset is not None and charset.value else parent_encodings


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


class _SequenceChecker:
    """Splits the raw bytes of a sequence into items and elements, converting each leaf once.

    An element already converted in this file with the same tag, VR, bytes and character set
    is not converted again, nor a defined-length item of the same bytes checked again: the
    result would be the same (coded concepts, relationship and value types repeat thousands of
    times in a large report), and a repeated warning is shown once anyway.
    """

    __slots__ = ("implicit", "seen")

    def __init__(self, implicit: bool, seen: dict[object, set[bytes]]) -> None:
        self.implicit = implicit
        self.seen = seen

    def items(self, buf: bytes, pos: int, end: int, encodings: MutableSequence[str] | str,
              *, until_delimiter: bool = False) -> int:
        """Check the items from ``pos`` to ``end`` (or to the Sequence Delimitation Item that
        must close an undefined-length sequence); return the position after the sequence."""
        seen = self.seen.setdefault(encodings if isinstance(encodings, str) else tuple(encodings), set())
        while pos < end:
            if pos + 8 > end:
                raise _Unhandled
            group, element, length = _TAG_LENGTH.unpack_from(buf, pos)
            tag = group << 16 | element
            pos += 8
            if tag == _SEQUENCE_DELIMITER:
                return pos
            if tag != _ITEM:
                raise _Unhandled
            if length == _UNDEFINED:
                pos = self.elements(buf, pos, end, encodings, until_delimiter=True)
            else:
                if pos + length > end:
                    raise _Unhandled
                # An item of the same bytes was checked already (coded concepts repeat most).
                key = buf[pos - 8:pos + length]
                if key not in seen:
                    self.elements(buf, pos, pos + length, encodings, until_delimiter=False)
                    seen.add(key)
                pos += length
        if until_delimiter:
            raise _Unhandled
        return pos

    def elements(self, buf: bytes, pos: int, end: int, encodings: MutableSequence[str] | str,
                 *, until_delimiter: bool) -> int:
        """Check one item's elements; return the position after the item."""
        implicit = self.implicit
        seen = self.seen.setdefault(encodings if isinstance(encodings, str) else tuple(encodings), set())
        while pos < end:
            if pos + 8 > end:
                raise _Unhandled
            start = pos
            if implicit:
                group, element, length = _TAG_LENGTH.unpack_from(buf, pos)
                vr = None
                pos += 8
            else:
                group, element, vr_bytes, length = _TAG_VR_SHORT.unpack_from(buf, pos)
                if group == 0xFFFE:  # item/sequence delimiters have no VR
                    length = _U32.unpack_from(buf, pos + 4)[0]
                    vr = None
                    pos += 8
                else:
                    vr = _KNOWN_VRS.get(vr_bytes)
                    if vr is None:
                        raise _Unhandled
                    if vr in _LONG_VRS:
                        if pos + 12 > end:
                            raise _Unhandled
                        length = _U32.unpack_from(buf, pos + 8)[0]
                        pos += 12
                    else:
                        pos += 8
            tag = group << 16 | element
            if tag == _ITEM_DELIMITER:
                if not until_delimiter:
                    raise _Unhandled
                return pos
            if group == 0xFFFE:
                raise _Unhandled
            if vr == "SQ" or (vr is None and (length == _UNDEFINED or _dictionary_vr(tag) == "SQ")):
                if length == _UNDEFINED:
                    pos = self.items(buf, pos, end, encodings, until_delimiter=True)
                else:
                    if pos + length > end:
                        raise _Unhandled
                    self.items(buf, pos, pos + length, encodings)
                    pos += length
                continue
            if length == _UNDEFINED or pos + length > end:
                raise _Unhandled
            if tag == _SPECIFIC_CHARACTER_SET:  # an item's own character set, for the elements after it
                value = buf[pos:pos + length]
                charset = _convert(RawDataElement(BaseTag(tag), vr, length, value, pos, implicit, True), encodings)
                if charset:
                    encodings = convert_encodings(charset)
                    seen = self.seen.setdefault(tuple(encodings), set())
            elif vr == "UI" and length <= 64 and _PLAIN_UID.fullmatch(buf, pos, pos + length):
                pass  # one well-formed UID: decodes, and pydicom's validation has nothing to say
            else:
                # The element's whole encoding (tag, VR, length, value) is the key: one slice.
                key = buf[start:pos + length]
                if key not in seen:
                    value = buf[pos:pos + length]
                    _convert(RawDataElement(BaseTag(tag), vr, length, value, pos, implicit, True), encodings)
                    seen.add(key)
            pos += length
        if until_delimiter:
            raise _Unhandled  # the item ran to the end of its sequence without an Item Delimitation Item
        return pos
