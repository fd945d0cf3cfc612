"""Delivery to the loopback FHIR server at the server's own pace, in one run.

Run from the repository root: ``.venv/bin/python bench/delivery_bench.py [--count 300] [--quick] [--json PATH]``.
``--count`` small SRs (TID 1500, one group, about 10 resources each), on the loopback FHIR server
(``tests/fhir_server``, Medplum's engine), a fresh server for each phase:

(a) **ceiling**: a plain httpx ``AsyncClient`` POSTs the transaction Bundles the daemon would send
    (the same SRs mapped and serialised beforehand, same headers), ``--concurrency`` at a time
    (default: the daemon's ``forwarder.concurrency`` default): what the server itself takes.
    Twice on one server: the first ``--count`` to the fresh server (it answers its first
    requests slower: the JIT warms up), then ``--count`` more (the ceiling);
(b) **end to end**: a fresh server is warmed and filled with the first set as in (a), then
    ``sr2fhir serve`` receives the second set by C-STORE (dcmtk ``storescu``, 2 associations) and
    delivers it, forwarder concurrency ``--concurrency``; timed from the first C-STORE to the
    last 2xx (the log lines' timestamps). Ratio b/a, target >= 0.7;
(c) **backlog drain**: the server is down while every SR arrives (all acknowledged, spooled,
    and mapped ahead by the waiting worker: ``forwarder.map_ahead_mb``), then a fresh one starts
    on the configured port; timed from the moment it listens until the last 2xx. Ratio against
    the fresh server's pace in (a), target >= 0.7. Then the same with ``map_ahead_mb: 0``
    (printed, not a target): how the part of a backlog too large to map ahead drains;
(d) **latency hidden by concurrency**: through the fault proxy with 50 ms added per request, at
    forwarder concurrency 1 and 8; ratio 8/1, target >= 5 (skipped by ``--quick``).

**CPU per SR** of each process in each phase (user + system, from ``/proc/<pid>/stat``): the
ceiling client and the server in (a); the ``storescu`` senders (in (b): they share the cores),
listener (the daemon's main process), worker and server in (b) and (c). From them, the **CPU
cap** of each phase (:func:`bench.pace.cpu_cap`), the most SR/s these costs allow on this
machine's ``C`` cores whatever the scheduling::

    cap = min( C / (c_sender + c_listener + c_worker + c_server),  1 / c_listener,  1 / c_worker,  1 / c_server )

with ``c_p`` the CPU seconds per SR of process ``p`` in that phase: all processes share the
``C`` cores (a strict bound), and each does its work on one thread (event loop or GIL), so none
can use more than one core (not strict for the server: Node's JIT and GC threads let a fresh
server go past it, by up to 19 % in the runs so far). ``cap / ceiling`` is then about the best
ratio (b) or (c) can reach with today's costs: with the server's ~4 ms per SR on 2 cores, a
ratio of 0.7 needs ``c_sender + c_listener + c_worker`` below ``2 / (0.7 x ceiling) - c_server``.
A measured ratio well below its cap means waiting, not CPU, limits the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pace import (  # noqa: E402
    backlog_drain,
    ceiling_seconds,
    cpu_cap,
    cpu_report,
    cpu_seconds,
    end_to_end,
    transaction_bodies,
    write_reports,
)
from bench.report import json_report, ratio  # noqa: E402
from scp.config.settings import ForwarderSettings  # noqa: E402
from tests.fhir_server import FhirServer  # noqa: E402
from tests.support.fault_proxy import FaultProxy, delay  # noqa: E402

TARGET_PACE = 0.7
TARGET_LATENCY_HIDDEN = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None, help="SRs per phase (default 300, --quick 100)")
    parser.add_argument("--concurrency", type=int, default=ForwarderSettings().concurrency,
                        help="requests in flight, for the ceiling client and the daemon alike (default: the "
                             "daemon's forwarder.concurrency default)")
    parser.add_argument("--quick", action="store_true", help="fewer SRs, no latency phases (for bench/run_all.py)")
    parser.add_argument("--json", type=Path, default=None, help="also write the ratios to this file")
    args = parser.parse_args(argv)
    count = args.count or (100 if args.quick else 300)
    concurrency = args.concurrency
    with tempfile.TemporaryDirectory() as tmp, json_report(args.json, "delivery_bench") as report:
        work = Path(tmp)
        first, second = write_reports(work / "first", count, "first"), write_reports(work / "second", count, "second")
        first_bodies, second_bodies = transaction_bodies(first), transaction_bodies(second)
        resources = len(json.loads(first_bodies[0])["entry"])
        print(f"{count} SRs ({resources} resources each, one transaction per SR) -> loopback FHIR server "
              f"(tests/fhir_server), concurrency {concurrency}")
        with FhirServer() as server:  # a fresh server answers its first requests slower: measured apart
            cold_s = ceiling_seconds(server.base_url, first_bodies, concurrency)
            cpu_before = {"client": time.process_time(), "server": cpu_seconds(server.pid)}
            warm_s = ceiling_seconds(server.base_url, second_bodies, concurrency)
            cpu = {"client": time.process_time() - cpu_before["client"],
                   "server": cpu_seconds(server.pid) - cpu_before["server"]}
        cold, ceiling = count / cold_s, count / warm_s
        cores = os.cpu_count() or 1

        def cpu_lines(cpu_s: dict[str, float], rate: float, against: float) -> dict[str, str]:
            """Print the phase's CPU per SR and its cap; return them as ``figures``."""
            cap = cpu_cap(cpu_s, count, cores)
            print(f"      {cpu_report(cpu_s, count)}")
            print(f"      CPU cap on {cores} cores: {cap.rate:.1f} SR/s = {cap.rate / against:.2f} x its ceiling "
                  f"(bound: {cap.bound}); measured {rate / cap.rate:.2f} of the cap")
            return {**{f"CPU per SR, {name}": f"{seconds / count * 1000:.2f} ms" for name, seconds in cpu_s.items()},
                    "CPU cap": f"{cap.rate:.1f} SR/s", "CPU cap / ceiling": f"{cap.rate / against:.2f}",
                    "CPU cap bound": cap.bound}

        print(f"  (a) ceiling: httpx POSTs of the same Bundles   {ceiling:7.1f} SR/s  ({warm_s:.1f} s; "
              f"the first {count} to a fresh server: {cold:.1f} SR/s)")
        ceiling_figures = cpu_lines(cpu, ceiling, ceiling)
        with FhirServer() as server:  # warmed and filled alike, then the same SRs as (a) measured
            ceiling_seconds(server.base_url, first_bodies, concurrency)
            ours = end_to_end(second, work / "e2e", server.base_url, concurrency, server_pid=server.pid)
        assert ours.statuses == {200}, ours.statuses
        e2e = count / ours.seconds
        print(f"  (b) sr2fhir end to end: C-STORE in -> 2xx     {e2e:7.1f} SR/s  ({ours.seconds:.1f} s)"
              f"   b/a = {e2e / ceiling:.2f}  (target >= {TARGET_PACE})")
        print(f"      the C-STORE senders were done after {ours.pushed_s:.1f} s, the first 2xx after "
              f"{ours.first_2xx_s:.2f} s")
        e2e_figures = cpu_lines(ours.cpu_s, e2e, ceiling)
        drain = backlog_drain(first, work / "drain", lambda _port: FhirServer(), FhirServer.base_path, concurrency)
        drained = count / drain.seconds
        print(f"  (c) backlog drain after an outage              {drained:7.1f} SR/s  ({drain.seconds:.1f} s from "
              f"the server listening to the last 2xx; first 2xx after {drain.first_2xx_s:.2f} s)")
        print(f"      against the first {count} to a fresh server in (a): c/a = {drained / cold:.2f}"
              f"  (target >= {TARGET_PACE})")
        drain_figures = cpu_lines(drain.cpu_s, drained, cold)
        plain = backlog_drain(first, work / "drain-plain", lambda _port: FhirServer(), FhirServer.base_path,
                              concurrency, map_ahead_mb=0)
        plain_rate = count / plain.seconds
        print(f"      the same without mapping ahead (forwarder.map_ahead_mb: 0, as a backlog beyond it drains): "
              f"{plain_rate:.1f} SR/s, c/a = {plain_rate / cold:.2f}")
        plain_figures = cpu_lines(plain.cpu_s, plain_rate, cold)
        baseline = f"plain httpx AsyncClient POSTing the same Bundles, concurrency {concurrency}, same run"
        report.append(ratio("end to end / server ceiling (loopback)", e2e / ceiling, TARGET_PACE, baseline,
                            ceiling=f"{ceiling:.1f} SR/s", **{"end to end": f"{e2e:.1f} SR/s", "SRs": str(count),
                                                      "C-STORE senders done after": f"{ours.pushed_s:.2f} s",
                                                      "cores": str(cores),
                                                      **{f"ceiling: {k}": v for k, v in ceiling_figures.items()},
                                                      **{f"end to end: {k}": v for k, v in e2e_figures.items()}}))
        report.append(ratio("backlog drain / server ceiling (loopback, fresh server)", drained / cold, TARGET_PACE,
                            baseline + ", to a fresh server as the drain's",
                            ceiling=f"{cold:.1f} SR/s", drain=f"{drained:.1f} SR/s", SRs=str(count),
                            **{"first 2xx after server up": f"{drain.first_2xx_s:.2f} s", "cores": str(cores),
                               **{f"drain: {k}": v for k, v in drain_figures.items()},
                               "drain without mapping ahead": f"{plain_rate:.1f} SR/s",
                               "drain without mapping ahead / ceiling": f"{plain_rate / cold:.2f}",
                               **{f"drain without mapping ahead: {k}": v for k, v in plain_figures.items()}}))
        if not args.quick:
            rates = {}
            with FhirServer() as server, FaultProxy(server.base_url) as proxy:
                proxy.set_mode(delay(0.05))
                for slots in (1, 8):
                    run = end_to_end(first, work / f"latency{slots}", proxy.base_url, slots)
                    rates[slots] = count / run.seconds
                    print(f"  (d) +50 ms per request, concurrency {slots}          {rates[slots]:7.1f} SR/s  "
                          f"({run.seconds:.1f} s)")
            hidden = rates[8] / rates[1]
            print(f"      concurrency 8 / 1 at 50 ms = {hidden:.1f}  (target >= {TARGET_LATENCY_HIDDEN})")
            report.append(ratio("concurrency 8 / 1 at +50 ms latency", hidden, TARGET_LATENCY_HIDDEN,
                                "forwarder concurrency 1, +50 ms per request, same run",
                                **{"concurrency 1": f"{rates[1]:.1f} SR/s", "concurrency 8": f"{rates[8]:.1f} SR/s"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
