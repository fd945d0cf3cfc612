"""What every builder needs to know about the report being mapped, and where it writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import tzinfo

from .bundle import BundleBuilder
from .coding import CodingSystems
from .content_tree import ContentNode
from .dates import Timing, to_timing
from .errors import Skipped
from .ids import report_scoped_id
from .options import MappingOptions
from .references import imaging_study_reference

__all__ = ["ReportContext", "Evidence"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """Where a referenced instance lives, from the SR's evidence sequences."""

    study_uid: str
    series_uid: str


@dataclass(slots=True)
class ReportContext:
    """Facts of one SR instance plus the Bundle and notes being written for it."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str | None
    study_uid: str
    subject: dict
    service_request: dict | None
    document_timing: Timing
    document_zone: tzinfo
    status: str
    evidence: dict[str, Evidence]
    codes: CodingSystems
    bundle: BundleBuilder
    skipped: list[Skipped]
    options: MappingOptions
    equipment_device: str = ""
    performer: list[dict] = field(default_factory=list)

    def note(self, node: ContentNode | str, reason: str) -> None:
        """Record that something at ``node`` (or a path) was not mapped, and why."""
        if isinstance(node, ContentNode):
            self.skipped.append(Skipped(node.path, reason, node.label))
        else:
            self.skipped.append(Skipped(node, reason))

    def id_for(self, node: ContentNode, kind: str) -> str:
        """Deterministic id of the ``kind`` resource made from ``node`` of this SR."""
        return report_scoped_id(self.sop_instance_uid, node.path, kind)

    def timing(self, node: ContentNode, inherited: Timing) -> Timing:
        """The node's Observation DateTime (0040,A032), else ``inherited`` (its nearest ancestor's).

        PS3.3 C.17.3: an item without an Observation DateTime takes its parent's, and the
        root's is the Content Date/Time, so callers pass the parent's timing down the tree.
        """
        if node.observation_datetime:
            timing = to_timing(node.observation_datetime, self.document_zone, self.document_timing.issued)
            if timing is not None:
                return timing
            self.note(node, f"Observation DateTime {node.observation_datetime!r} unreadable; used the parent's time")
        return inherited

    def imaging_study(self, study_uid: str | None = None) -> dict:
        """Logical reference to the ImagingStudy (this SR's study unless another is given)."""
        return imaging_study_reference(study_uid or self.study_uid)

    @staticmethod
    def ref(full_url: str) -> dict:
        """A literal Reference to an entry of this Bundle."""
        return {"reference": full_url}
