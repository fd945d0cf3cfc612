"""What a delivery attempt came to: :class:`Outcome`, :class:`SendResult`, and the
rules that turn a server's final answer to a transaction into them.

Every failure is one of three kinds (docs/RELIABILITY.md, "Whose fault is a failure", has the
table with the reasons):

* **this Bundle's** (:attr:`Outcome.REJECTED`): the server read the transaction and refused its
  content: 400/412/422 with an OperationOutcome, a transaction-response with failed entries,
  413, a 404 while ``[base]/metadata`` answers;
* **the endpoint's** (:attr:`Outcome.ENDPOINT`, with an :class:`EndpointProblem`): every Bundle
  would fail the same way: 401 (after the one token refresh), 403, 405, 406, 407, 415, 501,
  505, a redirect, a 2xx that is no transaction-response, a 404 or a 400 without an
  OperationOutcome while ``[base]/metadata`` does not answer a CapabilityStatement, a TLS
  verification or handshake failure, a token endpoint that refuses;
* **transient** (retried by :mod:`fhir_client.retry`, :attr:`Outcome.DEFERRED` once the budget
  is spent): transport errors, 408, 409 (contention: we never send If-Match), 429, 5xx except 501/505.

Server text (OperationOutcome diagnostics) is carried in results for the dead-letter
sidecar; it is not logged here, since servers sometimes echo resource content. A refusal that
names a limit or a capability of the server (too many entries, an unknown resource type, client
ids refused: :mod:`fhir_client.hints`) gets the setting to change appended to its diagnostics.
"""

from __future__ import annotations

import enum
import ssl
from dataclasses import dataclass
from typing import Any, TypeGuard

import httpx
import orjson

from .errors import TokenRequestError
from .hints import hint_for

__all__ = [
    "ENDPOINT_STATUS_PROBLEMS",
    "EndpointProblem",
    "Interpretation",
    "Outcome",
    "SendResult",
    "endpoint_problem_of_error",
    "interpret_transaction_response",
    "needs_base_check",
    "operation_outcome_text",
]


class Outcome(enum.StrEnum):
    """How a ``send()`` ended, i.e. what the caller should do with the Bundle."""

    DELIVERED = "delivered"
    """The server applied the whole transaction (2xx, every entry 2xx)."""
    REJECTED = "rejected"
    """Permanent: resending the same bytes will fail the same way (dead-letter it)."""
    DEFERRED = "deferred"
    """Not delivered yet: retries were spent, or shutdown began. Keep it; try later."""
    ENDPOINT = "endpoint"
    """The endpoint itself is wrong (credentials, URL, TLS, not FHIR): any Bundle would fail the
    same way. Keep it, and send nothing more until the endpoint answers again
    (:attr:`SendResult.endpoint_problem` says what is wrong). Not retried by the client."""


class EndpointProblem(enum.StrEnum):
    """What is wrong with the endpoint when the outcome is :attr:`Outcome.ENDPOINT` (a fixed
    set: safe as a metric label)."""

    UNAUTHORIZED = "unauthorized"
    """401 after the one token refresh, or 407 from a proxy: the credentials are not accepted."""
    FORBIDDEN = "forbidden"
    """403: authenticated, but not allowed to write (scope, role, a proxy's rule)."""
    NOT_FOUND = "not_found"
    """404/410 (or a 400 without an OperationOutcome) and ``[base]/metadata`` is no FHIR server: the base URL is wrong."""
    METHOD_NOT_ALLOWED = "method_not_allowed"
    """405, 501, 505: no transactions at this URL."""
    FORMAT_REFUSED = "format_refused"
    """406/415: ``application/fhir+json`` is not accepted."""
    REDIRECTED = "redirected"
    """3xx: the base URL moved, or a login page (single sign-on) is in front of it."""
    NOT_FHIR = "not_fhir"
    """A 2xx that is no transaction-response (an HTML login page, another resource), or an
    error status without any FHIR while ``[base]/metadata`` is no FHIR server either."""
    TLS = "tls"
    """Certificate verification, host name or handshake failure."""
    TOKEN_REFUSED = "token_refused"
    """The OAuth2 token endpoint refused the client (4xx, e.g. ``invalid_client``) or issued no token."""
    UNREACHABLE = "unreachable"
    """``[base]/metadata`` could not be reached to learn the server's FHIR version (``fhir.version: auto``)."""
    UNSUPPORTED_VERSION = "unsupported_version"
    """The CapabilityStatement's ``fhirVersion`` is neither 4.0.x (R4) nor 5.0.x (R5)."""


