"""Run a function over many inputs in worker processes and get the results back in input order.

``concurrent.futures.ProcessPoolExecutor.map`` submits every input at once and keeps every
result until it is read; here at most ``2 × jobs`` chunks are in flight, so converting an
archive of 100,000 files holds a few Bundles in memory, not all of them.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from typing import TypeVar

__all__ = ["default_jobs", "ordered_map", "settle_collector"]

T = TypeVar("T")
R = TypeVar("R")


def default_jobs() -> int:
    """The CPUs this process may run on (``os.process_cpu_count`` from Python 3.13)."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        return count() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ordered_map(function: Callable[[T], R], inputs: Sequence[T], jobs: int) -> Iterator[R]:
    """``map(function, inputs)`` over ``jobs`` worker processes, yielded in input order.

    ``function`` must be picklable (a module-level function, or a ``functools.partial`` of
    one). An exception ``function`` raises comes out of this iterator at its input's place.
    With one job (or one input) everything runs in this process.
    """
    if jobs <= 1 or len(inputs) <= 1:
        yield from map(function, inputs)
        return
    jobs = min(jobs, len(inputs))
    # Small chunks: a file takes milliseconds, a task's round trip a fraction of one; several
    # chunks per worker keep both busy to the end of the run. At most 4: a large report takes
    # 70 ms, and the last chunk of one worker should not leave the others idle for long.
    size = max(1, min(4, len(inputs) // (jobs * 8)))
    chunks = _chunks(inputs, size)
    pending: deque[Future[list[R]]] = deque()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=_context(), initializer=_start_worker) as pool:
        try:
            for chunk in chunks:
                pending.append(pool.submit(_run_chunk, function, chunk))
                if len(pending) >= 2 * jobs:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        except BaseException:  # Ctrl-C or the caller stopped reading: drop what has not started
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _chunks(inputs: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(inputs)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _run_chunk(function: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [function(item) for item in chunk]


def _context() -> multiprocessing.context.BaseContext:
    # fork: the workers start with the mapping already imported (a spawned worker would spend
    # a third of a second importing pydicom). Only from a single-threaded process (the CLI):
    # a fork copies locks other threads may hold (an embedding program, a test runner).
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def settle_collector() -> None:
    """Tune the cyclic garbage collector for a process that converts file after file.

    What is imported lives as long as the process: frozen, the collector's full passes skip
    it. A 60-group report allocates some hundred thousand containers and leaves no cycles
    (reference counting frees them all), yet the default thresholds ran the collector over
    them hundreds of times a report: 10 % of its time, even after the freeze. A collection of
    the young generation every 100,000 allocations instead still frees any cycle soon.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _start_worker() -> None:
    # Ctrl-C is the parent's to handle: it cancels the pool; workers just finish or are ended.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settle_collector()
