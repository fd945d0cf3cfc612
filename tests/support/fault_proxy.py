"""A loopback HTTP/1.1 reverse proxy that injects faults, for tests against real peers.

It sits on ``127.0.0.1:<ephemeral>`` in front of an upstream base URL and answers each
request according to the next queued fault, or the standing mode once the queue is empty::

    with FaultProxy(fhir_server.base_url) as proxy:
        proxy.push(status(503), PASS)            # next request 503, the one after passes
        proxy.set_mode(delay(0.2))               # afterwards every request waits 0.2 s, then passes
        httpx.post(proxy.base_url, json=bundle)
        assert [entry.status for entry in proxy.log] == [503, 200]

Faults: :data:`PASS`; :func:`status` (any answer, e.g. 503, 429 with ``Retry-After``, 400 with
an OperationOutcome); :func:`delay` then pass; :data:`DROP` (close the connection without a
response); :func:`reject_type` (answer a 4xx with an OperationOutcome when the request body is
a Bundle holding that resource type, or that resource itself; pass otherwise); :class:`Hold`
(keep the request unanswered until the test releases it, e.g. to kill the client meanwhile)::

    held = Hold()
    proxy.push(PASS, PASS, held)     # the third request waits
    assert held.arrived.wait(30)     # ... it is here now
    held.release(DROP)               # then close it (or PASS: forward it)

Every request is logged (:class:`LogEntry`) before its response is written, so a test reads
the log right after its client returns, without waiting. Client connections are kept alive
(h11); upstream connections are pooled by one ``httpx.AsyncClient``. The proxy runs its own
event loop in a background thread, so synchronous and asynchronous tests can both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, NamedTuple

import h11
import httpx

__all__ = [
    "DROP", "PASS", "Delay", "Drop", "Fault", "FaultProxy", "Hold", "LogEntry", "Pass", "RejectType", "Status",
    "delay", "operation_outcome", "reject_type", "status",
]

FHIR_JSON = "application/fhir+json; charset=utf-8"
START_TIMEOUT_S = 10.0
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"host", b"content-length",
})
_READ_SIZE = 65536


@dataclass(frozen=True)
class Pass:
    """Forward the request upstream and relay the answer."""


@dataclass(frozen=True)
class Status:
    """Answer ``code`` with ``headers`` and ``body`` without contacting the upstream."""

    code: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds``, then pass."""

    seconds: float


@dataclass(frozen=True)
class Drop:
    """Close the connection without answering (the client sees a transport error)."""


@dataclass(frozen=True)
class RejectType:
    """Answer ``code`` with an OperationOutcome when the body holds a ``resource_type``; else pass."""

    resource_type: str
    code: int
    outcome_text: str


class Hold:
    """Keep the request unanswered until :meth:`release`, then apply the fault given there.

    ``arrived`` is set once the request has been read; a test waits on it instead of sleeping.
    Stopping the proxy releases every hold with :data:`DROP`.
    """

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self._released = threading.Event()
        self._then: Pass | Status | Drop = Drop()

    def release(self, then: Pass | Status | Drop | None = None) -> None:
        """Answer the held request with ``then`` (default :data:`DROP`); idempotent."""
        if then is not None and not self._released.is_set():
            self._then = then
        self._released.set()

    async def wait(self) -> Pass | Status | Drop:
        """Wait (off the event loop) until released; the fault to apply then."""
        self.arrived.set()
        await asyncio.get_running_loop().run_in_executor(None, self._released.wait)
        return self._then


Fault = Pass | Status | Delay | Drop | RejectType | Hold
PASS = Pass()
DROP = Drop()


def operation_outcome(text: str, *, code: str = "processing", severity: str = "error") -> dict[str, Any]:
    """A one-issue OperationOutcome whose diagnostics are ``text``."""
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code, "diagnostics": text}]}


