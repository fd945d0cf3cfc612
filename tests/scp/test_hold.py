"""The delivery hold (scp.delivery.hold): its state machine, and the forwarder driving it over a
real spool.

The endpoint is a scripted peer (:class:`Endpoint`: answers each Bundle and each probe by its
current mode); time is a fake clock where the hold's backoff is checked, and the forwarder runs
on real time with probes allowed back to back (``min_s=0``). Synchronisation is on events the
observers set, never on sleeps.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from structlog.testing import capture_logs

from fhir_client import EndpointProblem, Outcome, RetrySettings, SendResult
from mapping import MappingOptions
from scp.delivery.forwarder import run_forwarder
from scp.delivery.hold import DeliveryHold, HoldState, ProbeBackoff
from scp.delivery.reasons import HoldReason
from scp.spool import RecordFields, Spool
from tests.fhir_client.fakes import (
    FakeTime,
    delivered,
    fhir_json,
    fhir_settings,
    make_client,
    transaction_bundle,
)
from tests.support import sr_builders as sr

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def result(outcome: Outcome, status_code: int | None = 200, problem: EndpointProblem | None = None) -> SendResult:
    return SendResult(outcome, status_code, None, f"HTTP {status_code}", 1, 0.01, endpoint_problem=problem)


UNAUTHORIZED = result(Outcome.ENDPOINT, 401, EndpointProblem.UNAUTHORIZED)
FORBIDDEN = result(Outcome.ENDPOINT, 403, EndpointProblem.FORBIDDEN)
DELIVERED = result(Outcome.DELIVERED)


class Recorder:
    """A hold observer that records and sets asyncio events."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, HoldReason]] = []
        self.started = asyncio.Event() if _loop_running() else None
        self.ended = asyncio.Event() if _loop_running() else None

    def hold_started(self, reason: HoldReason) -> None:
        self.calls.append(("started", reason))
        if self.started is not None:
            self.started.set()

    def hold_ended(self, reason: HoldReason, held_s: float) -> None:
        self.calls.append(("ended", reason))
        if self.ended is not None:
            self.ended.set()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Script:
    """Probe answers in order (None: answers; text: fails), the last one repeating."""

    def __init__(self, *answers: str | None) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self) -> str | None:
        self.calls += 1
        answer = self.answers[min(self.calls, len(self.answers)) - 1]
        if answer == "raise":
            raise RuntimeError("probe broke")
        return answer


def new_hold(probe: Script, time: FakeTime, recorder: Recorder | None = None, *, max_s: float = 8.0) -> DeliveryHold:
    return DeliveryHold(probe, ProbeBackoff(initial_s=1.0, max_s=max_s, jitter_s=0.0), clock=time.clock,
                        wall_clock=lambda: 1_800_000_000.0 + time.now, observers=[recorder] if recorder else [],
                        rng=random.Random(1))


# -- the state machine on its own ------------------------------------------------------------


