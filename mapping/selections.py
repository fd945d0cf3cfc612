"""The IG's ImagingSelection profiles, one builder per profile.

A measurement group (or a NUM with its own image references) yields at most one
ImagingSelection per profile: the Observation's ``derivedFrom`` slices are 0..1 each, so
several items of one kind (two SCOORDs, several referenced segments) become several
``instance`` entries of one selection. ``group_selections`` walks the node's children and
hands each to the builder that ``BUILDERS`` keys on (concept, value type); an INFERRED FROM
image or region of another concept (TID 300 "Source of Measurement") goes to the builder
``INFERRED_FROM`` keys on its value type; any other reference is noted.

References the IG has no profile for (TID 1501 "Source" IMAGE, TID 300 "Source of
Measurement" IMAGE, "Source series for segmentation" without source images) become plain
selections that claim the abstract ``observation-imaging-selection`` profile, whose
``derivedFrom``/``focus`` slicing is open, so the Observation still says what it came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import concepts
from .content_tree import ContentNode, ImageRef, Scoord3dValue, ScoordValue
from .context import ReportContext
from .profiles import fixed, profile_url
from .sop_classes import sop_class_coding

__all__ = ["BUILDERS", "Selections", "group_selections", "source_sr_content_item"]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RWV_MAPPING_STORAGE = "1.2.840.10008.5.1.4.1.1.67"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
_MAX_ID_LENGTH = 64  # seriesUid, studyUid, instance.uid are FHIR ids

# DICOM SCOORD Graphic Type -> (R5 imageRegion2D.regionType, check on the value count).
_REGION_2D: dict[str, tuple[str, Callable[[int], bool]]] = {
    "POINT": ("point", lambda n: n == 2),
    "MULTIPOINT": ("point", lambda n: n >= 2 and n % 2 == 0),  # one point region per pair
    "POLYLINE": ("polyline", lambda n: n >= 4 and n % 2 == 0),
    "CIRCLE": ("circle", lambda n: n == 4),
    "ELLIPSE": ("ellipse", lambda n: n == 8),
}
_REGION_3D: dict[str, Callable[[int], bool]] = {
    "POINT": lambda n: n == 3,
    "MULTIPOINT": lambda n: n >= 3 and n % 3 == 0,
    "POLYLINE": lambda n: n >= 6 and n % 3 == 0,
    "POLYGON": lambda n: n >= 9 and n % 3 == 0,
    "ELLIPSE": lambda n: n == 12,
    "ELLIPSOID": lambda n: n == 18,
}


@dataclass(slots=True)
class _Draft:
    """One ImagingSelection being assembled from one or more content items."""

    profile: str
    code: dict
    first: ContentNode
    instances: list[dict] = field(default_factory=list)
    frame_of_reference_uid: str | None = None
    series_uid: str | None = None
    kind: str = ""  # id kind when several selections of one profile come from one node
    source_image_focus: str | None = None  # focus[sourceImageForSegmentation], 0..1
    provenance_focus: str | None = None  # focus[sourceSRContentItem], 0..1: the first item's
    more_codings: list[dict] = field(default_factory=list)  # the SR's original code, if translated


@dataclass(slots=True)
class Selections:
    """What one node's image references became: slice name -> fullUrl, in creation order."""

    by_slice: dict[str, str] = field(default_factory=dict)

    def references(self, ctx: ReportContext) -> list[dict]:
        return [ctx.ref(url) for url in self.by_slice.values()]


