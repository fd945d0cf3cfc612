"""The async FHIR R5 client: one keep-alive connection pool, one retry policy.

Usage is two lines::

    async with FhirClient(settings) as client:
        result = await client.send(bundle)   # SendResult; never raises for server behaviour

The client knows FHIR (transaction Bundles, OperationOutcome, search by
identifier) and nothing about DICOM. Tests pass ``transport=httpx.MockTransport(...)``
and a fake ``sleep``.
"""

from __future__ import annotations

import asyncio
import enum
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeGuard

import httpx
import simplejson

from .auth import build_auth
from .errors import ClientClosedError, FhirClientError, UnexpectedResponseError
from .results import (
    Outcome,
    SendResult,
    endpoint_problem_of_error,
    interpret_transaction_response,
    needs_base_check,
    operation_outcome_text,
)
from .retry import Clock, RetryPolicy, RetryRun, Sleep
from .settings import FhirSettings
from .tls import build_ssl_context

__all__ = ["BodyEncoder", "FhirClient", "encode_json"]

FHIR_JSON = "application/fhir+json"
MAX_CACHED_REFERENCES = 10_000
"""Resolved references kept per client (least recently used dropped first)."""

_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}", re.ASCII)
_TRANSACTION_HEADERS = {
    "Content-Type": FHIR_JSON,
    # Entries need only status and location; this keeps responses small.
    "Prefer": "return=minimal",
}

BodyEncoder = Callable[[dict[str, Any]], bytes]
"""Turns a Bundle into the request body (UTF-8 JSON); raises ``ValueError``/``TypeError`` for
what JSON cannot hold."""


def encode_json(bundle: dict[str, Any]) -> bytes:
    """The default :data:`BodyEncoder`: compact UTF-8 JSON; a :class:`~decimal.Decimal` is
    written as a number with its own digits (FHIR decimals keep their precision)."""
    return simplejson.dumps(
        bundle, separators=(",", ":"), ensure_ascii=False, allow_nan=False, use_decimal=True,
    ).encode()


class _State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


