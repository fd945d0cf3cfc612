"""``to_r4``: an R5 transaction Bundle of the mapping -> the same Bundle in FHIR R4."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

from ..errors import Skipped
from .extensions import strip_ig_profiles
from .imaging_selection import to_basic
from .links import EntryIndex, drop_references, literal_type, map_references, retype_url
from .resources import CONVERTERS, Scope

__all__ = ["R4Conversion", "ImagingSelectionMode", "to_r4"]

ImagingSelectionMode = Literal["basic", "omit"]
_SELECTION = "ImagingSelection"
_BASIC = "Basic"


@dataclass(frozen=True, slots=True)
class R4Conversion:
    """The R4 Bundle and what could not be carried over (as mapping notes)."""

    bundle: dict
    notes: tuple[Skipped, ...]


def to_r4(bundle: dict, *, imaging_selection: ImagingSelectionMode = "basic") -> R4Conversion:
    """The R4 form of a transaction Bundle made by ``map_sr`` (``bundle`` is not modified).

    Works for every write mode (``PUT Type/id``, ``POST`` + ``ifNoneExist``,
    ``PUT Type?identifier=...``) and both reference forms (``urn:uuid:`` fullUrls, literal
    ``Type/id``). ``imaging_selection``: ``basic`` writes each ImagingSelection as an R4
    ``Basic`` with cross-version extensions (same id, references and request URL retyped to
    ``Basic``); ``omit`` leaves them and every reference to them out (the IG's "FHIR Version 4
    compatibility"), with one note saying how many.
    """
    if imaging_selection not in ("basic", "omit"):
        raise ValueError(f"imaging_selection must be 'basic' or 'omit', not {imaging_selection!r}")
    source = bundle.get("entry", [])
    index = EntryIndex(source)
    notes: list[Skipped] = []
    entries = []
    for entry in source:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == _SELECTION and imaging_selection == "omit":
            continue
        entries.append(_convert_entry(entry, index, notes))
    if imaging_selection == "omit":
        entries = [{**entry, "resource": drop_references(entry["resource"], lambda ref: _is_selection(ref, index))}
                   for entry in entries]
        omitted = len(source) - len(entries)
        if omitted:
            notes.append(Skipped("", f"FHIR R4: {omitted} ImagingSelection(s) left out (R4 has no ImagingSelection; "
                                     "r4_imaging_selection is 'omit'), with every reference to them; the image "
                                     "regions, frames, segments and SOP instances they named are not in the Bundle"))
    else:
        entries = [_retype_selection_links(entry, index) for entry in entries]
    out = {key: copy.deepcopy(value) for key, value in bundle.items() if key != "entry"}
    out["entry"] = entries
    return R4Conversion(out, tuple(notes))


def _convert_entry(entry: dict, index: EntryIndex, notes: list[Skipped]) -> dict:
    """A new entry with the resource in its R4 form (deep copies: the input stays untouched)."""
    resource = copy.deepcopy(entry["resource"])
    label = f"{resource.get('resourceType')} {resource.get('id') or entry.get('fullUrl', '')}"

    def report(path: str) -> None:
        notes.append(Skipped("", f"FHIR R4: {label}: {path} has no R4 form; left out"))

    profiles = tuple(resource.get("meta", {}).get("profile", ()))
    stripped = strip_ig_profiles(resource)
    kind = resource.get("resourceType")
    if kind == _SELECTION:
        converted = to_basic(stripped, report)
    elif kind in CONVERTERS:
        converted = CONVERTERS[kind](stripped, Scope(index, report, profiles))
    else:
        notes.append(Skipped("", f"FHIR R4: {label}: no R4 conversion for {kind}; written as it is"))
        converted = stripped
    new_entry = {key: copy.deepcopy(value) for key, value in entry.items() if key != "resource"}
    new_entry["resource"] = converted
    # Keep the entry's key order (fullUrl, resource, request).
    return {key: new_entry[key] for key in entry}


def _is_selection(reference: dict, index: EntryIndex) -> bool:
    """Does ``reference`` point at an ImagingSelection (an entry, a literal or a logical one)?"""
    return index.target_type(reference) == _SELECTION


def _retype_selection_links(entry: dict, index: EntryIndex) -> dict:
    """``basic`` mode: literal references to ImagingSelections, their ``type``, and the
    selection entries' own fullUrl (when literal) and request URL now name ``Basic``.
    ``urn:uuid:`` references are left as they are: the entry keeps its fullUrl."""

    def retype(reference: dict) -> dict:
        if not _is_selection(reference, index):
            return reference
        out = dict(reference)
        if isinstance(out.get("reference"), str) and literal_type(out["reference"]) == _SELECTION:
            out["reference"] = retype_url(out["reference"], _SELECTION, _BASIC)
        if out.get("type") == _SELECTION:
            out["type"] = _BASIC
        return out

    new_entry = {**entry, "resource": map_references(entry["resource"], retype)}
    if entry["resource"].get("resourceType") == _BASIC and "request" in entry:
        new_entry["request"] = {**entry["request"], "url": retype_url(entry["request"]["url"], _SELECTION, _BASIC)}
        if "fullUrl" in entry:
            new_entry["fullUrl"] = retype_url(entry["fullUrl"], _SELECTION, _BASIC)
    return new_entry