class TestStateMachine:
    def test_an_endpoint_answer_holds_once_and_a_probe_then_a_trial_resume(self) -> None:
        time, recorder, probe = FakeTime(), Recorder(), Script("HTTP 401", "HTTP 401", None)
        hold = new_hold(probe, time, recorder)
        with capture_logs() as logs:
            assert hold.admit(["a", "b", "c"], key=str) == ["a", "b", "c"]
            assert hold.endpoint_failed("a", UNAUTHORIZED) is False
            assert hold.endpoint_failed("b", UNAUTHORIZED) is False  # in flight when the hold began
            assert hold.state is HoldState.HELD and hold.admit(["a", "b", "c"], key=str) == []
            assert not hold.may_start()
            probe_times = []
            while hold.state is HoldState.HELD:
                time.now += hold.seconds_to_probe()
                probe_times.append(time.now)
                asyncio.run(hold.probe())
            assert probe_times == [1.0, 3.0, 7.0]  # 1 s, then doubling
            assert hold.state is HoldState.TRIAL
            assert hold.admit(["a", "b", "c"], key=str) == ["a"]  # one trial, the oldest
            assert hold.started("a") is True and hold.admit(["b", "c"], key=str) == [] and not hold.may_start()
            hold.settled("a", answered=True)
        assert hold.state is HoldState.RUNNING and hold.reason is None
        assert [(kind, reason.status_code, reason.problem) for kind, reason in recorder.calls] == [
            ("started", 401, "unauthorized"), ("ended", 401, "unauthorized")]
        events = [entry["event"] for entry in logs]
        assert events.count("delivery_held") == 1 and events.count("delivery_resumed") == 1
        held = next(entry for entry in logs if entry["event"] == "delivery_held")
        assert (held["problem"], held["status_code"], held["reason"]) == ("unauthorized", 401, "HTTP 401")
        assert [entry["reason"] for entry in logs if entry["event"] == "delivery_hold_probe_failed"] == ["HTTP 401"]

    def test_probes_back_off_up_to_max_backoff(self) -> None:
        time, probe = FakeTime(), Script("down")
        hold = new_hold(probe, time, max_s=8.0)
        hold.endpoint_failed("a", UNAUTHORIZED)
        waits = []
        for _ in range(6):
            waits.append(hold.seconds_to_probe())
            time.now += waits[-1]
            asyncio.run(hold.probe())
        assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]

    def test_a_probe_that_raises_counts_as_failed(self) -> None:
        time = FakeTime()
        hold = new_hold(Script("raise", None), time)
        hold.endpoint_failed("a", UNAUTHORIZED)
        assert asyncio.run(hold.probe()) is False and hold.state is HoldState.HELD
        assert asyncio.run(hold.probe()) is True and hold.state is HoldState.TRIAL

    def test_a_failed_trial_holds_on_without_a_new_hold_and_the_next_trial_takes_another_item(self) -> None:
        time, recorder = FakeTime(), Recorder()
        hold = new_hold(Script(None), time, recorder)
        hold.endpoint_failed("a", FORBIDDEN)
        asyncio.run(hold.probe())
        hold.started("a")
        assert hold.endpoint_failed("a", FORBIDDEN) is False
        assert hold.state is HoldState.HELD and hold.suspects == {"a"}
        assert hold.seconds_to_probe() == 2.0  # the backoff goes on growing
        asyncio.run(hold.probe())
        assert hold.admit(["a", "b"], key=str) == ["b"]  # a suspect is tried last
        assert hold.admit(["a"], key=str) == ["a"]  # ... but tried when it is all there is
        assert [kind for kind, _ in recorder.calls] == ["started"]

    def test_a_suspect_refused_again_after_another_sr_was_accepted_is_its_own_fault(self) -> None:
        time = FakeTime()
        hold = new_hold(Script(None), time)
        hold.endpoint_failed("x", FORBIDDEN)
        asyncio.run(hold.probe())
        hold.started("x")
        hold.endpoint_failed("x", FORBIDDEN)  # the trial of x fails: a suspect
        asyncio.run(hold.probe())
        hold.started("y")
        hold.settled("y", answered=True)  # another SR was accepted: resumed
        assert hold.state is HoldState.RUNNING
        assert hold.endpoint_failed("x", FORBIDDEN) is True  # dead-letter x, do not hold again
        assert hold.state is HoldState.RUNNING and hold.suspects == set()

    def test_a_suspect_that_is_delivered_later_is_cleared(self) -> None:
        time = FakeTime()
        hold = new_hold(Script(None), time)
        hold.endpoint_failed("x", FORBIDDEN)
        asyncio.run(hold.probe())
        hold.started("x")
        hold.endpoint_failed("x", FORBIDDEN)
        hold.settled("x", answered=True)  # x went through after all (the endpoint healed)
        assert hold.suspects == set() and hold.state is HoldState.RUNNING
        assert hold.endpoint_failed("x", FORBIDDEN) is False and hold.state is HoldState.HELD

    def test_an_answer_to_an_item_still_in_flight_ends_the_hold(self) -> None:
        time, recorder = FakeTime(), Recorder()
        hold = new_hold(Script("down"), time, recorder)
        hold.endpoint_failed("a", UNAUTHORIZED)  # an old token; "b" was sent with a fresh one
        hold.settled("b", answered=True)
        assert hold.state is HoldState.RUNNING
        assert [kind for kind, _ in recorder.calls] == ["started", "ended"]

    def test_a_trial_that_never_reached_the_server_frees_the_trial_without_resuming(self) -> None:
        time = FakeTime()
        hold = new_hold(Script(None), time)
        hold.endpoint_failed("a", UNAUTHORIZED)
        asyncio.run(hold.probe())
        hold.started("u")
        hold.settled("u", answered=False)  # e.g. unmappable: says nothing about the endpoint
        assert hold.state is HoldState.TRIAL and hold.may_start()

    def test_nothing_left_to_try_resumes(self) -> None:
        time, recorder = FakeTime(), Recorder()
        hold = new_hold(Script(None), time, recorder)
        hold.endpoint_failed("a", UNAUTHORIZED)
        hold.nothing_to_try()
        assert hold.state is HoldState.HELD  # held: the probe must answer first
        asyncio.run(hold.probe())
        hold.nothing_to_try()
        assert hold.state is HoldState.RUNNING

    def test_the_reason_in_words(self) -> None:
        assert HoldReason("unauthorized", 401, "", 0).headline() == "FHIR server answers 401"
        assert HoldReason("not_fhir", 200, "", 0).headline() == "FHIR server answers 200 without FHIR"
        assert HoldReason("token_refused", 401, "", 0).headline() == "token endpoint answers 401"
        assert HoldReason("token_refused", 200, "", 0).headline() == "token endpoint issues no token"
        assert HoldReason("tls", None, "", 0).headline() == "TLS with the FHIR server fails"
        line = HoldReason("forbidden", 403, "", 1_800_000_000.0).status_line()
        assert line.startswith("delivery held: FHIR server answers 403 since ") and line[-3] == ":"
        long = HoldReason.of("forbidden", 403, "x" * 1000)
        assert len(long.detail) == 300 and HoldReason.from_json(long.to_json()) == long
        assert HoldReason.from_json({"problem": "x"}) is None and HoldReason.from_json(None) is None


