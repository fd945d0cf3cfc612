"""FhirClient.send(): outcomes, retries, Retry-After, budgets, shutdown, bytes, logs."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import httpx
from structlog.testing import capture_logs

from fhir_client import Outcome, RetrySettings, SendResult
from fhir_client.client import encode_json
from mapping import serialize

from .fakes import (
    BASE_URL,
    FakeTime,
    delivered,
    fhir_json,
    fhir_settings,
    make_client,
    operation_outcome,
    scripted,
    transaction_bundle,
    transaction_response,
)


def send(handler, **kwargs) -> tuple[SendResult, FakeTime]:
    async def go() -> tuple[SendResult, FakeTime]:
        client, time = make_client(handler, **kwargs)
        async with client:
            return await client.send(transaction_bundle()), time

    return asyncio.run(go())


class TestDelivered:
    def test_200_transaction_response_is_delivered(self):
        handler, _seen = scripted(delivered())
        result, time = send(handler)
        assert result.outcome is Outcome.DELIVERED
        assert result.status_code == 200
        assert result.attempts == 1
        assert result.operation_outcome is None
        assert result.response_bundle == transaction_response()
        assert time.delays == []

    def test_request_is_a_fhir_json_post_to_the_base_url(self):
        handler, seen = scripted(delivered())
        send(handler)
        (request,) = seen
        assert request.method == "POST"
        assert str(request.url) == BASE_URL
        assert request.headers["Content-Type"] == "application/fhir+json"
        assert request.headers["Accept"] == "application/fhir+json"
        assert json.loads(request.content) == transaction_bundle()

    def test_body_is_compact_utf8_json(self):
        handler, seen = scripted(delivered())
        send(handler)
        expected = json.dumps(transaction_bundle(), separators=(",", ":"), ensure_ascii=False).encode()
        assert seen[0].content == expected
        assert "Größe".encode() in seen[0].content

    def test_body_is_what_the_encoder_writes_on_every_attempt(self):
        handler, seen = scripted(fhir_json(503), delivered())
        result, _ = send(handler, encode=lambda bundle: b'{"resourceType":"Bundle","type":"transaction"}')
        assert result.outcome is Outcome.DELIVERED
        assert [request.content for request in seen] == [b'{"resourceType":"Bundle","type":"transaction"}'] * 2

    def test_the_daemons_encoder_writes_the_default_bytes(self):
        """The worker passes ``mapping.serialize`` (orjson): the bytes stay the default encoder's,
        Decimal digits and non-ASCII text included."""
        bundle = transaction_bundle()
        bundle["entry"][0]["resource"]["extension"] = [
            {"url": "http://example.org/x", "valueDecimal": Decimal("1.10")},
            {"url": "http://example.org/y", "valueDecimal": Decimal("1E+400")},
            {"url": "http://example.org/z", "valueDecimal": 2.5e-05, "valueString": "µ \u2028 \"q\" \n"},
        ]
        assert serialize(bundle) == encode_json(bundle)


class TestRetried:
    def test_503_then_200_takes_two_attempts(self):
        handler, seen = scripted(fhir_json(503), delivered())
        result, time = send(handler)
        assert result.outcome is Outcome.DELIVERED
        assert result.attempts == 2
        assert len(seen) == 2
        assert len(time.delays) == 1

    def test_retried_body_is_byte_identical(self):
        handler, seen = scripted(fhir_json(503), fhir_json(502), httpx.ReadTimeout("slow"), delivered())
        result, _ = send(handler)
        assert result.attempts == 4
        assert len({request.content for request in seen}) == 1

    def test_429_retry_after_seconds_is_a_lower_bound(self):
        handler, _ = scripted(fhir_json(429, Retry_After="7"), delivered())
        result, time = send(handler)
        assert result.outcome is Outcome.DELIVERED
        assert len(time.delays) == 1
        assert time.delays[0] >= 7

    def test_retry_after_http_date_measured_against_the_date_header(self):
        handler, _ = scripted(
            fhir_json(
                503,
                Retry_After="Wed, 21 Oct 2015 07:28:00 GMT",
                Date="Wed, 21 Oct 2015 07:27:30 GMT",
            ),
            delivered(),
        )
        result, time = send(handler)
        assert result.outcome is Outcome.DELIVERED
        assert time.delays[0] >= 30

    def test_short_retry_after_does_not_shorten_the_backoff(self):
        handler, _ = scripted(fhir_json(503), fhir_json(503), fhir_json(503, Retry_After="1"), delivered())
        result, time = send(handler)
        assert result.attempts == 4
        assert time.delays == [1, 2, 4]

    def test_backoff_grows_and_is_capped(self):
        retry = RetrySettings(max_attempts=7, initial_backoff_s=1, max_backoff_s=5, jitter_s=0)
        handler, _ = scripted(fhir_json(500))
        result, time = send(handler, settings=fhir_settings(retry=retry))
        assert result.outcome is Outcome.DEFERRED
        assert time.delays == [1, 2, 4, 5, 5, 5]

    def test_jitter_stays_within_its_bounds_and_the_cap(self):
        retry = RetrySettings(max_attempts=6, initial_backoff_s=1, max_backoff_s=10, jitter_s=0.5)
        handler, _ = scripted(fhir_json(500))
        _, time = send(handler, settings=fhir_settings(retry=retry))
        for delay, base in zip(time.delays, [1, 2, 4, 8, 10], strict=True):
            assert base <= delay <= min(base + 0.5, 10)

    def test_connect_error_is_retried_then_deferred_after_max_attempts(self):
        retry = RetrySettings(max_attempts=3, jitter_s=0)
        handler, seen = scripted(httpx.ConnectError("connection refused"))
        result, time = send(handler, settings=fhir_settings(retry=retry))
        assert result.outcome is Outcome.DEFERRED
        assert result.attempts == 3
        assert len(seen) == 3
        assert len(time.delays) == 2
        assert result.status_code is None
        assert "ConnectError" in result.diagnostics
        assert "max_attempts (3)" in result.diagnostics

    def test_deferred_after_retryable_status_keeps_status_and_outcome(self):
        retry = RetrySettings(max_attempts=2, jitter_s=0)
        handler, _ = scripted(fhir_json(503, operation_outcome("database is read-only", code="transient")))
        result, _ = send(handler, settings=fhir_settings(retry=retry))
        assert result.outcome is Outcome.DEFERRED
        assert result.status_code == 503
        assert result.operation_outcome == operation_outcome("database is read-only", code="transient")
        assert "database is read-only" in result.diagnostics


class TestBudgetAndShutdown:
    def test_elapsed_budget_stops_before_a_wait_that_would_overrun_it(self):
        retry = RetrySettings(max_attempts=0, max_elapsed_s=10, initial_backoff_s=4, max_backoff_s=60, jitter_s=0)
        handler, _seen = scripted(fhir_json(503))
        result, time = send(handler, settings=fhir_settings(retry=retry))
        # waits 4 (t=4), then 8 would end at t=12 > 10: stop
        assert result.outcome is Outcome.DEFERRED
        assert time.delays == [4]
        assert result.attempts == 2
        assert result.elapsed_s == 4
        assert "budget" in result.diagnostics

    def test_retry_after_beyond_the_budget_defers_without_sleeping(self):
        retry = RetrySettings(max_elapsed_s=600, jitter_s=0)
        handler, _seen = scripted(fhir_json(429, Retry_After="3600"), delivered())
        result, time = send(handler, settings=fhir_settings(retry=retry))
        assert result.outcome is Outcome.DEFERRED
        assert result.status_code == 429
        assert result.attempts == 1
        assert time.delays == []

    def test_shutdown_set_during_an_attempt_stops_retrying(self):
        shutdown = asyncio.Event()
        calls = []

        def handler(request):
            calls.append(request)
            shutdown.set()
            return fhir_json(503)

        result, time = send(handler, shutdown=shutdown)
        assert result.outcome is Outcome.DEFERRED
        assert result.attempts == 1
        assert len(calls) == 1
        assert time.delays == []
        assert "shutdown" in result.diagnostics

    def test_shutdown_interrupts_a_running_wait_and_starts_no_new_attempt(self):
        shutdown = asyncio.Event()
        handler, seen = scripted(fhir_json(503), delivered())
        requested = []

        async def sleep_until_woken(delay: float) -> None:
            requested.append(delay)
            shutdown.set()
            await asyncio.Event().wait()  # never returns by itself

        async def go() -> SendResult:
            client, _ = make_client(handler, shutdown=shutdown, sleep=sleep_until_woken)
            async with client:
                return await asyncio.wait_for(client.send(transaction_bundle()), timeout=30)

        result = asyncio.run(go())
        assert result.outcome is Outcome.DEFERRED
        assert len(requested) == 1
        assert len(seen) == 1
        assert result.attempts == 1


class TestRejected:
    def test_400_with_operation_outcome_is_rejected_after_one_attempt(self):
        outcome = operation_outcome("Bundle.entry[1]: unknown code", expression="Bundle.entry[1].resource")
        handler, seen = scripted(fhir_json(400, outcome))
        result, time = send(handler)
        assert result.outcome is Outcome.REJECTED
        assert result.status_code == 400
        assert result.attempts == 1
        assert len(seen) == 1
        assert time.delays == []
        assert result.operation_outcome == outcome
        assert "Bundle.entry[1]: unknown code" in result.diagnostics
        assert "error invalid" in result.diagnostics

    def test_422_without_body_is_rejected_with_the_status_line(self):
        handler, _ = scripted(fhir_json(422))
        result, _ = send(handler)
        assert result.outcome is Outcome.REJECTED
        assert result.operation_outcome is None
        assert result.diagnostics == "HTTP 422 Unprocessable Entity"

    def test_entry_with_4xx_status_rejects_the_transaction(self):
        entry_outcome = operation_outcome("Device.manufacturer too long", code="value")
        body = transaction_response("201 Created", "422 Unprocessable Entity", outcomes={2: entry_outcome})
        handler, _ = scripted(fhir_json(200, body))
        result, _ = send(handler)
        assert result.outcome is Outcome.REJECTED
        assert result.status_code == 200
        assert result.attempts == 1
        assert result.operation_outcome == {"resourceType": "OperationOutcome", "issue": entry_outcome["issue"]}
        assert "entry 2: 422 Unprocessable Entity" in result.diagnostics
        assert "Device.manufacturer too long" in result.diagnostics
        assert result.response_bundle == body


class TestMisuse:
    def test_non_transaction_bundle_is_a_caller_error(self):
        handler, seen = scripted(delivered())

        async def go() -> None:
            client, _ = make_client(handler)
            async with client:
                await client.send({"resourceType": "Bundle", "type": "batch"})

        try:
            asyncio.run(go())
        except ValueError as exc:
            assert "transaction" in str(exc)
        else:
            raise AssertionError("ValueError expected")
        assert seen == []


class TestLogging:
    def test_one_retried_event_per_retry_without_bodies(self):
        bundle_text = "Größe Imaging"
        handler, _ = scripted(
            fhir_json(503, operation_outcome("secret server detail")),
            fhir_json(429, Retry_After="7"),
            httpx.ConnectError("refused"),
            delivered(),
        )
        with capture_logs() as logs:
            result, time = send(handler)
        retried = [entry for entry in logs if entry["event"] == "fhir_request_retried"]
        assert result.attempts == 4
        assert [entry["attempt"] for entry in retried] == [1, 2, 3]
        assert [entry["status_code"] for entry in retried] == [503, 429, None]
        assert [entry["retry_after_s"] for entry in retried] == [None, 7.0, None]
        assert [entry["wait_s"] for entry in retried] == time.delays
        assert "ConnectError" in retried[2]["error"]
        logged = repr(logs)
        assert bundle_text not in logged
        assert "secret server detail" not in logged