ENDPOINT_STATUS_PROBLEMS: dict[int, EndpointProblem] = {
    401: EndpointProblem.UNAUTHORIZED,
    403: EndpointProblem.FORBIDDEN,
    405: EndpointProblem.METHOD_NOT_ALLOWED,
    406: EndpointProblem.FORMAT_REFUSED,
    407: EndpointProblem.UNAUTHORIZED,
    415: EndpointProblem.FORMAT_REFUSED,
    501: EndpointProblem.METHOD_NOT_ALLOWED,
    505: EndpointProblem.METHOD_NOT_ALLOWED,
}
"""Final statuses that are the endpoint's fault whatever the body says."""

_CONTENT_STATUSES = frozenset({409, 412, 413, 422})  # 409 only once retries ran out
"""Statuses only a FHIR server sends about the content (or its size): this Bundle's fault."""
_ASK_BASE_STATUSES = frozenset({404, 410})
"""Ambiguous: a conditional reference not found, or no FHIR server at the base URL."""


@dataclass(frozen=True)
class SendResult:
    """The result of :meth:`fhir_client.FhirClient.send`.

    ``diagnostics`` is human text: the OperationOutcome issues joined, the failing
    transaction entries, or the transport error. ``elapsed_s`` covers every attempt
    and wait. ``response_bundle`` is the transaction-response when the server sent one.
    ``endpoint_problem`` is set exactly when ``outcome`` is :attr:`Outcome.ENDPOINT`.
    """

    outcome: Outcome
    status_code: int | None
    operation_outcome: dict[str, Any] | None
    diagnostics: str
    attempts: int
    elapsed_s: float
    response_bundle: dict[str, Any] | None = None
    endpoint_problem: EndpointProblem | None = None


@dataclass(frozen=True)
class Interpretation:
    """The verdict on one final response, before attempts and timing are added."""

    outcome: Outcome
    operation_outcome: dict[str, Any] | None
    diagnostics: str
    response_bundle: dict[str, Any] | None
    endpoint_problem: EndpointProblem | None = None


def operation_outcome_text(operation_outcome: dict[str, Any]) -> str:
    """Join an OperationOutcome's issues into one line.

    Each issue reads ``severity code: text [at expression]`` where text is
    ``diagnostics``, else ``details.text``, else the first ``details.coding`` display.
    """
    parts = []
    for issue in _dicts(operation_outcome.get("issue")):
        head = " ".join(str(issue[key]) for key in ("severity", "code") if isinstance(issue.get(key), str))
        text = issue.get("diagnostics")
        details = _dict(issue.get("details"))
        if not isinstance(text, str):
            text = details.get("text")
        if not isinstance(text, str):
            displays = [c.get("display") for c in _dicts(details.get("coding")) if isinstance(c.get("display"), str)]
            text = displays[0] if displays else None
        line = ": ".join(part for part in (head, text) if part)
        expression = issue.get("expression")
        expressions = [e for e in expression if isinstance(e, str)] if isinstance(expression, list) else []
        if expressions:
            line += f" [at {', '.join(expressions)}]"
        if line:
            parts.append(line)
    return "; ".join(parts)


def needs_base_check(response: httpx.Response) -> bool:
    """Whether the final answer to a transaction is ambiguous until ``[base]/metadata`` is
    asked: a 404/410 (a conditional reference not found, or a wrong base URL), or a 4xx
    without an OperationOutcome that the table does not settle (a FHIR server without words,
    or a proxy / web server in front of nothing)."""
    code = response.status_code
    if not 400 <= code < 500 or code in ENDPOINT_STATUS_PROBLEMS or code in _CONTENT_STATUSES:
        return False
    if code in _ASK_BASE_STATUSES:
        return True
    return not _is_resource(_json_body(response), "OperationOutcome")


def interpret_transaction_response(response: httpx.Response, *, base_is_fhir: bool | None = None) -> Interpretation:
    """Classify the server's final answer to a transaction POST.

    2xx with a ``transaction-response`` whose entries are all 2xx is DELIVERED; one with
    failed entries is REJECTED; any other 2xx and every 3xx is ENDPOINT (no FHIR transaction
    endpoint answered). A 4xx/5xx is ENDPOINT when :data:`ENDPOINT_STATUS_PROBLEMS` names it;
    when :func:`needs_base_check` says so, ``base_is_fhir`` (did ``[base]/metadata`` answer a
    CapabilityStatement?) decides: yes, REJECTED (the server is there and refused this
    Bundle), no, ENDPOINT; every other 4xx is REJECTED. Statuses the retry policy treats as
    temporary never reach this function as a final answer unless retries ended, which the
    caller reports as DEFERRED.
    """
    body = _json_body(response)
    status_line = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    if response.is_success:
        return _interpret_success(body, status_line, response)
    operation_outcome = body if _is_resource(body, "OperationOutcome") else None
    text = operation_outcome_text(operation_outcome) if operation_outcome else ""
    diagnostics = f"{status_line}: {text}" if text else status_line
    problem: EndpointProblem | None = None
    if response.is_redirect or 300 <= response.status_code < 400:
        location = response.headers.get("Location", "")
        problem = EndpointProblem.REDIRECTED
        diagnostics = f"{status_line}: redirected to {location or '(no Location)'}; check fhir.base_url"
    elif response.status_code in ENDPOINT_STATUS_PROBLEMS:
        problem = ENDPOINT_STATUS_PROBLEMS[response.status_code]
    elif needs_base_check(response):
        if base_is_fhir is None:
            raise ValueError(f"{status_line} needs base_is_fhir: did [base]/metadata answer a CapabilityStatement?")
        if base_is_fhir:
            diagnostics += "; [base]/metadata answers, so the server refused this Bundle"
        else:
            problem = EndpointProblem.NOT_FOUND if response.status_code in _ASK_BASE_STATUSES \
                else EndpointProblem.NOT_FHIR
            diagnostics += f"{_content_hint(response, body)}; [base]/metadata is no FHIR server either"
    if problem is not None:
        return Interpretation(Outcome.ENDPOINT, operation_outcome, diagnostics, None, problem)
    return Interpretation(
        outcome=Outcome.REJECTED,
        operation_outcome=operation_outcome,
        diagnostics=_with_hint(diagnostics),
        response_bundle=None,
    )


