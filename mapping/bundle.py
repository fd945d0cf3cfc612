"""Collect resources into one FHIR transaction Bundle.

Every entry has a ``urn:uuid:`` fullUrl. How entries are written and referenced depends on
the write mode:

- ``put``: ``PUT Type/<id>`` with the deterministic id; references between entries are
  literal ``Type/<id>`` (the fullUrl stays ``urn:uuid:<id>``), so a Bundle can be split into
  several transactions and every reference still resolves;
- ``conditional``: ``POST`` with ``ifNoneExist`` on the deterministic id as a
  ``urn:ietf:rfc:3986`` identifier (or a Device's own key identifier); references are the
  entries' ``urn:uuid:`` fullUrls;
- ``conditional-update``: ``PUT Type?identifier=<system>|<value>`` on the same identifier
  (for servers that refuse client-assigned ids but do conditional updates); references are
  ``urn:uuid:`` fullUrls, as in ``conditional``.

All modes key a resource on the same identity (shared resources' ids are keyed on their
content: ``ids.content_id``). Entries come out in creation order; builders add a resource
only after the resources it references, so referenced resources come first.
"""

from __future__ import annotations

import math
import re
import uuid
from decimal import Decimal
from urllib.parse import quote

import orjson
import simplejson

from .errors import MappingError
from .ids import NAMESPACE
from .options import WriteMode

__all__ = ["BundleBuilder", "ConflictingResources", "URI_SYSTEM", "identifier_query", "serialize"]

URI_SYSTEM = "urn:ietf:rfc:3986"

_QUERY_SAFE = ":/|\\,$@!'()*;=?"
"""Characters left as they are in a conditional URL's query: everything else that is not
unreserved is percent-encoded (``&``, ``#``, ``%``, ``+``, spaces, non-ASCII, ...)."""


class ConflictingResources(MappingError):
    """Two different resources came out under one id: never let one overwrite the other."""


