"""Spool ``put`` latency and throughput: the SQLite spool against bare fsyncs, in one run.

Run from the repository root: ``.venv/bin/python bench/spool_bench.py [--count 500]``.
Every variant makes ``--count`` payloads of ``--size`` bytes durable, spread over 1 and
over 4 threads, on a fresh directory under ``--dir`` (put it on the disk the spool will
live on; a tmpfs measures nothing). Variants:

raw append      ``os.write`` on an O_APPEND file + ``os.fdatasync`` per payload, no
                grouping (each thread syncs its own): the cost of a bare durable write
raw prezeroed   ``os.pwrite`` into zeros written and fsynced beforehand + fdatasync: the
                floor (no file size change to commit)
spool           ``SpoolWriter.put`` of the working tree (SQLite, WAL, synchronous=FULL,
                group commit across threads)
journal REV     ``SpoolWriter.put`` of the journal spool as committed at ``--journal-rev``
                (loaded with ``git show``; skipped when git or the revision is missing)

Each spool first stores and delivers ``--warmup`` items (not timed), as a spool that
has been running does: its files are allocated (the journal preallocates its segment;
SQLite's WAL has grown to its checkpoint size and is overwritten in place from then on),
and the raw variants write into a file created before timing. Rounds alternate
the variants; the median round (by wall time) is printed: ms per put = wall / count,
puts/s = count / wall, and the per-put latency distribution.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import structlog  # noqa: E402

from scp import spool as spool_now  # noqa: E402

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
JOURNAL_REVISION = "885fc11"
"""The last revision with the journal spool (scp/spool.py + scp/spool_journal.py)."""

Put = Callable[[int], None]
"""Make payload number n durable."""


def load_journal_spool(revision: str, into: Path) -> ModuleType | None:
    """``scp.spool`` (the journal) as committed at ``revision``, imported as ``journal_at_rev.spool``."""
    package = into / "journal_at_rev"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in ("spool.py", "spool_journal.py"):
        shown = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:scp/{name}"],
                               capture_output=True, check=False)
        if shown.returncode != 0:
            return None
        (package / name).write_bytes(shown.stdout)
    sys.path.insert(0, str(into))
    return importlib.import_module("journal_at_rev.spool")


def raw_append(directory: Path, size: int) -> tuple[Put, Callable[[], None]]:
    fd = os.open(directory / "raw.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    lock = threading.Lock()
    data = os.urandom(size)

    def put(_n: int) -> None:
        with lock:
            os.write(fd, data)
        os.fdatasync(fd)

    return put, lambda: os.close(fd)


def raw_prezeroed(directory: Path, size: int, count: int) -> tuple[Put, Callable[[], None]]:
    fd = os.open(directory / "raw.bin", os.O_WRONLY | os.O_CREAT, 0o640)
    os.write(fd, bytes(size * (count + 1)))
    os.fsync(fd)
    lock = threading.Lock()
    data = os.urandom(size)
    position = [0]

    def put(_n: int) -> None:
        with lock:
            offset = position[0]
            position[0] += size
        os.pwrite(fd, data, offset)
        os.fdatasync(fd)

    return put, lambda: os.close(fd)


def spool_put(module: ModuleType, directory: Path, size: int, warmup: int) -> tuple[Put, Callable[[], None]]:
    """Puts into a spool that has stored and delivered ``warmup`` items before (not timed):
    a running spool, whose files (the WAL) are already allocated and reused."""
    spool = module.Spool(directory / "spool")
    writer = spool.writer()
    data = os.urandom(size)

    def put(n: int) -> None:
        fields = module.RecordFields(f"2.25.{n}", COMPREHENSIVE_SR, EXPLICIT_VR_LITTLE_ENDIAN, "BENCH")
        writer.put(fields, data)

    for n in range(-warmup - 1, 0):
        put(n)
    with spool.consumer() as consumer:
        settle = getattr(consumer, "settle", None) or consumer.mark_delivered  # the journal spool's name
        for item in consumer.pending():
            settle(item)
    return put, writer.close


def timed(put: Put, count: int, threads: int) -> tuple[float, list[float]]:
    """(wall seconds, per-put latencies) for ``count`` puts spread over ``threads``."""
    latencies: list[float] = []
    start_line = threading.Barrier(threads + 1)

    def worker(first: int) -> None:
        own = []
        start_line.wait()
        for n in range(first, count, threads):
            began = time.perf_counter()
            put(n)
            own.append(time.perf_counter() - began)
        latencies.extend(own)

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in workers:
        thread.start()
    start_line.wait()
    began = time.perf_counter()
    for thread in workers:
        thread.join()
    return time.perf_counter() - began, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=4500, help="payload bytes per put")
    parser.add_argument("--threads", default="1,4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1000,
                        help="items stored and delivered before timing each spool (default 1000)")
    parser.add_argument("--dir", type=Path, default=REPO, help="where the temporary files go (default: the repo)")
    parser.add_argument("--journal-rev", default=JOURNAL_REVISION,
                        help=f"the journal spool to compare with (default {JOURNAL_REVISION}; '' to skip)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix=".spool-bench-", dir=args.dir) as scratch:
        scratch_path = Path(scratch)
        journal = load_journal_spool(args.journal_rev, scratch_path / "code") if args.journal_rev else None
        variants: dict[str, Callable[[Path], tuple[Put, Callable[[], None]]]] = {
            "raw append": lambda d: raw_append(d, args.size),
            "raw prezeroed": lambda d: raw_prezeroed(d, args.size, args.count),
            "spool": lambda d: spool_put(spool_now, d, args.size, args.warmup),
        }
        if journal is not None:
            variants[f"journal {args.journal_rev}"] = lambda d: spool_put(journal, d, args.size, args.warmup)

        print(f"{args.count} puts of {args.size} B, median of {args.rounds} rounds, under {args.dir}")
        for threads in (int(t) for t in args.threads.split(",")):
            results: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in variants}
            for round_number in range(args.rounds):
                for name, make in variants.items():
                    directory = scratch_path / f"r{threads}-{round_number}-{name.replace(' ', '_')}"
                    directory.mkdir()
                    put, close = make(directory)
                    try:
                        results[name].append(timed(put, args.count, threads))
                    finally:
                        close()
            print(f"\n{threads} thread{'s' if threads > 1 else ''}:        ms/put   puts/s   "
                  "latency ms: mean    p50     p99     max")
            for name, runs in results.items():
                wall, latencies = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
                ms = sorted(latencies)
                print(f"  {name:16s} {wall / args.count * 1000:8.3f} {args.count / wall:8.0f}        "
                      f"{statistics.mean(ms) * 1000:8.3f} {ms[len(ms) // 2] * 1000:7.3f} "
                      f"{ms[int(len(ms) * 0.99)] * 1000:7.3f} {ms[-1] * 1000:7.2f}")


if __name__ == "__main__":
    main()
