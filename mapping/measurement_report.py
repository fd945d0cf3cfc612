"""TID 1500 Imaging Measurement Report -> Observations, ImagingSelections, Devices, Practitioners."""

from __future__ import annotations

from pydicom.dataset import Dataset

from . import concepts
from .attributes import text
from .content_tree import ContentNode
from .context import ReportContext
from .dates import Timing
from .derived import derived_imaging_measurements
from .devices import algorithm_identification, general_equipment, participant_device
from .errors import MissingContentItem
from .groups import imaging_measurement_group
from .measurements import Inherited, qualitative_evaluation
from .participants import observers, practitioner

__all__ = ["map_measurement_report"]


def map_measurement_report(ds: Dataset, root: ContentNode, ctx: ReportContext) -> None:
    """Add the resources of a TID 1500 report to ``ctx.bundle``; MissingContentItem when none."""
    ctx.equipment_device = general_equipment(ds, ctx)
    default_device = ctx.equipment_device
    for observer in observers(root):
        if observer.kind == "person":
            url = practitioner(observer, ctx)
            if url is not None:
                ctx.performer.append(ctx.ref(url))
        elif default_device == ctx.equipment_device:
            default_device = participant_device(observer.items, ctx, text(ds, "DeviceUID")) or default_device

    # PS3.3 C.17.3: items without an Observation DateTime take their nearest ancestor's.
    root_timing = ctx.timing(root, ctx.document_timing)
    observations = 0
    for child in root.children:
        if child.value_type != "CONTAINER" or child.relationship != "CONTAINS":
            continue
        if child.key == concepts.IMAGING_MEASUREMENTS:
            observations += _imaging_measurements(child, ctx, default_device, root_timing)
        elif child.key == concepts.DERIVED_IMAGING_MEASUREMENTS:
            observations += len(derived_imaging_measurements(child, ctx, root_timing))
        elif child.key == concepts.QUALITATIVE_EVALUATIONS:
            observations += _report_qualitative_evaluations(child, ctx, default_device, root_timing)
        else:
            ctx.note(child, "container is not one TID 1500 maps (Imaging Measurements, Derived, Qualitative Evaluations)")
    if observations == 0:
        raise MissingContentItem(
            "no measurement group, derived measurement or qualitative evaluation could be mapped"
            + (f" ({len(ctx.skipped)} item(s) skipped; first: {ctx.skipped[0]})" if ctx.skipped else ""),
            path=root.path,
        )


def _imaging_measurements(container: ContentNode, ctx: ReportContext, default_device: str, parent_timing: Timing) -> int:
    """DCM 126010: a container-level TID 4019 algorithm overrides the default device."""
    device = algorithm_identification(container, ctx) or default_device
    timing = ctx.timing(container, parent_timing)
    count = 0
    for child in container.children:
        if child.value_type == "CONTAINER" and child.key == concepts.MEASUREMENT_GROUP:
            imaging_measurement_group(child, ctx, device, timing)
            count += 1
        elif child.key not in concepts.ALGORITHM_ITEMS:
            ctx.note(child, f"{child.value_type} directly in Imaging Measurements is not in a measurement group")
    return count


def _report_qualitative_evaluations(container: ContentNode, ctx: ReportContext, device: str, parent_timing: Timing) -> int:
    """UMLS C0034375 at report level: one evaluation per CODE/TEXT child."""
    inherited = Inherited(device=device, timing=ctx.timing(container, parent_timing))
    count = 0
    for child in container.children:
        if child.value_type in ("CODE", "TEXT"):
            qualitative_evaluation(child, ctx, inherited)
            count += 1
        else:
            ctx.note(child, f"{child.value_type} in Qualitative Evaluations is not an evaluation")
    return count


