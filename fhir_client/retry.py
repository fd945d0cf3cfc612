"""The retry policy, all in one place, built on tenacity.

* **Retryable**: transport failures (connect/read/write errors and timeouts, pool
  timeouts, remote protocol errors) except TLS failures, a token endpoint that answered 408,
  429 or 5xx, and HTTP 408, 429 and 5xx except 501 and 505 (those say "never", not "later").
  What is the endpoint's fault (a TLS failure, a token endpoint that refuses the client, see
  :func:`fhir_client.results.endpoint_problem_of_error`) is final at once: retrying would
  fail the same way, and the caller holds its queue instead.
  Delivery is idempotent (``PUT Type/id`` inside the transaction), so resending
  after a connection dropped mid-response is safe.
* **Wait**: exponential backoff with jitter, capped at ``max_backoff_s``; when the
  response carries ``Retry-After`` (delta-seconds or HTTP-date) the wait is the
  larger of the two, so no retry comes earlier than the server asked.
* **Stop**: after ``max_attempts`` (0 = no limit), when the next attempt would start
  after ``max_elapsed_s`` (so a long ``Retry-After`` ends retrying instead of
  sleeping past the budget), or when the shutdown event is set. A shutdown also
  cuts a running wait short.

The sleep function and the clock are injected, so tests record the requested
delays instead of sleeping.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt
from tenacity.stop import stop_base, stop_when_event_set
from tenacity.wait import wait_base, wait_exponential

from .errors import TokenRequestError
from .results import endpoint_problem_of_error
from .settings import RetrySettings

__all__ = [
    "RETRYABLE_STATUS_CODES",
    "RETRYABLE_TRANSPORT_ERRORS",
    "AttemptResult",
    "RetryPolicy",
    "RetryRun",
    "parse_retry_after",
    "retry_after_s",
]

log = structlog.get_logger()

RETRYABLE_STATUS_CODES = frozenset({408, 409, 429, *(code for code in range(500, 600) if code not in (501, 505))})
# 409: we never send If-Match, so a conflict is contention, not our content: HAPI FHIR answers 409
# (HAPI-0550/0825 "client-assigned ID constraint failure ... multiple client threads") when two
# transactions create the same shared Device or Practitioner at once; the retry succeeds.
"""HTTP statuses that mean "try again later"."""

RETRYABLE_TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException,  # connect, read, write and pool timeouts
    httpx.NetworkError,  # connect, read, write and close errors
    httpx.RemoteProtocolError,  # the server dropped the connection mid-response
)
"""httpx transport failures worth another attempt."""

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


def parse_retry_after(value: str, now: datetime | None = None) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header value (RFC 9110 §10.2.3).

    Accepts delta-seconds (``"120"``, leniently also ``"1.5"``) and HTTP-dates
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``), the latter relative to ``now`` (default:
    the current UTC time). A date in the past gives ``0.0``. Anything unparseable
    gives ``None``; this function never raises.
    """
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" or no zone: RFC 5322 says UTC
        when = when.replace(tzinfo=UTC)
    reference = now if now is not None else datetime.now(UTC)
    try:
        delay = (when - reference).total_seconds()
    except OverflowError:
        return None
    return max(0.0, delay) if math.isfinite(delay) else None