@dataclass(slots=True)
class _Walk:
    ctx: ReportContext
    node: ContentNode
    body_structure: str | None
    drafts: dict[str, _Draft] = field(default_factory=dict)
    source_images: list[ContentNode] = field(default_factory=list)
    source_series: ContentNode | None = None
    # Source images the evidence puts in another series than the Source series for
    # segmentation: never listed under that series; each gets a plain selection of its own.
    foreign_source_images: list[ContentNode] = field(default_factory=list)
    _source_image_selection: str | None = None

    @property
    def source_series_uid(self) -> str | None:
        return self.source_series.value if self.source_series is not None else None

    def series_of(self, ref: ImageRef) -> str | None:
        """The referenced instance's series from the SR's evidence; None when not listed there."""
        evidence = self.ctx.evidence.get(ref.sop_instance_uid)
        return evidence.series_uid if evidence else None

    def sort_sources(self) -> None:
        """Check the Source series for segmentation and keep only the source images inside it.

        The IG names DCM 121232 as the ``seriesUid`` of ``source-image-for-segmentation`` and
        ``volume-surface``; an image the evidence places in another series cannot sit under it.
        An image the evidence does not list is taken to be in the series the SR names.
        """
        if self.source_series is None:
            return
        if len(self.source_series_uid or "") > _MAX_ID_LENGTH:
            self.ctx.note(self.source_series, "UID longer than 64 characters: cannot be a seriesUid (FHIR id)")
            self.source_series = None
            return
        inside = []
        for image in self.source_images:
            series = self.series_of(image.value)
            if series is None or series == self.source_series_uid:
                inside.append(image)
            else:
                self.foreign_source_images.append(image)
                self.ctx.note(image, f"source image is in series {series} (evidence), not in the Source series "
                                     f"for segmentation {self.source_series_uid}: selected on its own, not under that series")
        self.source_images = inside

    def draft(self, profile: str, code: dict, item: ContentNode, slice_name: str | None = None) -> _Draft:
        kind = slice_name or ""
        slice_name = slice_name or _SLICES[profile]
        if slice_name not in self.drafts:
            self.drafts[slice_name] = _Draft(profile, code, item, kind=kind)
        return self.drafts[slice_name]

    def source_image_selection(self) -> str | None:
        """fullUrl of the selection of the source images (or series), built on first use.

        ``source-image-for-segmentation`` when the group names source images (DCM 121233);
        with only a "Source series for segmentation" (DCM 121232), a plain selection of that
        whole series (``seriesUid``, no ``instance``: the profile needs an instance).
        """
        if self._source_image_selection is None:
            if self.source_images:
                self._source_image_selection = source_image_for_segmentation(self)
            elif self.source_series is not None:
                self._source_image_selection = source_series_for_segmentation(self)
        return self._source_image_selection

    def carrier_instances(self, item: ContentNode, profile: str) -> list[dict]:
        """Instances a 3D region is attached to: the source images, else the SR itself, else none.

        R5 puts ``imageRegion3D`` under ``instance`` (uid 1..1); SCOORD3D names no image, so
        the region hangs on the images it was drawn on when the group names them, and
        otherwise on the SR content item that defines it. A volume surface with a Source
        series for segmentation but no source image gets no instance: its ``seriesUid`` is
        that series, where the SR instance does not live.
        """
        if self.source_images:
            return [_instance(image.value) for image in self.source_images]
        if profile == "volume-surface" and self.source_series is not None:
            return []
        instance = {"uid": self.ctx.sop_instance_uid, "sopClass": sop_class_coding(self.ctx.sop_class_uid)}
        if item.observation_uid:
            instance["subset"] = [item.observation_uid]
        return [instance]


def group_selections(node: ContentNode, ctx: ReportContext, body_structure: str | None) -> Selections:
    """Build the ImagingSelections for the image references among ``node``'s children."""
    walk = _Walk(ctx, node, body_structure)
    for child in node.children:
        if child.key == concepts.SOURCE_IMAGE_FOR_SEGMENTATION and child.value_type == "IMAGE":
            walk.source_images.append(child)
        elif child.key == concepts.SOURCE_SERIES_FOR_SEGMENTATION and child.value_type == "UIDREF":
            walk.source_series = walk.source_series or child
    walk.sort_sources()
    for child in node.children:
        builder = BUILDERS.get((child.key, child.value_type))
        if builder is None and child.relationship == "INFERRED FROM":
            builder = INFERRED_FROM.get(child.value_type)
        if builder is None and any(child is image for image in walk.foreign_source_images):
            builder = referenced_image
        if builder is not None:
            builder(child, walk)
        elif child.value_type in concepts.SELECTION_VALUE_TYPES and child.key != concepts.SOURCE_IMAGE_FOR_SEGMENTATION:
            ctx.note(child, f"{child.value_type} reference of this concept has no ImagingSelection profile; not mapped")
    selections = Selections()
    for slice_name, draft in walk.drafts.items():
        if draft.instances or draft.frame_of_reference_uid:
            selections.by_slice[slice_name] = _finish(draft, walk)
    if walk._source_image_selection is None and walk.source_image_selection() is not None:
        # Source images or series that no segment or surface points at: the Observation names them.
        selections.by_slice["sourceImageForSegmentation"] = walk._source_image_selection
    return selections


