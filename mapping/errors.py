"""Errors and notes of the mapping.

A :class:`MappingError` means no meaningful Bundle can be produced from the SR; everything
that can be skipped instead is recorded as a :class:`Skipped` note and mapping goes on.
Messages name the content-item path (1-based positions in the content tree, ``1.4.2``) and
the concept, never patient data.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MappingError",
    "NotAnSR",
    "UnsupportedTemplate",
    "MissingContentItem",
    "InvalidValue",
    "Skipped",
]


class MappingError(Exception):
    """The SR cannot be mapped to a meaningful Bundle.

    ``path`` is the content-item path ("" for the document itself), ``concept`` the
    concept as ``(SCHEME,VALUE)`` text when known.
    """

    def __init__(self, message: str, *, path: str = "", concept: str | None = None) -> None:
        self.message = message
        self.path = path
        self.concept = concept
        super().__init__(str(self))

    def __str__(self) -> str:
        where = _where(self.path, self.concept)
        return f"{where}: {self.message}" if where else self.message


class NotAnSR(MappingError):
    """The dataset is not a DICOM Structured Report (wrong SOP class, no content tree)."""


class UnsupportedTemplate(MappingError):
    """The SR is none of the documents sr2fhir maps (TID 1500, Key Object Selection, dose report).

    ``template`` (the root's Template Identifier, e.g. ``"2000"``) and ``title`` (the document
    title as ``(DCM,113701) 'X-Ray Radiation Dose Report'``) say what it is, for the one log line
    an ignored SR gets; either is None when the SR does not say.
    """

    def __init__(self, message: str, *, path: str = "", concept: str | None = None,
                 template: str | None = None, title: str | None = None) -> None:
        self.template = template
        self.title = title
        super().__init__(message, path=path, concept=concept)


class MissingContentItem(MappingError):
    """Something the mapping cannot do without is absent (e.g. Patient ID, measurements)."""


class InvalidValue(MappingError):
    """A value that the whole mapping depends on cannot be read."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A content item (or attribute) that was not mapped, and why."""

    path: str
    reason: str
    concept: str | None = None

    def __str__(self) -> str:
        where = _where(self.path, self.concept) or "document"
        return f"{where}: {self.reason}"


def _where(path: str, concept: str | None) -> str:
    if path and concept:
        return f"{path} {concept}"
    return path or (concept or "")
