"""``sr2fhir convert --jobs N`` as a real process: the same output, stderr lines and exit status
whatever N is, in input order; measured values written with the SR's own digits; a progress
bar on a terminal (a pty) and nothing of it anywhere else.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.support import sr_builders as sr

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_SR = REPO / "examples" / "measurement-report.dcm"
PROGRESS = re.compile(r"\[[#.]{30}\] \d+/\d+ files")


def _run(*args: object, stderr: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scp.cli", *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=stderr, text=True, timeout=300, check=False)


def _report(name: str, *values: str, **options: object) -> Dataset:
    """A TID 1500 report with one group whose NUMs have the given DS values (default 12.5)."""
    measurements = [sr.num_item(sr.LENGTH, value, sr.MM) for value in (values or ("12.5",))]
    group = sr.measurement_group(tracking_identifier=f"Lesion {name}", measurements=measurements)
    return sr.measurement_report([group], sop_instance_uid=sr.uid(f"jobs:{name}"), **options)


def _with_skipped_scoord(name: str) -> Dataset:
    group = sr.measurement_group(finding=None, items=[sr.scoord_item("POINT", [1, 1], source=None)],
                                 measurements=[sr.num_item(sr.LENGTH, 12.5, sr.MM)])
    return sr.measurement_report([group], sop_instance_uid=sr.uid(f"jobs:{name}"))


@pytest.fixture
def mixed_inputs(tmp_path: Path) -> list[Path]:
    """Good reports, reports with warnings, and bad files of every kind, interleaved."""
    inputs = []
    example = EXAMPLE_SR.read_bytes()
    for i in range(14):
        path = tmp_path / f"in-{i:02}.dcm"
        kind = i % 7
        if kind == 0:
            path.write_text("not DICOM at all\n")
        elif kind == 1:
            path.write_bytes(example[: len(example) // 2])
        elif kind == 2:
            path = tmp_path / f"missing-{i:02}.dcm"
        elif kind == 3:
            path.write_bytes(sr.to_part10_bytes(_report(f"nopid-{i}", patient_id=None)))
        elif kind == 4:
            path.write_bytes(sr.to_part10_bytes(_with_skipped_scoord(f"warn-{i}")))
        else:
            path.write_bytes(sr.to_part10_bytes(_report(f"good-{i}")))
        inputs.append(path)
    return inputs


def _error_and_warning_paths(stderr: str) -> list[str]:
    """The file each stderr line names, in order (every line is an error or a warning)."""
    lines = stderr.splitlines()
    assert all(re.match(r"sr2fhir: (error|warning): ", line) for line in lines), stderr
    return [line.split(": ")[2] for line in lines]


class TestJobs:
    def test_stdout_stderr_and_status_do_not_depend_on_jobs(self, mixed_inputs: list[Path]) -> None:
        one = _run("convert", *mixed_inputs, "--jobs", 1)
        two = _run("convert", *mixed_inputs, "--jobs", 2)
        assert one.returncode == two.returncode == 1
        assert two.stdout == one.stdout
        assert two.stderr == one.stderr
        good = [p for i, p in enumerate(mixed_inputs) if i % 7 >= 4]
        assert len(two.stdout.splitlines()) == len(good)
        named = _error_and_warning_paths(two.stderr)
        assert named == sorted(named, key=lambda path: [str(p) for p in mixed_inputs].index(path))
        errors = [line for line in two.stderr.splitlines() if line.startswith("sr2fhir: error: ")]
        assert len(errors) == len(mixed_inputs) - len(good)
        assert "Traceback" not in two.stderr

    def test_bundles_come_out_in_input_order(self, tmp_path: Path) -> None:
        inputs = []
        for i in range(9):
            path = tmp_path / f"{i}.dcm"
            path.write_bytes(sr.to_part10_bytes(_report(f"order-{i}")))
            inputs.append(path)
        inputs.reverse()
        result = _run("convert", *inputs, "--jobs", 2)
        assert result.returncode == 0, result.stderr
        one_by_one = [_run("convert", path, "--compact").stdout for path in inputs]
        assert result.stdout == "".join(one_by_one)

    def test_output_dir_is_byte_identical_with_one_and_two_jobs(self, mixed_inputs: list[Path], tmp_path: Path) -> None:
        one, two = tmp_path / "one", tmp_path / "two"
        assert _run("convert", *mixed_inputs, "-d", one, "--jobs", 1).returncode == 1
        assert _run("convert", *mixed_inputs, "-d", two, "--jobs", 2).returncode == 1
        names = sorted(p.name for p in one.iterdir())
        assert len(names) == sum(1 for i in range(len(mixed_inputs)) if i % 7 >= 4)
        assert sorted(p.name for p in two.iterdir()) == names
        for name in names:
            assert (two / name).read_bytes() == (one / name).read_bytes()

    def test_output_dir_with_two_jobs_keeps_the_later_of_two_inputs_with_one_uid(self, tmp_path: Path) -> None:
        """Workers write hidden files, renamed in input order: the later input wins, as with one
        job; the file's mode is that of one job's; nothing hidden stays behind."""
        inputs = []
        for i, value in enumerate(["11.5", "22.5"] * 3):
            path = tmp_path / f"same-uid-{i}.dcm"
            path.write_bytes(sr.to_part10_bytes(_report("same", value)))
            inputs.append(path)
        one, two = tmp_path / "one", tmp_path / "two"
        assert _run("convert", *inputs, "-d", one, "--jobs", 1).returncode == 0
        assert _run("convert", *inputs, "-d", two, "--jobs", 2).returncode == 0
        (name,) = [p.name for p in one.iterdir()]
        assert [p.name for p in two.iterdir()] == [name]
        assert b"22.5" in (two / name).read_bytes() and b"11.5" not in (two / name).read_bytes()
        assert (two / name).read_bytes() == (one / name).read_bytes()
        assert (two / name).stat().st_mode == (one / name).stat().st_mode

    def test_output_dir_is_not_made_when_nothing_converts(self, tmp_path: Path) -> None:
        bad = [tmp_path / f"bad-{i}.dcm" for i in range(4)]
        for path in bad:
            path.write_text("not DICOM\n")
        assert _run("convert", *bad, "-d", tmp_path / "out", "--jobs", 2).returncode == 1
        assert not (tmp_path / "out").exists()

    def test_output_file_with_jobs(self, tmp_path: Path) -> None:
        one, two = tmp_path / "one.json", tmp_path / "two.json"
        assert _run("convert", EXAMPLE_SR, "-o", one, "--jobs", 1).returncode == 0
        assert _run("convert", EXAMPLE_SR, "-o", two, "--jobs", 2).returncode == 0
        assert two.read_bytes() == one.read_bytes()
        assert json.loads(one.read_bytes())["resourceType"] == "Bundle"

    @pytest.mark.parametrize("jobs", ["0", "-1", "two"])
    def test_jobs_must_be_a_positive_number(self, jobs: str) -> None:
        result = _run("convert", EXAMPLE_SR, "--jobs", jobs)
        assert result.returncode == 2
        assert result.stdout == ""
        assert "--jobs" in result.stderr and "Traceback" not in result.stderr


class TestMeasuredValuesKeepTheirDigits:
    VALUES = ("1.10", "0.000012500", "1.5E-7", "-2.50e+12", "123456789.1234", "100")

    @pytest.mark.parametrize("compact", [False, True])
    def test_decimals_are_written_as_the_sr_spells_them(self, tmp_path: Path, compact: bool) -> None:
        path = tmp_path / "digits.dcm"
        path.write_bytes(sr.to_part10_bytes(_report("digits", *self.VALUES)))
        result = _run("convert", path, *(["--compact"] if compact else []))
        assert result.returncode == 0, result.stderr
        values = re.findall(r'"value": ?([-+0-9.eE]+)', result.stdout)
        assert [Decimal(v) for v in values] == [Decimal(v) for v in self.VALUES]
        assert values == [str(Decimal(v)) for v in self.VALUES]  # 1.10 stays 1.10: no float rounding
        assert "1.10" in values and "1.5E-7" in values


def _many_inputs(tmp_path: Path, count: int) -> list[Path]:
    path = tmp_path / "report.dcm"
    path.write_bytes(sr.to_part10_bytes(_with_skipped_scoord("progress")))
    return [path] * count


class TestProgress:
    def test_no_progress_when_stderr_is_not_a_terminal(self, tmp_path: Path) -> None:
        inputs = _many_inputs(tmp_path, 25)
        result = _run("convert", *inputs, "-d", tmp_path / "out", "--jobs", 2)
        assert result.returncode == 0
        assert "files" not in result.stderr and "\r" not in result.stderr
        assert set(_error_and_warning_paths(result.stderr)) == {str(inputs[0])}

    def test_progress_bar_on_a_terminal(self, tmp_path: Path) -> None:
        inputs = _many_inputs(tmp_path, 25)
        terminal, stderr_end = pty.openpty()
        try:
            with open(tmp_path / "stdout", "wb") as stdout_file:  # a file: a full pipe would block the writer
                process = subprocess.Popen(
                    [sys.executable, "-m", "scp.cli", "convert", *map(str, inputs), "--jobs", "2"],
                    cwd=REPO, stdout=stdout_file, stderr=stderr_end, stdin=subprocess.DEVNULL)
            os.close(stderr_end)
            stderr_end = -1
            seen = _read_until_closed(terminal)
            assert process.wait(timeout=300) == 0
            stdout = (tmp_path / "stdout").read_text()
        finally:
            os.close(terminal)
            if stderr_end != -1:
                os.close(stderr_end)
        shown = seen.decode()
        assert "[" + "#" * 30 + "] 25/25 files" in shown
        assert PROGRESS.search(shown)
        assert "sr2fhir: warning: " in shown  # the warnings still reach the terminal, above the bar
        assert len(stdout.splitlines()) == 25 and all(json.loads(line) for line in stdout.splitlines())

    def test_no_progress_on_a_terminal_for_a_few_inputs(self, tmp_path: Path) -> None:
        inputs = _many_inputs(tmp_path, 3)
        terminal, stderr_end = pty.openpty()
        try:
            process = subprocess.Popen([sys.executable, "-m", "scp.cli", "convert", *map(str, inputs)],
                                       cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr_end, stdin=subprocess.DEVNULL)
            os.close(stderr_end)
            stderr_end = -1
            seen = _read_until_closed(terminal)
            assert process.wait(timeout=300) == 0
        finally:
            os.close(terminal)
            if stderr_end != -1:
                os.close(stderr_end)
        assert "sr2fhir: warning: " in seen.decode()
        assert not PROGRESS.search(seen.decode())


def _read_until_closed(fd: int) -> bytes:
    """Everything written to the pty until its last writer closes it (EIO on Linux)."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
