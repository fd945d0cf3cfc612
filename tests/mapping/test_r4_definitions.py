"""The FHIR R4 (4.0.1) core definitions, and a structural checker of R4 Bundles built on them.

The definitions are HL7's own R4 StructureDefinitions, ValueSets and core extensions as
HAPI FHIR ships them in ``ca.uhn.hapi.fhir:hapi-fhir-validation-resources-r4`` (Maven
Central): the files HAPI's ``FhirInstanceValidator`` validates R4 with. (HL7's npm package
``hl7.fhir.r4.core`` is not on the npm registry; ``hl7.fhir.r4b.core`` is, but R4B is not R4.)
The first run fetches the jar with ``mvn dependency:copy`` into a cache directory
(``SR2FHIR_TEST_CACHE``, default ``~/.cache/sr2fhir-tests``) and keeps a compact JSON digest;
later runs are offline. Without Maven or the registry the R4 tests skip (fail when
``SR2FHIR_REQUIRE_SHARED=1``, as in CI).

:func:`check_bundle` checks what matters for "no R5 in an R4 Bundle": every resource type
exists in R4; every element exists at its path (choice types included) with R4's
cardinality and JSON type; required elements are present; codes of required bindings on
``code`` elements are in their R4 value sets; every literal reference resolves inside the
Bundle to a type R4 allows for that element; extensions have absolute URLs, either an R4
core extension or an HL7 cross-version one, and a value or nested extensions (ext-1); nothing
is empty (ele-1). It is not the HL7 validator (no FHIRPath invariants, no terminology server).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree

import pytest

ARTIFACT = "ca.uhn.hapi.fhir:hapi-fhir-validation-resources-r4:8.12.1"
JAR = "hapi-fhir-validation-resources-r4-8.12.1.jar"
_ROOT = "org/hl7/fhir/r4/model/"
_NS = "{http://hl7.org/fhir}"
_SD = "http://hl7.org/fhir/StructureDefinition/"
XVER_R5 = "http://hl7.org/fhir/5.0/StructureDefinition/extension-"
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DATE_TIME = re.compile(r"^([0-9]{4})(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01])(T([01][0-9]|2[0-3]):[0-5][0-9]:"
                        r"([0-5][0-9]|60)(\.[0-9]+)?(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$")
_INSTANT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$")
_STRINGS = {"string", "code", "id", "uri", "url", "canonical", "oid", "uuid", "markdown", "base64Binary", "date",
            "dateTime", "instant", "time", "xhtml"}
_INTEGERS = {"integer", "unsignedInt", "positiveInt"}


# --- the definitions ----------------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("SR2FHIR_TEST_CACHE") or Path.home() / ".cache" / "sr2fhir-tests")


def load_definitions() -> dict:
    """The digest of the R4 core definitions (fetched and built on first use)."""
    digest = cache_dir() / "r4-core-4.0.1.json"
    if not digest.exists():
        jar = _fetch_jar(cache_dir())
        digest.parent.mkdir(parents=True, exist_ok=True)
        tmp = digest.with_suffix(".tmp")
        tmp.write_text(json.dumps(_digest(jar)), encoding="utf-8")
        tmp.replace(digest)
    return json.loads(digest.read_text(encoding="utf-8"))


def _unavailable(reason: str) -> None:
    if os.environ.get("SR2FHIR_REQUIRE_SHARED") == "1":
        pytest.fail(f"SR2FHIR_REQUIRE_SHARED=1 but the R4 definitions are unavailable: {reason}")
    pytest.skip(f"R4 definitions unavailable: {reason}")


def _fetch_jar(directory: Path) -> Path:
    jar = directory / JAR
    if jar.exists():
        return jar
    mvn = shutil.which("mvn")
    if mvn is None:
        _unavailable("Maven (mvn) is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([mvn, "-q", "-B", "dependency:copy", f"-Dartifact={ARTIFACT}",
                           f"-DoutputDirectory={directory}"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not jar.exists():
        _unavailable(f"mvn dependency:copy {ARTIFACT} failed: {(proc.stdout + proc.stderr)[-400:]}")
    return jar


def _value(node, name: str) -> str | None:
    child = node.find(_NS + name)
    return child.get("value") if child is not None else None


def _digest(jar: Path) -> dict:
    with zipfile.ZipFile(jar) as archive:
        types: dict[str, dict] = {}
        for name in ("profile/profiles-types.xml", "profile/profiles-resources.xml"):
            for sd in ElementTree.fromstring(archive.read(_ROOT + name)).iter(_NS + "StructureDefinition"):
                kind, type_name, url = _value(sd, "kind"), _value(sd, "type"), _value(sd, "url")
                if kind not in ("resource", "complex-type", "primitive-type") or url != _SD + type_name:
                    continue
                types[type_name] = {"kind": kind, "elements": _elements(sd)}
        extensions = [_value(sd, "url") for sd in ElementTree.fromstring(
            archive.read(_ROOT + "extension/extension-definitions.xml")).iter(_NS + "StructureDefinition")]
        value_sets = _value_sets(ElementTree.fromstring(archive.read(_ROOT + "valueset/valuesets.xml")))
    return {"types": types, "extensions": sorted(e for e in extensions if e), "valueSets": value_sets}


def _elements(sd) -> dict[str, dict]:
    elements = {}
    snapshot = sd.find(_NS + "snapshot")
    for element in snapshot.iter(_NS + "element"):
        path = _value(element, "path")
        types = []
        for type_node in element.findall(_NS + "type"):
            code = _value(type_node, "code")
            if code.startswith("http://hl7.org/fhirpath/System."):
                code = "string"
            targets = [t.get("value").rsplit("/", 1)[-1] for t in type_node.findall(_NS + "targetProfile")]
            types.append({"code": code, "targets": targets})
        binding = element.find(_NS + "binding")
        elements[path] = {
            "min": int(_value(element, "min") or 0),
            "max": _value(element, "max") or "*",
            "types": types,
            "contentReference": (_value(element, "contentReference") or "").lstrip("#") or None,
            "binding": [_value(binding, "strength"), (_value(binding, "valueSet") or "").split("|")[0]]
            if binding is not None else None,
        }
    return elements


def _value_sets(bundle) -> dict[str, list[str]]:
    """Value set URL -> codes, for the sets that name whole code systems or listed codes."""
    systems: dict[str, list[str]] = {}
    for code_system in bundle.iter(_NS + "CodeSystem"):
        systems[_value(code_system, "url")] = [_value(c, "code") for c in code_system.iter(_NS + "concept")]
    sets = {}
    for value_set in bundle.iter(_NS + "ValueSet"):
        compose = value_set.find(_NS + "compose")
        if compose is None:
            continue
        codes: list[str] = []
        for include in compose.findall(_NS + "include"):
            listed = [_value(c, "code") for c in include.findall(_NS + "concept")]
            if include.find(_NS + "filter") is not None or include.find(_NS + "valueSet") is not None:
                codes = []
                break
            codes += listed or systems.get(_value(include, "system"), [])
        if codes:
            sets[_value(value_set, "url")] = codes
    return sets


@pytest.fixture(scope="session")
def r4_definitions() -> dict:
    """The R4 core definitions digest (see the module docstring)."""
    return load_definitions()


# --- the checker --------------------------------------------------------------------------

class _Checker:
    def __init__(self, definitions: dict, bundle: dict) -> None:
        self.types = definitions["types"]
        self.extensions = set(definitions["extensions"])
        self.value_sets = definitions["valueSets"]
        self.errors: list[str] = []
        self.by_url: dict[str, str] = {}
        self.by_literal: dict[str, str] = {}
        for entry in bundle.get("entry", []):
            resource = entry.get("resource", {})
            if "fullUrl" in entry:
                self.by_url[entry["fullUrl"]] = resource.get("resourceType")
            if "id" in resource:
                self.by_literal[f"{resource['resourceType']}/{resource['id']}"] = resource["resourceType"]

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def resource(self, resource: dict, where: str) -> None:
        kind = resource.get("resourceType")
        definition = self.types.get(kind)
        if definition is None or definition["kind"] != "resource":
            self.error(where, f"resourceType {kind!r} is not an R4 resource")
            return
        self.complex(resource, kind, kind, where, skip={"resourceType"})

    def complex(self, node: dict, type_name: str, path: str, where: str, skip: frozenset | set = frozenset(),
                nested: bool = False) -> None:
        """``node`` at element ``path`` of the StructureDefinition of ``type_name``."""
        elements = self.types[type_name]["elements"]
        if not node:
            self.error(where, "empty object (ele-1)")
        present = set()
        for key, value in node.items():
            if key in skip:
                continue
            found = self.element(elements, path, key)
            if found is None:
                self.error(where, f"{path}.{key}: no such element in R4")
                continue
            element_path, definition, type_code = found
            present.add(element_path)
            self.value(value, definition, type_code, type_name, element_path, f"{where}.{key}")
        for child_path, definition in elements.items():
            if definition["min"] > 0 and child_path.rsplit(".", 1)[0] == path and child_path not in present:
                self.error(where, f"{child_path}: required (min {definition['min']}) but absent")
        if type_name == "Extension":
            self.extension(node, where, nested)

    @staticmethod
    def element(elements: dict, path: str, key: str):
        direct = elements.get(f"{path}.{key}")
        if direct is not None:
            code = direct["types"][0]["code"] if len(direct["types"]) == 1 else None
            return f"{path}.{key}", direct, code
        for element_path, definition in elements.items():
            if element_path.startswith(f"{path}.") and element_path.endswith("[x]"):
                stem = element_path[len(path) + 1:-3]
                if "." in stem or not key.startswith(stem):
                    continue
                for type_ in definition["types"]:
                    code = type_["code"]
                    if key == stem + code[0].upper() + code[1:]:
                        return element_path, {**definition, "types": [type_]}, code
        return None

    def value(self, value, definition: dict, type_code: str | None, type_name: str, path: str, where: str) -> None:
        repeats = definition["max"] != "1" and definition["max"] != "0"
        if repeats != isinstance(value, list):
            self.error(where, f"{path}: max {definition['max']} but JSON {'array' if isinstance(value, list) else 'value'}")
            return
        items = value if isinstance(value, list) else [value]
        if not items:
            self.error(where, "empty array (ele-1)")
        for position, item in enumerate(items):
            here = f"{where}[{position}]" if repeats else where
            if definition["contentReference"]:
                self.complex(item, type_name, definition["contentReference"], here) if isinstance(item, dict) else \
                    self.error(here, "expected an object")
            elif type_code in ("BackboneElement", "Element") and path.count("."):
                self.complex(item, type_name, path, here) if isinstance(item, dict) else self.error(here, "expected an object")
            elif type_code == "Resource":
                self.resource(item, here)
            elif type_code is None:
                self.error(here, f"{path}: ambiguous type")
            elif self.types.get(type_code, {}).get("kind") == "primitive-type":
                self.primitive(item, type_code, definition, here)
            else:
                if not isinstance(item, dict):
                    self.error(here, f"{path}: expected a {type_code} object")
                    continue
                self.complex(item, type_code, type_code, here, nested=type_code == type_name == "Extension")
                if type_code == "Reference":
                    self.reference(item, definition["types"][0]["targets"], here)

    def primitive(self, item, code: str, definition: dict, where: str) -> None:
        ok = {
            "boolean": isinstance(item, bool),
            "decimal": isinstance(item, (Decimal, int, float)) and not isinstance(item, bool),
        }.get(code, isinstance(item, int) and not isinstance(item, bool) if code in _INTEGERS else isinstance(item, str))
        if not ok:
            self.error(where, f"{code}: wrong JSON type {type(item).__name__}")
            return
        if isinstance(item, str) and (item == "" or item != item.strip() and code != "string"):
            self.error(where, f"{code}: empty or padded value {item!r}")
        if code == "id" and not _ID.match(item):
            self.error(where, f"id {item!r} is not a FHIR id")
        if code == "dateTime" and not _DATE_TIME.match(item):
            self.error(where, f"dateTime {item!r} malformed")
        if code == "instant" and not _INSTANT.match(item):
            self.error(where, f"instant {item!r} malformed")
        binding = definition.get("binding")
        if code == "code" and binding and binding[0] == "required" and binding[1] in self.value_sets:
            if item not in self.value_sets[binding[1]]:
                self.error(where, f"code {item!r} not in required value set {binding[1]}")

    def reference(self, reference: dict, targets: list[str], where: str) -> None:
        literal = reference.get("reference")
        if literal is not None:
            target = self.by_url.get(literal)
            if target is None:
                match = re.search(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$", literal)
                target = self.by_literal.get(f"{match.group(1)}/{match.group(2)}") if match else None
            if target is None:
                self.error(where, f"reference {literal!r} does not resolve inside the Bundle")
                return
        else:
            target = reference.get("type")
            if target is None:
                return  # display-only (e.g. an assigner)
        if targets and "Resource" not in targets and target not in targets:
            self.error(where, f"reference to {target} where R4 allows {sorted(targets)}")

    def extension(self, extension: dict, where: str, nested: bool) -> None:
        url = extension.get("url", "")
        has_value = any(key.startswith("value") for key in extension)
        if has_value == ("extension" in extension):
            self.error(where, f"extension {url}: needs a value or nested extensions, not both (ext-1)")
        if nested and "://" not in url:
            return  # a nested extension of a complex one: a relative name
        if not (url in self.extensions or url.startswith(XVER_R5)):
            self.error(where, f"extension {url}: neither an R4 core extension nor an HL7 cross-version one")


def check_resource(definitions: dict, resource: dict) -> list[str]:
    """Problems of one R4 resource on its own (references are not resolved)."""
    checker = _Checker(definitions, {"entry": [{"resource": resource}]})
    checker.resource(resource, resource.get("resourceType", "?"))
    return checker.errors


def check_bundle(definitions: dict, bundle: dict) -> list[str]:
    """Problems of an R4 Bundle (see the module docstring); empty when it is fine."""
    checker = _Checker(definitions, bundle)
    checker.resource(bundle, "Bundle")
    return checker.errors


# --- the checker's own tests --------------------------------------------------------------

def _bundle(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{r['id']}", "resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources]}


SUBJECT = {"type": "Patient", "identifier": {"value": "PID-1"}}
OBSERVATION = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}, "subject": SUBJECT}


def test_a_plain_r4_observation_passes(r4_definitions):
    assert check_bundle(r4_definitions, _bundle(OBSERVATION)) == []


@pytest.mark.parametrize("change, message", [
    ({"bodyStructure": {"reference": "urn:uuid:o1"}}, "no such element in R4"),
    ({"status": "finalized"}, "not in required value set"),
    ({"code": [{"text": "x"}]}, "max 1 but JSON array"),
    ({"derivedFrom": [{"reference": "urn:uuid:b1"}]}, "reference to Basic where R4 allows"),
    ({"derivedFrom": [{"reference": "urn:uuid:nowhere"}]}, "does not resolve inside the Bundle"),
    ({"extension": [{"url": "bodySite", "valueString": "x"}]}, "neither"),
    ({"extension": [{"url": "http://example.org/x"}]}, "needs a value"),
    ({"issued": "2024-01-01"}, "instant"),
    ({"note": []}, "empty array"),
])
def test_the_checker_finds_r5_and_broken_content(r4_definitions, change, message):
    basic = {"resourceType": "Basic", "id": "b1", "code": {"text": "x"}}
    errors = check_bundle(r4_definitions, _bundle({**OBSERVATION, **change}, basic))
    assert any(message in e for e in errors), errors


def test_the_checker_refuses_r5_only_resources_and_device_name_types(r4_definitions):
    selection = {"resourceType": "ImagingSelection", "id": "s1", "status": "available", "code": {"text": "x"}}
    assert any("not an R4 resource" in e for e in check_bundle(r4_definitions, _bundle(selection)))
    device = {"resourceType": "Device", "id": "d1", "deviceName": [{"name": "x", "type": "registered-name"}]}
    assert any("required value set" in e for e in check_bundle(r4_definitions, _bundle(device)))
    device["deviceName"][0]["type"] = "model-name"
    assert check_bundle(r4_definitions, _bundle(device)) == []
