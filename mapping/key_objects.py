"""Key Object Selection (TID 2010) -> FHIR R5 ImagingSelection, one per referenced series.

A Key Object Selection document (KOS) lists SOP instances (IMAGE, COMPOSITE, WAVEFORM items)
under a document title from CID 7010 ("Of Interest", "Best In Set", "Rejected for Quality
Reasons", ...). R5 ImagingSelection has one ``seriesUid`` (0..1), so the instances are grouped by
the study and series the Current Requested Procedure Evidence Sequence (0040,A375) names for
them, in document order, and each group becomes one selection:

- ``code`` = the document title (R5 binds ``code`` to CID 7010), ``category`` = the Document
  Title Modifiers (DCM 113011), ``identifier`` = the KOS's SOP Instance UID;
- ``subject``, ``basedOn`` (accession), ``issued`` (Content Date/Time), ``performer`` (the
  observer context: Practitioner or Device);
- ``studyUid``, ``derivedFrom`` (the ImagingStudy), ``seriesUid``, ``instance`` (``uid``,
  ``sopClass``, frames or segment numbers as ``subset``);
- the Key Object Description (DCM 113012) in the narrative (``text``, status ``additional``):
  R5 ImagingSelection has no ``note``, and no standard extension fits (docs/mapping-decisions.md).

Rejection notes (DCM 113001, 113037, 113038, 113039) are mapped the same way; what that does
not do (touch earlier resources about the rejected instances) is in docs/mapping-decisions.md,
"Key Object Selection".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html import escape

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from . import concepts
from .attributes import text
from .content_tree import ContentNode, ImageRef
from .context import ReportContext
from .devices import general_equipment, participant_device
from .errors import MissingContentItem
from .ids import report_scoped_id
from .participants import observers, practitioner
from .references import is_valid_uid, uid_identifier_value
from .sop_classes import sop_class_coding

__all__ = ["map_key_object_selection"]

# TID 2010 items besides the references and the observer context (TID 1002).
KEY_OBJECT_DESCRIPTION = concepts.key(codes.DCM.KeyObjectDescription)  # TEXT 113012
DOCUMENT_TITLE_MODIFIER = concepts.key(codes.DCM.DocumentTitleModifier)  # CODE 113011
LANGUAGE = concepts.key(codes.DCM.LanguageOfContentItemAndDescendants)  # TID 1204

_REFERENCE_VALUE_TYPES = frozenset({"IMAGE", "COMPOSITE", "WAVEFORM"})
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_SELECTION_KIND = "key-object-selection"


@dataclass(slots=True)
class _SeriesSelection:
    """The instances of one (study, series) group; None where the evidence does not say."""

    study_uid: str | None
    series_uid: str | None
    instances: dict[str, dict] = field(default_factory=dict)  # SOP Instance UID -> instance


def map_key_object_selection(ds: Dataset, root: ContentNode, ctx: ReportContext) -> None:
    """Add one ImagingSelection per referenced series of a TID 2010 document to ``ctx.bundle``.

    Raises :class:`MissingContentItem` when the document has no title, when no referenced
    instance can be mapped, or when the options leave ImagingSelections out of R4 Bundles
    (``fhir.r4_imaging_selection: omit``), since the selections are all a KOS maps to.
    """
    _check_output_keeps_selections(ctx, root)
    if root.concept is None:
        raise MissingContentItem("Key Object Selection without a document title (Concept Name Code Sequence "
                                 "(0040,A043) of the root): ImagingSelection.code is mandatory", path=root.path)
    groups = _selected_series(root, ctx)
    if not groups:
        first = f" ({len(ctx.skipped)} item(s) skipped; first: {ctx.skipped[0]})" if ctx.skipped else ""
        raise MissingContentItem("Key Object Selection selects no instance that could be mapped: no readable IMAGE, "
                                 "COMPOSITE or WAVEFORM content item with a valid SOP Instance UID (TID 2010 rows 5-7)"
                                 + first, path=root.path)
    descriptions = _description(root)
    document = _Document(
        code=ctx.codes.codeable_concept(root.concept),
        categories=[ctx.codes.codeable_concept(child.value) for child in root.children
                    if child.key == DOCUMENT_TITLE_MODIFIER and child.value_type == "CODE"],
        issued=ctx.timing(root, ctx.document_timing).issued,
        performers=_performers(ds, root, ctx),
        narrative=_narrative(root.concept.meaning or str(root.concept), descriptions) if descriptions else None,
    )
    _note_other_items(root, ctx)
    for group in groups:
        ctx.bundle.add(_selection(group, document, root, ctx))


def _check_output_keeps_selections(ctx: ReportContext, root: ContentNode) -> None:
    options = ctx.options
    if options.fhir_version == "r4" and options.r4_imaging_selection == "omit":
        raise MissingContentItem(
            "a Key Object Selection maps only to ImagingSelections, and fhir.r4_imaging_selection 'omit' leaves "
            "them out of R4 Bundles: nothing would be sent. Set fhir.r4_imaging_selection to 'basic' to write "
            "them as R4 Basic resources", path=root.path)


@dataclass(frozen=True, slots=True)
class _Document:
    """What every selection of one KOS says about the document."""

    code: dict
    categories: list[dict]
    issued: str
    performers: list[dict]
    narrative: dict | None


def _selection(group: _SeriesSelection, document: _Document, root: ContentNode, ctx: ReportContext) -> dict:
    """One R5 ImagingSelection (core, no IG profile: the IG has none for a KOS), elements in R5 order."""
    identity = f"{_SELECTION_KIND}|{group.study_uid or ''}|{group.series_uid or ''}"
    resource: dict = {"resourceType": "ImagingSelection",
                      "id": report_scoped_id(ctx.sop_instance_uid, root.path, identity)}
    if document.narrative is not None:
        resource["text"] = document.narrative
    resource["identifier"] = [{"system": "urn:dicom:uid", "value": uid_identifier_value(ctx.sop_instance_uid)}]
    resource["status"] = "available"
    resource["subject"] = ctx.subject
    resource["issued"] = document.issued
    if document.performers:
        resource["performer"] = document.performers
    if ctx.service_request is not None:
        resource["basedOn"] = [ctx.service_request]
    if document.categories:
        resource["category"] = document.categories
    resource["code"] = document.code
    if group.study_uid:
        resource["studyUid"] = group.study_uid
        resource["derivedFrom"] = [ctx.imaging_study(group.study_uid)]
    if group.series_uid:
        resource["seriesUid"] = group.series_uid
    resource["instance"] = list(group.instances.values())
    return resource


# Referenced instances ------------------------------------------------------------------------

def _selected_series(root: ContentNode, ctx: ReportContext) -> list[_SeriesSelection]:
    """The referenced instances grouped by (study, series), groups and instances in document order."""
    groups: dict[tuple[str | None, str | None], _SeriesSelection] = {}
    for item in root.children:
        if item.value_type not in _REFERENCE_VALUE_TYPES:
            continue
        ref: ImageRef = item.value
        if not _is_fhir_uid(ref.sop_instance_uid):
            ctx.note(item, "Referenced SOP Instance UID (0008,1155) is not a valid UID (dotted digits, at most 64 "
                           "characters: instance.uid is a FHIR id); reference not mapped")
            continue
        study_uid, series_uid = _location(item, ref, ctx)
        group = groups.setdefault((study_uid, series_uid), _SeriesSelection(study_uid, series_uid))
        _merge(group, _instance(item, ref, ctx), item, ctx)
        for child in item.children:
            ctx.note(child, f"content item under a referenced {item.value_type} is not mapped")
    return list(groups.values())


def _location(item: ContentNode, ref: ImageRef, ctx: ReportContext) -> tuple[str | None, str | None]:
    """(study, series) of a referenced instance from the SR's evidence; None for what is unknown."""
    evidence = ctx.evidence.get(ref.sop_instance_uid)
    if evidence is None:
        ctx.note(item, f"SOP Instance {ref.sop_instance_uid} is not in the Current Requested Procedure Evidence "
                       "Sequence (0040,A375): its study and series are unknown; selected without studyUid and "
                       "seriesUid")
        return None, None
    study_uid = evidence.study_uid if _is_fhir_uid(evidence.study_uid) else None
    series_uid = evidence.series_uid if _is_fhir_uid(evidence.series_uid) else None
    if study_uid is None:
        ctx.note(item, "the evidence gives this instance a Study Instance UID that is not a valid UID of at most "
                       "64 characters (studyUid is a FHIR id); selected without studyUid")
    if series_uid is None:
        ctx.note(item, "the evidence gives this instance a Series Instance UID that is not a valid UID of at most "
                       "64 characters (seriesUid is a FHIR id); selected without seriesUid")
    return study_uid, series_uid