def test_held_time_costs_no_retry_budget() -> None:
    """An ENDPOINT answer is final at once (no retry waits); the next send() after a day-long
    hold has its whole budget: it retries a 503 although the budget is 10 s."""
    answers = [fhir_json(401), fhir_json(503), delivered()]

    def handler(request):
        return answers.pop(0)

    async def go() -> tuple[SendResult, SendResult, FakeTime]:
        time = FakeTime()
        retry = RetrySettings(max_elapsed_s=10, initial_backoff_s=1, max_backoff_s=1, jitter_s=0)
        client, _ = make_client(handler, settings=fhir_settings(retry=retry), time=time)
        async with client:
            first = await client.send(transaction_bundle())
            time.now += 86_400  # held for a day
            second = await client.send(transaction_bundle())
        return first, second, time

    first, second, time = asyncio.run(go())
    assert (first.outcome, first.attempts, first.elapsed_s) == (Outcome.ENDPOINT, 1, 0.0)
    assert (second.outcome, second.attempts, second.elapsed_s) == (Outcome.DELIVERED, 2, 1.0)
    assert time.delays == [1.0]


# -- the forwarder with a hold, over a real spool ---------------------------------------------------


class Endpoint:
    """The FHIR side as the forwarder sees it: ``mode(uid)`` answers each Bundle, ``probe_ok``
    the probe. Records the SOP Instance UIDs sent, in order, and counts probes."""

    def __init__(self, mode: Callable[[str], SendResult], probe_ok: bool = False) -> None:
        self.mode = mode
        self.probe_ok = probe_ok
        self.sent: list[str] = []
        self.probes = 0
        self.probed = asyncio.Event()

    async def release(self) -> str:
        return "r5"

    async def deliver(self, bundle: dict[str, Any], sop_instance_uid: str, *, progress=None) -> SendResult:
        self.sent.append(sop_instance_uid)
        await asyncio.sleep(0)
        return self.mode(sop_instance_uid)

    async def probe(self) -> str | None:
        self.probes += 1
        self.probed.set()
        return None if self.probe_ok else "HTTP 401"


