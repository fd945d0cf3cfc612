"""Read an SR content tree once into small frozen nodes.

This is the only module that touches the raw Content Sequence. Reading is lenient: an item
whose value cannot be read is dropped (with its subtree) and recorded as a :class:`Skipped`
note naming its path; everything else is kept. Paths follow the DICOM Referenced Content
Item Identifier convention: the document root is ``1``, its first child ``1.1``.
"""

from __future__ import annotations

import math
import re
import struct
from decimal import Decimal, InvalidOperation
from collections.abc import Iterable, Iterator
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.sr._snomed_dict import mapping as _SNOMED  # pydicom's own SRT -> SCT table

from .attributes import as_text
from .coding import Concept
from .errors import Skipped
from .raw_items import RawItem, RawParseError, parse_sequence

__all__ = [
    "ContentNode",
    "NumValue",
    "ImageRef",
    "ScoordValue",
    "Scoord3dValue",
    "READ_ERRORS",
    "read_concept",
    "read_content_tree",
]

# What reading a malformed element can raise: pydicom's value conversion (ValueError,
# OverflowError, struct.error), a wrong VR turning a sequence into a string (TypeError,
# AttributeError), a missing sub-item (KeyError, IndexError), a malformed raw sequence
# (OSError, EOFError), an unknown VR (NotImplementedError) or a binary value whose length
# does not fit its VR (BytesLengthException). Mapping does no I/O, so an OSError here is
# always a decoding failure. Caught per content item, never wider.
READ_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, struct.error,
               EOFError, OSError, NotImplementedError, BytesLengthException)

# Tags, as the standard names them (PS3.3 C.17.3, C.18).
_VALUE_TYPE = 0x0040A040
_RELATIONSHIP_TYPE = 0x0040A010
_CONCEPT_NAME = 0x0040A043
_CONTENT_SEQUENCE = 0x0040A730
_OBSERVATION_UID = 0x0040A171
_OBSERVATION_DATETIME = 0x0040A032
_CONTENT_TEMPLATE = 0x0040A504
_TEMPLATE_IDENTIFIER = 0x0040DB00
_TEXT_VALUE = 0x0040A160
_CONCEPT_CODE = 0x0040A168
_MEASURED_VALUE = 0x0040A300
_NUMERIC_VALUE = 0x0040A30A
_FLOATING_POINT_VALUE = 0x0040A161
_UNITS = 0x004008EA
_NUMERIC_QUALIFIER = 0x0040A301
_UID = 0x0040A124
_PERSON_NAME = 0x0040A123
_DATETIME = 0x0040A120
_DATE = 0x0040A121
_TIME = 0x0040A122
_REFERENCED_SOP = 0x00081199
_REFERENCED_SOP_CLASS = 0x00081150
_REFERENCED_SOP_INSTANCE = 0x00081155
_REFERENCED_FRAMES = 0x00081160
_REFERENCED_SEGMENTS = 0x0062000B
_GRAPHIC_DATA = 0x00700022
_GRAPHIC_TYPE = 0x00700023
_FRAME_OF_REFERENCE = 0x30060024
_REFERENCED_CONTENT_ITEM = 0x0040DB73
_CODE_VALUE = 0x00080100
_CODING_SCHEME = 0x00080102
_CODING_SCHEME_VERSION = 0x00080103
_CODE_MEANING = 0x00080104
_LONG_CODE_VALUE = 0x00080119
_URN_CODE_VALUE = 0x00080120
_RETIRED_SNOMED = frozenset({"SRT", "SNM3", "99SDM"})

# A Decimal String value (PS3.5 6.2, VR DS): leading/trailing SPACE, then a fixed or
# floating point number written with ASCII characters only.
_DS_PADDING = " \x00"
_DS_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True, slots=True)
class NumValue:
    """NUM: the numeric value (None when absent), its units and an optional qualifier.

    A Numeric Value (DS) is a :class:`~decimal.Decimal` with the digits the SR wrote ("19.80"
    stays 19.80, "-778" stays -778): in FHIR a decimal's precision is significant. A Floating
    Point Value (FD) is a float.
    """

    value: Decimal | float | None
    unit: Concept | None
    qualifier: Concept | None = None


@dataclass(frozen=True, slots=True)
class ImageRef:
    """IMAGE / COMPOSITE / WAVEFORM: one referenced SOP instance (with frames, segments)."""

    sop_class_uid: str
    sop_instance_uid: str
    frames: tuple[int, ...] = ()
    segments: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ScoordValue:
    """SCOORD: a 2D graphic in image pixel space (column,row pairs)."""

    graphic_type: str
    data: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Scoord3dValue:
    """SCOORD3D: a 3D graphic in patient space (x,y,z triplets, mm) of a frame of reference."""

    graphic_type: str
    data: tuple[float, ...]
    frame_of_reference_uid: str


