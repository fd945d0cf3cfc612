"""Where the forwarder's Bundles go: a FHIR server (:class:`FhirDelivery`) or the outbox
folder (:class:`OutboxDelivery`), both :class:`Delivery`; and the look-up that turns logical
references into literal ones (``fhir.reference_mode: resolve``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import structlog

from fhir_client import FhirClient, Outcome, SendResult
from mapping import serialize

from ..common.files import write_atomically
from .chunked import DeliveryProgress, send_in_chunks
from .versions import FhirRelease, VersionResolver

__all__ = ["Delivery", "FhirDelivery", "OutboxDelivery", "resolve_logical_references"]

log = structlog.get_logger()


class Delivery(Protocol):
    """Where Bundles go: a FHIR server, or the outbox folder.

    ``progress`` is where a delivery in several transactions records how far it got, so that
    the next delivery of the same item resumes there (:mod:`.chunked`); a target that
    delivers in one step ignores it. ``sop_instance_uid`` names the Bundle: the SR's SOP
    Instance UID, or ``<successor>.supersedes.<predecessor>`` for the transaction that retires
    a replaced report (:mod:`.supersession`).
    """

    async def release(self) -> FhirRelease | SendResult:
        """The FHIR release to write (``r4``/``r5``), or why it is not known yet (ENDPOINT)."""
        ...

    def known_release(self) -> FhirRelease | None:
        """The release to write when it is known without asking: configured, or the server's
        answer already; None before ``fhir.version: auto`` has one."""
        ...

    async def deliver(self, bundle: dict[str, Any], sop_instance_uid: str, *,
                      progress: DeliveryProgress | None = None) -> SendResult: ...


class OutboxDelivery:
    """Embedded default without a FHIR server: each Bundle as ``<SOP Instance UID>.json``.

    Written atomically and durably (temp file, fsync, rename, fsync of the directory), so a
    crash never leaves a half Bundle under the final name.
    """

    def __init__(self, directory: Path, version: str = "auto") -> None:
        self.directory = directory
        self.version: FhirRelease = "r4" if version == "r4" else "r5"  # no server to ask: auto is R5
        directory.mkdir(parents=True, exist_ok=True)

    async def release(self) -> FhirRelease:
        return self.version

    def known_release(self) -> FhirRelease:
        return self.version

    async def deliver(self, bundle: dict[str, Any], sop_instance_uid: str, *,
                      progress: DeliveryProgress | None = None) -> SendResult:
        start = time.monotonic()
        target = self.directory / f"{sop_instance_uid}.json"
        data = serialize(bundle, indent=2) + b"\n"
        write_atomically(target, data)
        return SendResult(Outcome.DELIVERED, None, None, f"written to {target}", 1, time.monotonic() - start)


class FhirDelivery:
    """Deliver with :class:`fhir_client.FhirClient` (retries, Retry-After, auth).

    With ``reference_mode="resolve"``, logical references (``type`` + ``identifier``: Patient,
    ImagingStudy, ServiceRequest) become literal ones when the server holds exactly one
    match for ``system|value``; the client caches the look-ups. Identifiers without a
    ``system`` are never looked up (see :func:`resolve_logical_references`). This happens
    before the first attempt, so every retry sends the same bytes.

    With ``max_entries_per_request``, a Bundle with more entries goes as several transactions
    in order, resuming after those ``progress`` recorded (:func:`.chunked.send_in_chunks`).
    """

    def __init__(self, client: FhirClient, reference_mode: str = "logical",
                 max_entries_per_request: int | None = None, version: str = "auto") -> None:
        self.client = client
        self.reference_mode = reference_mode
        self.max_entries_per_request = max_entries_per_request
        self.versions = VersionResolver(client, version)

    async def release(self) -> FhirRelease | SendResult:
        return await self.versions.resolve()

    def known_release(self) -> FhirRelease | None:
        return self.versions.release

    async def deliver(self, bundle: dict[str, Any], sop_instance_uid: str, *,
                      progress: DeliveryProgress | None = None) -> SendResult:
        if self.reference_mode == "resolve":
            await resolve_logical_references(bundle, self.client)
        limit = self.max_entries_per_request
        if limit is not None and len(bundle.get("entry") or ()) > limit:
            return await send_in_chunks(self.client, bundle, limit, progress)
        return await self.client.send(bundle)

    async def probe(self) -> str | None:
        """The hold's probe: ``GET [base]/metadata`` with the configured auth, once. None when
        it answers a CapabilityStatement, else why not."""
        try:
            await self.client.get_metadata()
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            return f"{type(exc).__name__}: {exc}"
        return None


async def resolve_logical_references(bundle: dict[str, Any], client: FhirClient) -> None:
    """Add ``reference: Type/id`` to every logical reference the server can resolve uniquely.

    A reference whose identifier has no ``system`` (e.g. a Patient ID whose issuer is not a
    URI, kept only in ``identifier.assigner``) stays logical and is not searched for: the
    value alone could match another issuer's patient. One ``reference_left_logical`` line
    is logged per distinct such identifier in the Bundle.
    """
    resolved: dict[tuple[str, str, str], str | None] = {}
    left_logical: set[tuple[str, Any]] = set()
    for reference in _logical_references(bundle):
        identifier = reference["identifier"]
        system = identifier.get("system")
        if not isinstance(system, str) or not system:
            unresolved = (reference["type"], identifier["value"])
            if unresolved not in left_logical:
                left_logical.add(unresolved)
                log.info("reference_left_logical", resource_type=reference["type"], reason="identifier has no system")
            continue
        key = (reference["type"], system, identifier["value"])
        if key not in resolved:
            try:
                resolved[key] = await client.resolve_reference(*key)
            except Exception as exc:  # noqa: BLE001 - lookup failed: keep the logical reference
                log.warning("reference_not_resolved", resource_type=key[0], reason=f"{type(exc).__name__}: {exc}")
                resolved[key] = None
        if resolved[key] is not None:
            reference["reference"] = resolved[key]


def _logical_references(value: Any):
    if isinstance(value, dict):
        if "reference" not in value and isinstance(value.get("type"), str) and isinstance(value.get("identifier"), dict) \
                and "value" in value["identifier"]:
            yield value
            return
        for child in value.values():
            yield from _logical_references(child)
    elif isinstance(value, list):
        for child in value:
            yield from _logical_references(child)
