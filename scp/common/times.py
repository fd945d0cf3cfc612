"""Timestamps as the spool, metrics and health checks write and read them, and clock types."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

__all__ = ["Clock", "Sleep", "epoch_seconds", "utc_now_iso"]

Clock = Callable[[], float]
"""Seconds: ``time.time`` for wall-clock instants, ``time.monotonic`` for durations."""

Sleep = Callable[[float], Awaitable[None]]
"""``asyncio.sleep`` or a test's stand-in."""


def utc_now_iso() -> str:
    """The current time as an ISO 8601 UTC timestamp with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def epoch_seconds(timestamp: str | None) -> float | None:
    """Unix time of an ISO 8601 timestamp (naive ones are UTC); None when absent or unreadable."""
    if not timestamp:
        return None
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
