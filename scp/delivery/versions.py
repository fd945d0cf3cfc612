"""Which FHIR release to write: ``fhir.version`` as configured, or as the server says (``auto``).

With ``auto`` the worker reads ``CapabilityStatement.fhirVersion`` from ``GET [base]/metadata``
before its first delivery (never at start: a server that is down must not stop anything) and
keeps the answer for the worker's life. 4.0.x is R4, 5.0.x is R5; any other release, or no
answer, is reported as an endpoint problem, so the queue is held (:mod:`.hold`) and probed
until the server answers, and nothing is dead-lettered for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx
import structlog

from fhir_client import EndpointProblem, FhirClient, Outcome, SendResult
from fhir_client.errors import FhirClientError, TokenRequestError, UnexpectedResponseError
from fhir_client.releases import FhirRelease, release_of
from fhir_client.retry import RETRYABLE_STATUS_CODES

__all__ = ["FhirRelease", "VersionResolver", "release_of"]

log = structlog.get_logger()

class VersionResolver:
    """The release to write for one FHIR server; asks it at most once per success.

    ``configured`` is ``fhir.version``: ``r4``/``r5`` are used as they are; ``auto`` asks the
    server. Concurrent callers share one request.
    """

    def __init__(self, client: FhirClient, configured: str) -> None:
        self._client = client
        self._configured = configured
        self._release: FhirRelease | None = None if configured == "auto" else configured  # type: ignore[assignment]
        self._lock = asyncio.Lock()

    @property
    def release(self) -> FhirRelease | None:
        """The release in use, or None while ``auto`` has no answer yet."""
        return self._release

    async def resolve(self) -> FhirRelease | SendResult:
        """The release, or a :class:`SendResult` (outcome ENDPOINT) saying why it is not known."""
        if self._release is not None:
            return self._release
        async with self._lock:
            if self._release is not None:
                return self._release
            start = time.monotonic()
            answer = await self._ask()
            if isinstance(answer, SendResult):
                return dataclasses.replace(answer, elapsed_s=time.monotonic() - start)
            self._release = answer
            log.info("fhir_version_resolved", fhir_version=answer, source="CapabilityStatement")
            return answer

    async def _ask(self) -> FhirRelease | SendResult:
        try:
            capability = await self._client.get_metadata()
        except TokenRequestError as exc:
            return _endpoint(EndpointProblem.TOKEN_REFUSED, exc.status_code, f"token request failed: {exc}")
        except UnexpectedResponseError as exc:
            code = exc.status_code or 0
            if code in RETRYABLE_STATUS_CODES:  # 503 while the server starts, 429, ...: not there yet
                problem = EndpointProblem.UNREACHABLE
            else:
                problem = {401: EndpointProblem.UNAUTHORIZED, 407: EndpointProblem.UNAUTHORIZED,
                           403: EndpointProblem.FORBIDDEN}.get(code, EndpointProblem.NOT_FHIR)
            return _endpoint(problem, exc.status_code, str(exc))
        except (httpx.HTTPError, FhirClientError, OSError) as exc:
            return _endpoint(EndpointProblem.UNREACHABLE, None,
                             f"GET [base]/metadata failed ({type(exc).__name__}: {exc}); the FHIR version "
                             "(fhir.version: auto) is read from it before the first delivery")
        stated = capability.get("fhirVersion")
        release = release_of(stated)
        if release is None:
            return _endpoint(EndpointProblem.UNSUPPORTED_VERSION, None,
                             f"the server's CapabilityStatement says fhirVersion {stated!r}; sr2fhir writes "
                             "R4 (4.0.x) or R5 (5.0.x): point fhir.base_url at an R4 or R5 endpoint")
        return release


def _endpoint(problem: EndpointProblem, status_code: int | None, detail: str) -> SendResult:
    return SendResult(Outcome.ENDPOINT, status_code, None, detail, 1, 0.0, endpoint_problem=problem)
