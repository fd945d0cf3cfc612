"""pytest fixtures for the HAPI FHIR test servers.

Import them into a test module::

    from tests.hapi_server.fixtures import hapi_r5, hapi_r4  # noqa: F401

or register this file as a plugin in ``tests/conftest.py``
(``pytest_plugins = [..., "tests.hapi_server.fixtures"]``) to share one server of each version
across modules. Each server takes 40-80 s to start and ~1.3 GB RSS (R5) / ~0.9 GB (R4).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hapi_server import HapiServer

__all__ = ["hapi_r4", "hapi_r5"]


@pytest.fixture(scope="session")
def hapi_r5() -> Iterator[HapiServer]:
    """One HAPI R5 JPA server for the whole run: tests share its store, so assert on what they add."""
    with HapiServer("r5") as server:
        yield server


@pytest.fixture(scope="session")
def hapi_r4() -> Iterator[HapiServer]:
    """One HAPI R4 JPA server for the whole run: tests share its store, so assert on what they add."""
    with HapiServer("r4") as server:
        yield server
