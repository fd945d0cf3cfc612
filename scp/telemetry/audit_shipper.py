"""Sending the audit file's AuditEvents to the FHIR server (``send_to_fhir``), with a saved position.

:class:`AuditShipper` runs in the worker: it follows the file from a saved position and PUTs
its AuditEvents (``AuditEvent/<id>``, so a retry after a lost answer creates nothing twice) in
transaction Bundles through :class:`fhir_client.FhirClient`.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from fhir_client import FhirClient, FhirClientError, Outcome, SendResult

from ..common.files import write_atomically
from ..common.waiting import wait_or_timeout

__all__ = ["AuditShipper", "send_audit_events"]

log = structlog.get_logger()


async def send_audit_events(client: FhirClient, events: Sequence[dict[str, Any]]) -> SendResult:
    """PUT ``events`` as one transaction (``AuditEvent/<id>``: idempotent; POST without id)."""
    entries = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": event,
                "request": {"method": "PUT", "url": f"AuditEvent/{event['id']}"} if event.get("id")
                else {"method": "POST", "url": "AuditEvent"}}
               for event in events]
    return await client.send({"resourceType": "Bundle", "type": "transaction", "entry": entries})


class AuditShipper:
    """Follows the audit file and sends its events to the FHIR server, in order, once each.

    The position (file identity and byte offset) is kept in ``<path>.fhir-position`` and
    advanced only after the server took a batch, so events survive FHIR outages and worker
    restarts. A rotated file is read to its end before the new one is started. A batch the
    server rejects is retried event by event; events it still rejects are skipped and logged
    (by id), so one bad line cannot stop the trail.
    """

    def __init__(self, path: Path, *, batch_size: int = 100) -> None:
        self.path = path
        self.position_path = path.with_name(path.name + ".fhir-position")
        self.batch_size = batch_size
        self._fd: int | None = None
        self._offset = 0

    async def run(self, client: FhirClient, stop: asyncio.Event, *, interval_s: float = 5.0,
                  paused: Callable[[], bool] = lambda: False) -> None:
        """Send until ``stop`` is set; looks for new lines every ``interval_s`` when idle, and
        sends nothing while ``paused()`` (delivery is held: the endpoint itself is wrong)."""
        try:
            while not stop.is_set():
                if paused():
                    await wait_or_timeout(stop, interval_s)
                    continue
                try:
                    shipped = await self.ship_once(client)
                except (OSError, ValueError, FhirClientError) as exc:  # e.g. file unreadable: try again later
                    log.error("audit_events_not_sent", reason=f"{type(exc).__name__}: {exc}")
                    shipped = 0
                if shipped == 0:
                    await wait_or_timeout(stop, interval_s)
        finally:
            self.close()

    async def ship_once(self, client: FhirClient) -> int:
        """Send the next batch; the number of events the server took (0: none waiting, or
        the server is unavailable and the batch stays for the next call)."""
        events, end = self._next_batch()
        if not events:
            if end > self._offset:
                self._commit(end)  # only unreadable or foreign lines: step over them
            return 0
        result = await send_audit_events(client, events)
        if result.outcome in (Outcome.DEFERRED, Outcome.ENDPOINT):  # the endpoint is down or wrong: keep the batch
            log.warning("audit_events_deferred", events=len(events), status_code=result.status_code)
            return 0
        taken = len(events)
        if result.outcome is Outcome.REJECTED:
            taken = 0
            for event in events:
                single = await send_audit_events(client, [event])
                if single.outcome in (Outcome.DEFERRED, Outcome.ENDPOINT):
                    return taken  # position not advanced: the whole batch is sent again (idempotent PUTs)
                if single.outcome is Outcome.REJECTED:
                    log.error("audit_event_rejected", audit_event_id=event.get("id"), status_code=single.status_code)
                else:
                    taken += 1
        self._commit(end)
        return taken

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _next_batch(self) -> tuple[list[dict[str, Any]], int]:
        for _ in range(2):  # the current file, then (after a rotation) the new one
            fd = self._ensure_open()
            if fd is None:
                return [], 0
            events, end = self._read_events(fd)
            if events or end != self._offset:
                return events, end
            if not self._rotated():
                return [], end
            self.close()  # drained the old file: continue with the one now at the path
            self._fd = self._open(resume=False)
        return [], self._offset

    def _read_events(self, fd: int) -> tuple[list[dict[str, Any]], int]:
        if os.fstat(fd).st_size < self._offset:
            log.warning("audit_file_truncated", path=str(self.path))  # copytruncate: start over
            self._offset = 0
        events: list[dict[str, Any]] = []
        end = self._offset
        size = 1 << 20
        while len(events) < self.batch_size:
            chunk = os.pread(fd, size, end)
            lines = chunk.split(b"\n")[:-1]  # the part after the last newline is not complete yet
            if not lines:
                if len(chunk) < size:
                    break
                size *= 2  # one line longer than the chunk
                continue
            for line in lines:
                end += len(line) + 1
                try:
                    event = json.loads(line)
                except ValueError:
                    log.error("audit_line_unreadable", path=str(self.path), offset=end - len(line) - 1)
                    continue
                if isinstance(event, dict) and event.get("resourceType") == "AuditEvent":
                    events.append(event)
                if len(events) >= self.batch_size:
                    break
        return events, end

    def _ensure_open(self) -> int | None:
        if self._fd is None:
            self._fd = self._open(resume=True)
        return self._fd

    def _open(self, *, resume: bool) -> int | None:
        """Open the file at the path: at the saved position when ``resume`` and it is the
        same file, else at its start."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        stat = os.fstat(fd)
        saved = self._load_position() if resume else None
        self._offset = 0
        if saved and (saved.get("inode"), saved.get("device")) == (stat.st_ino, stat.st_dev):
            self._offset = int(saved.get("offset", 0))
        elif saved and saved.get("offset"):
            log.warning("audit_position_lost", path=str(self.path),
                        reason="the file was replaced while the worker was not running")
        return fd

    def _rotated(self) -> bool:
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self._fd) if self._fd is not None else None
        return mine is not None and (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev)

    def _commit(self, end: int) -> None:
        self._offset = end
        self._save_position()

    def _save_position(self) -> None:
        if self._fd is None:
            return
        stat = os.fstat(self._fd)
        position = {"inode": stat.st_ino, "device": stat.st_dev, "offset": self._offset}
        write_atomically(self.position_path, json.dumps(position).encode(), sync=False)

    def _load_position(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.position_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None
