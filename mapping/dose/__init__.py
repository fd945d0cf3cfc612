"""Radiation dose SRs (TID 10001/10011/10021) -> HL7 Radiation Dose Summary Observation and Device."""

from __future__ import annotations

from pydicom.dataset import Dataset

from ..content_tree import ContentNode
from ..context import ReportContext
from ..errors import UnsupportedTemplate

__all__ = ["map_radiation_dose", "finish_r4"]


def map_radiation_dose(ds: Dataset, root: ContentNode, ctx: ReportContext) -> None:
    """Add the dose summary Observation (and its Device) of a dose report to ``ctx.bundle``."""
    raise UnsupportedTemplate("radiation dose reports are not mapped yet", path=root.path,
                              template=root.template_id, title=root.label)


def finish_r4(bundle: dict) -> dict:
    """The R4 Bundle of a dose report after :func:`mapping.r4.to_r4` (the IG is R4-native)."""
    return bundle
