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

import shutil
from pathlib import Path

from tests.support.loopback_server import LoopbackFhirServer, LoopbackServerError, prepare_once

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


class HapiServerError(LoopbackServerError):
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
    def mvn_package() -> list[str]:
        java_program()
        return [_require_program("mvn", "building the HAPI FHIR test server needs Maven 3.8+"),
                "-q", "-B", "package", "-DskipTests"]

    if prepare_once(SERVER_DIR / ".build.lock", _stale, mvn_package, what="`mvn package`", timeout_s=BUILD_TIMEOUT_S,
                    error=HapiServerError):
        if not JAR.exists():
            raise HapiServerError(f"`mvn package` in {SERVER_DIR} did not produce {JAR}")
        # mvn leaves the jar's mtime at the build start; make it newer than every source read.
        JAR.touch()


class HapiServer(LoopbackFhirServer):
    """One HAPI FHIR JPA server process with an empty in-memory store at :attr:`base_url`.

    ``version`` is ``"r5"`` or ``"r4"``. ``fix_imaging_selection_code`` (R5 only, on by default)
    stores a SearchParameter that makes ``ImagingSelection?code=`` search ``ImagingSelection.code``:
    FHIR R5 5.0.0's built-in one (HAPI's default) indexes ``ImagingSelection.status`` instead. With it
    the server holds that one SearchParameter resource.
    """

    error = HapiServerError
    base_path = "/fhir"
    stop_timeout_s = STOP_TIMEOUT_S
    http_timeout_s = 120.0
    stderr_limit = 6000
    # HAPI reuses the result of an identical search for 60 s by default (even after writes);
    # the wrapper's own queries ask for fresh results.
    query_headers = {"Cache-Control": "no-cache"}

    def __init__(self, version: str = "r5", *, fix_imaging_selection_code: bool = True,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        if version not in ("r5", "r4"):
            raise ValueError(f"version must be 'r5' or 'r4', not {version!r}")
        super().__init__(startup_timeout_s)
        self.version = version
        self.label = f"HAPI {version} test server"
        self._fix_code = fix_imaging_selection_code and version == "r5"

    def command(self) -> tuple[list[str], Path]:
        java = java_program()
        ensure_built()
        args = [java, *JAVA_OPTIONS, "-jar", str(JAR), "--fhir-version", self.version, "--port", "0"]
        return args + (["--fix-imagingselection-code"] if self._fix_code else []), SERVER_DIR
