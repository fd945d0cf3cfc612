"""``fhir.server: medplum`` against Medplum's own transaction processor (tests/fhir_server).

The loopback server runs Medplum's ``processBatch`` (``@medplum/fhir-router`` 4.5.2, batch.ts),
which refuses a transaction with more than 50 updates (``maxUpdates``) and one with more than 8
entries once an entry is conditional (``maxSerializableTransactionEntries``). The ``medplum``
preset (conditional-update, 8 entries per transaction) must deliver within those limits; the
preset's ``version: r4`` is overridden with ``auto`` because this server is an R5 server.
Without an entry limit, the daemon dead-letters the refused transaction and its reason names the
setting to change.
"""

from __future__ import annotations

from collections import Counter

import pydicom
import pytest

from fhir_client import split_transaction
from mapping import MappingOptions, map_sr
from tests.fhir_server.fixtures import fresh_fhir_server  # noqa: F401 - a pytest fixture
from tests.integration.test_chunked_delivery import assert_delivered_once
from tests.integration.test_daemon import send
from tests.integration.test_delivery import FAST_RETRY
from tests.support import sr_builders as sr
from tests.support.daemon_process import DaemonProcess, write_config
from tests.support.report_fixtures import every_profile_report

pytestmark = pytest.mark.integration

MEDPLUM_MAX_UPDATES = 50  # fhir-router batch.ts maxUpdates
MEDPLUM_MAX_CONDITIONAL_ENTRIES = 8  # fhir-router batch.ts maxSerializableTransactionEntries

REPORTS = {
    "every-profile": every_profile_report,
    "large": sr.large_report,  # 60 groups of 4 measurements
}


def medplum_config(tmp_path, base_url: str):
    return write_config(tmp_path, fhir={"base_url": base_url, "server": "medplum", "version": "auto", **FAST_RETRY})


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_the_medplum_preset_delivers_within_medplums_limits_and_a_resend_duplicates_nothing(
        fresh_fhir_server, tmp_path, name):
    server = fresh_fhir_server
    ds: pydicom.Dataset = REPORTS[name]()
    bundle = map_sr(ds, MappingOptions(write_mode="conditional-update")).bundle
    chunks = split_transaction(bundle, MEDPLUM_MAX_CONDITIONAL_ENTRIES)
    assert len(bundle["entry"]) > MEDPLUM_MAX_UPDATES and len(chunks) > 1
    with DaemonProcess(medplum_config(tmp_path, server.base_url)) as daemon:
        assert send(daemon.port, ds) == [0x0000]
        first = daemon.wait_for("bundle_delivered", timeout_s=300)
        lines = daemon.named("bundle_chunk_delivered")
        assert not daemon.named("bundle_rejected")
        assert first["resources"] == len(bundle["entry"])
        assert [(e["chunk"], e["chunks"], e["entries"]) for e in lines] == [
            (n, len(chunks), len(chunk["entry"])) for n, chunk in enumerate(chunks, start=1)]
        assert all(e["entries"] <= MEDPLUM_MAX_CONDITIONAL_ENTRIES for e in lines)
        # every resource once (by the identifier it is keyed on), every reference resolves
        assert_delivered_once(server, bundle)
        stored = Counter({t: server.count(t) for t in {e["resource"]["resourceType"] for e in bundle["entry"]}})

        assert send(daemon.port, ds) == [0x0000]
        daemon.wait_for("bundle_delivered", count=2, timeout_s=300)
        assert not daemon.named("bundle_rejected")
    assert Counter({t: server.count(t) for t in stored}) == stored
    assert_delivered_once(server, bundle)


@pytest.mark.parametrize(("write_mode", "medplum_says"), [
    ("put", "Transaction contains more update operations than allowed"),
    ("conditional", "Transaction requires strict isolation but has too many entries"),  # POST + ifNoneExist
])
def test_a_transaction_over_medplums_limit_is_dead_lettered_naming_max_entries(fresh_fhir_server, tmp_path,
                                                                               write_mode, medplum_says):
    server = fresh_fhir_server
    ds = every_profile_report()
    bundle = map_sr(ds, MappingOptions(write_mode=write_mode)).bundle
    assert len(bundle["entry"]) > MEDPLUM_MAX_UPDATES
    # no preset, no entry limit: the whole report in one transaction
    config = write_config(tmp_path, fhir={"base_url": server.base_url, "version": "auto", "write_mode": write_mode,
                                          **FAST_RETRY})
    with DaemonProcess(config) as daemon:
        assert send(daemon.port, ds) == [0x0000]
        rejected = daemon.wait_for("bundle_rejected", timeout_s=120)
        assert not daemon.named("bundle_delivered")
    assert rejected["status_code"] == 400
    assert medplum_says in rejected["reason"]
    assert "fhir.max_entries_per_request" in rejected["reason"]
    # Medplum refuses before processing any entry: nothing was written
    assert server.count("Observation") == 0
