"""bench/run_all.py: one table of ratios over real benchmark subprocesses (here small stand-in
scripts), "not available" for an absent bench or one without ``--json``, a crash reported and
turned into exit status 1, a target missed reported but not failing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from bench import run_all

ARGS = "import argparse, json, sys\np = argparse.ArgumentParser()\np.add_argument('--json')\n"


def write_bench(directory: Path, name: str, body: str, *, quick: bool = True) -> None:
    options = ARGS + ("p.add_argument('--quick', action='store_true')\n" if quick else "")
    (directory / f"{name}.py").write_text(options + "args = p.parse_args()\n" + textwrap.dedent(body))


def report(bench: str, *ratios: tuple[str, float, float | None]) -> str:
    entries = [{"name": n, "value": v, "target": t, "baseline": "the same run", "figures": {}} for n, v, t in ratios]
    return f"open(args.json, 'w').write({json.dumps(json.dumps({'bench': bench, 'ratios': entries}))})\n"


@pytest.fixture
def benches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(run_all, "BENCH_DIR", tmp_path)
    monkeypatch.setattr(run_all, "BENCHES", ("good", "slow_target", "crashing", "skipping", "old", "absent"))
    write_bench(tmp_path, "good", "print('quick' if args.quick else 'full')\n" + report("good", ("a / b", 1.5, 1.0)))
    write_bench(tmp_path, "slow_target", report("slow_target", ("c / d", 0.4, 0.7), ("figure only", 2.0, None)),
                quick=False)
    write_bench(tmp_path, "crashing", "sys.exit('the server did not start')\n")
    write_bench(tmp_path, "skipping", "print('skipped: the jar is not built')\n" + report("skipping"))
    (tmp_path / "old.py").write_text("import argparse\nargparse.ArgumentParser().parse_args()\n")
    return tmp_path


def test_one_table_and_a_crash_makes_the_status_non_zero(benches: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = run_all.main(["--json", str(benches / "all.json")])

    out = capsys.readouterr().out
    table = out[out.index("bench "):].splitlines()
    rows = {tuple(cell.strip() for cell in line.split("|")[:5]) for line in table[2:]}
    assert ("good", "a / b", "1.5", "1", "yes") in rows
    assert ("slow_target", "c / d", "0.4", "0.7", "NO") in rows
    assert ("slow_target", "figure only", "2", "-", "-") in rows
    assert ("crashing", "crashed", "", "", "") in rows
    assert ("skipping", "skipped", "", "", "") in rows
    assert ("old", "not available", "", "", "") in rows
    assert ("absent", "not available", "", "", "") in rows
    assert "skipped: the jar is not built" in out and "bench/old.py has no --json option" in out
    assert "exit status 1" in out
    assert "\nquick\n" in out  # --quick passed to a bench that has it, not to one without
    assert status == 1
    assert [o["status"] for o in json.loads((benches / "all.json").read_text())] == [
        "ok", "ok", "crashed", "skipped", "not available", "not available"]


def test_missed_targets_alone_exit_zero_and_full_passes_no_quick(benches: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run_all.main(["--full", "--only", "good,slow_target,old,absent"]) == 0
    out = capsys.readouterr().out
    assert "\nfull\n" in out
    assert "crashing" not in out
