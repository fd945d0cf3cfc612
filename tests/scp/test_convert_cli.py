"""``sr2fhir convert`` through ``scp.cli.main([...])``: Bundles on stdout or in files, warnings
and one-line errors on stderr, exit status 0 (all converted), 1 (some input failed) or 2 (usage).

Most tests call ``main`` in-process and read the streams with ``capsys``; one class runs the
console entry point as a real subprocess, where nothing but the process boundary is in between.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from scp.cli import main
from tests.support import sr_builders as sr

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_SR = REPO / "examples" / "measurement-report.dcm"
EXAMPLE_BYTES = EXAMPLE_SR.read_bytes()

@dataclass(frozen=True)
class CliResult:
    status: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


@pytest.fixture
def sr2fhir(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """``sr2fhir("convert", ...)`` in-process: exit status (argparse exits included) and captured streams."""
    def run(*args: object) -> CliResult:
        try:
            status = main([str(arg) for arg in args])
        except SystemExit as exc:
            status = exc.code
        out, err = capsys.readouterr()
        return CliResult(status, out, err)

    return run


@pytest.fixture
def write_sr(tmp_path: Path) -> Callable[..., Path]:
    """``write_sr(name, dataset)``: the dataset as a Part-10 file in ``tmp_path``."""

    def write(name: str, ds: Dataset) -> Path:
        path = tmp_path / name
        path.write_bytes(sr.to_part10_bytes(ds))
        return path

    return write


def _report(name: str, **options: object) -> Dataset:
    """A small TID 1500 report with its own SOP Instance UID (one group, one NUM)."""
    group = sr.measurement_group(tracking_identifier=f"Lesion {name}",
                                 measurements=[sr.num_item(sr.LENGTH, 12.5, sr.MM)])
    return sr.measurement_report([group], sop_instance_uid=sr.uid(f"cli:{name}"), **options)


def _report_with_scoord_lacking_its_source_image() -> Dataset:
    """The SCOORD is the group's 4th child: content-item path 1.5.1.4."""
    group = sr.measurement_group(
        finding=None,
        items=[sr.scoord_item("POLYLINE", [1, 1, 5, 1, 5, 5, 1, 1], source=None)],
        measurements=[sr.num_item(sr.LENGTH, 12.5, sr.MM)],
    )
    return sr.measurement_report([group], sop_instance_uid=sr.uid("cli:no-source"))


def _bundle(text: str) -> dict:
    bundle = json.loads(text)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    assert bundle["entry"]
    return bundle


def _compact(bundle: dict) -> str:
    return json.dumps(bundle, ensure_ascii=False, separators=(",", ":"))


