"""Radiation dose SRs (TID 10001/10011/10021) -> HL7 Radiation Dose Summary Observation and Device.

One ``radiation-dose-summary`` Observation per report with the procedure-level totals as
components in the IG's units (:mod:`.components`, :mod:`.units`), and the irradiating modality as
a ``modality-device`` Device (:mod:`.device`; not for radiopharmaceutical reports). R5 output
has the R5 shape and claims no profile (the IG is R4); :func:`finish_r4` claims the IG's
profiles in R4 output. Decisions: docs/mapping-decisions.md, "Radiation dose reports".
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from ..content_tree import ContentNode
from ..context import ReportContext
from ..errors import UnsupportedTemplate
from . import codes
from .codes import COMPONENTS, fixed
from .components import Template, procedure_values
from .device import modality_device, modality_type
from .observation import dose_summary, effective, irradiation_authorizing_person
from .r4 import finish_r4

__all__ = ["map_radiation_dose", "finish_r4"]

_X_RAY_DOSE_REPORT = ("DCM", "113701")
_RADIOPHARMACEUTICAL_DOSE_REPORT = ("DCM", "113500")
_EVENTS = frozenset({codes.IRRADIATION_EVENT, codes.CT_ACQUISITION})
_FLUOROSCOPY = frozenset({COMPONENTS.FLUORO_DAP_TOTAL.key, COMPONENTS.TOTAL_FLUORO_TIME.key})


def map_radiation_dose(ds: Dataset, root: ContentNode, ctx: ReportContext) -> None:
    """Add the dose summary Observation (and its Device) of a dose report to ``ctx.bundle``."""
    template = _template(root)
    procedure = _procedure_reported(root, template, ctx)
    values, container = procedure_values(root, template, ctx)
    device = None
    if template == Template.RADIOPHARMACEUTICAL:
        ctx.note(root, "radiopharmaceutical report: no modality-device Device (the administration has no "
                       "irradiating modality; the device observer is the administering or measuring device)")
    else:
        fluoroscopy = any(v.component.key in _FLUOROSCOPY and (v.quantity or 0) > 0 for v in values)
        modality = modality_type(ds, root, template, procedure is fixed.MAMMOGRAPHY, fluoroscopy)
        device = modality_device(ds, root, ctx, modality)
    events = [c for c in root.children if c.key in _EVENTS and c.value_type == "CONTAINER"]
    if events:
        ctx.note(root, f"{len(events)} irradiation event container(s) (from {events[0].path}) not mapped: the IG's "
                       "summary is procedure-level")
    performer = irradiation_authorizing_person([root, container], ctx)
    dose_summary(root, ctx, procedure=procedure, values=values,
                 effective_datetime=effective(root, container, template, ctx), device=device, performer=performer)


def _template(root: ContentNode) -> str:
    """The root template: its Template Identifier, else what its title and content say."""
    if root.template_id in (Template.PROJECTION, Template.CT, Template.RADIOPHARMACEUTICAL):
        return root.template_id
    if root.key == _RADIOPHARMACEUTICAL_DOSE_REPORT:
        return Template.RADIOPHARMACEUTICAL
    if root.key == _X_RAY_DOSE_REPORT:
        return Template.CT if root.first(codes.CT_ACCUMULATED_DOSE) is not None else Template.PROJECTION
    raise UnsupportedTemplate(f"dose report with title {root.label or 'absent'} and template "
                              f"{root.template_id or 'absent'} is none of TID 10001, 10011, 10021",
                              path=root.path, template=root.template_id, title=root.label)


def _procedure_reported(root: ContentNode, template: str, ctx: ReportContext) -> dict:
    """The IG's Procedure Reported value: the SR's (DCM 121058) when the IG's value set has it,
    else the template's (CT, projection X-ray, radiopharmaceutical administration)."""
    default = {Template.CT: fixed.CT, Template.PROJECTION: fixed.PROJECTION_X_RAY,
               Template.RADIOPHARMACEUTICAL: fixed.RADIOPHARMACEUTICAL_ADMINISTRATION}[template]
    node = root.first(codes.PROCEDURE_REPORTED_CONCEPT, "CODE")
    if node is None:
        return default
    known = codes.PROCEDURES_REPORTED.get(node.value.key)
    if known is None:
        ctx.note(node, f"Procedure reported {node.value} {node.value.meaning!r} is not in the IG's Procedure "
                       f"Reported Type value set; used {default['display']!r} (TID {template})")
        return default
    return known
