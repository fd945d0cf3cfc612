"""Test doubles for fhir_client: a fake clock/sleep, FHIR resources, and client setup.

Fake servers are plain callables for ``httpx.MockTransport`` (as in httpx's own
tests). ``FakeTime.sleep`` records each requested delay and advances the fake
clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from fhir_client import FhirClient, FhirSettings, RetrySettings

BASE_URL = "https://fhir.example.org/fhir"
Handler = Callable[[httpx.Request], Any]


class FakeTime:
    """A clock that only moves when the code under test 'sleeps'."""

    def __init__(self) -> None:
        self.now = 0.0
        self.delays: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay


def fhir_settings(**overrides: Any) -> FhirSettings:
    """Settings for tests: deterministic waits (no jitter), a few attempts."""
    retry = overrides.pop("retry", RetrySettings(max_attempts=5, initial_backoff_s=1, max_backoff_s=60, jitter_s=0))
    return FhirSettings(base_url=BASE_URL, retry=retry, **overrides)


def make_client(
    handler: Handler,
    *,
    settings: FhirSettings | None = None,
    time: FakeTime | None = None,
    shutdown: asyncio.Event | None = None,
    sleep: Callable[[float], Any] | None = None,
    **options: Any,
) -> tuple[FhirClient, FakeTime]:
    """A FhirClient on a MockTransport, driven by a FakeTime (or by ``sleep``); ``options``:
    more keyword arguments of :class:`FhirClient` (``encode``)."""
    time = time if time is not None else FakeTime()
    client = FhirClient(
        settings if settings is not None else fhir_settings(),
        transport=httpx.MockTransport(handler),
        sleep=sleep if sleep is not None else time.sleep,
        clock=time.clock,
        shutdown=shutdown,
        **options,
    )
    return client, time


def transaction_bundle() -> dict[str, Any]:
    """A small transaction Bundle with a non-ASCII string in it."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0f6e7c2e-0000-5000-8000-000000000001",
                "resource": {
                    "resourceType": "Device",
                    "id": "0f6e7c2e-0000-5000-8000-000000000001",
                    "manufacturer": "Größe Imaging",
                },
                "request": {"method": "PUT", "url": "Device/0f6e7c2e-0000-5000-8000-000000000001"},
            },
            {
                "fullUrl": "urn:uuid:0f6e7c2e-0000-5000-8000-000000000002",
                "resource": {"resourceType": "ImagingSelection", "id": "0f6e7c2e-0000-5000-8000-000000000002"},
                "request": {"method": "PUT", "url": "ImagingSelection/0f6e7c2e-0000-5000-8000-000000000002"},
            },
        ],
    }


def transaction_response(*statuses: str, outcomes: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A transaction-response Bundle with one entry per status (1-based ``outcomes``)."""
    outcomes = outcomes or {}
    entries = []
    for position, status in enumerate(statuses or ("201 Created", "201 Created"), start=1):
        response: dict[str, Any] = {"status": status}
        if position in outcomes:
            response["outcome"] = outcomes[position]
        entries.append({"response": response})
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}


def operation_outcome(diagnostics: str, *, code: str = "invalid", expression: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def fhir_json(status_code: int, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    """A response with an application/fhir+json body; ``Retry_After`` style kwargs become headers."""
    header_items = {name.replace("_", "-"): value for name, value in headers.items()}
    if body is None:
        return httpx.Response(status_code, headers=header_items)
    return httpx.Response(
        status_code, json=body, headers={"Content-Type": "application/fhir+json", **header_items}
    )


def delivered() -> httpx.Response:
    return fhir_json(200, transaction_response())


def scripted(*steps: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler that answers with ``steps`` in order (an exception is raised) and
    records every request; the last step repeats."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = steps[min(len(seen), len(steps)) - 1]
        if isinstance(step, Exception):
            raise step
        return httpx.Response(step.status_code, headers=step.headers, content=step.content)  # a fresh copy

    return handler, seen
