"""Delivery to the real HAPI FHIR JPA server (R5 and R4): sr2fhir end to end against HAPI's own pace.

Run from the repository root: ``.venv/bin/python bench/hapi_delivery_bench.py [--count 200]``.
For each release, HAPI FHIR (``tests/hapi_server``) is started, then:

1. **baseline**: a plain httpx client POSTs the same transaction Bundles sr2fhir will send
   (mapped beforehand, in the server's release), ``--concurrency`` at a time: what HAPI itself
   can take;
2. **sr2fhir**: ``sr2fhir serve`` receives the same SRs by C-STORE (2 associations) and delivers
   them (forwarder concurrency ``--concurrency``); timed from the first C-STORE to the last 2xx.

Both write the same resources to a fresh server (separate SOP Instance UIDs per phase, so the
second phase creates rather than updates). Prints SR/s and resources/s of each and the ratio
sr2fhir / baseline, plus HAPI's startup time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import simplejson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.delivery_bench import run  # noqa: E402
from mapping import MappingOptions, map_sr  # noqa: E402
from tests.hapi_server import HapiServer  # noqa: E402
from tests.support import sr_builders as sr  # noqa: E402


def write_reports(directory: Path, count: int, tag: str) -> list[Path]:
    """``count`` one-group reports (about 10 resources each) as Part 10 files."""
    files = []
    for i in range(count):
        group = sr.measurement_group("1410", tracking_identifier=f"{tag}-{i}", finding_site=sr.finding_site_item(sr.LUNG),
                                     measurements=[sr.num_item(sr.LENGTH, 12.5 + i, sr.MM)])
        ds = sr.measurement_report([group], sop_instance_uid=sr.uid(f"hapi-bench:{tag}:{i}"))
        path = directory / f"{tag}-{i}.dcm"
        path.write_bytes(sr.to_part10_bytes(ds))
        files.append(path)
    return files


async def post_all(base_url: str, bundles: list[bytes], concurrency: int) -> float:
    """Seconds for a plain httpx client to POST every Bundle, ``concurrency`` at a time (all 2xx)."""
    slots = asyncio.Semaphore(concurrency)
    headers = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(body: bytes) -> None:
            async with slots:
                for _ in range(20):  # HAPI answers 409 when two transactions create one shared Device at once
                    response = await client.post(base_url, content=body, headers=headers)
                    if response.status_code != 409:
                        break
                response.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bundles))
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--releases", default="r5,r4")
    args = parser.parse_args(argv)
    for release in args.releases.split(","):
        with tempfile.TemporaryDirectory() as tmp, HapiServer(release) as server:
            work = Path(tmp)
            (work / "baseline").mkdir()
            (work / "sr2fhir-in").mkdir()
            baseline_files = write_reports(work / "baseline", args.count, "baseline")
            files = write_reports(work / "sr2fhir-in", args.count, "sr2fhir")
            options = MappingOptions(fhir_version=release)
            bundles = [map_sr(pydicom.dcmread(BytesIO(f.read_bytes())), options).bundle for f in baseline_files]
            resources = sum(len(b["entry"]) for b in bundles) / len(bundles)
            bodies = [simplejson.dumps(b, use_decimal=True, separators=(",", ":")).encode() for b in bundles]
            print(f"HAPI FHIR {release.upper()}: started in {server.startup_seconds:.1f} s; {args.count} SRs of "
                  f"{resources:.0f} resources, concurrency {args.concurrency}")
            base_s = asyncio.run(post_all(server.base_url, bodies, args.concurrency))
            ours_s = run(files, work / "run", server.base_url, args.concurrency, server="hapi", version="auto",
                         retry={"initial_backoff_s": 0.05, "max_backoff_s": 0.5, "jitter_s": 0.05})
            base_rate, ours_rate = args.count / base_s, args.count / ours_s
            print(f"  baseline: httpx POSTs of the same Bundles {base_rate:7.1f} SR/s "
                  f"({base_rate * resources:.0f} resources/s, {base_s:.1f} s)")
            print(f"  sr2fhir:  C-STORE in -> 2xx            {ours_rate:7.1f} SR/s "
                  f"({ours_rate * resources:.0f} resources/s, {ours_s:.1f} s)")
            print(f"  ratio sr2fhir / baseline = {ours_rate / base_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