def _observation_instants(bundle: dict) -> list[str]:
    return [e["resource"]["issued"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]


def assert_one_error_line(result: CliResult, path: Path, problem: str) -> None:
    """Non-zero exit, nothing on stdout, exactly ``sr2fhir: error: <path>: <problem>`` on stderr."""
    assert result.status == 1
    assert result.out == ""
    assert "Traceback" not in result.err
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith(f"sr2fhir: error: {path}: ")
    assert problem.lower() in result.err_lines[0].lower()


# --- Tests -----------------------------------------------------------------------------------------


class TestConvertToStdout:
    def test_example_sr_prints_one_json_bundle_and_exits_0(self, sr2fhir: Callable[..., CliResult]) -> None:
        result = sr2fhir("convert", EXAMPLE_SR)
        assert result.status == 0
        bundle = _bundle(result.out)
        assert all(e["fullUrl"].startswith("urn:uuid:") and e["request"]["method"] == "PUT" for e in bundle["entry"])
        # Since main's 0c0c5cc the example's segmentation source images give warnings; no error.
        assert all(line.startswith(f"sr2fhir: warning: {EXAMPLE_SR}: ") for line in result.err_lines)

    def test_default_output_is_indented_and_compact_is_one_line(self, sr2fhir: Callable[..., CliResult]) -> None:
        indented = sr2fhir("convert", EXAMPLE_SR)
        compact = sr2fhir("convert", EXAMPLE_SR, "--compact")
        assert indented.out.count("\n") > 100
        assert compact.out.count("\n") == 1 and compact.out.endswith("\n")
        assert json.loads(compact.out) == json.loads(indented.out)
        assert compact.out == _compact(json.loads(compact.out)) + "\n"

    def test_skipped_items_are_warnings_on_stderr_naming_file_and_content_item_path(
            self, sr2fhir: Callable[..., CliResult], write_sr: Callable[..., Path]) -> None:
        path = write_sr("no-source.dcm", _report_with_scoord_lacking_its_source_image())
        result = sr2fhir("convert", path)
        assert result.status == 0
        _bundle(result.out)  # stdout is the Bundle alone
        assert result.err_lines
        assert all(line.startswith(f"sr2fhir: warning: {path}: ") for line in result.err_lines)
        scoord = [line for line in result.err_lines if ": 1.5.1.4 " in line]
        assert len(scoord) == 1
        assert "(DCM,111030)" in scoord[0] and "source image" in scoord[0]

    def test_several_inputs_print_one_compact_bundle_per_line(
            self, sr2fhir: Callable[..., CliResult], write_sr: Callable[..., Path]) -> None:
        first, second = write_sr("a.dcm", _report("a")), write_sr("b.dcm", _report("b"))
        result = sr2fhir("convert", first, EXAMPLE_SR, second)
        assert result.status == 0
        lines = result.out.splitlines()
        assert len(lines) == 3
        bundles = [_bundle(line) for line in lines]
        assert all(line == _compact(bundle) for line, bundle in zip(lines, bundles))
        assert bundles[1] == json.loads(sr2fhir("convert", EXAMPLE_SR).out)  # in input order
        assert len({line for line in lines}) == 3

    def test_same_input_twice_gives_byte_identical_output(self, sr2fhir: Callable[..., CliResult]) -> None:
        first = sr2fhir("convert", EXAMPLE_SR)
        second = sr2fhir("convert", EXAMPLE_SR)
        assert first.out == second.out
        twice = sr2fhir("convert", EXAMPLE_SR, EXAMPLE_SR)
        lines = twice.out.splitlines()
        assert len(lines) == 2 and lines[0] == lines[1]


class TestOutputFiles:
    def test_output_file_holds_the_bundle_and_stdout_stays_empty(
            self, sr2fhir: Callable[..., CliResult], tmp_path: Path) -> None:
        target = tmp_path / "bundle.json"
        result = sr2fhir("convert", EXAMPLE_SR, "-o", target)
        assert result.status == 0 and result.out == ""
        assert all(line.startswith(f"sr2fhir: warning: {EXAMPLE_SR}: ") for line in result.err_lines)
        assert target.read_text("utf-8") == sr2fhir("convert", EXAMPLE_SR).out

    def test_output_dir_writes_one_file_named_after_each_sop_instance_uid(
            self, sr2fhir: Callable[..., CliResult], write_sr: Callable[..., Path], tmp_path: Path) -> None:
        first, second = write_sr("a.dcm", _report("a")), write_sr("b.dcm", _report("b"))
        out_dir = tmp_path / "out" / "nested"
        result = sr2fhir("convert", first, second, "-d", out_dir)
        assert result.status == 0 and result.out == ""
        expected = {f"{sr.uid('cli:a')}.json", f"{sr.uid('cli:b')}.json"}
        assert {p.name for p in out_dir.iterdir()} == expected
        for name in expected:
            _bundle((out_dir / name).read_text("utf-8"))

    def test_output_file_with_two_inputs_is_a_usage_error(
            self, sr2fhir: Callable[..., CliResult], tmp_path: Path) -> None:
        target = tmp_path / "bundle.json"
        result = sr2fhir("convert", EXAMPLE_SR, EXAMPLE_SR, "-o", target)
        assert result.status == 2
        assert "--output" in result.err and "Traceback" not in result.err
        assert result.out == "" and not target.exists()


class TestOptions:
    def test_conditional_write_mode_posts_every_entry_with_if_none_exist(
            self, sr2fhir: Callable[..., CliResult]) -> None:
        bundle = _bundle(sr2fhir("convert", EXAMPLE_SR, "--write-mode", "conditional").out)
        for entry in bundle["entry"]:
            request, resource = entry["request"], entry["resource"]
            assert request["method"] == "POST"
            assert request["url"] == resource["resourceType"]
            assert request["ifNoneExist"].startswith("identifier=")
            assert "id" not in resource

    def test_conditional_bundles_key_resources_on_the_put_ids(self, sr2fhir: Callable[..., CliResult]) -> None:
        put = _bundle(sr2fhir("convert", EXAMPLE_SR).out)
        conditional = _bundle(sr2fhir("convert", EXAMPLE_SR, "--write-mode", "conditional").out)
        put_ids = {e["fullUrl"] for e in put["entry"]}
        keys = [e["request"]["ifNoneExist"].split("|", 1)[1] for e in conditional["entry"]]
        synthetic = [k for k in keys if k.startswith("urn:uuid:")]
        assert synthetic and set(synthetic) <= put_ids

    def test_timezone_gives_the_offset_of_an_sr_without_timezone_offset(
            self, sr2fhir: Callable[..., CliResult], write_sr: Callable[..., Path]) -> None:
        path = write_sr("winter.dcm", _report("winter", content_date="20240115", content_time="101500"))
        utc = _observation_instants(_bundle(sr2fhir("convert", path).out))
        berlin = _observation_instants(_bundle(sr2fhir("convert", path, "--timezone", "Europe/Berlin").out))
        assert utc and set(utc) == {"2024-01-15T10:15:00+00:00"}
        assert set(berlin) == {"2024-01-15T10:15:00+01:00"}

    def test_timezone_offset_from_utc_in_the_sr_wins_over_the_option(
            self, sr2fhir: Callable[..., CliResult], write_sr: Callable[..., Path]) -> None:
        path = write_sr("offset.dcm", _report("offset", content_date="20240115", timezone_offset="+0530"))
        instants = _observation_instants(_bundle(sr2fhir("convert", path, "--timezone", "Europe/Berlin").out))
        assert set(instants) == {"2024-01-15T10:15:00+05:30"}

    def test_unknown_timezone_is_a_usage_error(self, sr2fhir: Callable[..., CliResult]) -> None:
        result = sr2fhir("convert", EXAMPLE_SR, "--timezone", "Mars/Olympus_Mons")
        assert result.status == 2
        assert result.out == ""
        assert "--timezone" in result.err and "Mars/Olympus_Mons" in result.err
        assert "Traceback" not in result.err and "ValidationError" not in result.err


def _ct_image() -> Dataset:
    """A minimal CT Image Storage instance (header only): a DICOM file that is not an SR."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sr.CT_IMAGE_STORAGE, sr.uid("cli:ct")
    ds.PatientID, ds.PatientName = "PID-1", "Doe^Jane"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = sr.uid("study"), sr.uid("cli:ct-series")
    ds.Modality, ds.Rows, ds.Columns = "CT", 2, 2
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _without_content_sequence() -> Dataset:
    ds = _report("no-content")
    del ds.ContentSequence
    return ds


def _not_tid1500() -> Dataset:
    ds = _report("not-1500")
    ds.ConceptNameCodeSequence = [sr.coded("18748-4", "LN", "Diagnostic imaging report")]
    del ds.ContentTemplateSequence
    return ds


BAD_DATASETS: dict[str, tuple[Callable[[], Dataset], str]] = {
    "ct-image": (_ct_image, "not a Structured Report"),
    "no-content-sequence": (_without_content_sequence, "Content Sequence"),
    "not-tid1500": (_not_tid1500, "TID 1500"),
    "no-patient-id": (lambda: _report("no-patient", patient_id=None), "Patient ID"),
}
CUT_SIZES = [1, 100, 128, 132, 140, 300, 1000, len(EXAMPLE_BYTES) // 2, len(EXAMPLE_BYTES) - 8,
             len(EXAMPLE_BYTES) - 1]


class TestBadInputs:
    """Every bad input: exit 1, stdout empty, one line ``sr2fhir: error: <path>: <problem>``."""

    def test_text_file(self, sr2fhir: Callable[..., CliResult], tmp_path: Path) -> None:
        path = tmp_path / "notes.txt"
        path.write_text("this is not DICOM\n")
        assert_one_error_line(sr2fhir("convert", path), path, "not a DICOM")

    def test_empty_file(self, sr2fhir: Callable[..., CliResult], tmp_path: Path) -> None:
        path = tmp_path / "empty.dcm"
        path.write_bytes(b"")
        assert_one_error_line(sr2fhir("convert", path), path, "not a DICOM")

    @pytest.mark.parametrize("size", CUT_SIZES)
    def test_truncated_copy_of_the_example(self, sr2fhir: Callable[..., CliResult], tmp_path: Path,
                                           size: int) -> None:
        path = tmp_path / f"cut-{size}.dcm"
        path.write_bytes(EXAMPLE_BYTES[:size])
        assert_one_error_line(sr2fhir("convert", path), path, "")

    @pytest.mark.parametrize("size", [141, 143])
    def test_truncated_inside_the_file_meta_group_length(self, sr2fhir: Callable[..., CliResult],
                                                        tmp_path: Path, size: int) -> None:
        path = tmp_path / f"cut-{size}.dcm"
        path.write_bytes(EXAMPLE_BYTES[:size])
        assert_one_error_line(sr2fhir("convert", path), path, "")

    def test_graphic_data_of_the_wrong_byte_length(self, sr2fhir: Callable[..., CliResult], tmp_path: Path) -> None:
        """An FL value of 6 bytes (1.5 floats): pydicom cannot decode it while the CLI reads the file."""
        (ct, ct_1), = sr.ct_image_refs(1)
        group = sr.measurement_group(items=[sr.scoord_item("POINT", [1, 2], sr.source_image(ct, ct_1))],
                                     measurements=[sr.num_item(sr.LENGTH, 1, sr.MM)])
        # undefined lengths: the file stays consistent when bytes are cut
        data = sr.to_part10_bytes(sr.with_undefined_lengths(sr.measurement_report([group])))
        header = b"\x70\x00\x22\x00FL\x08\x00"  # (0070,0022) Graphic Data, FL, 8 bytes
        at = data.index(header)
        path = tmp_path / "short-fl.dcm"
        path.write_bytes(data[:at] + b"\x70\x00\x22\x00FL\x06\x00" + data[at + 8:at + 14] + data[at + 16:])
        assert_one_error_line(sr2fhir("convert", path), path, "")

    def test_corrupted_length_reports_one_line_without_patient_data(
            self, sr2fhir: Callable[..., CliResult], tmp_path: Path) -> None:
        """The SOP Class UID's length runs 1 KB into the Patient module (mapping.map_sr echoes such a
        value: tests/mapping/test_properties.py TestMessagesCarryNoPatientData; the CLI must not)."""
        data = bytearray(sr.to_part10_bytes(_report("corrupt", patient_name="Secretname^Patricia")))
        body = 132 + 12 + int.from_bytes(data[140:144], "little")
        length_at = data.index(b"\x08\x00\x16\x00UI", body) + 6  # (0008,0016) SOP Class UID length
        data[length_at + 1] = 0x04  # +1024 bytes
        path = tmp_path / "corrupt.dcm"
        path.write_bytes(bytes(data))
        result = sr2fhir("convert", path)
        assert_one_error_line(result, path, "")
        assert "Secretname" not in result.err and "PID-1" not in result.err

    @pytest.mark.parametrize("case", sorted(BAD_DATASETS))
    def test_dicom_file_that_is_no_tid1500_report(self, sr2fhir: Callable[..., CliResult],
                                                  write_sr: Callable[..., Path], case: str) -> None:
        build, problem = BAD_DATASETS[case]
        path = write_sr(f"{case}.dcm", build())
        assert_one_error_line(sr2fhir("convert", path), path, problem)

    def test_directory(self, sr2fhir: Callable[..., CliResult], tmp_path: Path) -> None:
        assert_one_error_line(sr2fhir("convert", tmp_path), tmp_path, "directory")

    def test_missing_file(self, sr2fhir: Callable[..., CliResult], tmp_path: Path) -> None:
        path = tmp_path / "does-not-exist.dcm"
        assert_one_error_line(sr2fhir("convert", path), path, "no such file")


class TestMixedInputs:
    def test_good_inputs_still_convert_and_exit_status_is_1(
            self, sr2fhir: Callable[..., CliResult], write_sr: Callable[..., Path], tmp_path: Path) -> None:
        good, bad = write_sr("good.dcm", _report("good")), tmp_path / "bad.txt"
        bad.write_text("not DICOM")
        result = sr2fhir("convert", EXAMPLE_SR, bad, good)
        assert result.status == 1
        lines = result.out.splitlines()
        assert [json.loads(line) for line in lines] == [
            json.loads(sr2fhir("convert", EXAMPLE_SR).out), json.loads(sr2fhir("convert", good).out)]
        errors = [line for line in result.err_lines if line.startswith("sr2fhir: error: ")]
        assert errors == [line for line in result.err_lines if str(bad) in line]
        assert len(errors) == 1

    def test_good_inputs_are_written_to_the_output_dir(
            self, sr2fhir: Callable[..., CliResult], write_sr: Callable[..., Path], tmp_path: Path) -> None:
        good, missing = write_sr("good.dcm", _report("good")), tmp_path / "missing.dcm"
        out_dir = tmp_path / "out"
        result = sr2fhir("convert", missing, good, "-d", out_dir)
        assert result.status == 1
        assert [p.name for p in out_dir.iterdir()] == [f"{sr.uid('cli:good')}.json"]
        errors = [line for line in result.err_lines if line.startswith("sr2fhir: error: ")]
        assert len(errors) == 1
        assert errors[0].startswith(f"sr2fhir: error: {missing}: no such file")


class TestStreamsOfTheMoment:
    def test_main_writes_to_the_sys_stdout_and_stderr_current_at_the_call(
            self, capsys: pytest.CaptureFixture[str], write_sr: Callable[..., Path]) -> None:
        path = write_sr("no-source.dcm", _report_with_scoord_lacking_its_source_image())
        status = main(["convert", str(path)])
        out, err = capsys.readouterr()
        assert status == 0
        assert out.startswith("{") and "1.5.1.4" in err
        _bundle(out)


class TestConsoleScript:
    """The real process: exit status, and stdout that is JSON and nothing else."""

    def _run(self, *args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "scp.cli", *map(str, args)], cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=False)

    def test_convert_prints_pure_json_and_exits_0(self, write_sr: Callable[..., Path]) -> None:
        path = write_sr("no-source.dcm", _report_with_scoord_lacking_its_source_image())
        process = self._run("convert", path)
        assert process.returncode == 0
        _bundle(process.stdout)  # the whole of stdout parses as one JSON document
        assert re.fullmatch(rf"(sr2fhir: warning: {re.escape(str(path))}: .+\n)+", process.stderr)

    def test_bad_input_gives_exit_1_and_one_error_line(self, tmp_path: Path) -> None:
        path = tmp_path / "notes.txt"
        path.write_text("this is not DICOM\n")
        process = self._run("convert", path)
        assert process.returncode == 1
        assert process.stdout == ""
        assert re.fullmatch(rf"sr2fhir: error: {re.escape(str(path))}: not a DICOM [^\n]+\n", process.stderr)
