"""Deliver one Bundle as several transactions, for servers that cap a transaction's size.

:func:`send_in_chunks` splits the Bundle (:func:`fhir_client.split_transaction`: referenced
resources first, crossing references rewritten so they still resolve) and sends the chunks in
order, each through :meth:`fhir_client.FhirClient.send` (each with the full retry policy). The
first chunk that is not delivered ends the delivery with that chunk's result: REJECTED is
dead-lettered, ENDPOINT holds the queue, DEFERRED keeps the item, as for a single transaction.

**Progress** survives retries and crashes: after each acknowledged chunk, ``(digest,
chunks_done)`` is recorded durably for the spool item (:class:`SpoolProgress`, the spool's
``progress`` table), where ``digest`` is the SHA-256 of the Bundle as sent plus the chunk
size. The next delivery of the item (a retry, a restart after a crash) skips the chunks
recorded, provided the digest is the same; a changed Bundle or limit starts again at chunk 0,
which is harmless: every entry is an idempotent PUT or conditional write. The record is
deleted with the item. A chunk acknowledged but not yet recorded when the worker died is
sent again: at most one chunk is ever sent twice, and that changes nothing on the server.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any, Protocol

import structlog

from fhir_client import FhirClient, Outcome, SendResult, SplitError, split_transaction
from mapping import serialize

from ..spool import SpoolConsumer, SpoolError, SpoolItem

__all__ = ["DeliveryProgress", "SpoolProgress", "bundle_digest", "send_in_chunks"]

log = structlog.get_logger()


class DeliveryProgress(Protocol):
    """Where a delivery in chunks records how far it got (one per spool item)."""

    def load(self) -> tuple[str, int] | None:
        """(digest, chunks_done) recorded last, or None."""

    def save(self, digest: str, chunks_done: int) -> None:
        """Record durably that the first ``chunks_done`` chunks were acknowledged. Never raises."""


class SpoolProgress:
    """:class:`DeliveryProgress` of one spool item, kept in ``spool.db`` beside the item."""

    def __init__(self, consumer: SpoolConsumer, item: SpoolItem) -> None:
        self.consumer = consumer
        self.item = item

    def load(self) -> tuple[str, int] | None:
        try:
            return self.consumer.progress(self.item)
        except SpoolError as exc:  # start from chunk 0: a resend changes nothing
            log.warning("bundle_progress_unreadable", error=str(exc))
            return None

    def save(self, digest: str, chunks_done: int) -> None:
        try:
            self.consumer.record_progress(self.item, digest, chunks_done)
        except SpoolError as exc:  # e.g. disk full: the chunks are sent again next time, harmlessly
            log.warning("bundle_progress_not_recorded", chunks_done=chunks_done, error=str(exc))


def bundle_digest(bundle: dict[str, Any], max_entries: int) -> str:
    """Identifies the chunks a Bundle is cut into: SHA-256 over its JSON and the chunk size."""
    digest = hashlib.sha256(serialize(bundle))
    digest.update(f"|max_entries={max_entries}".encode())
    return digest.hexdigest()


async def send_in_chunks(client: FhirClient, bundle: dict[str, Any], max_entries: int,
                         progress: DeliveryProgress | None = None) -> SendResult:
    """Send ``bundle`` as transactions of at most ``max_entries`` entries, resuming after the
    chunks ``progress`` says were acknowledged.

    Returns DELIVERED once every chunk is (``attempts`` and ``elapsed_s`` summed over the
    chunks sent now, ``response_bundle`` joining their transaction-responses), else the result
    of the first chunk that was not, its diagnostics prefixed with the chunk's position. A
    Bundle that cannot be split (a reference circle larger than ``max_entries``) is REJECTED
    without sending anything, with a reason naming the setting to change.
    """
    try:
        chunks = split_transaction(bundle, max_entries)
    except SplitError as exc:
        return SendResult(Outcome.REJECTED, None, None, f"not sent: {exc}", 0, 0.0)
    digest = bundle_digest(bundle, max_entries)
    saved = progress.load() if progress is not None else None
    first = min(saved[1], len(chunks)) if saved is not None and saved[0] == digest else 0
    if first:
        log.info("bundle_chunks_resumed", chunks_done=first, chunks=len(chunks))
    attempts, elapsed_s = 0, 0.0
    responses: list[Any] = []
    status_code: int | None = None
    for index in range(first, len(chunks)):
        chunk = chunks[index]
        sent = await client.send(chunk)
        attempts += sent.attempts
        elapsed_s += sent.elapsed_s
        position = f"chunk {index + 1}/{len(chunks)}"
        if sent.outcome is not Outcome.DELIVERED:
            return replace(sent, attempts=attempts, elapsed_s=elapsed_s, diagnostics=f"{position}: {sent.diagnostics}")
        status_code = sent.status_code
        if sent.response_bundle is not None:
            responses.extend(sent.response_bundle.get("entry") or [])
        if progress is not None:
            progress.save(digest, index + 1)
        log.info("bundle_chunk_delivered", chunk=index + 1, chunks=len(chunks), entries=len(chunk["entry"]),
                 attempts=sent.attempts, status_code=sent.status_code)
    return SendResult(
        outcome=Outcome.DELIVERED,
        status_code=status_code,
        operation_outcome=None,
        diagnostics=f"{len(chunks)} transactions of at most {max_entries} entries"
                    + (f" ({first} acknowledged earlier)" if first else ""),
        attempts=attempts,
        elapsed_s=elapsed_s,
        response_bundle={"resourceType": "Bundle", "type": "transaction-response", "entry": responses},
    )
