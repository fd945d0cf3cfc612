"""Access to ../shared (IG validator, real SR samples) for the tests.

Tests that need it skip with a reason when ../shared is absent (a user's clone), and fail
instead when SR2FHIR_REQUIRE_SHARED=1 (CI), so in CI they always run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mapping import serialize

SHARED = Path(__file__).resolve().parents[3] / "shared"
VALIDATOR = SHARED / "tools" / "validate-ig"
SAMPLES = SHARED / "samples" / "real"
IG_EXAMPLE_SR = SHARED / "spec" / "ig" / "input" / "dicom" / "Example-MeasurementReport.json"


def require_shared(path: Path = SHARED) -> Path:
    """``path`` inside ../shared, or skip (fail when SR2FHIR_REQUIRE_SHARED=1) when absent."""
    if path.exists():
        return path
    reason = f"{path} is absent (the project's ../shared reference folder is not beside this clone)"
    if os.environ.get("SR2FHIR_REQUIRE_SHARED") == "1":
        pytest.fail(f"SR2FHIR_REQUIRE_SHARED=1 but {reason}")
    pytest.skip(reason)


def validate(bundles: dict[str, dict], directory: Path) -> tuple[int, str]:
    """Run validate-ig on the Bundles (name -> Bundle); return (exit status, output)."""
    require_shared(VALIDATOR)
    files = []
    for name, bundle in bundles.items():
        path = directory / f"{name}.json"
        path.write_bytes(serialize(bundle))
        files.append(str(path))
    proc = subprocess.run([str(VALIDATOR), *files], capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def assert_conformant(bundles: dict[str, dict], directory: Path) -> None:
    """Fail with the validator's lines unless every Bundle passes with zero errors."""
    status, output = validate(bundles, directory)
    assert status == 0, f"validate-ig reported errors:\n{output}"
    assert " 0 error(s)" in output, output