def _instance(item: ContentNode, ref: ImageRef, ctx: ReportContext) -> dict:
    """``instance``: uid, sopClass, and segment numbers (a segmentation) or frame numbers as subset."""
    instance: dict = {"uid": ref.sop_instance_uid}
    if is_valid_uid(ref.sop_class_uid):
        instance["sopClass"] = sop_class_coding(ref.sop_class_uid)
    else:
        ctx.note(item, "Referenced SOP Class UID (0008,1150) is not a valid UID; instance.sopClass left out")
    if ref.segments and ref.frames:
        ctx.note(item, "Referenced Frame Number (0008,1160) not mapped: instance.subset holds the Referenced "
                       "Segment Numbers (0062,000B) of this segmentation")
    numbers = ref.segments or ref.frames
    if numbers:
        instance["subset"] = [str(number) for number in numbers]
    return instance


def _merge(group: _SeriesSelection, instance: dict, item: ContentNode, ctx: ReportContext) -> None:
    """Add ``instance``; a second reference to the same instance widens the first one's subset
    (no subset, the whole instance, wins)."""
    existing = group.instances.get(instance["uid"])
    if existing is None:
        group.instances[instance["uid"]] = instance
        return
    if "subset" not in existing or "subset" not in instance:
        existing.pop("subset", None)
    else:
        existing["subset"] += [number for number in instance["subset"] if number not in existing["subset"]]
    ctx.note(item, "instance referenced again: merged into its first reference")