def status(code: int, headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
           body: bytes | str | Mapping[str, Any] = b"") -> Status:
    """Answer ``code``; a dict body is sent as FHIR JSON (Content-Type added unless given)."""
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    if isinstance(body, Mapping):
        body = json.dumps(body).encode("utf-8")
        if not any(name.lower() == "content-type" for name, _ in pairs):
            pairs.append(("Content-Type", FHIR_JSON))
    elif isinstance(body, str):
        body = body.encode("utf-8")
    return Status(code, tuple(pairs), body)


def delay(seconds: float) -> Delay:
    """Wait ``seconds`` before forwarding."""
    return Delay(seconds)


def reject_type(resource_type: str, code: int, outcome_text: str) -> RejectType:
    """Refuse requests carrying ``resource_type`` (in a Bundle entry, or as the body) with ``code``."""
    return RejectType(resource_type, code, outcome_text)


class LogEntry(NamedTuple):
    """One request the proxy answered (or dropped)."""

    timestamp: float
    """``time.monotonic()`` when the whole request had been read."""
    method: str
    path: str
    """The request target as sent: path and query."""
    status: int | Literal["dropped"]
    body: bytes
    """The request body."""
    responded: float
    """``time.monotonic()`` just before the response was written (or the connection closed)."""
    connection: int
    """Which client connection (1, 2, ...): repeats show keep-alive reuse."""


