"""``sr2fhir check-config``: validate the configuration, then test what it points at.

Checks, each printed as one line (``ok`` / ``FAIL``, the config key, what was found):
the DICOM port can be bound; the spool directory (and the outbox, without a FHIR server)
is writable with room above ``spool.min_free_bytes``; the FHIR server answers
``[base]/metadata`` with a CapabilityStatement of FHIR 4.0.x or 5.0.x (the one
``fhir.version`` asks for, if not ``auto``) supporting transactions and the resource types
written (R5: ImagingSelection; R4: Basic unless ``r4_imaging_selection: omit``); the OAuth2 token endpoint issues a token. The exit status is the sum of the
failed checks' bits (:data:`EXIT_BITS`); an invalid configuration exits 2 before any check.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from fhir_client import FhirClient
from fhir_client.errors import TokenRequestError, UnexpectedResponseError
from fhir_client.releases import release_of

from ..config import Settings

__all__ = ["EXIT_BITS", "Check", "run_checks", "check_config"]

EXIT_BITS = {"dicom": 4, "storage": 8, "fhir": 16, "auth": 32}


@dataclass(frozen=True, slots=True)
class Check:
    """One check's result: which bit it owns, the config key, and what was found."""

    kind: str
    key: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.key}: {self.detail}"


def check_port(settings: Settings) -> Check:
    host, port = settings.dicom.host, settings.dicom.port
    if port == 0:
        return Check("dicom", "dicom.port", True, "0: an ephemeral port is chosen at start")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        return Check("dicom", "dicom.host/dicom.port", False, f"cannot bind {host}:{port}: {exc.strerror or exc}")
    return Check("dicom", "dicom.host/dicom.port", True, f"{host}:{port} can be bound")


def check_directory(key: str, directory: Path, min_free_bytes: int) -> Check:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".check-", suffix=".tmp")
        try:
            os.write(fd, b"sr2fhir check-config\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        return Check("storage", key, False, f"{directory} is not writable: {exc.strerror or exc}")
    if free < min_free_bytes:
        return Check("storage", key, False, f"{directory}: {free} bytes free, below spool.min_free_bytes ({min_free_bytes})")
    return Check("storage", key, True, f"{directory} is writable, {free // (1024 * 1024)} MiB free")


async def check_fhir(settings: Settings) -> list[Check]:
    fhir = settings.fhir
    if fhir.base_url is None:
        return []
    try:
        async with FhirClient(fhir) as client:
            capability = await client.get_metadata()
    except TokenRequestError as exc:
        return [Check("auth", "fhir.auth", False, f"the token endpoint did not issue a token: {exc}")]
    except UnexpectedResponseError as exc:
        return [Check("fhir", "fhir.base_url", False, f"{fhir.base_url}: {exc}")]
    except httpx.HTTPError as exc:
        return [Check("fhir", "fhir.base_url", False, f"{fhir.base_url} unreachable: {type(exc).__name__}: {exc}")]
    checks = []
    if fhir.auth.kind == "oauth2_client_credentials":
        checks.append(Check("auth", "fhir.auth", True, "the token endpoint issued a token"))
    release, problems = _capability_problems(capability, fhir.version, fhir.r4_imaging_selection)
    detail = f"{fhir.base_url}: FHIR {capability.get('fhirVersion', '?')}"
    if release is not None:
        detail += f", writing {release.upper()} (fhir.version: {fhir.version}, fhir.server: {fhir.server})"
    spoken = release_of(capability.get("fhirVersion"))
    mismatch = spoken is not None and fhir.version not in ("auto", spoken)
    checks.append(Check("fhir", "fhir.version" if mismatch else "fhir.base_url", not problems,
                        "; ".join([detail, *problems]) if problems else f"{detail}; transactions supported"))
    return checks


def _capability_problems(capability: dict[str, Any], configured: str,
                         r4_imaging_selection: str) -> tuple[str | None, list[str]]:
    """The release sr2fhir will write to this server (None if none) and what is wrong."""
    problems = []
    stated = capability.get("fhirVersion")
    release = release_of(stated)
    if release is None:
        problems.append(f"fhirVersion {stated!r} is neither 4.0.x (R4) nor 5.0.x (R5)")
    elif configured != "auto" and configured != release:
        problems.append(f"fhir.version is {configured} but the server speaks {release.upper()}: "
                        f"set fhir.version: {release} (or auto)")
        release = None
    rest = [r for r in capability.get("rest", []) if r.get("mode") == "server"] or capability.get("rest", [])
    types = {resource.get("type") for r in rest for resource in r.get("resource", [])}
    needed = {"r5": ["Observation", "ImagingSelection"],
              "r4": ["Observation", *(["Basic"] if r4_imaging_selection == "basic" else [])]}.get(release or "", [])
    for resource_type in needed:
        if resource_type not in types:
            problems.append(f"no {resource_type} in the CapabilityStatement")
    interactions = {i.get("code") for r in rest for i in r.get("interaction", [])}
    if "transaction" not in interactions:
        problems.append("no transaction interaction in the CapabilityStatement")
    return release, problems


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in order."""
    checks = [check_port(settings),
              check_directory("spool.directory", settings.spool.directory, int(settings.spool.min_free_bytes))]
    if settings.fhir.base_url is None:
        checks.append(check_directory("fhir.outbox_directory", settings.fhir.outbox_directory, 0))
    checks += asyncio.run(check_fhir(settings))
    return checks


def check_config(settings: Settings, source: str, *, out: TextIO | None = None) -> int:
    """Print one line per check; return the exit status (sum of the failed checks' bits)."""
    out = out or sys.stdout
    print(f"ok   configuration: {source} is valid", file=out)
    status = 0
    for check in run_checks(settings):
        print(check.line(), file=out)
        if not check.ok:
            status |= EXIT_BITS[check.kind]
    return status
