"""Mapping speed: read + map + serialise, against pydicom's read alone and highdicom's parse.

Run from the repository root: ``.venv/bin/python bench/map_bench.py [--repeat N] [--quick] [--json PATH]``.
Prints, for a small report and a 60-group x 4-measurement report, the median time per SR of

- ``dcmread``: ``pydicom.dcmread`` of the Part 10 bytes alone (the baseline the issue names;
  pydicom defers decoding, so this does not even parse the Content Sequence);
- ``dcmread+decode``: ``dcmread`` plus decoding every element (``Dataset.walk``), i.e. what
  reading the content costs with pydicom alone (a second, fairer baseline);
- ``sr2fhir``: ``dcmread`` + ``mapping.map_sr`` + ``mapping.serialize`` (the whole job);
- ``highdicom``: ``highdicom.sr.srread`` + ``get_planar_roi_measurement_groups()``,

all measured in this one process, with the ratios (machines are noisy; ratios travel).
Targets: sr2fhir <= 2x dcmread, and faster than highdicom's parse alone.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import highdicom  # noqa: E402
import pydicom  # noqa: E402

from bench.report import json_report, ratio  # noqa: E402
from mapping import map_sr, serialize  # noqa: E402
from tests.support import sr_builders as sr  # noqa: E402


def small_report() -> bytes:
    """One planar group with a polyline region and two measurements (a typical AI finding)."""
    group = sr.measurement_group(
        "1410", finding_site=sr.finding_site_item(sr.LUNG),
        items=[sr.scoord_item("POLYLINE", [1, 2, 3, 4, 5, 6, 1, 2], sr.source_image(sr.CT_IMAGE_STORAGE, sr.uid("ct:1")))],
        measurements=[sr.num_item(sr.LENGTH, 12.5, sr.MM, observation_uid=sr.uid("n1")),
                      sr.num_item(sr.AREA, 99.0, sr.MM2, observation_uid=sr.uid("n2"))],
    )
    return sr.to_part10_bytes(sr.measurement_report([group]))


def large_report() -> bytes:
    """60 TID 1410 groups x 4 measurements (+ a region and an evaluation each)."""
    return sr.to_part10_bytes(sr.large_report(60, 4))


def median_seconds(work: Callable[[], object], repeat: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of ``work`` over ``repeat`` runs (after one warm-up), GC paused; wall time,
    or with ``clock=time.process_time`` this process's CPU time (what the work costs, whatever
    else runs on the machine)."""
    work()
    samples = []
    gc.disable()
    try:
        for _ in range(repeat):
            start = clock()
            work()
            samples.append(clock() - start)
    finally:
        gc.enable()
    return statistics.median(samples)


def measure(name: str, data: bytes, repeat: int) -> dict[str, float]:
    def read():
        return pydicom.dcmread(BytesIO(data))

    def read_decoded():
        ds = pydicom.dcmread(BytesIO(data))
        ds.walk(lambda _ds, _elem: None)
        return ds

    def full_map():
        return serialize(map_sr(pydicom.dcmread(BytesIO(data))).bundle)

    def highdicom_parse():
        document = highdicom.sr.srread(BytesIO(data))
        return document.content.get_planar_roi_measurement_groups()

    bundle = map_sr(read()).bundle
    times = {
        "dcmread": median_seconds(read, repeat),
        "dcmread+decode": median_seconds(read_decoded, repeat),
        "sr2fhir": median_seconds(full_map, repeat),
        "highdicom": median_seconds(highdicom_parse, repeat),
    }
    print(f"\n{name}: {len(data) / 1024:.1f} KiB DICOM -> {len(bundle['entry'])} FHIR resources")
    for label, seconds in times.items():
        print(f"  {label:<15} {seconds * 1000:9.2f} ms/SR  {1 / seconds:9.1f} SR/s")
    print(f"  ratio sr2fhir / dcmread        = {times['sr2fhir'] / times['dcmread']:7.2f}  (issue target <= 2.0)")
    print(f"  ratio sr2fhir / dcmread+decode = {times['sr2fhir'] / times['dcmread+decode']:7.2f}")
    print(f"  ratio sr2fhir / highdicom      = {times['sr2fhir'] / times['highdicom']:7.2f}  (target < 1.0)")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per measurement (default 30, --quick 8)")
    parser.add_argument("--quick", action="store_true", help="fewer runs (for bench/run_all.py)")
    parser.add_argument("--json", type=Path, default=None, help="also write the ratios to this file")
    args = parser.parse_args(argv)
    repeat = args.repeat or (8 if args.quick else 30)
    print(f"python {sys.version.split()[0]}, pydicom {pydicom.__version__}, highdicom {highdicom.__version__}; "
          f"median of {repeat} runs")
    with json_report(args.json, "map_bench") as report:
        for size, name, data, runs in (
                ("small", "small report (1 group x 2 measurements)", small_report(), repeat),
                ("large", "large report (60 groups x 4 measurements)", large_report(), max(5, repeat // 3))):
            times = measure(name, data, runs)
            figures = {label: f"{seconds * 1000:.2f} ms/SR" for label, seconds in times.items()}
            report.append(ratio(f"speed-up over highdicom parse ({size})", times["highdicom"] / times["sr2fhir"], 1.0,
                                "highdicom srread + get_planar_roi_measurement_groups(), same run", **figures))
            report.append(ratio(f"dcmread / sr2fhir ({size})", times["dcmread"] / times["sr2fhir"], 0.5,
                                "pydicom dcmread alone (deferred decoding), same run; issue target sr2fhir <= 2x",
                                **figures))
            report.append(ratio(f"speed-up over full decode ({size})", times["dcmread+decode"] / times["sr2fhir"],
                                None, "pydicom dcmread + decoding every element, same run", **figures))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\npeak RSS of this process: {peak_kib / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