def _is_fhir_uid(uid: str | None) -> bool:
    return bool(uid) and is_valid_uid(uid) and bool(_FHIR_ID.match(uid))


# Document-level items -------------------------------------------------------------------------

def _description(root: ContentNode) -> list[str]:
    """The Key Object Description(s) (DCM 113012 TEXT), stripped, empty ones left out."""
    texts = (_CONTROL_CHARACTERS.sub("", child.value).strip() for child in root.children
             if child.key == KEY_OBJECT_DESCRIPTION and child.value_type == "TEXT")
    return [value for value in texts if value]


# Not allowed in XHTML (XML 1.0) nor in a FHIR string; DICOM TEXT allows some (ESC, FF).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _narrative(title: str, descriptions: list[str]) -> dict:
    """Narrative (status ``additional``: text not in the structured data): the document title,
    then each description as a paragraph, line breaks kept, everything XHTML-escaped."""
    paragraphs = [f"<p><b>{escape(_CONTROL_CHARACTERS.sub('', title), quote=False)}</b></p>"]
    for description in descriptions:
        lines = description.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        paragraphs.append("<p>" + "<br/>".join(escape(line.rstrip(), quote=False) for line in lines) + "</p>")
    return {"status": "additional", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{"".join(paragraphs)}</div>'}


def _performers(ds: Dataset, root: ContentNode, ctx: ReportContext) -> list[dict]:
    """``performer.actor`` for each observer (TID 1002): Practitioner (person), Device (device)."""
    equipment_uid = text(ds, "DeviceUID")
    actors: list[str] = []
    for observer in observers(root):
        if observer.kind == "person":
            url = practitioner(observer, ctx)
        else:
            url = participant_device(observer.items, ctx, equipment_uid)
            uid_node = observer.items.get(concepts.DEVICE_OBSERVER_UID)
            if url is None and uid_node is not None and equipment_uid and str(uid_node.value) == equipment_uid:
                url = general_equipment(ds, ctx)  # the observer is the equipment that made the KOS
            elif url is None:
                ctx.note(observer.node, "device observer without a Device Observer UID, Name or Model Name: no Device")
        if url is not None and url not in actors:
            actors.append(url)
    return [{"actor": ctx.ref(url)} for url in actors]


def _note_other_items(root: ContentNode, ctx: ReportContext) -> None:
    """Note every root child this mapping does not carry into the selections."""
    for child in root.children:
        if child.value_type in _REFERENCE_VALUE_TYPES or child.relationship == "HAS OBS CONTEXT":
            continue
        if child.key in (KEY_OBJECT_DESCRIPTION, DOCUMENT_TITLE_MODIFIER):
            continue
        if child.key == LANGUAGE:
            ctx.note(child, "language of content not mapped (ImagingSelection.language is not set from it)")
        else:
            ctx.note(child, f"{child.value_type} is not a TID 2010 item sr2fhir maps")
