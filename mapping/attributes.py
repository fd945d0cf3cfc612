"""Reading attribute values as text, for the dataset's top level and the content tree."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

__all__ = ["as_text", "text"]

_SCALARS = (str, int, float, PersonName)


def as_text(value: Any, *, strip: bool = True) -> str | None:
    """A single value as text; None when absent or empty.

    Raises ``TypeError`` for anything that is not one value (a sequence where text belongs,
    several values, bytes): printing it would put a dump of other attributes into the Bundle.
    """
    if value is None:
        return None
    if not isinstance(value, _SCALARS):
        raise TypeError(f"expected a single value, found {type(value).__name__}")
    result = str(value)
    if strip:
        result = result.strip()
    return result or None


def text(ds: Dataset | None, keyword: str) -> str | None:
    """A top-level attribute as stripped text; None when absent, empty or not a single value."""
    if ds is None:
        return None
    try:
        return as_text(ds.get(keyword))
    except TypeError:
        return None
