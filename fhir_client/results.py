"""What a delivery attempt came to: :class:`Outcome`, :class:`SendResult`, and the
rules that turn a server's final answer to a transaction into them.

Server text (OperationOutcome diagnostics) is carried in results for the dead-letter
sidecar; it is not logged here, since servers sometimes echo resource content.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypeGuard

import httpx

__all__ = ["Outcome", "SendResult", "interpret_transaction_response", "operation_outcome_text"]


class Outcome(enum.StrEnum):
    """How a ``send()`` ended, i.e. what the caller should do with the Bundle."""

    DELIVERED = "delivered"
    """The server applied the whole transaction (2xx, every entry 2xx)."""
    REJECTED = "rejected"
    """Permanent: resending the same bytes will fail the same way (dead-letter it)."""
    DEFERRED = "deferred"
    """Not delivered yet: retries were spent, or shutdown began. Keep it; try later."""


@dataclass(frozen=True)
class SendResult:
    """The result of :meth:`fhir_client.FhirClient.send`.

    ``diagnostics`` is human text: the OperationOutcome issues joined, the failing
    transaction entries, or the transport error. ``elapsed_s`` covers every attempt
    and wait. ``response_bundle`` is the transaction-response when the server sent one.
    """

    outcome: Outcome
    status_code: int | None
    operation_outcome: dict[str, Any] | None
    diagnostics: str
    attempts: int
    elapsed_s: float
    response_bundle: dict[str, Any] | None = None


@dataclass(frozen=True)
class Interpretation:
    """The verdict on one final response, before attempts and timing are added."""

    outcome: Outcome
    operation_outcome: dict[str, Any] | None
    diagnostics: str
    response_bundle: dict[str, Any] | None


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


def interpret_transaction_response(response: httpx.Response) -> Interpretation:
    """Classify the server's final answer to a transaction POST.

    2xx with a ``transaction-response`` whose entries are all 2xx is DELIVERED; any
    other 2xx, 3xx or 4xx (and 501/505) is REJECTED. Statuses the retry policy treats
    as temporary never reach this function as a final answer unless retries ended,
    which the caller reports as DEFERRED.
    """
    body = _json_body(response)
    status_line = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    if response.is_success:
        return _interpret_success(body, status_line)
    operation_outcome = body if _is_resource(body, "OperationOutcome") else None
    text = operation_outcome_text(operation_outcome) if operation_outcome else ""
    if response.is_redirect:
        location = response.headers.get("Location", "")
        text = text or f"redirected to {location}; check fhir.base_url"
    return Interpretation(
        outcome=Outcome.REJECTED,
        operation_outcome=operation_outcome,
        diagnostics=f"{status_line}: {text}" if text else status_line,
        response_bundle=None,
    )


def _interpret_success(body: Any, status_line: str) -> Interpretation:
    if not (_is_resource(body, "Bundle") and body.get("type") == "transaction-response"):
        return Interpretation(
            outcome=Outcome.REJECTED,
            operation_outcome=body if _is_resource(body, "OperationOutcome") else None,
            diagnostics=f"{status_line} but the body is not a transaction-response Bundle",
            response_bundle=None,
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
        diagnostics=f"{status_line} but {len(failures)} entries failed: " + "; ".join(failures),
        response_bundle=body,
    )


def _json_body(response: httpx.Response) -> Any:
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