# Builders, one per profile -----------------------------------------------------------------

def image_region_2d(item: ContentNode, walk: _Walk) -> None:
    """IG ``image-region-2d``; DCM 111030 "Image Region" SCOORD; TID 1410/1411/1501."""
    scoord: ScoordValue = item.value
    source = next((c for c in item.children if c.value_type == "IMAGE"), None)
    if source is None:
        walk.ctx.note(item, "SCOORD without a source image (no SELECTED FROM IMAGE child)")
        return
    rule = _REGION_2D.get(scoord.graphic_type)
    if rule is None:
        walk.ctx.note(item, f"SCOORD graphic type {scoord.graphic_type} has no FHIR R5 2D region type")
        return
    region_type, count_ok = rule
    if not count_ok(len(scoord.data)):
        walk.ctx.note(item, f"SCOORD {scoord.graphic_type} with {len(scoord.data)} Graphic Data values is malformed")
        return
    coordinates = list(scoord.data)
    if scoord.graphic_type == "MULTIPOINT":
        regions = [{"regionType": "point", "coordinate": coordinates[i:i + 2]} for i in range(0, len(coordinates), 2)]
    else:
        regions = [{"regionType": region_type, "coordinate": coordinates}]
    draft = walk.draft("image-region-2d", fixed.IMAGE_REGION, item)
    for region in regions:  # the profile allows one imageRegion2D per instance entry
        instance = _instance(source.value)
        instance["imageRegion2D"] = [region]
        _add_instance(draft, instance, source.value, walk)
    _add_focus(draft, item, walk)


def image_region_3d(item: ContentNode, walk: _Walk) -> None:
    """IG ``image-region-3d``; DCM 111030 "Image Region" SCOORD3D; TID 1410/1501."""
    _region_3d(item, walk, walk.draft("image-region-3d", fixed.IMAGE_REGION, item))


def volume_surface(item: ContentNode, walk: _Walk) -> None:
    """IG ``volume-surface``; DCM 121231 "Volume Surface" SCOORD3D; TID 1411."""
    draft = walk.draft("volume-surface", fixed.VOLUME_SURFACE, item)
    if _region_3d(item, walk, draft):
        _focus_source_images(draft, walk)


def illustration_of_roi(item: ContentNode, walk: _Walk) -> None:
    """IG ``illustration-of-roi``; DCM 121200 "Illustration of ROI" IMAGE; TID 1410/1411."""
    _image(item, walk, "illustration-of-roi", fixed.ILLUSTRATION_OF_ROI)


def visual_explanation(item: ContentNode, walk: _Walk) -> None:
    """IG ``visual-explanation``; DCM 130401 "Visual Explanation" IMAGE; TID 1410/1411."""
    _image(item, walk, "visual-explanation", fixed.VISUAL_EXPLANATION)


def real_world_value_map(item: ContentNode, walk: _Walk) -> None:
    """IG ``real-world-value-map``; DCM 126100 COMPOSITE; TID 1410/1411."""
    ref: ImageRef = item.value
    if ref.sop_class_uid != RWV_MAPPING_STORAGE:
        walk.ctx.note(item, f"Real World Value Map reference has SOP Class {ref.sop_class_uid}, not RWV Mapping Storage")
        return
    _image(item, walk, "real-world-value-map", fixed.REAL_WORLD_VALUE_MAP)


def region_in_space(item: ContentNode, walk: _Walk) -> None:
    """IG ``region-in-space``; DCM 130488 "Region In Space" COMPOSITE (RT Structure Set); TID 1410/1411."""
    ref: ImageRef = item.value
    if ref.sop_class_uid != RT_STRUCTURE_SET_STORAGE:
        walk.ctx.note(item, f"Region In Space reference has SOP Class {ref.sop_class_uid}, not RT Structure Set Storage")
        return
    rois = [str(child.value) for child in item.children
            if child.value_type in ("TEXT", "UIDREF") and child.value not in (None, "")]
    rois += [_number_text(child.value.value) for child in item.children
             if child.value_type == "NUM" and child.value.value is not None]
    if not rois:
        walk.ctx.note(item, "Region In Space without an ROI identification child (instance.subset is required)")
        return
    instance = _instance(ref)
    instance["subset"] = rois
    draft = walk.draft("region-in-space", fixed.REGION_IN_SPACE, item)
    _add_instance(draft, instance, ref, walk)
    _add_focus(draft, item, walk)