@dataclass(frozen=True, slots=True)
class ContentNode:
    """One content item and its (readable) children."""

    path: str
    relationship: str | None
    value_type: str
    concept: Concept | None
    value: Any
    observation_uid: str | None
    observation_datetime: str | None
    template_id: str | None
    children: tuple[ContentNode, ...]

    @property
    def key(self) -> tuple[str, str] | None:
        """The concept as ``(scheme, value)``, or None."""
        return self.concept.key if self.concept is not None else None

    @property
    def label(self) -> str | None:
        """``(SCHEME,VALUE)`` text for messages."""
        return str(self.concept) if self.concept is not None else None

    def first(self, key: tuple[str, str], value_type: str | None = None) -> ContentNode | None:
        """The first child with this concept (and value type, if given)."""
        for child in self.children:
            if child.key == key and (value_type is None or child.value_type == value_type):
                return child
        return None

    def all(self, key: tuple[str, str]) -> Iterator[ContentNode]:
        """Every child with this concept."""
        return (child for child in self.children if child.key == key)


def read_content_tree(ds: Dataset, skipped: list[Skipped]) -> ContentNode:
    """Read the document root (the dataset itself is the root CONTAINER) and its subtree."""
    items = _raw_content_items(ds)
    return ContentNode(
        path="1",
        relationship=None,
        value_type=str(_get(ds, _VALUE_TYPE) or "CONTAINER"),
        concept=read_concept(_first_item(ds, _CONCEPT_NAME)),
        value=None,
        observation_uid=_str(_get(ds, _OBSERVATION_UID)),
        observation_datetime=_str(_get(ds, _OBSERVATION_DATETIME)),
        template_id=_template_id(ds),
        children=_read_children(ds, "1", skipped, items),
    )


def _raw_content_items(ds: Dataset) -> list[RawItem] | None:
    """The Content Sequence parsed straight from its raw bytes, or None to let pydicom do it.

    Only for a not-yet-decoded, little-endian raw element (what ``dcmread`` leaves); a parse
    failure also falls back, and pydicom then reports what is wrong item by item.
    """
    raw = ds.get_item(_CONTENT_SEQUENCE) if _CONTENT_SEQUENCE in ds else None
    if not isinstance(raw, RawDataElement) or not raw.is_little_endian or not isinstance(raw.value, bytes):
        return None
    try:
        encodings = tuple(convert_encodings(ds.get("SpecificCharacterSet")))
        return parse_sequence(raw.value, implicit_vr=raw.is_implicit_VR, encodings=encodings)
    except (RawParseError, LookupError, ValueError):
        return None


def read_concept(item: Dataset | RawItem | None) -> Concept | None:
    """A :class:`Concept` from a code sequence item, or None when it has no code."""
    if item is None:
        return None
    if type(item) is RawItem:
        return item.derived(_read_concept)  # a code repeated through the report is read once
    return _read_concept(item)


def _read_concept(item: Dataset | RawItem) -> Concept | None:
    # Not ``a or b``: a (wrong-VR) numeric zero is falsy, and would be skipped only on one path.
    value = next((v for v in (_get(item, tag) for tag in (_CODE_VALUE, _LONG_CODE_VALUE, _URN_CODE_VALUE))
                  if v is not None and v != ""), None)
    value, scheme = as_text(value), as_text(_get(item, _CODING_SCHEME))
    if not value or not scheme:
        return None
    meaning = as_text(_get(item, _CODE_MEANING)) or ""
    version = _str(_get(item, _CODING_SCHEME_VERSION))
    if scheme in _RETIRED_SNOMED and value in _SNOMED["SRT"]:
        # A retired SNOMED designator: same concept, SNOMED CT id (as pydicom's Code does for
        # SRT; PS3.16 8.1 reads SNM3 and 99SDM values as SRT ones). The SR's code is kept.
        original = Concept(value=value, scheme=scheme, meaning=meaning, scheme_version=version)
        return Concept(value=_SNOMED["SRT"][value], scheme="SCT", meaning=meaning, original=original)
    return Concept(value=value, scheme=scheme, meaning=meaning, scheme_version=version)


