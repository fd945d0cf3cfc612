"""The HL7 validator engine as HAPI ships it (``sr2fhir.hapitest.Validate`` in this folder).

``validate_with_engine(paths, "r5", ig_dir)`` validates every file in one JVM (loading the core
definitions takes 5-16 s) and returns its issues, one dict each::

    {"file": ..., "severity": "error|warning|information|fatal", "location": ..., "message": ...,
     "messageId": ...}

Offline: code systems the engine does not hold (DICOM DCM, SNOMED CT, LOINC, UCUM, ...) give
warnings, not errors; structural and profile checks stay strict.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.hapi_server import JAR, JAVA_OPTIONS, HapiServerError, ensure_built, java_program

__all__ = ["VALIDATE_TIMEOUT_S", "validate_with_engine"]

VALIDATE_TIMEOUT_S = 600.0
_MAIN_CLASS = "sr2fhir.hapitest.Validate"


def validate_with_engine(paths: list[Path], version: str, ig_dir: Path | None = None,
                         *, timeout_s: float = VALIDATE_TIMEOUT_S) -> list[dict[str, Any]]:
    """Validate ``paths`` (FHIR JSON files) with HAPI's FhirInstanceValidator; all issues found.

    ``ig_dir`` (R5 only): a folder of StructureDefinition/ValueSet/CodeSystem JSON files to load
    as well (e.g. ``../shared/spec/ig-json``); its other files are ignored.
    """
    if version not in ("r5", "r4"):
        raise ValueError(f"version must be 'r5' or 'r4', not {version!r}")
    if not paths:
        return []
    java = java_program()
    ensure_built()
    args = [java, *JAVA_OPTIONS, "-cp", str(JAR), _MAIN_CLASS, "--fhir-version", version]
    if ig_dir is not None:
        args += ["--ig", str(ig_dir)]
    args += [str(path) for path in paths]
    try:
        completed = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise HapiServerError(f"the HAPI validator took over {timeout_s:g} s on {len(paths)} file(s)") from exc
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    if completed.returncode not in (0, 1) or not lines:
        raise HapiServerError(
            f"the HAPI validator failed with exit code {completed.returncode}:\n{completed.stderr.strip()[-4000:]}"
        )
    records = [json.loads(line) for line in lines]
    if not records[-1].get("summary"):
        raise HapiServerError(f"the HAPI validator printed no summary line:\n{completed.stderr.strip()[-4000:]}")
    return [record for record in records if not record.get("summary")]