def referenced_segment(item: ContentNode, walk: _Walk) -> None:
    """IG ``referenced-segment``; DCM 121191 IMAGE (Segmentation); TID 1411."""
    _segmentation(item, walk, "referenced-segment", fixed.REFERENCED_SEGMENT, frames_fallback=False)


def referenced_segmentation_frame(item: ContentNode, walk: _Walk) -> None:
    """IG ``referenced-segmentation-frame``; DCM 121214 IMAGE (Segmentation); TID 1410."""
    _segmentation(item, walk, "referenced-segmentation-frame", fixed.REFERENCED_SEGMENTATION_FRAME, frames_fallback=True)


def referenced_image(item: ContentNode, walk: _Walk) -> None:
    """TID 1501 "Source" IMAGE and TID 300 "Source of Measurement" (INFERRED FROM IMAGE): no IG profile.

    A plain selection of the image (frames as ``subset``) whose ``code`` is the item's concept,
    one per concept.
    """
    codings = walk.ctx.codes.codings(item.concept) if item.concept else [dict(fixed.ORIGINAL_SOURCE)]
    slice_name = f"image:{item.label}"
    ref: ImageRef = item.value
    draft = walk.draft("image-reference", codings[0], item, slice_name)
    draft.more_codings = codings[1:]  # no pattern on code: the abstract profile claimed has none
    _add_instance(draft, _instance(ref), ref, walk)
    _add_focus(draft, item, walk)


def source_series_for_segmentation(walk: _Walk) -> str:
    """DCM 121232 "Source series for segmentation" without source images: the whole series."""
    item = walk.source_series
    assert item is not None
    draft = _Draft("source-series", fixed.SOURCE_SERIES_FOR_SEGMENTATION, item)
    draft.series_uid = item.value
    _add_focus(draft, item, walk)
    return _finish(draft, walk)


def source_image_for_segmentation(walk: _Walk) -> str:
    """IG ``source-image-for-segmentation``; DCM 121233 IMAGE (+ 121232 UIDREF); TID 1410/1411."""
    first = walk.source_images[0]
    draft = _Draft("source-image-for-segmentation", fixed.SOURCE_IMAGE_FOR_SEGMENTATION, first)
    for image in walk.source_images:
        _add_instance(draft, _instance(image.value), image.value, walk)
    if walk.source_series_uid:
        draft.series_uid = walk.source_series_uid
    return _finish(draft, walk)


def source_sr_content_item(node: ContentNode, ctx: ReportContext) -> str | None:
    """IG ``source-sr-content-item``; DCM 111040: the SR content item (by Observation UID) a resource came from."""
    if not node.observation_uid or not ctx.options.source_sr_content_items:
        return None
    resource = _selection_base(ctx, ctx.id_for(node, "source-sr-content-item"), "source-sr-content-item", fixed.ORIGINAL_SOURCE, ctx.study_uid)
    if ctx.series_uid:
        resource["seriesUid"] = ctx.series_uid
    resource["instance"] = [{
        "uid": ctx.sop_instance_uid,
        "sopClass": sop_class_coding(ctx.sop_class_uid),
        "subset": [node.observation_uid],
    }]
    return ctx.bundle.add(resource)


