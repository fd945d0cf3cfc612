"""A real HAPI FHIR JPA server (R5 or R4, H2 in memory) on loopback for integration tests.

``HapiServer`` builds the Maven project in this folder when needed (``mvn package``, serialised
with a file lock), starts ``java -jar target/hapi-test-server.jar --fhir-version r5|r4 --port 0``,
waits for its ``LISTENING <port>`` line and stops it on exit::

    with HapiServer("r5") as server:
        response = server.post_bundle(bundle)
        assert server.count("Observation") == 29

HAPI's own ``RestfulServer`` with its JPA resource providers and system provider answers every
request (transactions included); settings are HAPI's defaults. See README.md.
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

__all__ = [
    "HapiServer",
    "HapiServerError",
    "JAR",
    "JAVA_OPTIONS",
    "SERVER_DIR",
    "ensure_built",
    "java_program",
]

SERVER_DIR = Path(__file__).resolve().parent
JAR = SERVER_DIR / "target" / "hapi-test-server.jar"
# Two servers run at once in the tests. HAPI R5 keeps ~650 MB live after start-up (the R5 core
# definitions it parses); 1 GiB heap is the smallest that starts without GC thrashing.
# C1 only (TieredStopAtLevel=1) cuts start-up by about a quarter on 2 cores.
JAVA_OPTIONS = ("-Xmx1g", "-XX:TieredStopAtLevel=1", "-Xss1m")
STARTUP_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 15.0
BUILD_TIMEOUT_S = 1200.0
PAGE_SIZE = 1000
MAX_PAGES = 100
_LISTENING = b"LISTENING "
# HAPI reuses the result of an identical search for 60 s by default (even after writes);
# the wrapper's own queries ask for fresh results.
_NO_CACHE = {"Cache-Control": "no-cache"}


class HapiServerError(RuntimeError):
    """The HAPI test server could not be built, started or queried."""


def _require_program(name: str, what: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise HapiServerError(
            f"`{name}` is not on PATH: {what} (see {SERVER_DIR.name}/README.md; "
            "the fixtures need Java 17+ and Maven 3.8+)"
        )
    return path


def java_program() -> str:
    """The ``java`` executable (an error naming what is missing when there is none)."""
    return _require_program("java", "the HAPI FHIR test server and validator run on Java 17+")


def _sources() -> list[Path]:
    return [SERVER_DIR / "pom.xml", *sorted(p for p in (SERVER_DIR / "src").rglob("*") if p.is_file())]


def _stale() -> bool:
    if not JAR.exists() or not (JAR.parent / "lib").is_dir():
        return True
    built = JAR.stat().st_mtime
    return any(path.stat().st_mtime > built for path in _sources())


def ensure_built() -> None:
    """Run ``mvn -q -B package -DskipTests`` when the jar is missing or older than its sources.

    Serialised with a file lock, so parallel test processes build once.
    """
    with open(SERVER_DIR / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _stale():
            return
        mvn = _require_program("mvn", "building the HAPI FHIR test server needs Maven 3.8+")
        java_program()
        try:
            completed = subprocess.run(
                [mvn, "-q", "-B", "package", "-DskipTests"],
                cwd=SERVER_DIR,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise HapiServerError(f"`mvn package` in {SERVER_DIR} took over {BUILD_TIMEOUT_S:.0f} s") from exc
        if completed.returncode != 0:
            output = (completed.stdout + completed.stderr).strip()
            raise HapiServerError(
                f"`mvn package` in {SERVER_DIR} failed with exit code {completed.returncode}:\n{output[-6000:]}"
            )
        if not JAR.exists():
            raise HapiServerError(f"`mvn package` in {SERVER_DIR} did not produce {JAR}")
        # mvn leaves the jar's mtime at the build start; make it newer than every source read.
        JAR.touch()


class HapiServer:
    """One HAPI FHIR JPA server process with an empty in-memory store at :attr:`base_url`.

    ``version`` is ``"r5"`` or ``"r4"``. ``fix_imaging_selection_code`` (R5 only, on by default)
    stores a SearchParameter that makes ``ImagingSelection?code=`` search ``ImagingSelection.code``:
    FHIR R5 5.0.0's built-in one (HAPI's default) indexes ``ImagingSelection.status`` instead. With it
    the server holds that one SearchParameter resource.
    """

    def __init__(self, version: str = "r5", *, fix_imaging_selection_code: bool = True,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        if version not in ("r5", "r4"):
            raise ValueError(f"version must be 'r5' or 'r4', not {version!r}")
        self.version = version
        self._fix_code = fix_imaging_selection_code and version == "r5"
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._http: httpx.Client | None = None
        self.port: int | None = None
        self.startup_seconds: float | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/fhir`` (no trailing slash)."""
        if self.port is None:
            raise HapiServerError("the HAPI test server is not running")
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> HapiServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if self._process is not None:
            raise HapiServerError("the HAPI test server is already running")
        java = java_program()
        ensure_built()
        args = [java, *JAVA_OPTIONS, "-jar", str(JAR), "--fhir-version", self.version, "--port", "0"]
        if self._fix_code:
            args.append("--fix-imagingselection-code")
        self._stderr = tempfile.TemporaryFile()
        started = time.monotonic()
        self._process = subprocess.Popen(
            args, cwd=SERVER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        )
        try:
            self.port = self._read_port()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self._http = httpx.Client(base_url=self.base_url, headers={"Accept": "application/fhir+json"},
                                  timeout=120.0)

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
                    raise HapiServerError(
                        f"the HAPI {self.version} test server printed no LISTENING line within "
                        f"{self._startup_timeout_s:g} s" + self._stderr_excerpt()
                    )
                if not selector.select(remaining):
                    continue
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    code = self._process.wait(timeout=STOP_TIMEOUT_S)
                    raise HapiServerError(f"the HAPI {self.version} test server exited with code {code} "
                                          "before listening" + self._stderr_excerpt())
                received += chunk
        line = received.split(b"\n", 1)[0].strip()
        if not line.startswith(_LISTENING) or not line[len(_LISTENING):].isdigit():
            raise HapiServerError(f"unexpected first line from the HAPI test server: {line!r}"
                                  + self._stderr_excerpt())
        return int(line[len(_LISTENING):])

    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far (HAPI/Spring warnings and errors)."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def _stderr_excerpt(self, limit: int = 6000) -> str:
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

    # -- requests ------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise HapiServerError("the HAPI test server is not running")
        return self._http

    def post_bundle(self, bundle: dict[str, Any]) -> httpx.Response:
        """POST a transaction/batch Bundle to the base URL; the raw response (any status)."""
        return self._client().post("", json=bundle, headers={"Content-Type": "application/fhir+json"})

    def search(self, resource_type: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every matching resource (``search`` mode entries), following ``next`` links (bounded)."""
        query = {"_count": str(PAGE_SIZE), **(params or {})}
        response = self._client().get(f"/{resource_type}", params=query, headers=_NO_CACHE)
        resources: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            bundle = self._json(response, f"search {resource_type}")
            resources += [entry["resource"] for entry in bundle.get("entry", [])
                          if entry.get("search", {}).get("mode", "match") == "match"]
            next_url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
            if next_url is None:
                return resources
            response = self._client().get(next_url, headers=_NO_CACHE)
        raise HapiServerError(f"search {resource_type}: more than {MAX_PAGES} pages")

    def count(self, resource_type: str, params: dict[str, str] | None = None) -> int:
        """How many resources of that type (matching ``params``) the server holds."""
        response = self._client().get(f"/{resource_type}", params={**(params or {}), "_summary": "count"},
                                      headers=_NO_CACHE)
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
            raise HapiServerError(f"{what}: HTTP {response.status_code}: {response.text[:2000]}")
        return response.json()
