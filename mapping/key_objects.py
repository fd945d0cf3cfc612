"""Key Object Selection (TID 2010) -> ImagingSelection, one per referenced series."""

from __future__ import annotations

from pydicom.dataset import Dataset

from .content_tree import ContentNode
from .context import ReportContext
from .errors import UnsupportedTemplate

__all__ = ["map_key_object_selection"]


def map_key_object_selection(ds: Dataset, root: ContentNode, ctx: ReportContext) -> None:
    """Add the ImagingSelections of a Key Object Selection document to ``ctx.bundle``."""
    raise UnsupportedTemplate("Key Object Selection documents are not mapped yet", path=root.path,
                              template=root.template_id, title=root.label)
