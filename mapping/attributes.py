"""Reading top-level (non content-tree) attributes of the SR dataset."""

from __future__ import annotations

from pydicom.dataset import Dataset

__all__ = ["text"]


def text(ds: Dataset | None, keyword: str) -> str | None:
    """The attribute's value as stripped text; None when absent, empty or multi-valued."""
    if ds is None:
        return None
    value = ds.get(keyword)
    if value is None or isinstance(value, (list, tuple)):
        return None
    result = str(value).strip()
    return result or None