class FhirClient:
    """An async client for one FHIR R5 server, described by :class:`FhirSettings`.

    ``transport`` replaces the network (``httpx.MockTransport`` in tests); ``sleep``
    and ``clock`` drive the retry waits and the elapsed-time budget; setting
    ``shutdown`` stops retrying and cuts a running wait short. ``encode`` writes the
    request body of :meth:`send` (default :func:`encode_json`; the daemon passes
    ``mapping.serialize``, the same bytes written by orjson, several times faster). Use it as an async
    context manager, or call :meth:`aclose`. A closed client raises
    :class:`ClientClosedError`.
    """

    def __init__(
        self,
        settings: FhirSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        shutdown: asyncio.Event | None = None,
        clock: Clock = time.monotonic,
        encode: BodyEncoder = encode_json,
    ) -> None:
        if settings.base_url is None:
            raise ValueError("FhirSettings.base_url is not set; there is no server to talk to")
        self.settings = settings
        self._base_url = str(settings.base_url).rstrip("/")
        self._transaction_url = httpx.URL(self._base_url)  # parsed once, not on every POST
        self._encode = encode
        self._policy = RetryPolicy(settings.retry, sleep=sleep, clock=clock, shutdown=shutdown)
        self._references: OrderedDict[tuple[str, str | None, str], str] = OrderedDict()
        self._state = _State.UNOPENED
        self._http = httpx.AsyncClient(
            auth=build_auth(settings.auth, clock=clock),
            headers={"Accept": FHIR_JSON, "User-Agent": "sr2fhir"},
            timeout=httpx.Timeout(settings.timeout_s),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            verify=build_ssl_context(settings.tls),
            transport=transport,
        )

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is _State.CLOSED:
            raise ClientClosedError("a closed FhirClient cannot be reopened; create a new one")
        if self._state is _State.OPENED:
            raise RuntimeError("FhirClient is already open")
        await self._http.__aenter__()
        self._state = _State.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. Closing twice is harmless."""
        if self._state is not _State.CLOSED:
            self._state = _State.CLOSED
            await self._http.aclose()

    @property
    def is_closed(self) -> bool:
        """True once :meth:`aclose` has run."""
        return self._state is _State.CLOSED

    def _check_usable(self) -> None:
        if self._state is _State.CLOSED:
            raise ClientClosedError("this FhirClient is closed")
        self._state = _State.OPENED

    # -- delivery ----------------------------------------------------------------

    async def send(self, bundle: dict[str, Any]) -> SendResult:
        """POST a transaction Bundle to the base URL, retrying per the policy.

        The Bundle is serialised once, so every attempt sends the same bytes. Server
        behaviour never raises: see :class:`Outcome` for what the result means (and
        :mod:`fhir_client.results` for which answer is whose fault). When the final answer is
        ambiguous (a 404, or a 4xx without an OperationOutcome) ``GET [base]/metadata`` is
        asked once: a CapabilityStatement there means the server refused this Bundle
        (REJECTED), anything else that the endpoint is wrong (ENDPOINT). A Bundle that is not
        ``type: transaction`` or not serialisable raises ``ValueError``/``TypeError`` (a
        caller bug).
        """
        self._check_usable()
        if not (isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle"):
            raise ValueError("send() takes a FHIR Bundle resource as a dict")
        if bundle.get("type") != "transaction":
            raise ValueError(f"send() takes a transaction Bundle, not type {bundle.get('type')!r}")
        content = self._encode(bundle)

        async def post_once() -> httpx.Response:
            return await self._http.post(self._transaction_url, content=content, headers=_TRANSACTION_HEADERS)

        run = await self._policy.run(post_once, operation="transaction")
        response = run.last.response
        base_is_fhir = None
        if not run.gave_up and response is not None and needs_base_check(response):
            base_is_fhir = await self._base_is_fhir()
        return _send_result(run, base_is_fhir)

    # -- configuration check -----------------------------------------------------

    async def get_metadata(self) -> dict[str, Any]:
        """GET ``[base]/metadata`` once (no retries) and return the CapabilityStatement.

        Raises the httpx ``TransportError`` when the server cannot be reached, and
        :class:`UnexpectedResponseError` for a non-2xx status or another body.
        """
        self._check_usable()
        response = await self._http.get(f"{self._base_url}/metadata")
        body = _json_or_none(response)
        if not response.is_success or not _is_resource(body, "CapabilityStatement"):
            status_line = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
            detail = operation_outcome_text(body) if _is_resource(body, "OperationOutcome") else ""
            raise UnexpectedResponseError(
                f"GET [base]/metadata answered {status_line} without a CapabilityStatement",
                status_code=response.status_code,
                diagnostics=detail,
            )
        return body

    async def _base_is_fhir(self) -> bool:
        """Whether ``[base]/metadata`` answers a CapabilityStatement right now (one request)."""
        try:
            await self.get_metadata()
        except (httpx.HTTPError, FhirClientError):
            return False
        return True

    # -- reference lookup --------------------------------------------------------

    async def resolve_reference(self, resource_type: str, system: str, value: str) -> str | None:
        """Find the one ``resource_type`` with identifier ``system|value``; return ``"Type/id"``.

        Searches ``GET [base]/{type}?identifier=system|value&_elements=id&_count=2``
        under the retry policy. Returns ``None`` when no resource or more than one
        matches (the caller then keeps a logical reference). ``system`` is required:
        ``None`` or ``""`` raises :class:`ValueError` and nothing is sent, because a
        value searched across all systems could match another issuer's resource (e.g.
        another hospital's patient with the same ID). Found references are cached on
        this client (bounded, least recently used evicted); misses are not, so a
        resource created later is found. Raises the last transport error or
        :class:`TokenRequestError` when retrying ended without an answer, and
        :class:`UnexpectedResponseError` for any other non-searchset answer.
        """
        self._check_usable()
        if not _RESOURCE_TYPE.fullmatch(resource_type):
            raise ValueError(f"not a FHIR resource type name: {resource_type!r}")
        if not isinstance(system, str) or not system:
            raise ValueError(f"an identifier system is required to resolve a {resource_type} reference, "
                             f"got {system!r}: a value alone could match another issuer's resource")
        key = (resource_type, system, value)
        cached = self._references.get(key)
        if cached is not None:
            self._references.move_to_end(key)
            return cached

        token = f"{_escape_search(system)}|{_escape_search(value)}"
        params = {"identifier": token, "_elements": "id", "_count": "2"}
        url = f"{self._base_url}/{resource_type}"

        async def search_once() -> httpx.Response:
            return await self._http.get(url, params=params)

        run = await self._policy.run(search_once, operation="search")
        response = run.last.response
        if response is None:
            assert run.last.error is not None
            raise run.last.error
        body = _json_or_none(response)
        if not response.is_success or not (_is_resource(body, "Bundle") and body.get("type") == "searchset"):
            status_line = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
            detail = operation_outcome_text(body) if _is_resource(body, "OperationOutcome") else ""
            raise UnexpectedResponseError(
                f"{resource_type} search answered {status_line} without a searchset Bundle"
                + (f" ({run.stop_reason})" if run.gave_up else ""),
                status_code=response.status_code,
                diagnostics=detail,
            )
        reference = _single_match(body, resource_type)
        if reference is not None:
            self._references[key] = reference
            if len(self._references) > MAX_CACHED_REFERENCES:
                self._references.popitem(last=False)
        return reference


def _send_result(run: RetryRun, base_is_fhir: bool | None) -> SendResult:
    last = run.last
    response = last.response
    problem = endpoint_problem_of_error(last.error) if last.error is not None else None
    if problem is not None and not run.gave_up:
        return SendResult(
            outcome=Outcome.ENDPOINT,
            status_code=getattr(last.error, "status_code", None),
            operation_outcome=None,
            diagnostics=last.describe(),
            attempts=run.attempts,
            elapsed_s=run.elapsed_s,
            endpoint_problem=problem,
        )
    if run.gave_up or response is None:
        body = _json_or_none(response) if response is not None else None
        operation_outcome = body if _is_resource(body, "OperationOutcome") else None
        detail = last.describe()
        if operation_outcome:
            detail += f": {operation_outcome_text(operation_outcome)}"
        reason = run.stop_reason or "not retryable"
        return SendResult(
            outcome=Outcome.DEFERRED,
            status_code=response.status_code if response is not None else None,
            operation_outcome=operation_outcome,
            diagnostics=f"{reason} after {run.attempts} attempt(s); last: {detail}",
            attempts=run.attempts,
            elapsed_s=run.elapsed_s,
        )
    verdict = interpret_transaction_response(response, base_is_fhir=base_is_fhir)
    return SendResult(
        outcome=verdict.outcome,
        status_code=response.status_code,
        operation_outcome=verdict.operation_outcome,
        diagnostics=verdict.diagnostics,
        attempts=run.attempts,
        elapsed_s=run.elapsed_s,
        response_bundle=verdict.response_bundle,
        endpoint_problem=verdict.endpoint_problem,
    )


def _single_match(searchset: dict[str, Any], resource_type: str) -> str | None:
    total = searchset.get("total")
    if isinstance(total, int) and total != 1:
        return None
    entries = searchset.get("entry")
    matches = [
        entry.get("resource")
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, dict) and _search_mode(entry) == "match"
    ]
    if len(matches) != 1:
        return None
    (match,) = matches
    if not _is_resource(match, resource_type):
        return None
    resource_id = match.get("id")
    return f"{resource_type}/{resource_id}" if isinstance(resource_id, str) and resource_id else None


def _search_mode(entry: dict[str, Any]) -> Any:
    """``entry.search.mode``; entries without one count as matches."""
    search = entry.get("search")
    return search.get("mode", "match") if isinstance(search, dict) else "match"


def _escape_search(text: str) -> str:
    """Escape a token search parameter part (FHIR R5 search, "Escaping Search Parameters")."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _is_resource(value: Any, resource_type: str) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict) and value.get("resourceType") == resource_type
