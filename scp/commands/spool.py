"""``sr2fhir spool status | failed | retry``: safe while the daemon runs."""

from __future__ import annotations

import sys
from typing import TextIO

from ..config import Settings
from ..spool import Spool

__all__ = ["run_spool_command"]


def run_spool_command(action: str, settings: Settings, ids: list[str] | None, *, out: TextIO | None = None,
                      err: TextIO | None = None) -> int:
    """Run one spool action; returns the exit status (1 when an id is unknown)."""
    out = out or sys.stdout
    err = err or sys.stderr
    spool = Spool(settings.spool.directory, segment_max_bytes=int(settings.spool.segment_max_bytes),
                  retention=settings.spool.retention)
    if action == "status":
        status = spool.status()
        print(f"spool:   {settings.spool.directory}", file=out)
        print(f"pending: {status.pending} ({status.pending_bytes} bytes)"
              + (f", oldest received {status.oldest_pending_received_at}" if status.oldest_pending_received_at else ""),
              file=out)
        print(f"failed:  {status.failed}", file=out)
        return 0
    if action == "failed":
        failed = spool.failed()
        for item in failed:
            print(f"{item.id}  {item.sop_instance_uid}  {item.reason}", file=out)
        print(f"{len(failed)} dead letter(s)", file=err)
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
