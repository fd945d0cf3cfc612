"""Why delivery stopped for an item or for everything: dead-letter reasons and hold reasons.

Plain data shared with the observers (metrics, audit trail, readiness), which may import this
module but not the forwarder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["DeadLetterReason", "HoldReason"]

DeadLetterReason = Literal["unmappable", "rejected", "retries_exhausted"]
"""Why an item went to ``failed/``: mapping failed, the server refused it (4xx), retries ran out."""

_DETAIL_MAX = 300


@dataclass(frozen=True, slots=True)
class HoldReason:
    """Why the whole queue is held: the FHIR endpoint itself is wrong (see :mod:`.hold`).

    ``problem`` is a :class:`fhir_client.EndpointProblem` value (a fixed set: safe as a metric
    label), ``status_code`` the HTTP status of the answer that started the hold (``None`` for a
    TLS failure), ``detail`` the client's diagnostics (may quote the server: kept out of
    ``/readyz`` and metrics), ``since`` the Unix time the hold began.
    """

    problem: str
    status_code: int | None
    detail: str
    since: float

    def headline(self) -> str:
        """Short words for status lines: ``FHIR server answers 401``."""
        code = self.status_code
        if self.problem == "token_refused":
            if code is not None and 200 <= code < 300:
                return "token endpoint issues no token"
            return f"token endpoint answers {code}" if code is not None else "token endpoint refuses"
        if self.problem == "tls":
            return "TLS with the FHIR server fails"
        if self.problem == "unreachable":
            return "FHIR server unreachable (its FHIR version is not known yet)"
        if self.problem == "unsupported_version":
            return "FHIR server speaks an unsupported FHIR version"
        if code is None:
            return f"FHIR endpoint problem ({self.problem})"
        if self.problem == "not_fhir":
            return f"FHIR server answers {code} without FHIR"
        return f"FHIR server answers {code}"

    def status_line(self) -> str:
        """``delivery held: FHIR server answers 401 since 02:13`` (local time, as journald shows it)."""
        return f"delivery held: {self.headline()} since {datetime.fromtimestamp(self.since):%H:%M}"

    def since_iso(self) -> str:
        """``since`` as ISO 8601 UTC, e.g. ``2026-11-27T02:13:05+00:00``."""
        return datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds")

    def to_json(self) -> dict[str, Any]:
        return {"problem": self.problem, "status_code": self.status_code, "detail": self.detail, "since": self.since}

    @classmethod
    def from_json(cls, data: Any) -> HoldReason | None:
        """The reason in ``data``, or None when it holds none (or not one we can read)."""
        if not isinstance(data, dict):
            return None
        try:
            code = data.get("status_code")
            return cls(str(data["problem"]), int(code) if code is not None else None, str(data.get("detail", "")),
                       float(data["since"]))
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def of(cls, problem: str, status_code: int | None, detail: str, since: float | None = None) -> HoldReason:
        """A reason with ``detail`` cut to a readable length and ``since`` defaulting to now."""
        text = detail if len(detail) <= _DETAIL_MAX else detail[: _DETAIL_MAX - 3] + "..."
        return cls(problem, status_code, text, time.time() if since is None else since)
