"""The ``--json PATH`` report every benchmark of issue 11 writes for ``bench/run_all.py``.

``{"bench": "<file stem>", "ratios": [{"name", "value", "target", "baseline", "figures"}]}``;
``value >= target`` means the target is met (``target`` null: no target, a figure only).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["json_report", "ratio", "write_json"]


@contextmanager
def json_report(path: Path | None, bench: str) -> Iterator[list[dict[str, Any]]]:
    """Collect ratios (:func:`ratio`) and write them to ``path`` (if any) as the protocol says."""
    ratios: list[dict[str, Any]] = []
    yield ratios
    if path is not None:
        write_json(path, bench, ratios)


def ratio(name: str, value: float, target: float | None, baseline: str, **figures: str) -> dict[str, Any]:
    """One entry of a ``--json`` report: ``value >= target`` means met."""
    return {"name": name, "value": round(value, 3), "target": target, "baseline": baseline, "figures": figures}


def write_json(path: Path, bench: str, ratios: list[dict[str, Any]]) -> None:
    """``{"bench": ..., "ratios": [...]}`` to ``path`` (bench/run_all.py reads it)."""
    path.write_text(json.dumps({"bench": bench, "ratios": ratios}, indent=2) + "\n", encoding="utf-8")
