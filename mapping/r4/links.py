"""References inside a transaction Bundle: what they point at, and rewriting them.

A reference in a Bundle made by ``mapping.bundle.BundleBuilder`` is one of
- ``urn:uuid:<uuid>``: an entry's ``fullUrl`` (``put`` mode today, ``conditional`` and
  ``conditional-update`` modes);
- a literal ``Type/id`` (``put`` mode with literal references), possibly absolute
  (``https://server/fhir/Type/id``) or versioned (``.../_history/2``);
- a logical reference (``type`` + ``identifier``, no ``reference``) to something the Bundle does
  not hold (Patient, ImagingStudy, ServiceRequest).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["EntryIndex", "literal_type", "map_references", "drop_references", "retype_url"]

# ``[base/]Type/id[/_history/vid]``: FHIR ids are [A-Za-z0-9\-.]{1,64}.
_LITERAL = re.compile(r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def literal_type(reference: str) -> str | None:
    """The resource type named by a literal reference, or None (``urn:``, ``#contained``)."""
    if reference.startswith(("urn:", "#")):
        return None
    match = _LITERAL.search(reference)
    return match.group("type") if match else None


def retype_url(url: str, old_type: str, new_type: str) -> str:
    """``url`` with its ``old_type`` segment renamed: a literal reference or fullUrl
    (``[base/]ImagingSelection/<id>``) or a request URL (``ImagingSelection``,
    ``ImagingSelection/<id>``, ``ImagingSelection?identifier=...``). Anything else as is."""
    if url == old_type or url.startswith((f"{old_type}/", f"{old_type}?")):
        return new_type + url[len(old_type):]
    match = _LITERAL.search(url)
    if match and match.group("type") == old_type:
        return url[: match.start("type")] + new_type + url[match.end("type"):]
    return url


class EntryIndex:
    """Finds the entry a reference points at, by fullUrl or by ``Type/id``."""

    __slots__ = ("_by_full_url", "_by_literal")

    def __init__(self, entries: list[dict]) -> None:
        self._by_full_url: dict[str, dict] = {}
        self._by_literal: dict[str, dict] = {}
        for entry in entries:
            resource = entry.get("resource") or {}
            if "fullUrl" in entry:
                self._by_full_url[entry["fullUrl"]] = entry
            if "id" in resource:
                self._by_literal[f"{resource['resourceType']}/{resource['id']}"] = entry

    def entry(self, reference: str) -> dict | None:
        """The entry ``reference`` resolves to inside the Bundle, or None."""
        found = self._by_full_url.get(reference)
        if found is not None:
            return found
        match = _LITERAL.search(reference)
        if match:
            return self._by_literal.get(f"{match.group('type')}/{match.group('id')}")
        return None

    def target_type(self, reference: dict) -> str | None:
        """The resource type a Reference (dict) points at: the Bundle entry's type, else the
        literal's type, else its ``type`` element; None when nothing says."""
        literal = reference.get("reference")
        if isinstance(literal, str):
            entry = self.entry(literal)
            if entry is not None:
                return entry["resource"]["resourceType"]
            named = literal_type(literal)
            if named:
                return named
        kind = reference.get("type")
        return kind if isinstance(kind, str) else None


def _is_reference(node: dict) -> bool:
    return isinstance(node.get("reference"), str) or (isinstance(node.get("type"), str) and "identifier" in node)


def map_references(node: Any, change: Callable[[dict], dict]) -> Any:
    """A copy of ``node`` in which every Reference (a dict with a string ``reference``, or a
    logical one with ``type`` + ``identifier``) is replaced by ``change(reference)``."""
    if isinstance(node, list):
        return [map_references(item, change) for item in node]
    if isinstance(node, dict):
        mapped = {key: map_references(value, change) for key, value in node.items()}
        return change(mapped) if _is_reference(mapped) else mapped
    return node


def drop_references(node: Any, dropped: Callable[[dict], bool]) -> Any:
    """A copy of ``node`` without the References for which ``dropped(reference)`` is true.

    A dropped Reference in a list is removed from the list; one held by an element is removed
    with that element; containers left empty by a removal are removed too (FHIR has no empty
    arrays or objects).
    """
    result = _drop(node, dropped)
    return result if result is not _GONE else {}


_GONE = object()


def _drop(node: Any, dropped: Callable[[dict], bool]) -> Any:
    if isinstance(node, dict):
        if _is_reference(node) and dropped(node):
            return _GONE
        out = {}
        for key, value in node.items():
            kept = _drop(value, dropped)
            if kept is not _GONE:
                out[key] = kept
        if "url" in node and not _has_content(out) and _has_content(node):
            return _GONE  # an extension whose value was a dropped Reference
        return out if out or not node else _GONE
    if isinstance(node, list):
        items = [kept for kept in (_drop(item, dropped) for item in node) if kept is not _GONE]
        return items if items or not node else _GONE
    return node


def _has_content(extension: dict) -> bool:
    return "extension" in extension or any(key.startswith("value") for key in extension)