BUILDERS: dict[tuple[tuple[str, str], str], Callable[[ContentNode, _Walk], None]] = {
    (concepts.IMAGE_REGION, "SCOORD"): image_region_2d,
    (concepts.IMAGE_REGION, "SCOORD3D"): image_region_3d,
    (concepts.VOLUME_SURFACE, "SCOORD3D"): volume_surface,
    (concepts.ILLUSTRATION_OF_ROI, "IMAGE"): illustration_of_roi,
    (concepts.VISUAL_EXPLANATION, "IMAGE"): visual_explanation,
    (concepts.REAL_WORLD_VALUE_MAP, "COMPOSITE"): real_world_value_map,
    (concepts.REGION_IN_SPACE, "COMPOSITE"): region_in_space,
    (concepts.REFERENCED_SEGMENT, "IMAGE"): referenced_segment,
    (concepts.REFERENCED_SEGMENTATION_FRAME, "IMAGE"): referenced_segmentation_frame,
    (concepts.IMAGE_SOURCE, "IMAGE"): referenced_image,
}

# INFERRED FROM children of other concepts (TID 300 "Source of Measurement", ...) by value type.
INFERRED_FROM: dict[str, Callable[[ContentNode, _Walk], None]] = {
    "IMAGE": referenced_image,
    "SCOORD": image_region_2d,
    "SCOORD3D": image_region_3d,
}

# The IG's region-in-space fixes instance.sopClass to "11.2.840.10008.5.1.4.1.1.481.3", a typo
# for RT Structure Set Storage (MAPPING.md §9.1). We write the real UID, so such a selection
# cannot claim that profile; it claims the abstract parent, which it does conform to.
# Selections with no IG profile of their own claim the same abstract parent.
_CLAIMED_PROFILE = {
    "region-in-space": "observation-imaging-selection",
    "image-reference": "observation-imaging-selection",
    "source-series": "observation-imaging-selection",
}

# Profile -> the Observation.derivedFrom slice that references it.
_SLICES = {
    "image-region-2d": "imageRegion2d",
    "image-region-3d": "imageRegion3d",
    "volume-surface": "volumeSurface",
    "illustration-of-roi": "illustrationOfRoi",
    "visual-explanation": "visualExplanation",
    "real-world-value-map": "realWorldValueMap",
    "region-in-space": "regionInSpace",
    "referenced-segment": "referencedSegment",
    "referenced-segmentation-frame": "referencedSegmentationFrame",
}


# Shared steps ------------------------------------------------------------------------------

def _image(item: ContentNode, walk: _Walk, profile: str, code: dict) -> None:
    ref: ImageRef = item.value
    draft = walk.draft(profile, code, item)
    _add_instance(draft, _instance(ref), ref, walk)
    _add_focus(draft, item, walk)


def _segmentation(item: ContentNode, walk: _Walk, profile: str, code: dict, *, frames_fallback: bool) -> None:
    ref: ImageRef = item.value
    if ref.sop_class_uid != SEGMENTATION_STORAGE:
        walk.ctx.note(item, f"reference has SOP Class {ref.sop_class_uid}, not Segmentation Storage")
        return
    numbers = ref.segments or (ref.frames if frames_fallback else ())
    if not numbers:
        walk.ctx.note(item, "segmentation reference without Referenced Segment Number (0062,000B)")
        return
    draft = walk.draft(profile, code, item)
    for number in numbers:  # the profile allows one subset value per instance entry
        instance = _instance(ImageRef(ref.sop_class_uid, ref.sop_instance_uid))
        instance["subset"] = [str(number)]
        _add_instance(draft, instance, ref, walk)
    _focus_source_images(draft, walk)
    _add_focus(draft, item, walk)


def _region_3d(item: ContentNode, walk: _Walk, draft: _Draft) -> bool:
    scoord: Scoord3dValue = item.value
    count_ok = _REGION_3D.get(scoord.graphic_type)
    if count_ok is None or not count_ok(len(scoord.data)):
        walk.ctx.note(item, f"SCOORD3D {scoord.graphic_type} with {len(scoord.data)} Graphic Data values is malformed")
        return False
    if draft.frame_of_reference_uid not in (None, scoord.frame_of_reference_uid):
        walk.ctx.note(item, "SCOORD3D in a second frame of reference; only the first is kept in this selection")
        return False
    draft.frame_of_reference_uid = scoord.frame_of_reference_uid
    region = {"regionType": scoord.graphic_type.lower(), "coordinate": list(scoord.data)}
    carriers = walk.carrier_instances(item, draft.profile)
    for instance in carriers:
        instance["imageRegion3D"] = [region]
        draft.instances.append(instance)
    if not carriers:
        walk.ctx.note(item, f"SCOORD3D coordinates not mapped: R5 holds imageRegion3D only under an instance, and no "
                            f"Source image for segmentation of series {walk.source_series_uid} is named to carry it")
    draft.series_uid = _region_3d_series(walk, draft.profile)
    _add_focus(draft, item, walk)
    return True


