"""Why an item was dead-lettered: the delivery outcome that ends an item's life in ``failed/``."""

from __future__ import annotations

from typing import Literal

__all__ = ["DeadLetterReason"]

DeadLetterReason = Literal["unmappable", "rejected", "retries_exhausted"]
"""Why an item went to ``failed/``: mapping failed, the server refused it (4xx), retries ran out."""