def _escape_search(text: str) -> str:
    """Escape a token search parameter part (FHIR R5 search, "Escaping Search Parameters")."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")


def identifier_query(identifier: dict) -> str:
    """``identifier=<system>|<value>``, search-escaped and URL-encoded, for a conditional URL."""
    token = f"{_escape_search(identifier['system'])}|{_escape_search(identifier['value'])}"
    return f"identifier={quote(token, safe=_QUERY_SAFE)}"


class BundleBuilder:
    """Accumulates entries in creation order; a resource added again must be identical."""

    __slots__ = ("_write_mode", "_entries", "_ids")

    def __init__(self, write_mode: WriteMode = "put") -> None:
        self._write_mode = write_mode
        self._entries: dict[str, dict] = {}
        self._ids: dict[str, str] = {}

    def __contains__(self, reference: str) -> bool:
        return reference in self._ids

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, resource: dict, *, key_identifier: dict | None = None) -> str:
        """Add ``resource`` (which has ``resourceType`` and ``id``); return the reference to it.

        The reference is ``Type/<id>`` in put mode, the entry's ``urn:uuid:`` fullUrl in the
        conditional modes. Adding a resource whose id is already in the Bundle is fine when it
        is the same resource; a different one raises :class:`ConflictingResources`.
        ``key_identifier`` (one of the resource's identifiers) is what the conditional modes key
        on instead of adding the deterministic id, for profiles that allow only one identifier
        (the Devices).
        """
        resource_id = resource["id"]
        resource_type = resource["resourceType"]
        if self._write_mode == "put":
            full_url = f"urn:uuid:{resource_id}"
            reference = f"{resource_type}/{resource_id}"
            request = {"method": "PUT", "url": reference}
        else:
            # Not the identifier's own value: some servers rewrite every string equal to a
            # fullUrl in a transaction, not only references, which would corrupt the key.
            full_url = reference = f"urn:uuid:{uuid.uuid5(NAMESPACE, f'entry|{resource_id}')}"
            identifier = key_identifier or {"system": URI_SYSTEM, "value": f"urn:uuid:{resource_id}"}
            resource = {key: value for key, value in resource.items() if key != "id"}
            if key_identifier is None:
                resource["identifier"] = [*resource.get("identifier", ()), identifier]
            if self._write_mode == "conditional":
                request = {
                    "method": "POST",
                    "url": resource_type,
                    "ifNoneExist": f"identifier={identifier['system']}|{identifier['value']}",
                }
            else:
                request = {"method": "PUT", "url": f"{resource_type}?{identifier_query(identifier)}"}
        existing = self._entries.get(full_url)
        if existing is not None:
            if existing["resource"] != resource:
                raise ConflictingResources(f"two different {resource_type} resources were made with id {resource_id}")
            return reference
        self._entries[full_url] = {"fullUrl": full_url, "resource": resource, "request": request}
        self._ids[reference] = resource_id
        return reference

    def id_of(self, reference: str) -> str:
        """The deterministic id of the entry ``reference`` points at (the same in every write mode)."""
        return self._ids[reference]

    def build(self) -> dict:
        """The transaction Bundle as a plain JSON-able dict."""
        return {"resourceType": "Bundle", "type": "transaction", "entry": list(self._entries.values())}


def serialize(bundle: dict, *, indent: int | None = None) -> bytes:
    """UTF-8 JSON of a Bundle; deterministic (insertion order, no timestamps).

    Measured values are :class:`~decimal.Decimal` and are written with their own digits
    (``1.10`` stays ``1.10``, ``1E+400`` stays ``1E+400``): orjson has no Decimal type, so each
    is handed to it as the exact JSON text of the number (:class:`orjson.Fragment`). orjson
    writes the JSON ten times faster than simplejson did, with the same bytes for ``indent``
    ``None`` (compact) and 2 (a float too: the few it spells otherwise are rewritten); another
    ``indent`` still goes through simplejson. A non-finite number raises :class:`ValueError`
    (JSON has none).
    """
    if indent not in (None, 2):
        separators = (",", ":") if indent is None else (",", ": ")
        return simplejson.dumps(
            bundle, ensure_ascii=False, indent=indent, separators=separators, use_decimal=True, allow_nan=False,
        ).encode("utf-8")
    try:
        text = orjson.dumps(bundle, default=_json_number, option=orjson.OPT_INDENT_2 if indent == 2 else 0)
    except orjson.JSONEncodeError as exc:
        if isinstance(exc.__cause__, ValueError):
            raise exc.__cause__ from None
        raise
    if b"null" in text:  # orjson writes a NaN or infinite float as null: refuse it, as simplejson did
        _refuse_non_finite_floats(bundle)
    if b"0.0000" in text or _EXPONENT_OF_A_SMALL_NUMBER.search(text):
        # A float below 1e-4 (a SCOORD3D coordinate of 2.3e-14): orjson writes 2.3e-14 or
        # 0.000023, Python's repr (simplejson, the Bundles written before) 2.3e-14 and 2.3e-05.
        # Rare: look for its traces in the output (2 ms for 2.5 MB); a false alarm (a Decimal
        # 0.00002, "3e-1]" in a text) only costs a second pass.
        text = orjson.dumps(_repr_small_floats(bundle), default=_json_number,
                            option=orjson.OPT_INDENT_2 if indent == 2 else 0)
    return text


# The end of a number written with a negative exponent (not "3e-9" inside a UUID: no
# delimiter after its digits). A regex starting with a literal: searched fast.
_EXPONENT_OF_A_SMALL_NUMBER = re.compile(rb"e-[0-9]+[,\]}\n]")


def _repr_small_floats(value: object) -> object:
    """``value`` with every float below 1e-4 (not zero) as a Fragment of its ``repr``."""
    if isinstance(value, float):
        return orjson.Fragment(float.__repr__(value)) if 0 < abs(value) < 1e-4 else value
    if isinstance(value, dict):
        return {key: _repr_small_floats(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_repr_small_floats(item) for item in value]
    return value


def _json_number(value: object) -> orjson.Fragment | float:
    """orjson's ``default``: a Decimal as its exact text, a float subclass (pydicom's DS) as a float."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"Out of range decimal values are not JSON compliant: {value}")
        return orjson.Fragment(str(value))
    if isinstance(value, float):
        return float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _refuse_non_finite_floats(value: object) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
    if isinstance(value, dict):
        for item in value.values():
            _refuse_non_finite_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_non_finite_floats(item)
