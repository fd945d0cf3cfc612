"""The layout rules of ``scp/``: imports flow one way, no circles, ``convert`` stays light.

service → dicom / delivery / telemetry → spool / config; commands and the CLI on top. Read
from the source with :mod:`ast` (every import, including those inside functions; imports under
``if TYPE_CHECKING:`` are type hints only and are left out).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCP = ROOT / "scp"

# Package (first level below scp) -> the packages it may import. Modules directly in scp/ whose
# name starts with "spool" belong to the spool.
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "config": {"common"},
    "spool": {"config"},
    "dicom": {"spool", "config"},
    "delivery": {"spool", "config"},
    "telemetry": {"spool", "config", "delivery.reasons"},
    "service": {"dicom", "delivery", "telemetry", "spool", "config"},
    "commands": {"spool", "config", "telemetry.metrics_store"},  # spool status: the worker's published hold
    "cli": {"commands", "config", "service", "telemetry.logs"},
}
for _group in ALLOWED:  # the shared building blocks are below everything
    if _group != "common":
        ALLOWED[_group].add("common")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def group_of(module: str) -> str:
    """``scp.telemetry.audit`` -> ``telemetry``; ``scp.spool_journal`` -> ``spool``."""
    first = module.split(".")[1]
    return "spool" if first.startswith("spool") else first


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(absolute module imported from scp, line, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    type_only = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If) and _is_type_checking(stmt.test)
                 for node in ast.walk(stmt)}
    top_level = {id(stmt) for stmt in tree.body}
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base] if node.module else [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found += [(t, node.lineno, id(node) in top_level) for t in targets if t == "scp" or t.startswith("scp.")]
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def scp_modules() -> list[Path]:
    return sorted(SCP.rglob("*.py"))


def test_imports_flow_one_way():
    wrong = []
    for path in scp_modules():
        source = module_name(path)
        if source == "scp":
            continue
        group = group_of(source)
        for target, line, _ in imports_of(path):
            if target == "scp":
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports the scp package itself")
                continue
            target_group = group_of(target)
            if target_group == group:
                continue
            allowed = ALLOWED[group]
            if target_group in allowed or any(target == f"scp.{a}" or target.startswith(f"scp.{a}.")
                                               for a in allowed if "." in a):
                continue
            wrong.append(f"{path.relative_to(ROOT)}:{line} ({group}) imports {target} ({target_group})")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles_between_modules():
    graph = {module_name(p): {t for t, _, top in imports_of(p) if top} for p in scp_modules()}
    modules = set(graph)
    graph = {m: {t if t in modules else t.rpartition(".")[0] for t in targets} & modules for m, targets in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + ".") or node.startswith(nxt + ".") and nxt == node.rpartition(".")[0]:
                continue  # a package and its own modules (``__init__`` re-exports)
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_every_package_says_what_it_owns():
    for init in SCP.rglob("__init__.py"):
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring and len(docstring) > 40, f"{init.relative_to(ROOT)} needs a docstring saying what it owns"


def test_no_module_is_much_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in scp_modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    assert not long, long


def test_convert_loads_neither_the_network_stack_nor_the_service(tmp_path):
    example = ROOT / "examples" / "measurement-report.dcm"
    code = (
        "import sys\n"
        "from scp.cli import main\n"
        f"status = main(['convert', {str(example)!r}, '-o', {str(tmp_path / 'out.json')!r}])\n"
        "heavy = ('pynetdicom', 'prometheus_client', 'httpx', 'scp.service', 'scp.dicom', 'scp.telemetry', 'scp.config')\n"
        "print(status, sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0 []"
    assert (tmp_path / "out.json").stat().st_size > 0