def retry_after_s(response: httpx.Response) -> float | None:
    """The response's ``Retry-After`` in seconds, or ``None``.

    An HTTP-date is measured against the response's own ``Date`` header when it has
    one, so a skewed local clock neither shortens nor stretches the wait.
    """
    header = response.headers.get("Retry-After")
    if header is None:
        return None
    now = None
    date_header = response.headers.get("Date")
    if date_header is not None:
        try:
            now = parsedate_to_datetime(date_header)
        except (TypeError, ValueError, IndexError, OverflowError):
            now = None
        if now is not None and now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
    return parse_retry_after(header, now)


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt produced: a response (body read) or the error that replaced it."""

    response: httpx.Response | None = None
    error: Exception | None = None

    @property
    def retryable(self) -> bool:
        """Whether the policy should try again after this attempt."""
        if self.response is not None:
            return self.response.status_code in RETRYABLE_STATUS_CODES
        if self.error is None or endpoint_problem_of_error(self.error) is not None:
            return False
        return isinstance(self.error, (*RETRYABLE_TRANSPORT_ERRORS, TokenRequestError))

    def describe(self) -> str:
        """Short human text without bodies, e.g. ``HTTP 503`` or ``ConnectError: ...``."""
        if self.response is not None:
            return f"HTTP {self.response.status_code} {self.response.reason_phrase}".rstrip()
        if isinstance(self.error, TokenRequestError):
            return str(self.error)
        text = str(self.error)
        return f"{type(self.error).__name__}: {text}" if text else type(self.error).__name__


@dataclass(frozen=True)
class RetryRun:
    """The end of one retried operation."""

    last: AttemptResult
    attempts: int
    elapsed_s: float
    stop_reason: str | None  # None when the last attempt was final by itself

    @property
    def gave_up(self) -> bool:
        """True when retrying stopped while the last attempt still asked for another."""
        return self.stop_reason is not None


class _wait_backoff_or_retry_after(wait_base):
    """max(Retry-After, exponential backoff + jitter), the backoff capped at max_backoff_s."""

    def __init__(self, settings: RetrySettings, rng: random.Random) -> None:
        self._settings = settings
        self._rng = rng
        self._exponential = wait_exponential(multiplier=settings.initial_backoff_s, max=settings.max_backoff_s)

    def __call__(self, retry_state: RetryCallState) -> float:
        backoff = self._exponential(retry_state) + self._rng.uniform(0, self._settings.jitter_s)
        backoff = min(backoff, self._settings.max_backoff_s)
        retry_after = _retry_after_of(retry_state)
        return backoff if retry_after is None else max(backoff, retry_after)


class _stop_before_budget_spent(stop_base):
    """Stop when the upcoming wait would end after the elapsed-time budget."""

    def __init__(self, budget_s: float, clock: Clock, started_at: float) -> None:
        self._budget_s = budget_s
        self._clock = clock
        self._started_at = started_at

    def __call__(self, retry_state: RetryCallState) -> bool:
        elapsed = self._clock() - self._started_at
        return elapsed + retry_state.upcoming_sleep > self._budget_s


def _retry_after_of(retry_state: RetryCallState) -> float | None:
    outcome = retry_state.outcome
    if outcome is None or outcome.failed:
        return None
    result: AttemptResult = outcome.result()
    return retry_after_s(result.response) if result.response is not None else None


class RetryPolicy:
    """Runs one operation under the retry policy of :class:`RetrySettings`.

    ``sleep`` and ``clock`` are injectable (tests pass a fake sleep that records
    delays); ``shutdown`` stops retrying and interrupts a running wait.
    """

    def __init__(
        self,
        settings: RetrySettings,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        shutdown: asyncio.Event | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._sleep = sleep
        self._clock = clock
        self._shutdown = shutdown
        self._rng = rng if rng is not None else random.Random()

    async def run(self, attempt: Callable[[], Awaitable[httpx.Response]], *, operation: str) -> RetryRun:
        """Call ``attempt`` until it gives a final answer or the policy stops.

        ``attempt`` sends one request and returns its response with the body read.
        httpx request errors and :class:`TokenRequestError` become the attempt's
        result; anything else propagates. ``operation`` names the request kind in
        the ``fhir_request_retried`` log event.
        """
        started_at = self._clock()
        attempts = 0
        last: AttemptResult | None = None

        async def one_attempt() -> AttemptResult:
            nonlocal attempts, last
            if last is not None and self._shutdown is not None and self._shutdown.is_set():
                return last  # shutting down: start no new request; the stop check ends the run
            attempts += 1
            try:
                last = AttemptResult(response=await attempt())
            except (httpx.RequestError, TokenRequestError) as exc:
                last = AttemptResult(error=exc)
            return last

        first = await one_attempt()
        if not first.retryable:  # the common case: answered at once; no retry machinery is built
            return RetryRun(last=first, attempts=attempts, elapsed_s=self._clock() - started_at, stop_reason=None)
        replay: list[AttemptResult] = [first]

        async def next_attempt() -> AttemptResult:
            return replay.pop() if replay else await one_attempt()  # tenacity's attempt 1 is ``first``

        stop: stop_base = _stop_before_budget_spent(self.settings.max_elapsed_s, self._clock, started_at)
        if self.settings.max_attempts:
            stop = stop | stop_after_attempt(self.settings.max_attempts)
        if self._shutdown is not None:
            stop = stop | stop_when_event_set(self._shutdown)  # type: ignore[arg-type]  # duck-typed is_set()

        def log_retry(retry_state: RetryCallState) -> None:
            result: AttemptResult = retry_state.outcome.result()  # type: ignore[union-attr]
            log.info(
                "fhir_request_retried",
                operation=operation,
                attempt=attempts,
                status_code=result.response.status_code if result.response is not None else None,
                error=None if result.response is not None else result.describe(),
                retry_after_s=_retry_after_of(retry_state),
                wait_s=round(retry_state.upcoming_sleep, 3),
            )

        retrying = AsyncRetrying(
            sleep=self._interruptible_sleep,
            stop=stop,
            wait=_wait_backoff_or_retry_after(self.settings, self._rng),
            retry=retry_if_result(lambda result: result.retryable),
            before_sleep=log_retry,
            retry_error_callback=lambda retry_state: retry_state.outcome.result(),  # type: ignore[union-attr]
        )
        final: AttemptResult = await retrying(next_attempt)
        stop_reason = self._stop_reason(attempts) if final.retryable else None
        return RetryRun(last=final, attempts=attempts, elapsed_s=self._clock() - started_at, stop_reason=stop_reason)

    def _stop_reason(self, attempts: int) -> str:
        if self._shutdown is not None and self._shutdown.is_set():
            return "shutdown requested"
        if self.settings.max_attempts and attempts >= self.settings.max_attempts:
            return f"max_attempts ({self.settings.max_attempts}) reached"
        return f"retry budget of {self.settings.max_elapsed_s:g} s would be exceeded by the next wait"

    async def _interruptible_sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds with the injected sleep, waking early on shutdown."""
        if self._shutdown is None:
            await self._sleep(delay)
            return
        if self._shutdown.is_set():
            return
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waiter = asyncio.ensure_future(self._shutdown.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waiter):
                task.cancel()
            await asyncio.gather(sleeper, waiter, return_exceptions=True)
