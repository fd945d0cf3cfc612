"""The retry policy's pure parts: Retry-After parsing and the retryable set."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_client.retry import RETRYABLE_STATUS_CODES, AttemptResult, parse_retry_after, retry_after_s

NOW = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),  # IMF-fixdate
        ("Wednesday, 21-Oct-15 07:28:00 GMT", 30.0),  # obsolete RFC 850 form
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past
        ("Wed, 21 Oct 2015 09:28:00 +0200", 30.0),
    ],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize("value", ["", "soon", "-5", "1e3", "nan", "inf", "٣", "12 s", "0x10"])
def test_parse_retry_after_rejects_garbage(value):
    assert parse_retry_after(value, NOW) is None


@given(st.text())
def test_parse_retry_after_never_raises(value):
    result = parse_retry_after(value)
    assert result is None or (isinstance(result, float) and result >= 0 and not math.isnan(result))


@given(st.text(), st.datetimes(timezones=st.just(UTC)))
def test_parse_retry_after_never_raises_for_any_reference_time(value, now):
    result = parse_retry_after(value, now)
    assert result is None or (isinstance(result, float) and result >= 0 and not math.isnan(result))


@given(st.integers(min_value=0, max_value=10**30))
def test_delta_seconds_round_trip(seconds):
    assert parse_retry_after(str(seconds)) == float(seconds)


def test_retry_after_of_a_response_uses_its_date_header():
    response = httpx.Response(
        503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT", "Date": "Wed, 21 Oct 2015 07:27:00 GMT"}
    )
    assert retry_after_s(response) == 60.0
    assert retry_after_s(httpx.Response(503)) is None
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": "later"})) is None


def test_retryable_statuses():
    assert {408, 429, 500, 502, 503, 504} <= RETRYABLE_STATUS_CODES
    assert not {400, 401, 403, 404, 412, 422, 501, 505} & RETRYABLE_STATUS_CODES
    assert 409 in RETRYABLE_STATUS_CODES  # contention (HAPI-0550 on concurrent creates of one client id)


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ConnectTimeout("slow"), True),
        (httpx.ReadTimeout("slow"), True),
        (httpx.WriteTimeout("slow"), True),
        (httpx.PoolTimeout("busy"), True),
        (httpx.ReadError("reset"), True),
        (httpx.RemoteProtocolError("dropped"), True),
        (httpx.LocalProtocolError("bug"), False),
        (httpx.UnsupportedProtocol("gopher"), False),
    ],
)
def test_retryable_transport_errors(error, retryable):
    assert AttemptResult(error=error).retryable is retryable