def endpoint_problem_of_error(error: BaseException) -> EndpointProblem | None:
    """The endpoint problem an exception instead of a response stands for, or None when it is
    transient (or not ours to judge).

    A TLS failure (certificate verification, host name, handshake, plain HTTP on the port) is
    the endpoint's, except a connection cut during the handshake (``SSLEOFError``,
    ``SSLZeroReturnError``: the peer went away, try again). A :class:`TokenRequestError` is the
    endpoint's unless the token endpoint answered 408, 429 or 5xx.
    """
    if isinstance(error, TokenRequestError):
        code = error.status_code
        transient = code is not None and (code in (408, 429) or (500 <= code < 600 and code not in (501, 505)))
        return None if transient else EndpointProblem.TOKEN_REFUSED
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return None
        if isinstance(cause, (ssl.SSLError, ssl.CertificateError)):
            return EndpointProblem.TLS
        cause = cause.__cause__ or cause.__context__
    return None


def _content_hint(response: httpx.Response, body: Any) -> str:
    return "" if body is not None else f" ({_content_type(response)}, not FHIR)"


def _content_type(response: httpx.Response) -> str:
    return response.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"


def _interpret_success(body: Any, status_line: str, response: httpx.Response) -> Interpretation:
    if not (_is_resource(body, "Bundle") and body.get("type") == "transaction-response"):
        if isinstance(body, dict) and isinstance(body.get("resourceType"), str):
            what = f"a {body['resourceType']}"
        else:
            what = f"not FHIR: {_content_type(response)}"
        return Interpretation(
            outcome=Outcome.ENDPOINT,
            operation_outcome=body if _is_resource(body, "OperationOutcome") else None,
            diagnostics=f"{status_line} but the body is not a transaction-response Bundle ({what})",
            response_bundle=None,
            endpoint_problem=EndpointProblem.NOT_FHIR,
        )
    failures = []
    issues: list[dict[str, Any]] = []
    for position, entry in enumerate(_dicts(body.get("entry")), start=1):
        entry_response = _dict(entry.get("response"))
        status = entry_response.get("status")
        if isinstance(status, str) and status.strip().startswith("2"):
            continue
        outcome = entry_response.get("outcome")
        text = ""
        if _is_resource(outcome, "OperationOutcome"):
            text = operation_outcome_text(outcome)
            issues.extend(_dicts(outcome.get("issue")))
        else:
            issues.append({"severity": "error", "code": "processing", "diagnostics": f"entry {position}: {status}"})
        failures.append(f"entry {position}: {status or 'no status'}" + (f": {text}" if text else ""))
    if not failures:
        return Interpretation(Outcome.DELIVERED, None, status_line, body)
    return Interpretation(
        outcome=Outcome.REJECTED,
        operation_outcome={"resourceType": "OperationOutcome", "issue": issues},
        diagnostics=_with_hint(f"{status_line} but {len(failures)} entries failed: " + "; ".join(failures)),
        response_bundle=body,
    )


def _with_hint(diagnostics: str) -> str:
    """``diagnostics`` plus the setting to change, when the refusal is one :mod:`.hints` knows."""
    hint = hint_for(diagnostics)
    return f"{diagnostics}; to fix: {hint}" if hint else diagnostics


def _json_body(response: httpx.Response) -> Any:
    """The body as JSON, or None. orjson parses a UTF-8 body several times faster than the
    standard library; what it refuses (another encoding, a BOM, NaN, integers beyond 64 bits)
    is parsed as ``response.json()`` does, so the answer is the same."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        pass
    try:
        return response.json()
    except ValueError:  # not JSON, or not UTF-8
        return None


def _is_resource(value: Any, resource_type: str) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict) and value.get("resourceType") == resource_type


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
