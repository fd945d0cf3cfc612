"""Copy the Radiation Dose Summary IG source into a build folder, ready for an offline SUSHI run,
and sort what SUSHI generated (build.sh runs both)::

    python tests/dose_ig/prepare_ig.py copy SOURCE_DIR DEST_DIR
    python tests/dose_ig/prepare_ig.py publish GENERATED_DIR OUT_DIR

``copy``: the source (``../shared/spec/dose-ig``) is never written. The copy differs from it in two ways,
both needed because the packages are not on any registry this project reaches (README.md):

- ``sushi-config.yaml``: the ``dependencies`` block (``hl7.fhir.uv.ips`` 2.0.0, ``fhir.dicom``)
  is removed; only ``hl7.fhir.r4.core`` 4.0.1 (from HAPI's jars) is loaded.
- The FSH entities that need IPS, and those built on them, are removed (``EXCLUDED``).

Each exclusion must match exactly once, so a changed source fails here instead of compiling
something else silently.

``publish``: SUSHI's ``fsh-generated/resources`` into ``OUT_DIR/definitions`` (StructureDefinition,
ValueSet, CodeSystem: what the validator loads) and ``OUT_DIR/examples`` (the IG's example
instances).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

# (file under input/fsh, entity keyword, entity name) -> why it is left out.
EXCLUDED: dict[tuple[str, str, str], str] = {
    ("RadiationSummaryReport.fsh", "Profile", "RadiationSummaryReport"):
        "Composition profile: section[pregnancyObservation].entry only Reference(ObservationPregnancyStatusUvIps), an IPS profile",
    ("Instances.fsh", "Instance", "PregnancyStatus-1"):
        "example InstanceOf: ObservationPregnancyStatusUvIps (IPS)",
    ("Instances.fsh", "Instance", "RadiationSummaryReport-1"):
        "example InstanceOf: RadiationSummaryReport (the excluded Composition profile)",
}
DROPPED_DEPENDENCIES = ("hl7.fhir.uv.ips", "fhir.dicom")
DEFINITION_TYPES = ("StructureDefinition", "ValueSet", "CodeSystem")
COPIED = ("sushi-config.yaml", "input/fsh", "input/pagecontent", "input/resources")

_ENTITY = re.compile(
    r"^(Alias|Profile|Extension|Logical|Resource|Instance|ValueSet|CodeSystem|Invariant|RuleSet|Mapping)\s*:\s*(\S+)")


class PrepareError(Exception):
    """The IG source is not what this script expects (names the file and the missing part)."""


def split_entities(text: str) -> list[tuple[str | None, str | None, str]]:
    """FSH text as (keyword, name, text) blocks, each from an entity line to the next one."""
    blocks: list[tuple[str | None, str | None, list[str]]] = [(None, None, [])]
    for line in text.splitlines(keepends=True):
        match = _ENTITY.match(line)
        if match:
            blocks.append((match.group(1), match.group(2), []))
        blocks[-1][2].append(line)
    return [(keyword, name, "".join(lines)) for keyword, name, lines in blocks]


def remove_entities(text: str, entities: set[tuple[str, str]], where: Path) -> str:
    """``text`` without the FSH ``entities`` ((keyword, name)); each must occur exactly once."""
    blocks = split_entities(text)
    for keyword, name in sorted(entities):
        found = sum(1 for block in blocks if (block[0], block[1]) == (keyword, name))
        if found != 1:
            raise PrepareError(f"{where}: expected one `{keyword}: {name}`, found {found}")
    return "".join(block for keyword, name, block in blocks if (keyword, name) not in entities)


def drop_dependencies(config: str, where: Path) -> str:
    """``sushi-config.yaml`` text without its top-level ``dependencies:`` block."""
    lines = config.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith("dependencies:")), None)
    if start is None:
        raise PrepareError(f"{where}: no top-level `dependencies:` key")
    end = start + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
        end += 1
    kept = "".join(lines[:start] + lines[end:])
    for package in DROPPED_DEPENDENCIES:
        if package in kept:
            raise PrepareError(f"{where}: `{package}` is still named after removing `dependencies:`")
    return kept


def prepare(source: Path, dest: Path) -> None:
    """Replace ``dest`` with the prepared copy of ``source``."""
    for part in COPIED:
        if not (source / part).exists():
            raise PrepareError(f"{source / part} is missing (see the IG's SOURCE.md)")
    if dest.exists():
        shutil.rmtree(dest)
    for part in COPIED:
        if (source / part).is_dir():
            shutil.copytree(source / part, dest / part)
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / part, dest / part)
    config = dest / "sushi-config.yaml"
    config.write_text(drop_dependencies(config.read_text(encoding="utf-8"), source / "sushi-config.yaml"),
                      encoding="utf-8")
    by_file: dict[str, set[tuple[str, str]]] = {}
    for file, keyword, name in EXCLUDED:
        by_file.setdefault(file, set()).add((keyword, name))
    for file, entities in sorted(by_file.items()):
        path = dest / "input" / "fsh" / file
        text = remove_entities(path.read_text(encoding="utf-8"), entities, source / "input" / "fsh" / file)
        if text.strip():
            path.write_text(text, encoding="utf-8")
        else:
            path.unlink()


def publish(generated: Path, out: Path) -> tuple[int, int]:
    """Sort SUSHI's output into ``out/definitions`` and ``out/examples``; (definitions, examples) counted.

    Examples are the resources the generated ImplementationGuide marks as such (``Usage: #example``
    in FSH); the CapabilityStatements (``Usage: #definition``) are neither.
    """
    guides = sorted(generated.glob("ImplementationGuide-*.json"))
    if len(guides) != 1:
        raise PrepareError(f"{generated}: expected one ImplementationGuide-*.json from SUSHI, found {len(guides)}")
    guide = json.loads(guides[0].read_text(encoding="utf-8"))
    examples = {entry["reference"]["reference"] for entry in guide["definition"]["resource"]
                if entry.get("exampleBoolean") or entry.get("exampleCanonical")}
    counts = {"definitions": 0, "examples": 0}
    for folder in counts:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for path in sorted(generated.glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        if resource.get("resourceType") in DEFINITION_TYPES:
            folder = "definitions"
        elif f"{resource.get('resourceType')}/{resource.get('id')}" in examples:
            folder = "examples"
        else:
            continue
        shutil.copyfile(path, out / folder / path.name)
        counts[folder] += 1
    if not counts["definitions"]:
        raise PrepareError(f"{generated}: SUSHI wrote no StructureDefinition, ValueSet or CodeSystem")
    return counts["definitions"], counts["examples"]


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[1] not in ("copy", "publish"):
        print("usage: prepare_ig.py copy SOURCE_DIR DEST_DIR | publish GENERATED_DIR OUT_DIR", file=sys.stderr)
        return 2
    try:
        if argv[1] == "copy":
            prepare(Path(argv[2]), Path(argv[3]))
        else:
            definitions, examples = publish(Path(argv[2]), Path(argv[3]))
            print(f"{definitions} definitions, {examples} examples")
    except PrepareError as exc:
        print(f"prepare_ig.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
