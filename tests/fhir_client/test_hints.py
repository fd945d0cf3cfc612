"""A refusal that names a server limit tells the operator which setting to change.

The texts are the servers' own (sources in the comments); where only the behaviour is
documented, the text is marked as a paraphrase.
"""

from __future__ import annotations

import httpx
import pytest

from fhir_client import Outcome
from fhir_client.hints import hint_for
from fhir_client.results import interpret_transaction_response
from tests.fhir_client.fakes import fhir_json, operation_outcome, transaction_response

ENTRIES = "set fhir.max_entries_per_request"
VERSION = "set fhir.version: r4 (or auto)"
CLIENT_IDS = "set fhir.write_mode: conditional-update"

CASES = [
    # Medplum @medplum/fhir-router 4.5.2, batch.ts (BatchProcessor.run; the strings are in
    # tests/fhir_server/node_modules/@medplum/fhir-router/dist/cjs/index.cjs): badRequest(...) -> 400.
    ("Transaction contains more update operations than allowed", ENTRIES),
    ("Transaction requires strict isolation but has too many entries", ENTRIES),
    # Microsoft FHIR server (Azure Health Data Services), BundleHandler.FillRequestLists ->
    # BundleEntryLimitExceededException; message as asserted in its BundleHandlerTests.
    ("The number of entries in the bundle exceeded the configured limit of 500.",
     "set fhir.max_entries_per_request to 500 or less"),
    # Generic wordings (Firely Server and others word it differently; not verified verbatim).
    ("Bundle entry limit exceeded.", ENTRIES),
    ("Too many entries in transaction", ENTRIES),
    # HAPI FHIR RestfulServer.throwUnknownResourceTypeException: Msg.code(302) (404).
    ("HAPI-0302: Unknown resource type 'ImagingSelection' - Server knows how to handle: [Patient, Observation]",
     "the server does not know ImagingSelection: " + VERSION),
    # HAPI FHIR FhirContext.getResourceDefinition: Msg.code(1684) (a DataFormatException while parsing the
    # Bundle on an R4 server; HAPI's tests assert this text).
    ('HAPI-1684: Unknown resource name "ImagingSelection" (this name is not known in FHIR version "R4")',
     "the server does not know ImagingSelection: " + VERSION),
    # Medplum @medplum/core validation: "Unknown resource type" (no name).
    ("Unknown resource type", "the server does not know a resource type of this Bundle: " + VERSION),
    # HAPI FHIR BaseStorageDao.validateResourceIdCreation, client id strategy NOT_ALLOWED: Msg.code(959)
    # (a 404; text as asserted in HAPI's FhirResourceDaoR4CreateTest).
    ("HAPI-0959: No resource exists on this server resource with ID[1c0f8a52-9d6e-5b1e-a3f0-5f2d8e7c4b19], "
     "and client-assigned IDs are not enabled.", CLIENT_IDS),
    # HAPI FHIR, strategy ALPHANUMERIC and a numeric id: Msg.code(960).
    ("HAPI-0960: Can not create resource with ID[8], no resource with this ID exists and clients may only "
     "assign IDs which contain at least one non-numeric character", CLIENT_IDS),
    # Google Cloud Healthcare API: update creates only when the store has enableUpdateCreate (documented
    # behaviour of fhir.update; the wording of the error here is a paraphrase).
    ("resource not found: Observation/abc; update-as-create is disabled for this FHIR store (enableUpdateCreate)",
     CLIENT_IDS),
    # Content errors get no hint.
    ("Observation.status: minimum required = 1, but only found 0", None),
    ("HAPI-0450: Failed to parse request body as JSON resource", None),
]


@pytest.mark.parametrize(("text", "advice"), CASES, ids=[c[0][:40] for c in CASES])
def test_hint_for_server_texts(text, advice):
    hint = hint_for(text)
    if advice is None:
        assert hint is None
    else:
        assert hint is not None and advice in hint


def test_a_refused_transaction_carries_the_setting_to_change():
    response = fhir_json(400, operation_outcome("Transaction contains more update operations than allowed"))
    verdict = interpret_transaction_response(response)
    assert verdict.outcome is Outcome.REJECTED
    assert verdict.diagnostics.startswith("HTTP 400 Bad Request: error invalid: Transaction contains")
    assert verdict.diagnostics.endswith("; to fix: the server limits the entries of a transaction: "
                                        "set fhir.max_entries_per_request (Medplum: 50, 8 with conditional writes; "
                                        "Firely: 150; Azure: 500)")


def test_an_unknown_resource_type_on_a_404_from_a_fhir_server():
    response = fhir_json(404, operation_outcome(
        "HAPI-0302: Unknown resource type 'ImagingSelection' - Server knows how to handle: [Patient]",
        code="processing"))
    verdict = interpret_transaction_response(response, base_is_fhir=True)
    assert verdict.outcome is Outcome.REJECTED
    assert "to fix: the server does not know ImagingSelection: set fhir.version: r4 (or auto)" in verdict.diagnostics


def test_a_failed_entry_of_a_transaction_response():
    body = transaction_response("201 Created", "404 Not Found", outcomes={2: operation_outcome(
        "HAPI-0959: No resource exists on this server resource with ID[x], and client-assigned IDs are not enabled.")})
    verdict = interpret_transaction_response(fhir_json(200, body))
    assert verdict.outcome is Outcome.REJECTED
    assert verdict.diagnostics.endswith("to fix: the server refuses client-assigned ids: "
                                        "set fhir.write_mode: conditional-update (or fhir.server: google | medplum)")


def test_endpoint_problems_get_no_hint():
    response = httpx.Response(403, json=operation_outcome("Too many entries"),
                              headers={"Content-Type": "application/fhir+json"})
    verdict = interpret_transaction_response(response)
    assert verdict.outcome is Outcome.ENDPOINT and "to fix" not in verdict.diagnostics
