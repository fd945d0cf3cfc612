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


def test_a_server_that_is_not_r5_fails_the_fhir_check(tmp_path, capsys):
    r4 = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [{"mode": "server", "resource": []}]}
    with FaultProxy("http://127.0.0.1:9") as proxy:
        proxy.set_mode(status(200, {"Content-Type": "application/fhir+json"}, json.dumps(r4).encode()))
        code, lines = run(capsys, write_config(tmp_path, fhir={"base_url": proxy.base_url}))
    assert code == 16
    line = next(line for line in lines if line.startswith("FAIL fhir.base_url"))
    assert "not FHIR 5.x" in line and "no ImagingSelection" in line and "no transaction" in line


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
