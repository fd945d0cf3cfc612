"""Spool ``put`` latency: preallocated segments against appending, in one run.

Run from the repository root: ``.venv/bin/python bench/spool_bench.py [--count 500]``.
Every variant makes ``--count`` records of ``--size`` bytes durable, one fdatasync each
(group commit with several threads), on a fresh directory under ``--dir`` (put it on the
disk the spool will live on; a tmpfs measures nothing). Variants:

raw append          ``os.write`` on an O_APPEND file + ``os.fdatasync``: the floor of the
                    old append path (every sync commits a file size change)
raw prezeroed       ``os.pwrite`` into zeros written and fsynced beforehand + fdatasync:
                    the floor of preallocation (no metadata to commit)
spool HEAD          ``SpoolWriter.put`` as committed at ``--git-rev`` (skipped when git or
                    the revision is unavailable): the code before preallocation
spool no-prealloc   the working tree's ``SpoolWriter.put`` with preallocation off
spool prealloc NK   the working tree's ``SpoolWriter.put`` preallocating N KiB at a time
                    (default: ``PREALLOCATION_CHUNK_BYTES``; ``--chunk-kib`` to compare)

The first put of each spool variant (segment creation, preallocation of the first chunk)
is made before timing; everything after it is timed, including the background extension.
Rounds alternate the variants; the median round is printed (ms per put = wall / count).
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

Put = Callable[[int], None]
"""Make record number n durable."""


def load_spool_at(revision: str, into: Path) -> ModuleType | None:
    """``scp.spool`` as committed at ``revision``, imported as package ``spool_at_rev``."""
    package = into / "spool_at_rev"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in ("spool.py", "spool_journal.py"):
        shown = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:scp/{name}"],
                               capture_output=True, check=False)
        if shown.returncode != 0:
            return None
        (package / name).write_bytes(shown.stdout)
    sys.path.insert(0, str(into))
    return importlib.import_module("spool_at_rev.spool")


def raw_append(directory: Path, size: int) -> tuple[Put, Callable[[], None]]:
    fd = os.open(directory / "raw.seg", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    lock = threading.Lock()
    data = os.urandom(size)

    def put(_n: int) -> None:
        with lock:
            os.write(fd, data)
        os.fdatasync(fd)

    return put, lambda: os.close(fd)


def raw_prezeroed(directory: Path, size: int, count: int) -> tuple[Put, Callable[[], None]]:
    fd = os.open(directory / "raw.seg", os.O_WRONLY | os.O_CREAT, 0o640)
    os.write(fd, bytes(size * count))
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


def spool_put(module: ModuleType, directory: Path, size: int, **options: int) -> tuple[Put, Callable[[], None]]:
    writer = module.Spool(directory / "spool", **options).writer()
    data = os.urandom(size)

    def put(n: int) -> None:
        fields = module.RecordFields(f"2.25.{n}", COMPREHENSIVE_SR, EXPLICIT_VR_LITTLE_ENDIAN, "BENCH")
        writer.put(fields, data)

    put(-1)  # segment creation and first preallocation: not timed
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
    parser.add_argument("--size", type=int, default=4500, help="payload bytes per record")
    parser.add_argument("--threads", default="1,4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=REPO, help="where the temporary spools go (default: the repo)")
    parser.add_argument("--git-rev", default="HEAD", help="the spool code to compare with ('' to skip)")
    parser.add_argument("--chunk-kib", type=int, action="append",
                        help="preallocation chunk(s) to measure (repeatable; default: the module's)")
    parser.add_argument("--only-spool", action="store_true", help="skip the raw and HEAD variants")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix=".spool-bench-", dir=args.dir) as scratch:
        scratch_path = Path(scratch)
        use_git = args.git_rev and not args.only_spool
        before = load_spool_at(args.git_rev, scratch_path / "code") if use_git else None
        variants: dict[str, Callable[[Path], tuple[Put, Callable[[], None]]]] = {}
        if not args.only_spool:
            variants["raw append"] = lambda d: raw_append(d, args.size)
            variants["raw prezeroed"] = lambda d: raw_prezeroed(d, args.size, args.count)
        if before is not None:
            variants[f"spool {args.git_rev}"] = lambda d: spool_put(before, d, args.size)
        variants["spool no-prealloc"] = lambda d: spool_put(spool_now, d, args.size, preallocation_chunk_bytes=0)
        for kib in args.chunk_kib or [spool_now.PREALLOCATION_CHUNK_BYTES // 1024]:
            variants[f"spool prealloc {kib}K"] = (
                lambda d, kib=kib: spool_put(spool_now, d, args.size, preallocation_chunk_bytes=kib * 1024)
            )

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
            print(f"\n{threads} thread{'s' if threads > 1 else ''}:   ms/put (wall/count)   "
                  "latency mean   p50     p99     max")
            for name, runs in results.items():
                wall, latencies = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
                ms = sorted(latencies)
                print(f"  {name:18s} {wall / args.count * 1000:8.3f}      "
                      f"{statistics.mean(ms) * 1000:8.3f} {ms[len(ms) // 2] * 1000:7.3f} "
                      f"{ms[int(len(ms) * 0.99)] * 1000:7.3f} {ms[-1] * 1000:7.2f}")


if __name__ == "__main__":
    main()