def _read_children(ds: Dataset | RawItem, path: str, skipped: list[Skipped],
                   items: list[RawItem] | None = None) -> tuple[ContentNode, ...]:
    if items is None:
        try:
            items = _get(ds, _CONTENT_SEQUENCE)
        except READ_ERRORS as exc:
            skipped.append(Skipped(path, f"Content Sequence (0040,A730) unreadable: {_brief(exc)}"))
            return ()
    if not items:
        return ()
    nodes = []
    for position, item in enumerate(items, start=1):
        child_path = f"{path}.{position}"
        try:
            node = _read_item(item, child_path, skipped)
        except READ_ERRORS as exc:
            skipped.append(Skipped(child_path, f"content item unreadable: {_brief(exc)}"))
            continue
        if node is not None:
            nodes.append(node)
    return tuple(nodes)


def _read_item(item: Dataset | RawItem, path: str, skipped: list[Skipped]) -> ContentNode | None:
    if not isinstance(item, (Dataset, RawItem)):
        raise TypeError("item is not a dataset")
    relationship = _str(_get(item, _RELATIONSHIP_TYPE))
    if _get(item, _REFERENCED_CONTENT_ITEM) is not None:
        skipped.append(Skipped(path, f"by-reference {relationship or ''} relationship not followed".replace("  ", " ")))
        return None
    value_type = _str(_get(item, _VALUE_TYPE))
    if not value_type:
        skipped.append(Skipped(path, "content item without Value Type (0040,A040)"))
        return None
    # No concept name is legal for some items (Image Library entries); such items match no
    # builder and are left out without a note.
    concept = read_concept(_first_item(item, _CONCEPT_NAME))
    reader = _VALUE_READERS.get(value_type)
    value = None
    if reader is not None:
        value, problem = reader(item)
        if problem is not None:
            skipped.append(Skipped(path, f"{value_type}: {problem}", str(concept) if concept else None))
            return None
    return ContentNode(
        path=path,
        relationship=relationship,
        value_type=value_type,
        concept=concept,
        value=value,
        observation_uid=_str(_get(item, _OBSERVATION_UID)),
        observation_datetime=_str(_get(item, _OBSERVATION_DATETIME)),
        template_id=_template_id(item),
        children=_read_children(item, path, skipped),
    )


# Value readers: item -> (value, problem). ``problem`` is None when the value is usable.

def _text(item: Dataset | RawItem) -> tuple[Any, str | None]:
    text = _get(item, _TEXT_VALUE)
    text = as_text(text, strip=False)
    return (text, None) if text is not None else (None, "no Text Value (0040,A160)")


def _code(item: Dataset | RawItem) -> tuple[Any, str | None]:
    concept = read_concept(_first_item(item, _CONCEPT_CODE))
    return (concept, None) if concept else (None, "no readable Concept Code Sequence (0040,A168)")


def _num(item: Dataset | RawItem) -> tuple[Any, str | None]:
    qualifier = read_concept(_first_item(item, _NUMERIC_QUALIFIER))
    measured = _first_item(item, _MEASURED_VALUE)
    if measured is None:
        return NumValue(None, None, qualifier), None
    number = _get(measured, _FLOATING_POINT_VALUE)
    if number is None:
        number = _get(measured, _NUMERIC_VALUE)
    if number is None or number == "":
        value = None
    else:
        value = number if type(number) is float else _decimal(number)  # FD is a float; DS is text
        if value is None or not math.isfinite(value):
            return None, f"Numeric Value {str(number)!r} is not a finite decimal number"
    return NumValue(value, read_concept(_first_item(measured, _UNITS)), qualifier), None


def _decimal(number: Any) -> Decimal | None:
    """A DS value as a Decimal with its own digits; None when it is not a number.

    Only the DS repertoire counts (PS3.5 6.2: ASCII digits, ``+ - . E e`` and SPACE padding).
    ``Decimal()`` alone would also take other Unicode digits and whitespace, ``_`` separators,
    ``inf``/``nan``, and then the result would depend on the decoding: pydicom decodes an
    invalid DS with the dataset's character set, the raw reader as ASCII/Latin-1, so an
    em-space read one way is whitespace and the other way is not.
    """
    if isinstance(number, (list, tuple)):
        raise ValueError(f"Numeric Value has {len(number)} values, one expected")
    text = str(number).strip(_DS_PADDING)
    if _DS_NUMBER.fullmatch(text) is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        return None


def _uidref(item: Dataset | RawItem) -> tuple[Any, str | None]:
    uid = _str(_get(item, _UID))
    return (uid, None) if uid else (None, "no UID (0040,A124)")


