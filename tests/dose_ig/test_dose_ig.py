"""The Radiation Dose Summary IG compiled from FSH (build.sh) and the HL7 validator engine on R4.

The IG's own examples (``input/resources/bundle-sample.json`` and every FSH example SUSHI
compiled) pass with zero errors; copies broken in one place each fail with an error from the
profile rule they break. Everything is validated in one JVM (module fixture): loading R4 core and
the IG takes ~10 s, each file ~40 ms.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.dose_ig import (
    COMPILED,
    MODALITY_DEVICE,
    RADIATION_DOSE_SUMMARY,
    compiled_dose_ig,
    compiled_examples,
    errors,
    validate_dose_r4,
)
from tests.dose_ig.dicom_stand_in import CID33_URL
from tests.dose_ig.prepare_ig import PrepareError, drop_dependencies, remove_entities
from tests.support.conformance import SHARED, require_shared

pytestmark = pytest.mark.conformance

DOSE_IG = SHARED / "spec" / "dose-ig"
DLP_TOTAL = "113813"


def _set_code(code: str) -> Callable[[dict], None]:
    def mutate(observation: dict) -> None:
        observation["code"]["coding"][0]["code"] = code
    return mutate


def _device_type(code: str) -> Callable[[dict], None]:
    def mutate(device: dict) -> None:
        device["type"]["coding"][0]["code"] = code
    return mutate


def _remove(*keys: str) -> Callable[[dict], None]:
    def mutate(resource: dict) -> None:
        for key in keys:
            del resource[key]
    return mutate


def _value_quantity(observation: dict) -> None:
    del observation["valueString"]
    observation["valueQuantity"] = {"value": 203.12, "unit": "mGy.cm"}


def _logical_part_of(observation: dict) -> None:
    del observation["partOf"][0]["reference"]
    observation["partOf"][0]["type"] = "ImagingStudy"


def _dlp_component(observation: dict) -> dict:
    return next(component for component in observation["component"]
                if component["code"]["coding"][0]["code"] == DLP_TOTAL)


def _dlp_in_becquerel(observation: dict) -> None:
    _dlp_component(observation)["valueQuantity"].update(unit="MBq", system="http://unitsofmeasure.org", code="MBq")


def _without_dlp(observation: dict) -> None:
    observation["component"].remove(_dlp_component(observation))


# name -> (compiled example to break, how, expected error: (location, messageId, text in the message)).
BROKEN: dict[str, tuple[str, Callable[[dict], None], tuple[str, str, str]]] = {
    "observation-code-not-loinc-73569-6": (
        "Observation-139.json", _set_code("11111-1"),
        ("Observation.code", "TYPE_CHECKS_PATTERN_CC", f"defined in the profile {RADIATION_DOSE_SUMMARY}|1.0.0")),
    "observation-without-focus": (
        "Observation-139.json", _remove("focus"),
        ("Observation", "Validation_VAL_Profile_Minimum", f"Observation.focus: minimum required = 1, but only "
                                                          f"found 0 (from {RADIATION_DOSE_SUMMARY}|1.0.0)")),
    "observation-without-imaging-study": (
        "Observation-139.json", _remove("partOf"),
        ("Observation", "Validation_VAL_Profile_Minimum_SLICE", "Slice 'Observation.partOf:imagingStudyRef': "
                                                                "a matching slice is required")),
    "observation-without-effective": (
        "Observation-139.json", _remove("effectiveDateTime"),
        ("Observation", "Validation_VAL_Profile_Minimum", f"Observation.effective[x]: minimum required = 1, "
                                                          f"but only found 0 (from {RADIATION_DOSE_SUMMARY}")),
    "observation-value-not-string": (
        "Observation-139.json", _value_quantity,
        ("Observation.value.ofType(Quantity)", "Extension_PROF_Type",
         f"The Profile '{RADIATION_DOSE_SUMMARY}|1.0.0' definition allows for the type string but found type "
         "Quantity")),
    "device-type-not-a-modality": (
        # 113704 "Projection X-Ray" is a DCM code (R4 core's DCM holds it), not one of CID 33.
        "Device-539.json", _device_type("113704"),
        ("Device.type", "Terminology_TX_NoValid_1_CC", f"({CID33_URL}|2025.2.20250411), and a coding from this "
                                                       "value set is required")),
    "device-without-type": (
        "Device-539.json", _remove("type"),
        ("Device", "Validation_VAL_Profile_Minimum", f"Device.type: minimum required = 1, but only found 0 "
                                                     f"(from {MODALITY_DEVICE}|1.0.0)")),
    "device-without-ae-title": (
        "Device-539.json", _remove("identifier"),
        ("Device", "Validation_VAL_Profile_Minimum_SLICE", "Slice 'Device.identifier:aeTitle': a matching slice "
                                                          "is required")),
    # Not a broken resource: the engine counts no logical reference (type + identifier, no
    # `reference`) for a slice discriminated by type on `reference` (docs/VALIDATION.md).
    "observation-logical-imaging-study-reference": (
        "Observation-139.json", _logical_part_of,
        ("Observation", "Validation_VAL_Profile_Minimum_SLICE", "Slice 'Observation.partOf:imagingStudyRef': "
                                                                "a matching slice is required")),
}
# Copies the profile accepts: it binds component.code extensibly and constrains neither which
# components are present nor their units (README.md), so the mapping's tests must check those.
UNCONSTRAINED: dict[str, tuple[str, Callable[[dict], None]]] = {
    "dlp-total-in-becquerel": ("Observation-139.json", _dlp_in_becquerel),
    "without-dlp-total": ("Observation-139.json", _without_dlp),
}


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """File name -> issues, for the IG's examples and every broken or unconstrained copy, in one JVM."""
    bundle_sample = require_shared(DOSE_IG / "input" / "resources" / "bundle-sample.json")
    examples = compiled_examples()
    by_name = {path.name: path for path in examples}
    folder = tmp_path_factory.mktemp("dose-ig-copies")
    copies = []
    for name, (base, mutate, *_) in {**BROKEN, **UNCONSTRAINED}.items():
        resource = copy.deepcopy(json.loads(by_name[base].read_text(encoding="utf-8")))
        mutate(resource)
        path = folder / f"{name}.json"
        path.write_text(json.dumps(resource), encoding="utf-8")
        copies.append(path)
    issues = validate_dose_r4([bundle_sample, *examples, *copies])
    result: dict[str, list[dict[str, Any]]] = {path.name: [] for path in [bundle_sample, *examples, *copies]}
    for issue in issues:
        result[Path(issue["file"]).name].append(issue)
    return result


