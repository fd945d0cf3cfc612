"""``sr2fhir spool status | failed | retry``: safe while the daemon runs.

``status`` also says whether delivery is held (the FHIR endpoint itself is wrong), as the worker
last published it in ``<spool>/metrics``. ``failed`` marks dead letters that an earlier release
made for what is the endpoint's fault (:func:`endpoint_problem_of`): this release holds the queue
instead, so those SRs were never refused for themselves and ``spool retry`` brings them back
(``--endpoint-problems``: only those).
"""

from __future__ import annotations

import re
import sys
from typing import Any, TextIO

from ..config import Settings
from ..spool import FailedItem, open_spool
from ..telemetry.metrics_store import WorkerMetricsStore, metrics_directory

__all__ = ["endpoint_problem_of", "run_spool_command"]

EARLIER_ENDPOINT_STATUSES = frozenset({401, 403, 404, 405, 406, 407, 415, 501, 505})
"""Statuses an earlier release dead-lettered as "rejected" that are the endpoint's fault."""
_REJECTED = "rejected by the FHIR server: "
_EXHAUSTED = "retries exhausted: "
_TOKEN_REFUSED = re.compile(r"token endpoint answered HTTP (4\d\d|2\d\d)")
_TLS = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|Hostname mismatch|WRONG_VERSION_NUMBER")


def endpoint_problem_of(sidecar: dict[str, Any]) -> str | None:
    """Why a dead letter was the endpoint's fault, in words (``HTTP 401``), or None.

    Only sidecars of an earlier release qualify (this one writes a ``fault``, and never
    dead-letters for an endpoint reason): "rejected by the FHIR server" with 401, 403, 404, 405,
    406, 407, 415, 501 or 505, a redirect, or a 2xx that was no transaction-response; "retries
    exhausted" on a token endpoint that refused the client or on a TLS verification failure.
    """
    if "fault" in sidecar:
        return None
    reason = sidecar.get("reason")
    status = sidecar.get("http_status")
    if not isinstance(reason, str):
        return None
    if reason.startswith(_REJECTED) and isinstance(status, int):
        if status in EARLIER_ENDPOINT_STATUSES or 300 <= status < 400:
            return f"HTTP {status}"
        if 200 <= status < 300 and "not a transaction-response" in reason:
            return f"HTTP {status} without FHIR"
    if reason.startswith(_EXHAUSTED):
        if match := _TOKEN_REFUSED.search(reason):
            return f"token endpoint HTTP {match.group(1)}"
        if _TLS.search(reason):
            return "TLS"
    return None


def run_spool_command(action: str, settings: Settings, ids: list[str] | None, *, out: TextIO | None = None,
                      err: TextIO | None = None, endpoint_problems: bool = False) -> int:
    """Run one spool action; returns the exit status (1 when an id is unknown)."""
    out = out or sys.stdout
    err = err or sys.stderr
    spool = open_spool(settings.spool)
    if action == "status":
        status = spool.status()
        print(f"spool:   {settings.spool.directory}", file=out)
        print(f"pending: {status.pending} ({status.pending_bytes} bytes)"
              + (f", oldest received {status.oldest_pending_received_at}" if status.oldest_pending_received_at else ""),
              file=out)
        endpoint = len(_endpoint_items(spool.failed())) if status.failed else 0
        print(f"failed:  {status.failed}" + (f" ({endpoint} for an endpoint problem: "
                                               "`sr2fhir spool retry --endpoint-problems`)" if endpoint else ""),
              file=out)
        hold = WorkerMetricsStore(metrics_directory(settings.spool.directory)).delivery_hold()
        if hold is None:
            print("delivery: not held", file=out)
        else:
            print(f"delivery: HELD since {hold.since_iso()}: {hold.headline()} ({hold.problem}): {hold.detail}",
                  file=out)
            print("          SRs are received and kept; delivery resumes by itself once the endpoint answers",
                  file=out)
        return 0
    if action == "failed":
        failed = spool.failed()
        for item in failed:
            problem = endpoint_problem_of(item.sidecar)
            marker = f"  [endpoint problem ({problem}): retry with `sr2fhir spool retry`]" if problem else ""
            print(f"{item.id}  {item.sop_instance_uid}  {item.reason}{marker}", file=out)
        endpoint = len(_endpoint_items(failed))
        print(f"{len(failed)} dead letter(s)" + (f", {endpoint} for an endpoint problem (`sr2fhir spool retry "
                                                 "--endpoint-problems` re-queues those)" if endpoint else ""), file=err)
        return 0
    if endpoint_problems:
        ids = [*(ids or []), *(item.id for item in _endpoint_items(spool.failed()))]
        if not ids:
            print("0 dead letter(s) re-queued: none is for an endpoint problem", file=err)
            return 0
    try:
        requeued = spool.requeue(ids or None)
    except KeyError as exc:
        print(f"sr2fhir: error: {exc.args[0]}", file=err)
        return 1
    for item_id in requeued:
        print(item_id, file=out)
    print(f"{len(requeued)} dead letter(s) re-queued; the running daemon picks them up", file=err)
    return 0


def _endpoint_items(failed: list[FailedItem]) -> list[FailedItem]:
    return [item for item in failed if endpoint_problem_of(item.sidecar) is not None]
