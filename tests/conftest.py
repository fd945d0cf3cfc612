"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.conformance import assert_conformant


@pytest.fixture
def conformant(tmp_path: Path) -> Callable[..., None]:
    """``conformant(name=bundle, ...)``: assert the Bundles pass validate-ig with zero errors."""

    def check(**bundles: dict) -> None:
        assert_conformant(bundles, tmp_path)

    return check

# One loopback FHIR server (Medplum-based, tests/fhir_server) shared by every module that asks.
pytest_plugins = ["tests.fhir_server.fixtures"]