def fill_spool(directory: Path, count: int) -> tuple[Spool, list[str]]:
    spool = Spool(directory)
    uids = []
    with spool.writer() as writer:
        for index in range(count):
            ds = sr.measurement_report([sr.measurement_group("1410", tracking_identifier=f"t{index}",
                                                              measurements=[sr.num_item(sr.LENGTH, 1.0, sr.MM)])],
                                       sop_instance_uid=sr.uid(f"hold:{index}"))
            data = sr.to_part10_bytes(ds)
            pydicom.dcmread(BytesIO(data))  # readable, as the listener guarantees
            writer.put(RecordFields(ds.SOPInstanceUID, SR_CLASS, EXPLICIT_LE, "TEST"), data)
            uids.append(ds.SOPInstanceUID)
    return spool, uids


class Settled:
    """A delivery observer: sets ``done`` once ``count`` items were delivered or dead-lettered."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.done = asyncio.Event()
        if count == 0:
            self.done.set()

    def _one(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.done.set()

    def delivered(self, item, sent, bundle) -> None:
        self._one()

    def dead_lettered(self, item, reason, sent=None, bundle=None) -> None:
        self._one()

    def deferred(self, item, sent=None) -> None:
        pass

    def ignored(self, item, template) -> None:
        self._one()

    def superseded(self, predecessor_uid, successor_uid, resources, how, sent=None) -> None:
        pass


async def forward(spool: Spool, endpoint: Endpoint, script: Callable[..., Any], *, concurrency: int = 4,
                  settle: int) -> tuple[Recorder, DeliveryHold]:
    """Run the forwarder with a hold until ``script`` (a coroutine function taking the
    recorder and the hold) returned and ``settle`` items were delivered or dead-lettered."""
    recorder = Recorder()
    settled = Settled(settle)
    hold = DeliveryHold(endpoint.probe, ProbeBackoff(initial_s=0.0, max_s=0.0, jitter_s=0.0, min_s=0.0),
                        observers=[recorder])
    consumer = spool.consumer()
    consumer.open()
    stop = asyncio.Event()
    task = asyncio.create_task(run_forwarder(consumer, endpoint, MappingOptions(), stop, concurrency=concurrency,
                                             poll_interval_s=0.01, hold=hold, observers=[settled]))
    try:
        await asyncio.wait_for(script(recorder, hold), timeout=30)
        await asyncio.wait_for(settled.done.wait(), timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        consumer.close()
    return recorder, hold


def test_the_forwarder_holds_probes_tries_the_oldest_then_delivers_everything_once(tmp_path: Path) -> None:
    spool, uids = fill_spool(tmp_path / "spool", 12)
    endpoint = Endpoint(lambda uid: UNAUTHORIZED)
    delivered_uids: list[str] = []

    def mode(uid: str) -> SendResult:
        delivered_uids.append(uid)
        return DELIVERED

    async def script(recorder: Recorder, hold: DeliveryHold) -> None:
        await recorder.started.wait()
        for _ in range(3):  # a few failed probes while held
            endpoint.probed.clear()
            await endpoint.probed.wait()
        sent_while_held = list(endpoint.sent)
        assert len(sent_while_held) <= 4  # only what was already in flight: concurrency 4
        assert spool.status().failed == 0 and spool.status().pending == 12
        endpoint.mode, endpoint.probe_ok = mode, True
        await recorder.ended.wait()

    with capture_logs() as logs:
        recorder, _ = asyncio.run(forward(spool, endpoint, script, settle=len(uids)))
    assert sorted(delivered_uids) == sorted(uids) and len(delivered_uids) == 12  # each once
    assert delivered_uids[0] == uids[0]  # the trial: the oldest
    assert spool.status().failed == 0
    assert [kind for kind, _ in recorder.calls] == ["started", "ended"]
    events = [entry["event"] for entry in logs]
    assert events.count("delivery_held") == 1 and events.count("delivery_resumed") == 1
    assert "bundle_rejected" not in events


def test_a_post_only_refusal_holds_once_through_failed_trials_and_dead_letters_nothing(tmp_path: Path) -> None:
    """GET /metadata answers, every POST gets 405: trials fail, the hold stays one hold."""
    spool, uids = fill_spool(tmp_path / "spool", 6)
    refused = result(Outcome.ENDPOINT, 405, EndpointProblem.METHOD_NOT_ALLOWED)
    endpoint = Endpoint(lambda uid: refused, probe_ok=True)

    async def script(recorder: Recorder, hold: DeliveryHold) -> None:
        await recorder.started.wait()
        for _ in range(10):  # ten probes (and trials) while POSTs are refused
            endpoint.probed.clear()
            await endpoint.probed.wait()
        assert hold.held and spool.status().failed == 0
        endpoint.mode = lambda uid: DELIVERED
        await recorder.ended.wait()

    with capture_logs() as logs:
        recorder, _ = asyncio.run(forward(spool, endpoint, script, settle=len(uids)))
    assert spool.status().failed == 0
    assert [kind for kind, _ in recorder.calls] == ["started", "ended"]
    assert [entry["event"] for entry in logs].count("delivery_held") == 1


def test_one_sr_the_endpoint_refuses_for_itself_cannot_hold_the_queue_for_good(tmp_path: Path) -> None:
    spool, uids = fill_spool(tmp_path / "spool", 5)
    poison = uids[0]
    endpoint = Endpoint(lambda uid: FORBIDDEN if uid == poison else DELIVERED, probe_ok=True)

    async def script(recorder: Recorder, hold: DeliveryHold) -> None:
        await recorder.started.wait()

    with capture_logs() as logs:
        recorder, _ = asyncio.run(forward(spool, endpoint, script, concurrency=1,
                                          settle=len(uids)))
    assert [item.sop_instance_uid for item in spool.failed()] == [poison]
    (failed,) = spool.failed()
    assert failed.reason.startswith("rejected by the FHIR server for this SR only")
    assert failed.sidecar["http_status"] == 403 and failed.sidecar["fault"] == "content"
    assert endpoint.sent.count(poison) == 3  # refused, refused as the trial, refused after others went through
    assert [kind for kind, _ in recorder.calls] == ["started", "ended"]
    assert [entry["event"] for entry in logs].count("delivery_held") == 1


def test_a_422_while_running_is_dead_lettered_without_a_hold(tmp_path: Path) -> None:
    spool, uids = fill_spool(tmp_path / "spool", 3)
    rejected = result(Outcome.REJECTED, 422)
    endpoint = Endpoint(lambda uid: rejected if uid == uids[1] else DELIVERED)

    async def script(recorder: Recorder, hold: DeliveryHold) -> None:
        return None

    recorder, hold = asyncio.run(forward(spool, endpoint, script, settle=len(uids)))
    assert [item.sop_instance_uid for item in spool.failed()] == [uids[1]]
    assert recorder.calls == [] and endpoint.probes == 0 and not hold.held


@pytest.mark.parametrize("concurrency", [1, 4])
def test_stop_while_held_leaves_everything_pending(tmp_path: Path, concurrency: int) -> None:
    spool, _ = fill_spool(tmp_path / "spool", 5)
    endpoint = Endpoint(lambda uid: UNAUTHORIZED)

    async def script(recorder: Recorder, hold: DeliveryHold) -> None:
        await recorder.started.wait()
        endpoint.probed.clear()
        await endpoint.probed.wait()

    asyncio.run(forward(spool, endpoint, script, concurrency=concurrency, settle=0))
    assert spool.status().pending == 5 and spool.status().failed == 0
