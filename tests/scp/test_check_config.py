"""``sr2fhir check-config`` against real things: sockets, directories, the loopback FHIR server."""

from __future__ import annotations

import json
import socket

import pytest

from scp.cli import main
from tests.support.daemon_process import write_config
from tests.support.fault_proxy import FaultProxy, status

pytestmark = pytest.mark.integration


def run(capsys, config) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["check-config", "--config", str(config)])
    return code, capsys.readouterr().out.splitlines()


def test_all_checks_pass_against_the_fhir_server(fhir_server, tmp_path, capsys):
    code, lines = run(capsys, write_config(tmp_path, fhir={"base_url": fhir_server.base_url}))
    assert code == 0, lines
    assert lines[0].startswith("ok   configuration:")
    assert any(line.startswith("ok   fhir.base_url:") and "FHIR 5.0.0" in line for line in lines)


def test_port_in_use_spool_not_a_directory_and_fhir_unreachable_each_set_their_bit(tmp_path, capsys):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    (tmp_path / "not-a-dir").write_text("x")
    config = write_config(tmp_path, dicom={"port": busy.getsockname()[1]},
                          spool={"directory": str(tmp_path / "not-a-dir")},
                          fhir={"base_url": "http://127.0.0.1:9/fhir"})
    try:
        code, lines = run(capsys, config)
    finally:
        busy.close()
    assert code == 4 + 8 + 16
    failed = {line.split(":")[0].removeprefix("FAIL ") for line in lines if line.startswith("FAIL")}
    assert failed == {"dicom.host/dicom.port", "spool.directory", "fhir.base_url"}


def capability(fhir_version: str, *types: str, transaction: bool = True) -> bytes:
    rest = {"mode": "server", "resource": [{"type": t} for t in types],
            "interaction": [{"code": "transaction"}] if transaction else []}
    return json.dumps({"resourceType": "CapabilityStatement", "fhirVersion": fhir_version, "rest": [rest]}).encode()


def check_against(tmp_path, capsys, body: bytes, **fhir) -> tuple[int, list[str]]:
    with FaultProxy("http://127.0.0.1:9") as proxy:
        proxy.set_mode(status(200, {"Content-Type": "application/fhir+json"}, body))
        return run(capsys, write_config(tmp_path, fhir={"base_url": proxy.base_url, "version": "auto", **fhir}))


def test_an_r4_server_passes_when_it_has_what_r4_output_needs(tmp_path, capsys):
    code, lines = check_against(tmp_path, capsys, capability("4.0.1", "Observation", "Basic", "Device"))
    assert code == 0, lines
    line = next(line for line in lines if line.startswith("ok   fhir.base_url"))
    assert "FHIR 4.0.1, writing R4 (fhir.version: auto" in line


def test_an_r4_server_without_basic_or_transactions_fails_naming_what_is_missing(tmp_path, capsys):
    code, lines = check_against(tmp_path, capsys, capability("4.0.1", "Observation", transaction=False))
    assert code == 16
    line = next(line for line in lines if line.startswith("FAIL fhir.base_url"))
    assert "no Basic in the CapabilityStatement" in line and "no transaction" in line
    # Without Basic the R4 output still works when ImagingSelections are left out.
    code, lines = check_against(tmp_path, capsys, capability("4.0.1", "Observation"), r4_imaging_selection="omit")
    assert code == 0, lines


def test_a_release_other_than_r4_or_r5_fails_the_fhir_check(tmp_path, capsys):
    code, lines = check_against(tmp_path, capsys, capability("3.0.2", "Observation", "ImagingSelection"))
    assert code == 16
    line = next(line for line in lines if line.startswith("FAIL fhir.base_url"))
    assert "fhirVersion '3.0.2' is neither 4.0.x (R4) nor 5.0.x (R5)" in line


def test_a_configured_version_the_server_does_not_speak_fails_on_fhir_version(tmp_path, capsys):
    code, lines = check_against(tmp_path, capsys, capability("4.0.1", "Observation", "Basic"), version="r5")
    assert code == 16
    line = next(line for line in lines if line.startswith("FAIL fhir.version"))
    assert "fhir.version is r5 but the server speaks R4: set fhir.version: r4 (or auto)" in line


def test_an_r5_server_without_imaging_selection_fails(tmp_path, capsys):
    code, lines = check_against(tmp_path, capsys, capability("5.0.0", "Observation"))
    assert code == 16
    assert any("no ImagingSelection in the CapabilityStatement" in line for line in lines if line.startswith("FAIL"))


def test_a_refusing_token_endpoint_fails_the_auth_check(fhir_server, tmp_path, capsys):
    refusal = json.dumps({"error": "invalid_client"}).encode()
    with FaultProxy("http://127.0.0.1:9") as token_endpoint:
        token_endpoint.set_mode(status(401, {"Content-Type": "application/json"}, refusal))
        config = write_config(tmp_path, fhir={"base_url": fhir_server.base_url, "auth": {
            "kind": "oauth2_client_credentials", "token_url": token_endpoint.base_url + "/token",
            "client_id": "sr2fhir", "client_secret": "wrong"}})
        code, lines = run(capsys, config)
    assert code == 32
    assert any(line.startswith("FAIL fhir.auth:") for line in lines)
    assert all("wrong" not in line for line in lines)  # the secret is never printed


def test_an_invalid_configuration_exits_2_with_the_key_path(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("dicom:\n  portt: 104\n")
    assert main(["check-config", "--config", str(config)]) == 2
    assert "dicom.portt: unknown key" in capsys.readouterr().err