def _region_3d_series(walk: _Walk, profile: str) -> str | None:
    """``seriesUid`` of a 3D region selection, always the series of its instances.

    With source images: the Source series for segmentation (the IG's source for
    ``volume-surface``; the images are inside it, see ``sort_sources``), else their common
    series from the evidence. Without: a volume surface takes the Source series for
    segmentation or none, never the SR's own series; an ``image-region-3d`` (no IG source)
    carried by the SR content item is in the SR's series.
    """
    if walk.source_images:
        return walk.source_series_uid or _common_series(walk, [image.value for image in walk.source_images])
    if profile == "volume-surface":
        return walk.source_series_uid
    return walk.ctx.series_uid


def _instance(ref: ImageRef) -> dict:
    instance: dict = {"uid": ref.sop_instance_uid, "sopClass": sop_class_coding(ref.sop_class_uid)}
    if ref.frames:
        instance["subset"] = [str(frame) for frame in ref.frames]
    return instance


def _add_instance(draft: _Draft, instance: dict, ref: ImageRef, walk: _Walk) -> None:
    draft.instances.append(instance)
    series = walk.series_of(ref)
    if len(draft.instances) == 1:
        draft.series_uid = series
    elif draft.series_uid != series:
        draft.series_uid = None  # instances from several series: seriesUid would be wrong


def _add_focus(draft: _Draft, item: ContentNode, walk: _Walk) -> None:
    if draft.provenance_focus is None:
        draft.provenance_focus = source_sr_content_item(item, walk.ctx)


def _focus_source_images(draft: _Draft, walk: _Walk) -> None:
    draft.source_image_focus = walk.source_image_selection()


def _common_series(walk: _Walk, refs: list[ImageRef]) -> str | None:
    series = {walk.series_of(ref) for ref in refs}
    return series.pop() if len(series) == 1 else None


def _study_of(draft: _Draft, walk: _Walk) -> str:
    evidence = walk.ctx.evidence
    studies = {evidence[i["uid"]].study_uid for i in draft.instances if i["uid"] in evidence}
    if not draft.instances and draft.series_uid:  # a whole series: its study, when the evidence lists it
        studies = {e.study_uid for e in evidence.values() if e.series_uid == draft.series_uid}
    return studies.pop() if len(studies) == 1 else walk.ctx.study_uid


def _selection_base(ctx: ReportContext, resource_id: str, profile: str, code: dict, study_uid: str) -> dict:
    resource: dict = {
        "resourceType": "ImagingSelection",
        "id": resource_id,
        "meta": {"profile": [profile_url(profile)]},
        "status": "available",
        "subject": ctx.subject,
    }
    if ctx.service_request is not None:
        resource["basedOn"] = [ctx.service_request]
    resource["code"] = {"coding": [code]}
    resource["studyUid"] = study_uid
    resource["derivedFrom"] = [ctx.imaging_study(study_uid)]
    return resource


def _finish(draft: _Draft, walk: _Walk) -> str:
    ctx = walk.ctx
    claimed = _CLAIMED_PROFILE.get(draft.profile, draft.profile)
    resource = _selection_base(ctx, ctx.id_for(walk.node, draft.kind or draft.profile), claimed, draft.code, _study_of(draft, walk))
    resource["code"]["coding"] += draft.more_codings
    if draft.series_uid:
        resource["seriesUid"] = draft.series_uid
    if draft.frame_of_reference_uid:
        resource["frameOfReferenceUid"] = draft.frame_of_reference_uid
    if walk.body_structure and draft.profile != "source-image-for-segmentation":
        resource["bodySite"] = {"reference": ctx.ref(walk.body_structure)}
    focus = [ctx.ref(url) for url in (draft.source_image_focus, draft.provenance_focus) if url]
    if focus:
        resource["focus"] = focus
    if draft.instances:
        resource["instance"] = draft.instances
    return ctx.bundle.add(resource)


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)
