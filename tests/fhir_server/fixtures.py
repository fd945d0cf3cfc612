"""pytest fixtures for the FHIR test server.

Import them into a test module::

    from tests.fhir_server.fixtures import fhir_server, fresh_fhir_server  # noqa: F401

pytest binds an imported fixture to the importing module, so each module doing this gets its
own "session" server. To share one server across modules, register this file as a plugin in
the root ``tests/conftest.py`` instead: ``pytest_plugins = ["tests.fhir_server.fixtures"]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fhir_server import FhirServer

__all__ = ["fhir_server", "fresh_fhir_server"]


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirServer]:
    """One server for the whole run: tests share its store, so assert on what they add."""
    with FhirServer() as server:
        yield server


@pytest.fixture
def fresh_fhir_server() -> Iterator[FhirServer]:
    """A new server process (empty store) for this test only."""
    with FhirServer() as server:
        yield server