def _pname(item: Dataset | RawItem) -> tuple[Any, str | None]:
    name = _get(item, _PERSON_NAME)
    return (name, None) if name else (None, "no Person Name (0040,A123)")


def _datetime(tag: int):
    def read(item: Dataset | RawItem) -> tuple[Any, str | None]:
        value = _str(_get(item, tag))
        return (value, None) if value else (None, "no value")
    return read


def _composite(item: Dataset | RawItem) -> tuple[Any, str | None]:
    ref = _first_item(item, _REFERENCED_SOP)
    if ref is None:
        return None, "no Referenced SOP Sequence (0008,1199)"
    sop_class = _str(_get(ref, _REFERENCED_SOP_CLASS))
    sop_instance = _str(_get(ref, _REFERENCED_SOP_INSTANCE))
    if not sop_class or not sop_instance:
        return None, "Referenced SOP Sequence lacks the SOP Class or SOP Instance UID"
    return ImageRef(sop_class, sop_instance, _ints(_get(ref, _REFERENCED_FRAMES)),
                    _ints(_get(ref, _REFERENCED_SEGMENTS))), None


def _scoord(item: Dataset | RawItem) -> tuple[Any, str | None]:
    graphic_type = _str(_get(item, _GRAPHIC_TYPE))
    data = _floats(_get(item, _GRAPHIC_DATA))
    if not graphic_type or not data:
        return None, "no Graphic Type (0070,0023) or Graphic Data (0070,0022)"
    return ScoordValue(graphic_type.upper(), data), None


def _scoord3d(item: Dataset | RawItem) -> tuple[Any, str | None]:
    graphic_type = _str(_get(item, _GRAPHIC_TYPE))
    data = _floats(_get(item, _GRAPHIC_DATA))
    frame_of_reference = _str(_get(item, _FRAME_OF_REFERENCE))
    if not graphic_type or not data:
        return None, "no Graphic Type (0070,0023) or Graphic Data (0070,0022)"
    if not frame_of_reference:
        return None, "no Referenced Frame of Reference UID (3006,0024)"
    return Scoord3dValue(graphic_type.upper(), data, frame_of_reference), None


_VALUE_READERS = {
    "TEXT": _text,
    "CODE": _code,
    "NUM": _num,
    "UIDREF": _uidref,
    "PNAME": _pname,
    "DATETIME": _datetime(_DATETIME),
    "DATE": _datetime(_DATE),
    "TIME": _datetime(_TIME),
    "IMAGE": _composite,
    "COMPOSITE": _composite,
    "WAVEFORM": _composite,
    "SCOORD": _scoord,
    "SCOORD3D": _scoord3d,
}


# Element access -------------------------------------------------------------------------

def _get(ds: Dataset | RawItem, tag: int) -> Any:
    if type(ds) is RawItem:
        return ds.value(tag)
    elem = ds.get(tag)
    return None if elem is None else elem.value


def _first_item(ds: Dataset | RawItem, tag: int) -> Dataset | RawItem | None:
    seq = _get(ds, tag)
    if seq is None:
        return None
    if isinstance(seq, (str, bytes)) or not isinstance(seq, SequenceABC):  # a wrong VR: not a sequence
        raise TypeError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not a sequence")
    if not seq:
        return None
    item = seq[0]
    if not isinstance(item, (Dataset, RawItem)):
        raise TypeError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not a sequence")
    return item


def _str(value: Any) -> str | None:
    return as_text(value)


def _template_id(ds: Dataset | RawItem) -> str | None:
    item = _first_item(ds, _CONTENT_TEMPLATE)
    return _str(_get(item, _TEMPLATE_IDENTIFIER)) if item is not None else None


def _ints(value: Any) -> tuple[int, ...]:
    if value is None or value == "":
        return ()
    values = value if isinstance(value, Iterable) and not isinstance(value, (str, bytes)) else [value]
    return tuple(int(v) for v in values)


def _floats(value: Any) -> tuple[float, ...]:
    if value is None or isinstance(value, (str, bytes)):
        return ()
    values = value if isinstance(value, Iterable) else [value]
    return tuple(_shortest_float32(float(v)) for v in values)


def _shortest_float32(value: float) -> float:
    """The shortest decimal that reads back as the same 32-bit float (Graphic Data is FL).

    Without this, 0.1 stored as FL would come out as 0.10000000149011612.
    """
    if not math.isfinite(value):
        raise ValueError(f"Graphic Data value {value} is not finite")
    try:
        single = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return value
    if single != value:
        return value  # not a float32 value (e.g. OD): keep as is
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == single:
            return candidate
    return value


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
