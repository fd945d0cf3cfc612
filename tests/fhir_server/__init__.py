"""A real FHIR R5 server on loopback for integration tests (``server.js`` in this folder).

``FhirServer`` installs the Node dependencies when needed (``npm ci``), starts
``node server.js --port 0``, waits for its ``LISTENING <port>`` line and stops it on exit::

    with FhirServer() as server:
        httpx.post(server.base_url, json=bundle)
        assert server.count("Observation") == 29

See README.md for what the server does and does not do.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

__all__ = ["FhirServer", "FhirServerError", "SERVER_DIR", "ensure_node_modules"]

SERVER_DIR = Path(__file__).resolve().parent
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0
INSTALL_TIMEOUT_S = 600.0
PAGE_SIZE = 1000
_LISTENING = b"LISTENING "


class FhirServerError(RuntimeError):
    """The test server could not be installed, started or queried."""


def _require_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FhirServerError(
            f"`{name}` is not on PATH: the integration tests need Node.js >= 20 with npm "
            f"to run the FHIR test server in {SERVER_DIR.name}/ (see its README.md)"
        )
    return path


def ensure_node_modules() -> None:
    """Run ``npm ci`` when ``node_modules`` is missing or older than ``package-lock.json``.

    Serialised with a file lock, so parallel test processes install once.
    """
    with open(SERVER_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _node_modules_stale():
            return
        npm = _require_program("npm")
        try:
            completed = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=SERVER_DIR,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise FhirServerError(f"`npm ci` in {SERVER_DIR} took over {INSTALL_TIMEOUT_S:.0f} s") from exc
        if completed.returncode != 0:
            raise FhirServerError(
                f"`npm ci` in {SERVER_DIR} failed with exit code {completed.returncode}:\n"
                f"{completed.stderr.strip() or completed.stdout.strip()}"
            )


def _node_modules_stale() -> bool:
    # npm writes node_modules/.package-lock.json at the end of every install.
    marker = SERVER_DIR / "node_modules" / ".package-lock.json"
    lock_file = SERVER_DIR / "package-lock.json"
    return not marker.exists() or marker.stat().st_mtime < lock_file.stat().st_mtime


class FhirServer:
    """One ``server.js`` process: an empty in-memory FHIR R5 store at :attr:`base_url`.

    ``validate=False`` passes ``--no-validate`` (the server then stores resources it
    would otherwise refuse as structurally invalid R5).
    """

    def __init__(self, *, validate: bool = True, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self._validate = validate
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._http: httpx.Client | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/fhir/R5`` (no trailing slash)."""
        if self.port is None:
            raise FhirServerError("the FHIR test server is not running")
        return f"http://127.0.0.1:{self.port}/fhir/R5"

    def __enter__(self) -> FhirServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if self._process is not None:
            raise FhirServerError("the FHIR test server is already running")
        node = _require_program("node")
        ensure_node_modules()
        args = [node, "server.js", "--port", "0"] + ([] if self._validate else ["--no-validate"])
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            args, cwd=SERVER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        )
        try:
            self.port = self._read_port()
        except BaseException:
            self.stop()
            raise
        self._http = httpx.Client(base_url=self.base_url, headers={"Accept": "application/fhir+json"}, timeout=60.0)

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
                    raise FhirServerError(
                        f"the FHIR test server printed no LISTENING line within {self._startup_timeout_s:g} s"
                        + self._stderr_excerpt()
                    )
                if not selector.select(remaining):
                    continue
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    code = self._process.wait(timeout=STOP_TIMEOUT_S)
                    raise FhirServerError(f"the FHIR test server exited with code {code} before listening"
                                          + self._stderr_excerpt())
                received += chunk
        line = received.split(b"\n", 1)[0].strip()
        if not line.startswith(_LISTENING) or not line[len(_LISTENING):].isdigit():
            raise FhirServerError(f"unexpected first line from the FHIR test server: {line!r}" + self._stderr_excerpt())
        return int(line[len(_LISTENING):])

    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far (one line per request)."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def _stderr_excerpt(self, limit: int = 4000) -> str:
        text = self.stderr_text().strip()
        return f"\n--- server stderr ---\n{text[-limit:]}" if text else ""

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
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
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
            raise FhirServerError("the FHIR test server is not running")
        return self._http

    def search(self, resource_type: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every matching resource, following ``next`` links."""
        query = {"_count": str(PAGE_SIZE), **(params or {})}
        response = self._client().get(f"/{resource_type}", params=query)
        resources: list[dict[str, Any]] = []
        while True:
            bundle = self._json(response, f"search {resource_type}")
            resources += [entry["resource"] for entry in bundle.get("entry", [])]
            next_url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
            if next_url is None:
                return resources
            response = self._client().get(next_url)

    def count(self, resource_type: str, params: dict[str, str] | None = None) -> int:
        """How many resources of that type (matching ``params``) the server holds."""
        response = self._client().get(f"/{resource_type}", params={**(params or {}), "_summary": "count"})
        return int(self._json(response, f"count {resource_type}")["total"])

    def get(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current version of ``resource_type/resource_id``; None when the server has none."""
        response = self._client().get(f"/{resource_type}/{resource_id}")
        if response.status_code in (404, 410):
            return None
        return self._json(response, f"read {resource_type}/{resource_id}")

    @staticmethod
    def _json(response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code != 200:
            raise FhirServerError(f"{what}: HTTP {response.status_code}: {response.text[:2000]}")
        return response.json()