def test_sushi_compiles_the_profiles_with_zero_errors() -> None:
    require_shared(DOSE_IG)
    definitions = compiled_dose_ig()
    profiles = {}
    for path in definitions.glob("StructureDefinition-*.json"):
        resource = json.loads(path.read_text(encoding="utf-8"))
        profiles[resource["url"]] = resource
    assert {RADIATION_DOSE_SUMMARY, MODALITY_DEVICE} <= profiles.keys()
    assert profiles[RADIATION_DOSE_SUMMARY]["type"] == "Observation"
    assert profiles[MODALITY_DEVICE]["type"] == "Device"
    assert {profile["fhirVersion"] for profile in profiles.values()} == {"4.0.1"}
    # The Composition profile needs IPS and is left out (prepare_ig.EXCLUDED).
    assert not any(url.endswith("/radiation-summary-report") for url in profiles)
    sushi_log = (COMPILED.parent / "sushi.log").read_text(encoding="utf-8")
    assert " 0 Errors " in sushi_log


def test_the_igs_examples_have_no_errors(validated: dict[str, list[dict[str, Any]]]) -> None:
    examples = ["bundle-sample.json", *(path.name for path in compiled_examples())]
    profiled = {name for name in examples if name.startswith(("Observation-", "Device-"))}
    # The FSH examples of both profiles (and IndicationObservation's) were compiled and checked.
    assert {"Observation-139.json", "Observation-545.json", "Observation-122.json", "Device-539.json",
            "Device-12.json"} <= profiled

    found = {name: errors(validated[name]) for name in examples if errors(validated[name])}

    assert found == {}


def test_the_bundle_sample_is_checked_against_both_profiles(validated: dict[str, list[dict[str, Any]]]) -> None:
    """Its Observation and Device name the profiles, so the engine checks them against them."""
    sample = json.loads(require_shared(DOSE_IG / "input" / "resources" / "bundle-sample.json").read_text())
    profiles = {entry["resource"]["resourceType"]: entry["resource"].get("meta", {}).get("profile")
                for entry in sample["entry"]}
    assert profiles["Observation"] == [RADIATION_DOSE_SUMMARY]
    assert profiles["Device"] == [MODALITY_DEVICE]
    messages = [issue["message"] for issue in validated["bundle-sample.json"]]
    # A warning only the loaded profile can give: its extensible binding of component.code
    # ("Procedure reported", 121058, is not in the IG's own component value set).
    assert any("'Radiation Dose Summary component type'" in message for message in messages)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_copy_fails_on_the_profile_rule(validated: dict[str, list[dict[str, Any]]], name: str) -> None:
    location, message_id, text = BROKEN[name][2]

    found = errors(validated[f"{name}.json"])

    assert any(issue["location"] == location and issue["messageId"] == message_id and text in issue["message"]
               for issue in found), json.dumps(found, indent=1)


@pytest.mark.parametrize("name", sorted(UNCONSTRAINED))
def test_the_profile_leaves_component_units_and_presence_open(validated: dict[str, list[dict[str, Any]]],
                                                              name: str) -> None:
    assert errors(validated[f"{name}.json"]) == []


def test_remove_entities_removes_whole_blocks_and_insists_on_each() -> None:
    fsh = ("Alias: LOINC = http://loinc.org\n\nInstance: A\nInstanceOf: Patient\n* id = \"a\"\n\n"
           "Instance: B\nInstanceOf: Patient\n* id = \"b\"\n")

    kept = remove_entities(fsh, {("Instance", "A")}, Path("x.fsh"))

    assert kept == "Alias: LOINC = http://loinc.org\n\nInstance: B\nInstanceOf: Patient\n* id = \"b\"\n"
    with pytest.raises(PrepareError, match=r"x\.fsh: expected one `Instance: C`, found 0"):
        remove_entities(fsh, {("Instance", "C")}, Path("x.fsh"))


def test_drop_dependencies_removes_the_block_only() -> None:
    config = ("fhirVersion: 4.0.1\ndependencies:\n  hl7.fhir.uv.ips: 2.0.0\n  fhir.dicom:\n"
              "    version: 2025.2.20250411\n    \nparameters:\n  a: b\n")

    assert drop_dependencies(config, Path("sushi-config.yaml")) == "fhirVersion: 4.0.1\nparameters:\n  a: b\n"
    with pytest.raises(PrepareError, match="no top-level `dependencies:`"):
        drop_dependencies("fhirVersion: 4.0.1\n", Path("sushi-config.yaml"))
