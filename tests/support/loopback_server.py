"""A FHIR test server as a child process on a free loopback port: the part every fixture shares.

A subclass says how to start its server (:meth:`LoopbackFhirServer.command`); this class starts it
with stdin and stdout as pipes, waits (bounded) for its one ``LISTENING <port>`` line on stdout,
keeps its stderr for error messages, stops it by closing stdin (then SIGTERM, then SIGKILL), and
reads the store back through the FHIR REST API (search, count, read).
"""

from __future__ import annotations

import fcntl
import os
import selectors
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from collections.abc import Callable
from typing import IO, Any, ClassVar, Self

import httpx

__all__ = ["LoopbackFhirServer", "LoopbackServerError", "prepare_once"]

_LISTENING = b"LISTENING "


class LoopbackServerError(RuntimeError):
    """A test server could not be installed, built, started or queried."""


def prepare_once(lock_path: Path, stale: Callable[[], bool], command: Callable[[], list[str]], *, what: str,
                 timeout_s: float, error: type[LoopbackServerError], tail: int = 6000) -> bool:
    """Run ``command()`` in ``lock_path``'s folder when ``stale()`` (an install or a build), under an
    exclusive lock on ``lock_path``, so parallel test processes do it once. True when it ran;
    ``error`` names it (``what``) with its output's tail when it fails or takes over ``timeout_s``."""
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stale():
            return False
        where = lock_path.parent
        try:
            completed = subprocess.run(command(), cwd=where, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                       timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise error(f"{what} in {where} took over {timeout_s:.0f} s") from exc
        if completed.returncode != 0:
            output = (completed.stdout + completed.stderr).strip()
            raise error(f"{what} in {where} failed with exit code {completed.returncode}:\n{output[-tail:]}")
        return True


class LoopbackFhirServer:
    """One server process; subclasses set the class attributes and :meth:`command`."""

    label: ClassVar[str] = "FHIR test server"
    error: ClassVar[type[LoopbackServerError]] = LoopbackServerError
    base_path: ClassVar[str] = "/fhir"
    stop_timeout_s: ClassVar[float] = 5.0
    http_timeout_s: ClassVar[float] = 60.0
    stderr_limit: ClassVar[int] = 4000
    query_headers: ClassVar[dict[str, str]] = {}
    """Headers of :meth:`search` and :meth:`count` (e.g. asking a server not to reuse results)."""
    page_size: ClassVar[int] = 1000
    max_pages: ClassVar[int] = 100

    def __init__(self, startup_timeout_s: float) -> None:
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._http: httpx.Client | None = None
        self.port: int | None = None
        self.startup_seconds: float | None = None

    def command(self) -> tuple[list[str], Path]:
        """The server's command line and working directory (installing or building first if needed)."""
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port><base_path>`` (no trailing slash)."""
        if self.port is None:
            raise self.error(f"the {self.label} is not running")
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- process -------------------------------------------------------------------

    def start(self) -> None:
        if self._process is not None:
            raise self.error(f"the {self.label} is already running")
        args, cwd = self.command()
        self._stderr = tempfile.TemporaryFile()
        started = time.monotonic()
        self._process = subprocess.Popen(args, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr)
        try:
            self.port = self._read_port()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self._http = httpx.Client(base_url=self.base_url, headers={"Accept": "application/fhir+json"},
                                  timeout=self.http_timeout_s)

    def _read_port(self) -> int:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        deadline = time.monotonic() + self._startup_timeout_s
        received = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while b"\n" not in received:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self.error(f"the {self.label} printed no LISTENING line within "
                                     f"{self._startup_timeout_s:g} s" + self._stderr_excerpt())
                if not selector.select(remaining):
                    continue
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    code = self._process.wait(timeout=self.stop_timeout_s)
                    raise self.error(f"the {self.label} exited with code {code} before listening"
                                     + self._stderr_excerpt())
                received += chunk
        line = received.split(b"\n", 1)[0].strip()
        if not line.startswith(_LISTENING) or not line[len(_LISTENING):].isdigit():
            raise self.error(f"unexpected first line from the {self.label}: {line!r}" + self._stderr_excerpt())
        return int(line[len(_LISTENING):])

    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def _stderr_excerpt(self) -> str:
        text = self.stderr_text().strip()
        return f"\n--- server stderr ---\n{text[-self.stderr_limit:]}" if text else ""

    def stop(self) -> None:
        """Close stdin (the server exits on it), then terminate, then kill; idempotent."""
        if self._http is not None:
            self._http.close()
            self._http = None
        process, self._process = self._process, None
        if process is not None:
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self.port = None

    # -- queries -------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise self.error(f"the {self.label} is not running")
        return self._http

    def post_bundle(self, bundle: dict[str, Any]) -> httpx.Response:
        """POST a transaction/batch Bundle to the base URL; the raw response (any status)."""
        return self._client().post("", json=bundle, headers={"Content-Type": "application/fhir+json"})

    def search(self, resource_type: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every matching resource (``search`` mode entries), following ``next`` links (bounded)."""
        query = {"_count": str(self.page_size), **(params or {})}
        response = self._client().get(f"/{resource_type}", params=query, headers=self.query_headers)
        resources: list[dict[str, Any]] = []
        for _ in range(self.max_pages):
            bundle = self._json(response, f"search {resource_type}")
            resources += [entry["resource"] for entry in bundle.get("entry", [])
                          if entry.get("search", {}).get("mode", "match") == "match"]
            next_url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
            if next_url is None:
                return resources
            response = self._client().get(next_url, headers=self.query_headers)
        raise self.error(f"search {resource_type}: more than {self.max_pages} pages")

    def count(self, resource_type: str, params: dict[str, str] | None = None) -> int:
        """How many resources of that type (matching ``params``) the server holds."""
        response = self._client().get(f"/{resource_type}", params={**(params or {}), "_summary": "count"},
                                      headers=self.query_headers)
        return int(self._json(response, f"count {resource_type}")["total"])

    def get(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current version of ``resource_type/resource_id``; None when the server has none."""
        response = self._client().get(f"/{resource_type}/{resource_id}")
        if response.status_code in (404, 410):
            return None
        return self._json(response, f"read {resource_type}/{resource_id}")

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code != 200:
            raise self.error(f"{what}: HTTP {response.status_code}: {response.text[:2000]}")
        return response.json()
