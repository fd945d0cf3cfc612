"""A real FHIR R5 server on loopback for integration tests (``server.js`` in this folder).

``FhirServer`` installs the Node dependencies when needed (``npm ci``), starts
``node server.js --port 0``, waits for its ``LISTENING <port>`` line and stops it on exit::

    with FhirServer() as server:
        httpx.post(server.base_url, json=bundle)
        assert server.count("Observation") == 29

See README.md for what the server does and does not do.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.loopback_server import LoopbackFhirServer, LoopbackServerError, prepare_once

__all__ = ["FhirServer", "FhirServerError", "SERVER_DIR", "ensure_node_modules"]

SERVER_DIR = Path(__file__).resolve().parent
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0
INSTALL_TIMEOUT_S = 600.0


class FhirServerError(LoopbackServerError):
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
    prepare_once(SERVER_DIR / ".install.lock", _node_modules_stale,
                 lambda: [_require_program("npm"), "ci", "--no-audit", "--no-fund"],
                 what="`npm ci`", timeout_s=INSTALL_TIMEOUT_S, error=FhirServerError)


def _node_modules_stale() -> bool:
    # npm writes node_modules/.package-lock.json at the end of every install.
    marker = SERVER_DIR / "node_modules" / ".package-lock.json"
    lock_file = SERVER_DIR / "package-lock.json"
    return not marker.exists() or marker.stat().st_mtime < lock_file.stat().st_mtime


class FhirServer(LoopbackFhirServer):
    """One ``server.js`` process: an empty in-memory FHIR R5 store at :attr:`base_url`.

    ``validate=False`` passes ``--no-validate`` (the server then stores resources it
    would otherwise refuse as structurally invalid R5).
    """

    label = "FHIR test server"
    error = FhirServerError
    base_path = "/fhir/R5"
    stop_timeout_s = STOP_TIMEOUT_S

    def __init__(self, *, validate: bool = True, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        super().__init__(startup_timeout_s)
        self._validate = validate

    def command(self) -> tuple[list[str], Path]:
        node = _require_program("node")
        ensure_node_modules()
        return [node, "server.js", "--port", "0"] + ([] if self._validate else ["--no-validate"]), SERVER_DIR