class FaultProxy:
    """The proxy; a context manager that starts and stops it (see the module docstring)."""

    def __init__(self, upstream_base_url: str, *, upstream_timeout_s: float = 120.0) -> None:
        upstream = httpx.URL(upstream_base_url)
        self._upstream_origin = f"{upstream.scheme}://{upstream.netloc.decode('ascii')}"
        self._path_prefix = upstream.raw_path.decode("ascii").split("?", 1)[0].rstrip("/")
        self._upstream_timeout_s = upstream_timeout_s
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._mode: Fault = PASS
        self._log: list[LogEntry] = []
        self._connection_numbers = itertools.count(1)
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._holds: list[Hold] = []

    # -- programming it (any thread) ----------------------------------------------

    @property
    def base_url(self) -> str:
        """The upstream base URL with the proxy's origin, e.g. ``http://127.0.0.1:PORT/fhir/R5``."""
        if self._port is None:
            raise RuntimeError("the fault proxy is not running")
        return f"http://127.0.0.1:{self._port}{self._path_prefix}"

    def push(self, *faults: Fault) -> None:
        """Queue faults for the next requests, one each, in order."""
        with self._lock:
            self._queue.extend(faults)

    def set_mode(self, fault: Fault) -> None:
        """The fault applied to every request once the queue is empty (initially :data:`PASS`)."""
        with self._lock:
            self._mode = fault

    def pending(self) -> int:
        """How many queued faults are still to be used."""
        with self._lock:
            return len(self._queue)

    @property
    def log(self) -> list[LogEntry]:
        """A copy of the access log, oldest first."""
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def _next_fault(self) -> Fault:
        with self._lock:
            return self._queue.popleft() if self._queue else self._mode

    def _record(self, entry: LogEntry) -> None:
        with self._lock:
            self._log.append(entry)

    # -- lifecycle ----------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the fault proxy is already running")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S) or self._failure is not None:
            self.stop()
            raise RuntimeError("the fault proxy did not start") from self._failure

    def stop(self) -> None:
        """Stop listening, close every connection and join the thread; idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with self._lock:
            holds = list(self._holds)
        for held in holds:
            held.release(DROP)
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(START_TIMEOUT_S)
        self._port = None

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._failure = exc
        finally:
            ready.set()
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await self._connection(reader, writer, next(self._connection_numbers), upstream)
            finally:
                connections.discard(task)

        async with httpx.AsyncClient(timeout=self._upstream_timeout_s, follow_redirects=False) as upstream:
            server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
            self._port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await self._stopping.wait()
                server.close()
                for task in list(connections):
                    task.cancel()
                await asyncio.gather(*connections, return_exceptions=True)

    # -- one client connection -------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int,
                          upstream: httpx.AsyncClient) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                received = await _read_request(conn, reader)
                if received is None:
                    return
                request, body = received
                if not await self._answer(conn, writer, number, request, body, upstream):
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _answer(self, conn: h11.Connection, writer: asyncio.StreamWriter, number: int,
                      request: h11.Request, body: bytes, upstream: httpx.AsyncClient) -> bool:
        """Apply the next fault; False when the connection must be closed."""
        received_at = time.monotonic()
        method = request.method.decode("ascii")
        target = request.target.decode("ascii")
        fault = self._next_fault()
        if isinstance(fault, Hold):
            with self._lock:
                self._holds.append(fault)
            fault = await fault.wait()
        if isinstance(fault, Delay):
            await asyncio.sleep(fault.seconds)
            fault = PASS
        if isinstance(fault, RejectType) and not _carries_type(body, fault.resource_type):
            fault = PASS
        if isinstance(fault, Drop):
            self._record(LogEntry(received_at, method, target, "dropped", body, time.monotonic(), number))
            return False
        if isinstance(fault, RejectType):
            answer = status(fault.code, body=operation_outcome(fault.outcome_text))
            code, headers, content = answer.code, list(answer.headers), answer.body
        elif isinstance(fault, Status):
            code, headers, content = fault.code, list(fault.headers), fault.body
        else:
            code, headers, content = await self._forward(upstream, request, body)
        self._record(LogEntry(received_at, method, target, code, body, time.monotonic(), number))
        await _send_response(conn, writer, method, code, headers, content)
        return True

    async def _forward(self, upstream: httpx.AsyncClient, request: h11.Request,
                       body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = [(name.decode("latin-1"), value.decode("latin-1"))
                   for name, value in request.headers if name.lower() not in _HOP_BY_HOP]
        if not any(name.lower() == "accept-encoding" for name, _ in headers):
            headers.append(("Accept-Encoding", "identity"))  # relay bytes as they come
        outgoing = upstream.build_request(request.method.decode("ascii"),
                                          self._upstream_origin + request.target.decode("ascii"),
                                          headers=headers, content=body)
        try:
            response = await upstream.send(outgoing, stream=True)
            try:
                content = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            answer = status(502, body=operation_outcome(f"fault proxy: upstream failed: {exc!r}", code="transient"))
            return answer.code, list(answer.headers), answer.body
        relayed = [(name.decode("latin-1"), value.decode("latin-1"))
                   for name, value in response.headers.raw if name.lower() not in _HOP_BY_HOP]
        return response.status_code, relayed, content


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Request, bytes] | None:
    """The next whole request on the connection; None when the client closed it between requests."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(_READ_SIZE))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def _send_response(conn: h11.Connection, writer: asyncio.StreamWriter, method: str, code: int,
                         headers: list[tuple[str, str]], content: bytes) -> None:
    bodyless = method == "HEAD" or code in (204, 304) or code < 200
    headers = [(name, value) for name, value in headers if name.lower() != "content-length"]
    if not bodyless:
        headers.append(("Content-Length", str(len(content))))
    try:
        reason = HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        reason = b""
    data = conn.send(h11.Response(status_code=code, headers=headers, reason=reason)) or b""
    if content and not bodyless:
        data += conn.send(h11.Data(data=content)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    writer.write(data)
    await writer.drain()


def _carries_type(body: bytes, resource_type: str) -> bool:
    """Whether the JSON body is that resource, or a Bundle with an entry of that type."""
    try:
        resource = json.loads(body)
    except ValueError:
        return False
    if not isinstance(resource, dict):
        return False
    if resource.get("resourceType") == resource_type:
        return True
    entries = resource.get("entry") if resource.get("resourceType") == "Bundle" else None
    return isinstance(entries, list) and any(
        isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
        and entry["resource"].get("resourceType") == resource_type
        for entry in entries
    )
