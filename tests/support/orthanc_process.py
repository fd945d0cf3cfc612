"""Run a real Orthanc PACS (Debian package ``orthanc``) as a subprocess for integration tests.

``OrthancProcess`` writes Orthanc's own JSON configuration into a directory of the test
(storage, index and Lua scripts inside it, free ports, no plugins, no authentication for
loopback clients), starts the ``Orthanc`` binary (never the system service), waits until its
REST API answers, and stops it on exit no matter what::

    with OrthancProcess(tmp_path, modalities={"sr2fhir": ("SR2FHIR", "127.0.0.1", port)},
                        lua=FORWARD_ALL_TO("sr2fhir")) as orthanc:
        orthanc.upload(part10_bytes)                      # POST /instances
        orthanc.wait_for_log(r"Lua: Unable to send instance")
        orthanc.jobs()                                    # GET /jobs?expand

Orthanc's stderr (its log) is read as it is written: :meth:`wait_for_log` waits on it and
:meth:`log_excerpt` puts its tail into assertion messages.

Orthanc 1.10 has no option to bind its listeners to one interface: it listens on every
interface. ``RemoteAccessAllowed: false`` makes the REST API refuse clients that are not on
loopback, and the DICOM SCP only accepts associations from the modalities configured here
(``DicomAlways*`` off, ``DicomCheckModalityHost`` on). All traffic of the tests is to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

__all__ = ["OrthancError", "OrthancProcess", "find_orthanc", "forward_all_lua"]

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# Debian installs the binary into /usr/sbin, which is not on an ordinary user's PATH.
_FALLBACK_BINARIES = ("/usr/sbin/Orthanc", "/usr/local/sbin/Orthanc", "/usr/local/bin/Orthanc")
_PORT_IN_USE = re.compile(r"already in use|cannot bind|Address already in use|privileged", re.IGNORECASE)


class OrthancError(RuntimeError):
    """Orthanc could not be started or answered a REST call unexpectedly."""


def find_orthanc() -> str | None:
    """The ``Orthanc`` binary: on PATH, else where Debian puts it; None when absent."""
    found = shutil.which("Orthanc")
    if found:
        return found
    return next((p for p in _FALLBACK_BINARIES if os.access(p, os.X_OK)), None)


def forward_all_lua(modality: str) -> str:
    """An auto-forward rule: every instance Orthanc stores is sent to ``modality`` (C-STORE SCU).

    ``SendToModality`` from Lua queues a StoreScu operation in Orthanc's Lua job (a
    "SequenceOfOperations" job); a failed send is logged as "Lua: Unable to send instance"
    and does not fail the job.
    """
    return (
        "function OnStoredInstance(instanceId, tags, metadata, origin)\n"
        f"  SendToModality(instanceId, '{modality}')\n"
        "end\n"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OrthancProcess:
    """One ``Orthanc`` process with its own configuration, storage and log, in ``directory``.

    ``modalities`` maps a symbolic name to (AE title, host, port); ``lua`` is the text of a Lua
    script loaded at start; ``dicom_server=False`` opens no DICOM listener at all (Orthanc's
    C-STORE SCU, which forwards, does not need it); ``config`` entries override the generated
    configuration; ``verbose`` adds ``--verbose`` (INFO lines: every Lua send, every job) and
    ``options`` further command-line options (e.g. ``--trace-dicom`` logs the negotiations).
    """

    def __init__(self, directory: Path, *, modalities: Mapping[str, tuple[str, str, int]] | None = None,
                 lua: str | None = None, aet: str = "ORTHANC", dicom_server: bool = True,
                 config: Mapping[str, Any] | None = None,
                 verbose: bool = True, options: tuple[str, ...] = (),
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.directory = directory
        self.modalities = dict(modalities or {})
        self.lua = lua
        self.aet = aet
        self.dicom_server = dicom_server
        self.extra_config = dict(config or {})
        self.verbose = verbose
        self.options = tuple(options)
        self.start_timeout_s = start_timeout_s
        self.binary = find_orthanc()
        self.process: subprocess.Popen[bytes] | None = None
        self.http_port: int | None = None
        self.dicom_port: int | None = None
        self.config_path: Path | None = None
        self.log_lines: list[str] = []
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        self._http: httpx.Client | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self.http_port is None:
            raise OrthancError("Orthanc is not running")
        return f"http://127.0.0.1:{self.http_port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Self:
        if self.binary is None:
            raise OrthancError("the Orthanc binary is not installed (Debian: apt-get install orthanc)")
        if self.process is not None:
            raise OrthancError("Orthanc is already running")
        attempts = 3  # a free port may be taken between choosing and binding it: choose again
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
                return self
            except OrthancError:
                port_clash = _PORT_IN_USE.search(self.log_excerpt()) is not None
                self.stop()
                if not port_clash or attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _write_config(self) -> Path:
        storage = self.directory / "orthanc-storage"
        storage.mkdir(parents=True, exist_ok=True)
        scripts: list[str] = []
        if self.lua is not None:
            script = self.directory / "orthanc-forward.lua"
            script.write_text(self.lua, encoding="utf-8")
            scripts.append(str(script))
        config: dict[str, Any] = {
            "Name": "sr2fhir-test-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "Plugins": [],  # not the Debian package's /usr/share/orthanc/plugins
            "LuaScripts": scripts,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # the REST API answers loopback clients only ...
            "AuthenticationEnabled": False,  # ... and asks them for no credentials
            "DicomServerEnabled": self.dicom_server,  # its SCU (forwarding) works either way
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            # Only the modalities below may associate (Orthanc cannot bind to loopback only).
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "OrthancPeersInDatabase": False,
            "HttpProxy": "",
            "ConcurrentJobs": 2,
            "JobsHistorySize": 1000,
            "SaveJobs": False,
            "MetricsEnabled": False,
            "StableAge": 60,
        }
        config.update(self.extra_config)
        path = self.directory / "orthanc.json"
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return path

    def _start_once(self) -> None:
        assert self.binary is not None
        self.http_port, self.dicom_port = _free_port(), _free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = _free_port()
        self.config_path = self._write_config()
        with self._changed:
            self.log_lines = []
        args = [self.binary, *(["--verbose"] if self.verbose else []), *self.options, "--no-jobs",
                str(self.config_path)]
        env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK: no Nagle delay on Orthanc's associations
        self.process = subprocess.Popen(args, cwd=self.directory, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True,
                                        name="orthanc-log")
        self._reader.start()
        self._http = httpx.Client(base_url=self.base_url, timeout=30.0, trust_env=False)
        self._wait_ready()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            with self._changed:
                self.log_lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _wait_ready(self) -> None:
        """Poll ``GET /system`` until it answers 200, Orthanc exits, or the deadline passes."""
        assert self.process is not None and self._http is not None
        deadline = time.monotonic() + self.start_timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if self._reader is not None:
                    self._reader.join(timeout=STOP_TIMEOUT_S)  # all of its last words
                raise OrthancError(f"Orthanc exited with status {self.process.returncode} before its REST API "
                                   f"answered" + self.log_excerpt())
            try:
                response = self._http.get("/system", timeout=2.0)
                if response.status_code == 200:
                    return
                last_error = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            with self._changed:  # wake early when Orthanc writes or exits
                self._changed.wait(timeout=0.05)
        raise OrthancError(f"Orthanc's REST API did not answer within {self.start_timeout_s:g} s "
                           f"({last_error})" + self.log_excerpt())

    def stop(self) -> None:
        """SIGTERM (Orthanc shuts down cleanly), then SIGKILL; idempotent."""
        if self._http is not None:
            self._http.close()
            self._http = None
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT_S)
            if self._reader is not None:
                self._reader.join(timeout=STOP_TIMEOUT_S)
            if process.stdout is not None:
                process.stdout.close()
        self._reader = None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    # -- log -----------------------------------------------------------------------------

    def log_text(self) -> str:
        with self._changed:
            return "\n".join(self.log_lines)

    def log_excerpt(self, limit: int = 40) -> str:
        with self._changed:
            tail = self.log_lines[-limit:]
        return ("\n--- Orthanc log (last lines) ---\n" + "\n".join(tail)) if tail else ""

    def log_matching(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        with self._changed:
            return [line for line in self.log_lines if regex.search(line)]

    def wait_for_log(self, pattern: str, *, count: int = 1, timeout_s: float = 30.0) -> list[str]:
        """Block until ``count`` log lines match ``pattern`` (a regex); returns them."""
        regex = re.compile(pattern)

        def matching() -> list[str]:
            return [line for line in self.log_lines if regex.search(line)]

        def ended() -> bool:
            return self.process is None or self.process.poll() is not None

        with self._changed:
            self._changed.wait_for(lambda: len(matching()) >= count or ended(), timeout=timeout_s)
            found = matching()
        if len(found) < count:
            state = "exited" if ended() else f"timed out after {timeout_s:g} s"
            raise AssertionError(f"Orthanc {state}: {len(found)}/{count} log lines match {pattern!r}"
                                 + self.log_excerpt())
        return found

    # -- REST API ------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise OrthancError("Orthanc is not running")
        return self._http

    def _json(self, response: httpx.Response, what: str) -> Any:
        if response.status_code != 200:
            raise OrthancError(f"{what}: HTTP {response.status_code}: {response.text[:2000]}" + self.log_excerpt())
        return response.json()

    def get(self, path: str, **params: str) -> Any:
        return self._json(self._client().get(path, params=params or None), f"GET {path}")

    def upload(self, part10: bytes) -> dict[str, Any]:
        """``POST /instances`` with a Part-10 file; returns Orthanc's answer (ID, Status, ...)."""
        response = self._client().post("/instances", content=part10,
                                       headers={"Content-Type": "application/dicom"})
        answer = self._json(response, "POST /instances")
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise OrthancError(f"POST /instances: {answer}" + self.log_excerpt())
        return answer

    def jobs(self) -> list[dict[str, Any]]:
        """``GET /jobs?expand``: every job Orthanc still remembers, with its state and content."""
        return self.get("/jobs", expand="")
