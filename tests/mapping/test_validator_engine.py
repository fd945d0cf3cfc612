"""The HL7 validator engine (HAPI's FhirInstanceValidator) on everything the mapping produces.

Every corpus report (``tests.support.corpus``) in every write mode, as R5 (checked against the
IG's profiles, ``../shared/spec/ig-json``) and as R4 (``basic`` and ``omit``, checked against R4
core plus definitions of the R5 cross-version extensions generated from the R5 core package, see
``tests/hapi_server/src/main/java/sr2fhir/hapitest/XverR5ForR4.java``). One JVM per release, both
at once. Errors must be none but the ACCEPTED ones below, and each accepted error must occur (so
the lists cannot rot). A summary of the warnings by messageId is printed (``pytest -s``).

docs/VALIDATION.md explains what is loaded, the accepted errors and warnings, and the figures.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mapping import MappingOptions, serialize
from tests.support.conformance import SHARED, require_shared
from tests.support.corpus import corpus_bundles

pytestmark = pytest.mark.conformance

WRITE_MODES = ("put", "conditional", "conditional-update")
IG_JSON = SHARED / "spec" / "ig-json"
XVER = "http://hl7.org/fhir/5.0/StructureDefinition/extension-"

# (messageId, message pattern, reason). Each must occur at least once in the run.
ACCEPTED_R5 = [
    ("Validation_VAL_Profile_Minimum_SLICE",
     r"Slice '(Observation\.partOf:imagingStudyRef|Observation\.basedOn:serviceRequestRef|"
     r"ImagingSelection\.derivedFrom:imagingStudyRef|ImagingSelection\.basedOn:serviceRequestRef|"
     r"Observation\.derivedFrom:imagingStudyRef)': a matching slice is required",
     # The IG slices these by {type: type, path: reference}. The ImagingStudy / ServiceRequest
     # is usually not on the server, so the mapping writes a logical reference (Reference.type +
     # identifier, no Reference.reference). The engine evaluates the discriminator on
     # `reference` only (core 6.7.9 InstanceValidator.sliceMatches; no setting consults
     # Reference.type), so no logical reference can fill the slice. validate-ig, the project's
     # primary validator, counts Reference.type; the IG's examples only pass by using literal
     # references to resources in the same example set.
     "logical reference (Reference.type + identifier) not counted by a type discriminator on `reference`"),
    ("Validation_VAL_Profile_MatchMultiple",
     r"derived-imaging-measurement.*Element matches more than one slice - imagingMeasurementGroupRef, sourceSRContentItem",
     # IG defect: derived-imaging-measurement slices derivedFrom by type on the string
     # `reference`, so a reference matches both slices (Observation and ImagingSelection targets).
     # The IG's own example Observation-derived-imaging-measurement.json gets the same error.
     "IG defect: derived-imaging-measurement derivedFrom slices overlap"),
    ("Reference_REF_CantMatchChoice",
     r"Unable to find a profile match for .* among choices: .*imaging-measurement-group",
     # Follow-on of the overlap above: the engine checks the ImagingSelection target against the
     # imagingMeasurementGroupRef slice's target profile too.
     "follow-on of the derivedFrom slice overlap (IG defect)"),
    ("Reference_REF_BadTargetType",
     r"Invalid Resource target type\. Found ImagingSelection, but expected one of \(\[Observation\]\)",
     # Follow-on of the overlap above: the ImagingSelection is checked against the Observation-only slice.
     "follow-on of the derivedFrom slice overlap (IG defect)"),
]
ACCEPTED_R4 = [
    ("Terminology_PassThrough_TX_Message",
     r"Unknown code 'http://dicom\.nema\.org/resources/ontology/DCM#(130401|130488)'",
     # R4 core carries a 2019 snapshot of DICOM's DCM code system ("01", content complete);
     # 130401 "Visual Explanation" and 130488 "Region In Space" (the IG's ImagingSelection
     # codes, in ImagingSelection.code of the R4 Basic) were added to PS3.16 later. A
     # Coding.version does not help: the engine still checks the R4 copy.
     "DCM codes newer than R4 core's DCM snapshot"),
]


def _accepted(issue: dict, accepted: list[tuple[str, str, str]]) -> tuple[str, str, str] | None:
    for entry in accepted:
        message_id, pattern, _ = entry
        if issue["messageId"] == message_id and re.search(pattern, issue["message"]):
            return entry
    return None


def _write(bundles: dict[str, dict], directory: Path, prefix: str) -> list[Path]:
    paths = []
    for name, bundle in bundles.items():
        path = directory / f"{prefix}-{name}.json"
        path.write_bytes(serialize(bundle))
        paths.append(path)
    return paths


def _mutants(bundle: dict, directory: Path) -> dict[str, Path]:
    """R4 Bundles with one broken cross-version extension each: the generated definitions must
    reject them (they are not a blanket pass)."""
    def first_basic_with(url: str, data: dict) -> dict:
        for entry in data["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "Basic" and any(e["url"] == url for e in resource.get("extension", ())):
                return resource
        raise AssertionError(f"no Basic with {url}")

    cases = {}

    def case(name: str, url: str, change) -> None:
        data = copy.deepcopy(bundle)
        basic = first_basic_with(XVER + url, data)
        change(next(e for e in basic["extension"] if e["url"] == XVER + url))
        path = directory / f"mutant-{name}.json"
        path.write_text(json.dumps(data))
        cases[name] = path

    def wrong_type(ext: dict) -> None:
        ext["valueString"] = ext.pop("valueId")

    def missing_uid(ext: dict) -> None:
        ext["extension"] = [e for e in ext["extension"] if e["url"] != "uid"]

    def unknown_child(ext: dict) -> None:
        ext["extension"].append({"url": "noSuchElement", "valueString": "x"})

    def value_on_backbone(ext: dict) -> None:
        ext["valueString"] = "x"

    case("wrong-type", "ImagingSelection.studyUid", wrong_type)
    case("missing-uid", "ImagingSelection.instance", missing_uid)
    case("unknown-child", "ImagingSelection.instance", unknown_child)
    case("value-on-backbone", "ImagingSelection.instance", value_on_backbone)
    return cases


def _run(version: str, paths: list[Path]) -> tuple[list[dict], float]:
    from tests.hapi_server.validator import validate_with_engine

    started = time.monotonic()
    if version == "r5":
        issues = validate_with_engine(paths, "r5", IG_JSON)
    else:
        issues = validate_with_engine(paths, "r4", xver_r5_for_r4=True)
    return issues, time.monotonic() - started


@pytest.fixture(scope="module")
def engine_results(tmp_path_factory):
    require_shared(IG_JSON)
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.skip("java and mvn are needed for the HAPI validator engine")
    directory = tmp_path_factory.mktemp("engine")
    started = time.monotonic()
    r5_paths: list[Path] = []
    r4_paths: list[Path] = []
    for mode in WRITE_MODES:
        r5_paths += _write(corpus_bundles(MappingOptions(write_mode=mode)), directory, f"r5-{mode}")
        for selection in ("basic", "omit"):
            options = MappingOptions(write_mode=mode, fhir_version="r4", r4_imaging_selection=selection)
            r4_paths += _write(corpus_bundles(options), directory, f"r4-{mode}-{selection}")
    template = json.loads(next(p for p in r4_paths if p.name == "r4-put-basic-every-profile-comprehensive.json")
                          .read_text())
    mutants = _mutants(template, directory)
    mapped = time.monotonic() - started
    with ThreadPoolExecutor(max_workers=2) as pool:
        r5 = pool.submit(_run, "r5", r5_paths)
        r4 = pool.submit(_run, "r4", r4_paths + list(mutants.values()))
        (r5_issues, r5_seconds), (r4_issues, r4_seconds) = r5.result(), r4.result()
    mutant_files = {str(path): name for name, path in mutants.items()}
    print(f"\nvalidator engine: mapped {len(r5_paths)} R5 + {len(r4_paths)} R4 Bundles in {mapped:.1f} s; "
          f"R5 engine {r5_seconds:.1f} s, R4 engine {r4_seconds:.1f} s (in parallel); "
          f"total {time.monotonic() - started:.1f} s")
    return {
        "r5": [i for i in r5_issues],
        "r4": [i for i in r4_issues if i["file"] not in mutant_files],
        "mutants": {name: [i for i in r4_issues if mutant_files.get(i["file"]) == name] for name in mutants},
        "files": {"r5": len(r5_paths), "r4": len(r4_paths)},
    }


def _errors(issues: list[dict]) -> list[dict]:
    return [i for i in issues if i["severity"] in ("error", "fatal")]


def _summary(version: str, issues: list[dict], accepted: list) -> str:
    lines = [f"--- {version}: {len(issues)} issues"]
    by_id = Counter((i["severity"], i["messageId"]) for i in issues)
    for (severity, message_id), count in sorted(by_id.items(), key=lambda kv: (kv[0][0], -kv[1])):
        lines.append(f"  {severity:11} {count:6}  {message_id}")
    for entry in accepted:
        count = sum(1 for i in _errors(issues) if _accepted(i, [entry]) is entry)
        lines.append(f"  accepted error x{count}: {entry[2]}")
    return "\n".join(lines)


@pytest.mark.parametrize("version", ["r5", "r4"])
def test_no_errors_but_the_accepted_ones(engine_results, version):
    issues = engine_results[version]
    accepted = ACCEPTED_R5 if version == "r5" else ACCEPTED_R4
    print("\n" + _summary(version, issues, accepted))
    unexpected = [i for i in _errors(issues) if _accepted(i, accepted) is None]
    shown = "\n".join(f"{Path(i['file']).name} {i['location']}: [{i['messageId']}] {i['message']}"
                      for i in unexpected[:40])
    assert not unexpected, f"{len(unexpected)} unexpected {version} error(s) from the validator engine:\n{shown}"
    unused = [entry[2] for entry in accepted if not any(_accepted(i, [entry]) is entry for i in _errors(issues))]
    assert not unused, f"accepted {version} errors that no longer occur (remove them here and in docs/VALIDATION.md): {unused}"


def test_every_file_was_validated(engine_results):
    """Each file the engine saw yields at least its dom-6 warnings: nothing was silently skipped."""
    for version in ("r5", "r4"):
        files = {i["file"] for i in engine_results[version]}
        assert len(files) == engine_results["files"][version], version


@pytest.mark.parametrize(("mutant", "pattern"), [
    ("wrong-type", r"(not allowed|is not a valid type|The type 'string' is not valid|type .*string)"),
    ("missing-uid", r"(uid|minimum required = 1)"),
    ("unknown-child", r"(noSuchElement|does not match any|closed)"),
    ("value-on-backbone", r"(value|max allowed = 0|maximum allowed = 0)"),
])
def test_xver_definitions_reject_broken_extensions(engine_results, mutant, pattern):
    """The generated cross-version extension definitions check type, cardinality and children."""
    errors = _errors(engine_results["mutants"][mutant])
    assert errors, f"the engine accepted the broken extension ({mutant})"
    assert any(re.search(pattern, e["message"]) for e in errors), [e["message"] for e in errors]
