"""The example SR the quick start converts is the one examples/make_example.py writes."""

from __future__ import annotations

from pathlib import Path

from examples.make_example import example_report
from tests.support import sr_builders as sr

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "measurement-report.dcm"


def test_shipped_example_is_regenerated_byte_for_byte():
    assert EXAMPLE.read_bytes() == sr.to_part10_bytes(example_report()), (
        "examples/measurement-report.dcm is stale: run `python examples/make_example.py`")
