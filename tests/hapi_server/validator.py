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
                         *, xver_r5_for_r4: bool = False,
                         timeout_s: float = VALIDATE_TIMEOUT_S) -> list[dict[str, Any]]:
    """Validate ``paths`` (FHIR JSON files) with HAPI's FhirInstanceValidator; all issues found.

    ``ig_dir``: a folder of StructureDefinition/ValueSet/CodeSystem JSON files of ``version`` to
    load as well (R5: ``../shared/spec/ig-json``; R4: the dose IG compiled by ``tests/dose_ig``);
    its other files are ignored.
    ``xver_r5_for_r4`` (R4 only): give the engine definitions of the R5 cross-version extensions
    (``http://hl7.org/fhir/5.0/StructureDefinition/extension-<path>``) the files use, generated
    from the R5 core package (``XverR5ForR4.java``); without them the engine reports each use
    as an error (``Extension_EXT_Version_Invalid``).
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
    if xver_r5_for_r4:
        if version != "r4":
            raise ValueError("xver_r5_for_r4 is for version 'r4'")
        args.append("--xver-r5-for-r4")
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
