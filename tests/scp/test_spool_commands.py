"""``sr2fhir spool status | failed | retry`` and the delivery hold: what an operator sees of a
hold, and dead letters an earlier release made for an endpoint problem, marked and re-queued.

A real spool in a temporary directory; the hold is published the way the worker publishes it
(:class:`scp.telemetry.metrics.WorkerMetrics` in ``<spool>/metrics``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scp.cli import main as cli_main
from scp.commands.spool import endpoint_problem_of
from scp.delivery.reasons import HoldReason
from scp.spool import RecordFields, Spool
from scp.telemetry.metrics import WorkerMetrics, metrics_directory
from tests.support.daemon_process import write_config

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"

# Sidecars as the earlier release wrote them (no "fault" key), and as this one does.
EARLIER_401 = {"reason": "rejected by the FHIR server: HTTP 401 Unauthorized", "http_status": 401}
EARLIER_403 = {"reason": "rejected by the FHIR server: HTTP 403 Forbidden: error forbidden: no write scope",
               "http_status": 403}
EARLIER_404 = {"reason": "rejected by the FHIR server: HTTP 404 Not Found", "http_status": 404}
EARLIER_HTML = {"reason": "rejected by the FHIR server: HTTP 200 OK but the body is not a transaction-response Bundle",
                "http_status": 200}
EARLIER_TOKEN = {"reason": "retries exhausted: retry budget of 86400 s would be exceeded by the next wait after 1400 "
                           "attempt(s); last: token endpoint answered HTTP 401 (invalid_client)", "http_status": None}
EARLIER_422 = {"reason": "rejected by the FHIR server: HTTP 422 Unprocessable Entity: error invalid: bad code",
               "http_status": 422}
EARLIER_UNMAPPABLE = {"reason": "mapping failed: not TID 1500", "http_status": None}
NOW_404 = {"reason": "rejected by the FHIR server: HTTP 404 Not Found: error not-found: no Patient matches; "
                     "[base]/metadata answers, so the server refused this Bundle", "http_status": 404, "fault": "content"}


@pytest.mark.parametrize(("sidecar", "problem"), [
    (EARLIER_401, "HTTP 401"), (EARLIER_403, "HTTP 403"), (EARLIER_404, "HTTP 404"),
    (EARLIER_HTML, "HTTP 200 without FHIR"), (EARLIER_TOKEN, "token endpoint HTTP 401"),
    ({"reason": "rejected by the FHIR server: HTTP 302 Found: redirected to https://sso/login; check fhir.base_url",
      "http_status": 302}, "HTTP 302"),
    ({"reason": "retries exhausted: ... last: ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
                "failed", "http_status": None}, "TLS"),
    (EARLIER_422, None), (EARLIER_UNMAPPABLE, None), (NOW_404, None),
    ({"reason": "retries exhausted: ... last: HTTP 503 Service Unavailable", "http_status": 503}, None),
    ({}, None),
], ids=["401", "403", "404", "html", "token", "redirect", "tls", "422", "unmappable", "this release's 404",
        "503 exhausted", "empty"])
def test_which_dead_letters_were_the_endpoints_fault(sidecar, problem):
    assert endpoint_problem_of(sidecar) == problem


def dead_letters(directory: Path, sidecars: list[dict]) -> list[str]:
    """Spool one item per sidecar and dead-letter it with that sidecar; their ids."""
    spool = Spool(directory)
    with spool.writer() as writer:
        for index, _ in enumerate(sidecars):
            writer.put(RecordFields(f"1.2.3.{index}", SR_CLASS, "1.2.840.10008.1.2.1", "CT"), b"x" * 10)
    consumer = spool.consumer()
    consumer.open()
    try:
        items = consumer.pending()
        for item, sidecar in zip(items, sidecars, strict=True):
            consumer.dead_letter(item, {"sop_instance_uid": item.sop_instance_uid, **sidecar})
    finally:
        consumer.close()
    return [item.id for item in items]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_failed_marks_the_endpoint_problems_and_retry_brings_back_only_those(tmp_path, capsys):
    config = str(write_config(tmp_path))
    ids = dead_letters(tmp_path / "spool", [EARLIER_401, EARLIER_422, EARLIER_HTML, EARLIER_UNMAPPABLE, NOW_404])
    code, out, err = run(capsys, "spool", "failed", "--config", config)
    assert code == 0
    lines = dict(line.split("  ", 1) for line in out.splitlines())
    assert lines[ids[0]].endswith("HTTP 401 Unauthorized  [endpoint problem (HTTP 401): retry with "
                                  "`sr2fhir spool retry`]")
    assert "[endpoint problem (HTTP 200 without FHIR)" in lines[ids[2]]
    assert not any("endpoint problem" in lines[i] for i in (ids[1], ids[3], ids[4]))
    assert err.strip() == ("5 dead letter(s), 2 for an endpoint problem (`sr2fhir spool retry --endpoint-problems` "
                           "re-queues those)")

    code, out, _ = run(capsys, "spool", "status", "--config", config)
    assert "failed:  5 (2 for an endpoint problem: `sr2fhir spool retry --endpoint-problems`)" in out

    code, out, err = run(capsys, "spool", "retry", "--endpoint-problems", "--config", config)
    assert code == 0 and out.split() == [ids[0], ids[2]]
    assert sorted(item.id for item in Spool(tmp_path / "spool").failed()) == sorted([ids[1], ids[3], ids[4]])
    code, out, err = run(capsys, "spool", "retry", "--endpoint-problems", "--config", config)
    assert code == 0 and out == "" and "none is for an endpoint problem" in err


def test_status_shows_a_hold_as_the_worker_publishes_it(tmp_path, capsys):
    config = str(write_config(tmp_path))
    Spool(tmp_path / "spool").status()  # creates the layout
    code, out, _ = run(capsys, "spool", "status", "--config", config)
    assert code == 0 and "delivery: not held" in out

    metrics = WorkerMetrics(metrics_directory(tmp_path / "spool"))
    reason = HoldReason("unauthorized", 401, "HTTP 401 Unauthorized", 1_800_000_000.0)
    metrics.hold_started(reason)
    code, out, _ = run(capsys, "spool", "status", "--config", config)
    assert ("delivery: HELD since 2027-01-15T08:00:00+00:00: FHIR server answers 401 (unauthorized): "
            "HTTP 401 Unauthorized") in out
    assert "resumes by itself" in out
    metrics.hold_ended(reason, 60.0)
    code, out, _ = run(capsys, "spool", "status", "--config", config)
    assert "delivery: not held" in out
    metrics.close()
