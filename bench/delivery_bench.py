"""End-to-end speed: SRs acknowledged by the FHIR server (2xx) per second.

Run from the repository root: ``.venv/bin/python bench/delivery_bench.py [--count 300]``.
``sr2fhir serve`` receives ``--count`` small SRs (dcmtk storescu, 2 associations) and delivers
them to the loopback FHIR server (tests/fhir_server, Medplum-based), directly and through the
fault proxy with 50 ms of added latency per request, at forwarder concurrency 1 and 8. The
baseline is concurrency 1 in the same run; target: concurrency hides the latency
(>= 5x the throughput of concurrency 1 at 50 ms).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import QuietDaemon  # noqa: E402
from bench.ingest_bench import push, write_reports  # noqa: E402
from tests.support.daemon_process import write_config  # noqa: E402
from tests.support.fault_proxy import FaultProxy, delay  # noqa: E402
from tests.fhir_server import FhirServer  # noqa: E402


def run(files: list[Path], work: Path, base_url: str, concurrency: int, **fhir: Any) -> float:
    """Seconds from the first C-STORE until the FHIR server acknowledged the last Bundle
    (``fhir``: more keys of the ``fhir`` section)."""
    work.mkdir()
    config = write_config(work, fhir={"base_url": base_url, **fhir},
                          forwarder={"concurrency": concurrency, "poll_interval_s": 0.05})
    daemon = QuietDaemon(config).start()
    try:
        start = time.perf_counter()
        push(daemon.port, "SR2FHIR", files, 2)
        delivered = daemon.wait_events("bundle_delivered", len(files), timeout_s=1800, poll_s=0.2)
        elapsed = time.perf_counter() - start
        assert all(e["status_code"] == 200 for e in delivered)
        return elapsed
    finally:
        daemon.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, FhirServer() as server:
        tmp_path = Path(tmp)
        (tmp_path / "in").mkdir()
        files = write_reports(tmp_path / "in", args.count)
        print(f"{args.count} SRs -> loopback FHIR server ({len(files)} transactions of ~10 resources each)")
        results = {}
        with FaultProxy(server.base_url) as proxy:
            proxy.set_mode(delay(0.05))
            for label, url, concurrency in (
                ("direct, concurrency 4", server.base_url, 4),
                ("+50 ms latency, concurrency 1", proxy.base_url, 1),
                ("+50 ms latency, concurrency 8", proxy.base_url, 8),
            ):
                seconds = run(files, tmp_path / label.replace(" ", "_").replace(",", "").replace("+", ""), url, concurrency)
                results[label] = args.count / seconds
                print(f"  {label:<32} {results[label]:7.1f} SR/s delivered (2xx) end to end, {seconds:.1f} s")
        ratio = results["+50 ms latency, concurrency 8"] / results["+50 ms latency, concurrency 1"]
        print(f"  ratio concurrency 8 / 1 at 50 ms = {ratio:.1f}  (target >= 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
