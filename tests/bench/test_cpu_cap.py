"""bench.pace.cpu_cap: the most SR/s measured CPU costs allow, shared cores and one thread each."""

from __future__ import annotations

import pytest

from bench.pace import cpu_cap


def test_the_shared_cores_bind_when_no_process_needs_a_whole_core():
    # 100 SRs: listener 2 ms, worker 5 ms, server 4 ms per SR -> 11 ms on 2 cores: 181.8 SR/s
    cap = cpu_cap({"listener": 0.2, "worker": 0.5, "server": 0.4}, 100, cores=2)
    assert cap.bound == "all processes on 2 cores"
    assert cap.rate == pytest.approx(2 / 0.011)


def test_one_process_binds_when_it_alone_needs_more_than_a_core():
    # the server's 5 ms per SR allow 200 SR/s; the shared cores would allow 2 / 6.5 ms = 307.7
    cap = cpu_cap({"client": 0.15, "server": 0.5}, 100, cores=2)
    assert cap.bound == "server"
    assert cap.rate == pytest.approx(200.0)


def test_an_idle_process_is_left_out():
    cap = cpu_cap({"listener": 0.0, "worker": 0.4, "server": 0.4}, 100, cores=1)
    assert cap.bound == "all processes on 1 core"
    assert cap.rate == pytest.approx(125.0)
