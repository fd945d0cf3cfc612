"""The HL7 Radiation Dose Summary IG (R4), compiled from its FSH source, for conformance checks.

``build.sh`` compiles ``../shared/spec/dose-ig`` with SUSHI, offline (README.md). From Python::

    definitions = compiled_dose_ig()          # build/compiled/definitions (builds when stale)
    issues = validate_dose_r4([path, ...])    # HL7 validator engine, R4 core + the IG's profiles
    assert not errors(issues)

A resource is checked against the IG's profiles when its ``meta.profile`` names them
(``http://hl7.org/fhir/uv/radiation-dose-summary/StructureDefinition/radiation-dose-summary``,
``.../modality-device``), inside a Bundle too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.hapi_server.validator import validate_with_engine

__all__ = [
    "CANONICAL",
    "DoseIgError",
    "MODALITY_DEVICE",
    "RADIATION_DOSE_SUMMARY",
    "compiled_dose_ig",
    "compiled_examples",
    "errors",
    "validate_dose_r4",
]

DOSE_IG_DIR = Path(__file__).resolve().parent
BUILD_SCRIPT = DOSE_IG_DIR / "build.sh"
COMPILED = DOSE_IG_DIR / "build" / "compiled"
BUILD_TIMEOUT_S = 1200.0
CANONICAL = "http://hl7.org/fhir/uv/radiation-dose-summary"
RADIATION_DOSE_SUMMARY = f"{CANONICAL}/StructureDefinition/radiation-dose-summary"
MODALITY_DEVICE = f"{CANONICAL}/StructureDefinition/modality-device"


class DoseIgError(RuntimeError):
    """The dose IG could not be compiled (the message ends with build.sh's output)."""


def compiled_dose_ig() -> Path:
    """The folder of the IG's compiled StructureDefinition/ValueSet/CodeSystem JSON.

    Runs ``build.sh`` first (it returns at once when its inputs have not changed; it holds a lock,
    so parallel test processes build once). Raises :class:`DoseIgError` with the tail of its output
    when the build fails or ``../shared/spec/dose-ig`` is absent.
    """
    try:
        completed = subprocess.run([str(BUILD_SCRIPT)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise DoseIgError(f"{BUILD_SCRIPT} took over {BUILD_TIMEOUT_S:.0f} s") from exc
    output = (completed.stdout + completed.stderr).strip()
    if completed.returncode != 0:
        raise DoseIgError(f"{BUILD_SCRIPT} failed with exit code {completed.returncode}:\n{output[-6000:]}")
    definitions = COMPILED / "definitions"
    if not definitions.is_dir():
        raise DoseIgError(f"{BUILD_SCRIPT} produced no {definitions}:\n{output[-6000:]}")
    return definitions


def compiled_examples() -> list[Path]:
    """The IG's FSH example instances as SUSHI compiled them (builds when stale)."""
    compiled_dose_ig()
    return sorted((COMPILED / "examples").glob("*.json"))


def validate_dose_r4(paths: list[Path]) -> list[dict[str, Any]]:
    """Every issue the HL7 validator engine finds in ``paths`` (R4 JSON) with the IG loaded.

    One dict per issue (``file, severity, location, message, messageId``), as
    :func:`tests.hapi_server.validator.validate_with_engine` returns them. Offline: unknown code
    systems (LOINC, SNOMED CT) are warnings; DCM codes are checked against R4 core's DCM copy.
    """
    return validate_with_engine(paths, "r4", ig_dir=compiled_dose_ig())


def errors(issues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issues of severity error or fatal."""
    return [issue for issue in issues if issue["severity"] in ("error", "fatal")]
