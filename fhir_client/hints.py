"""Which setting to change when a server refuses a transaction for a reason that is ours to fix.

Some refusals are not about the content of one report but about how sr2fhir is configured for
this server: the transaction is larger than the server accepts, the server does not know an R5
resource type, or it refuses client-assigned ids. The Bundle is still dead-lettered (resending
it unchanged fails the same way), but its reason then says what to change; after the change,
``sr2fhir spool retry`` sends it again. :func:`hint_for` reads the server's words
(OperationOutcome text, or the status line) and returns that advice, or None.

The patterns follow the servers' own messages (examples in ``tests/fhir_client/test_hints.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["HINTS", "Hint", "hint_for"]


@dataclass(frozen=True)
class Hint:
    """A refusal recognised by ``pattern`` and the advice for it. ``advice`` may name
    ``{name}`` (the resource type the server named, from a group starting with ``name``);
    ``advice_with_limit`` is used instead when the ``limit`` group matched."""

    kind: str
    pattern: re.Pattern[str]
    advice: str
    advice_with_limit: str | None = None

    def advise(self, text: str) -> str | None:
        match = self.pattern.search(text)
        if match is None:
            return None
        groups = {key: value for key, value in match.groupdict().items() if value}
        if self.advice_with_limit is not None and "limit" in groups:
            return self.advice_with_limit.format(limit=groups["limit"])
        names = [value for key, value in groups.items() if key.startswith("name")]
        return self.advice.format(name=names[0] if names else "a resource type of this Bundle")


_I = re.IGNORECASE
HINTS: tuple[Hint, ...] = (
    Hint(
        "entries_limit",
        re.compile(
            r"more update operations than allowed"  # Medplum: more than 50 updates in a transaction
            r"|strict isolation but has too many entries"  # Medplum: > 8 entries with a conditional one
            r"|number of entries in the bundle exceeded the configured limit(?: of (?P<limit>\d+))?"  # Azure
            r"|too many (?:bundle |transaction )?entries"
            r"|(?:bundle|transaction) (?:size|entry|entries) (?:limit|exceed)"
            r"|entr(?:y|ies) limit"
            r"|maximum number of (?:bundle |transaction )?entries", _I),
        "the server limits the entries of a transaction: set fhir.max_entries_per_request "
        "(Medplum: 50, 8 with conditional writes; Firely: 150; Azure: 500)",
        "the server accepts at most {limit} entries per transaction: set fhir.max_entries_per_request to {limit} "
        "or less",
    ),
    Hint(
        "unknown_resource_type",
        re.compile(
            r"unknown resource (?:type|name)(?: ['\"](?P<name>[A-Za-z]+)['\"])?"  # HAPI-0302, HAPI-1684, Medplum
            r"|(?:unsupported|invalid|not a (?:known|valid)) resource type(?: ['\"]?(?P<name2>[A-Z][A-Za-z]+))?", _I),
        "the server does not know {name}: set fhir.version: r4 (or auto)",
    ),
    Hint(
        "client_ids_refused",
        re.compile(
            r"client-assigned ids are not enabled"  # HAPI-0959 (client id strategy NOT_ALLOWED)
            r"|clients may only assign ids"  # HAPI-0960 (ALPHANUMERIC strategy, numeric id)
            r"|update[- ]?as[- ]?create|enable_?update_?create"  # Google Cloud Healthcare: enableUpdateCreate off
            r"|client[- ]assigned ids? (?:is |are )?not (?:allowed|supported|permitted)", _I),
        "the server refuses client-assigned ids: set fhir.write_mode: conditional-update (or fhir.server: google | medplum)",
    ),
)
"""Checked in order; the first that matches gives the advice."""


def hint_for(text: str) -> str | None:
    """The advice for a refusal whose server text is ``text``, or None when it is not one of
    :data:`HINTS`."""
    for hint in HINTS:
        advice = hint.advise(text)
        if advice is not None:
            return advice
    return None
