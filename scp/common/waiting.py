"""Wait for a stop event, but no longer than a timeout (the idle step of every worker loop)."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["wait_or_timeout"]


async def wait_or_timeout(stop: asyncio.Event, timeout_s: float) -> bool:
    """Return as soon as ``stop`` is set (True) or after ``timeout_s`` seconds (False)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=timeout_s)
    return stop.is_set()
