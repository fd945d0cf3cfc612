"""Delivery to the real HAPI FHIR JPA server (R5 and R4): sr2fhir end to end against HAPI's own pace.

Run from the repository root:
``.venv/bin/python bench/hapi_delivery_bench.py [--count 200] [--quick] [--json PATH]``.
Skipped, with the reason printed, when the HAPI jar is not built (``tests/hapi_server/build.sh``).
For each release, HAPI FHIR (``tests/hapi_server``) is started, then:

(a) **ceiling**: a plain httpx client POSTs the same transaction Bundles sr2fhir will send
    (mapped and serialised beforehand, in the server's release, same headers),
    ``--concurrency`` at a time (default: the daemon's ``forwarder.concurrency`` default):
    what HAPI itself can take. Twice: ``--count`` SRs to the fresh server (it answers its
    first requests slower), then ``--count`` more (the ceiling);
(b) **end to end**: on the same server, ``sr2fhir serve`` receives as many SRs by C-STORE (2
    associations) and delivers them (same concurrency); timed from the first C-STORE to the
    last 2xx. Ratio b/a;
(c) **backlog drain**: a daemon whose HAPI is down receives as many SRs; then a fresh HAPI starts
    on the configured port (its startup is not counted); timed from HAPI listening to the last
    2xx. Ratio against the fresh server's pace in (a).

Every phase writes new resources (separate SOP Instance UIDs per phase, so none updates what
another wrote). Prints SR/s and resources/s of each and the ratios b/a and c/a (target >= 0.7),
plus HAPI's startup time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.delivery_bench import TARGET_PACE  # noqa: E402
from bench.pace import backlog_drain, ceiling_seconds, end_to_end, transaction_bodies  # noqa: E402
from bench.report import json_report, ratio  # noqa: E402
from scp.config.settings import ForwarderSettings  # noqa: E402
from tests.hapi_server import JAR, HapiServer  # noqa: E402
from tests.support import sr_builders as sr  # noqa: E402


def write_reports(directory: Path, count: int, tag: str) -> list[Path]:
    """``count`` one-group reports (about 10 resources each) as Part 10 files."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        group = sr.measurement_group("1410", tracking_identifier=f"{tag}-{i}", finding_site=sr.finding_site_item(sr.LUNG),
                                     measurements=[sr.num_item(sr.LENGTH, 12.5 + i, sr.MM)])
        ds = sr.measurement_report([group], sop_instance_uid=sr.uid(f"hapi-bench:{tag}:{i}"))
        path = directory / f"{tag}-{i}.dcm"
        path.write_bytes(sr.to_part10_bytes(ds))
        files.append(path)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None, help="SRs per phase (default 200, --quick 60)")
    parser.add_argument("--concurrency", type=int, default=ForwarderSettings().concurrency)
    parser.add_argument("--releases", default="r5,r4")
    parser.add_argument("--quick", action="store_true", help="fewer SRs (for bench/run_all.py)")
    parser.add_argument("--json", type=Path, default=None, help="also write the ratios to this file")
    args = parser.parse_args(argv)
    count = args.count or (60 if args.quick else 200)
    with json_report(args.json, "hapi_delivery_bench") as report:
        if not JAR.exists():
            print(f"skipped: the HAPI FHIR test server is not built ({JAR.relative_to(JAR.parents[3])} is missing; "
                  "run tests/hapi_server/build.sh)")
            return 0
        for release in args.releases.split(","):
            measure(release, count, args.concurrency, report)
    return 0


def measure(release: str, count: int, concurrency: int, report: list[dict[str, Any]]) -> None:
    """The three phases against a fresh HAPI ``release`` server each (ceiling, end to end, drain)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sets = {tag: write_reports(work / tag, count, tag) for tag in ("fresh", "baseline", "sr2fhir", "drain")}
        fresh_bodies = transaction_bodies(sets["fresh"], release)
        bodies = transaction_bodies(sets["baseline"], release)
        resources = sum(len(json.loads(b)["entry"]) for b in bodies) / len(bodies)
        with HapiServer(release) as server:
            print(f"HAPI FHIR {release.upper()}: started in {server.startup_seconds:.1f} s; {count} SRs of "
                  f"{resources:.0f} resources, concurrency {concurrency}")
            # a fresh HAPI answers its first requests slower (JIT, caches): measured apart
            fresh_s = ceiling_seconds(server.base_url, fresh_bodies, concurrency, retry_conflicts=True)
            base_s = ceiling_seconds(server.base_url, bodies, concurrency, retry_conflicts=True)
            ours = end_to_end(sets["sr2fhir"], work / "e2e-daemon", server.base_url, concurrency, server="hapi",
                              version="auto")
        fresh_rate, base_rate, ours_rate = count / fresh_s, count / base_s, count / ours.seconds
        print(f"  (a) ceiling: httpx POSTs of the same Bundles {base_rate:7.1f} SR/s "
              f"({base_rate * resources:.0f} resources/s, {base_s:.1f} s; the first {count} to the fresh server: "
              f"{fresh_rate:.1f} SR/s)")
        print(f"  (b) sr2fhir: C-STORE in -> 2xx              {ours_rate:7.1f} SR/s "
              f"({ours_rate * resources:.0f} resources/s, {ours.seconds:.1f} s)   b/a = {ours_rate / base_rate:.2f}")
        drain = backlog_drain(sets["drain"], work / "drain-daemon", lambda _port: HapiServer(release), HapiServer.base_path,
                              concurrency, server="hapi", version="auto")
        drained = count / drain.seconds
        print(f"  (c) backlog drain after an outage           {drained:7.1f} SR/s ({drain.seconds:.1f} s from HAPI "
              f"listening to the last 2xx; HAPI startup {drain.startup_s:.1f} s not counted; first 2xx after "
              f"{drain.first_2xx_s:.2f} s)   against the fresh server's pace in (a): c/a = {drained / fresh_rate:.2f}")
        baseline = (f"plain httpx AsyncClient POSTing the same Bundles to HAPI {release.upper()}, "
                    f"concurrency {concurrency}, same run")
        figures = {"SRs": str(count), "resources per SR": f"{resources:.0f}"}
        report.append(ratio(f"end to end / HAPI ceiling ({release.upper()})", ours_rate / base_rate, TARGET_PACE,
                            baseline, ceiling=f"{base_rate:.1f} SR/s", **figures,
                            **{"end to end": f"{ours_rate:.1f} SR/s"}))
        report.append(ratio(f"backlog drain / HAPI ceiling ({release.upper()}, fresh server)", drained / fresh_rate,
                            TARGET_PACE, baseline + ", the first SRs to a fresh server as the drain's",
                            ceiling=f"{fresh_rate:.1f} SR/s", **figures, drain=f"{drained:.1f} SR/s",
                            **{"first 2xx after server up": f"{drain.first_2xx_s:.2f} s"}))

if __name__ == "__main__":
    sys.exit(main())
