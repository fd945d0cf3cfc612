"""Memory: peak RSS of the daemon and its worker over 10,000 SRs (it must stay flat).

Run from the repository root: ``.venv/bin/python bench/memory_bench.py [--count 10000]``.
``sr2fhir serve`` (outbox mode) receives ``--count`` small SRs from 2 storescu associations;
every 1,000 Bundles written, the RSS of both processes is read from /proc. The baseline is
the first sample of the same run: the last must be within 10% of it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import QuietDaemon, rss_kib  # noqa: E402
from bench.ingest_bench import write_reports  # noqa: E402
from tests.support.daemon_process import write_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "in").mkdir()
        files = write_reports(work / "in", args.count)
        daemon = QuietDaemon(write_config(work, forwarder={"poll_interval_s": 0.05})).start()
        daemon_pid, worker_pid = daemon.pids()
        outbox = work / "outbox"
        chunks = [files[i::2] for i in range(2)]
        senders = [subprocess.Popen(["storescu", "-R", "-aec", "SR2FHIR", "127.0.0.1", str(daemon.port), *map(str, c)],
                                    env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL)
                   for c in chunks]
        samples = []
        next_mark = args.every
        deadline = time.monotonic() + 3600
        print(f"{args.count} SRs; RSS in MiB (current / peak)")
        print(f"{'delivered':>10} {'daemon':>16} {'worker':>16}")
        while next_mark <= args.count and time.monotonic() < deadline:
            written = sum(1 for _ in os.scandir(outbox)) if outbox.exists() else 0
            if written >= next_mark:
                daemon_rss, worker_rss = rss_kib(daemon_pid), rss_kib(worker_pid)
                samples.append((next_mark, daemon_rss, worker_rss))
                print(f"{next_mark:>10} {daemon_rss[0] / 1024:7.1f} / {daemon_rss[1] / 1024:6.1f} "
                      f"{worker_rss[0] / 1024:7.1f} / {worker_rss[1] / 1024:6.1f}", flush=True)
                next_mark += args.every
            else:
                time.sleep(0.2)
        for sender in senders:
            sender.wait(timeout=600)
        daemon.stop()
    first, last = samples[0], samples[-1]
    for label, index in (("daemon", 1), ("worker", 2)):
        growth = last[index][0] / first[index][0] - 1
        print(f"{label}: RSS {first[index][0] / 1024:.1f} MiB at {first[0]} -> {last[index][0] / 1024:.1f} MiB at "
              f"{last[0]} ({growth:+.1%}; target within +10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
