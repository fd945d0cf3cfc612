"""Run every benchmark of issue 11, one after another, and print one table of ratios.

Run from the repository root: ``.venv/bin/python bench/run_all.py [--full] [--only NAME,...]``.
Each bench in :data:`BENCHES` runs as a subprocess with ``--json FILE`` and ``--quick`` (unless
``--full``: then with its documented counts), never two at once (their figures would disturb
each other). Their own printouts pass through; at the end one table: bench | ratio | value |
target | met | baseline. A bench file that is absent, or whose ``--help`` does not offer
``--json``, is listed as "not available"; one that skips itself (e.g. the HAPI jar is not built)
as "skipped" with its reason.

Exit status 0 whatever the targets (this is a report), 1 when a bench crashed (non-zero exit,
timeout, or no JSON report).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

BENCHES = ("convert_bench", "ingest_bench", "delivery_bench", "hapi_delivery_bench", "map_bench")
"""In the order they run; ``ingest_bench`` measures one and four associations, with
``dicom.listener_processes`` 1 and auto."""

TIMEOUT_S = {"quick": 900.0, "full": 3600.0}


@dataclass
class Outcome:
    """What one bench gave: its ratios, or why there are none."""

    bench: str
    status: str  # "ok", "skipped", "not available", "crashed"
    detail: str = ""
    ratios: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _options(path: Path) -> str:
    """The bench's ``--help`` text ("" when it cannot even print that)."""
    try:
        done = subprocess.run([sys.executable, str(path), "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout if done.returncode == 0 else ""


def run_bench(name: str, full: bool, work: Path) -> Outcome:
    """Run ``bench/<name>.py --json FILE [--quick]``, its output passing through."""
    path = BENCH_DIR / f"{name}.py"
    if not path.exists():
        return Outcome(name, "not available", f"bench/{name}.py is absent")
    options = _options(path)
    if "--json" not in options:
        return Outcome(name, "not available", f"bench/{name}.py has no --json option")
    report = work / f"{name}.json"
    command = [sys.executable, str(path), "--json", str(report)]
    if not full:
        if "--quick" in options:
            command.append("--quick")
    mode = "full" if full else "quick"
    print(f"\n=== {' '.join(['bench/' + path.name, *command[2:]])}", flush=True)
    start = time.perf_counter()
    lines: list[str] = []
    try:
        with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            assert proc.stdout is not None
            watchdog = threading.Timer(TIMEOUT_S[mode], proc.kill)  # a silent hang ends too
            watchdog.start()
            try:
                for line in proc.stdout:
                    print(line, end="", flush=True)
                    lines.append(line.rstrip("\n"))
                status = proc.wait()
            finally:
                watchdog.cancel()
    except OSError as exc:
        return Outcome(name, "crashed", f"could not start: {exc}")
    seconds = time.perf_counter() - start
    if seconds >= TIMEOUT_S[mode]:
        return Outcome(name, "crashed", f"killed after {TIMEOUT_S[mode]:.0f} s", seconds=seconds)
    if status != 0:
        return Outcome(name, "crashed", f"exit status {status}", seconds=seconds)
    try:
        ratios = json.loads(report.read_text(encoding="utf-8"))["ratios"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Outcome(name, "crashed", f"no readable JSON report ({type(exc).__name__}: {exc})", seconds=seconds)
    if not ratios:
        reason = next((line for line in lines if line.lower().startswith("skipped")), "no ratios reported")
        return Outcome(name, "skipped", reason, seconds=seconds)
    return Outcome(name, "ok", ratios=ratios, seconds=seconds)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def table(outcomes: list[Outcome]) -> list[str]:
    """The report: one row per ratio, or one per bench that gave none."""
    rows = [("bench", "ratio", "value", "target", "met", "baseline")]
    for outcome in outcomes:
        if outcome.status != "ok":
            rows.append((outcome.bench, outcome.status, "", "", "", outcome.detail))
            continue
        for entry in outcome.ratios:
            value, target = entry.get("value"), entry.get("target")
            met = "-" if target is None or value is None else ("yes" if value >= target else "NO")
            rows.append((outcome.bench, str(entry.get("name", "?")), _number(value), _number(target), met,
                         str(entry.get("baseline", ""))))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for index, row in enumerate(rows):
        lines.append(" | ".join([*(cell.ljust(width) for cell, width in zip(row[:5], widths)), row[5]]).rstrip())
        if index == 0:
            lines.append("-+-".join("-" * width for width in [*widths, len(row[5])]))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the documented counts (no --quick)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--json", type=Path, default=None, help="also write every bench's outcome to this file")
    args = parser.parse_args(argv)
    names = BENCHES if args.only is None else tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown bench {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    with tempfile.TemporaryDirectory(prefix="sr2fhir-bench-") as tmp:
        outcomes = [run_bench(name, args.full, Path(tmp)) for name in names]
    print(f"\n{'full' if args.full else 'quick (--quick; --full for the documented counts)'} run; "
          "met: value >= target")
    for line in table(outcomes):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps([outcome.__dict__ for outcome in outcomes], indent=2) + "\n",
                             encoding="utf-8")
    crashed = [o.bench for o in outcomes if o.status == "crashed"]
    if crashed:
        print(f"\ncrashed: {', '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
