"""DICOM TLS on the listener and through ``sr2fhir serve``, with real peers on 127.0.0.1.

Certificates are made once per module with the ``openssl`` command line (the ``cryptography``
package is not a dependency): a CA, a server certificate for 127.0.0.1/localhost (SAN), a
client certificate the CA signed, and a self-signed ("rogue") client certificate.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scp.config import load_settings
from scp.dicom.tls import build_server_context, server_ssl_context
from scp.dicom.listener import SUCCESS, Listener, start_listener
from scp.spool import Spool, SpoolWriter
from tests.support.daemon_process import DaemonProcess, write_config
from tests.scp.test_listener_security import LOCALHOST, LogCapture, Scu, logs, report, writer  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration



# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    directory: Path

    def __getattr__(self, name: str) -> Path:  # pki.ca, pki.server_key, pki.client, pki.rogue_key, ...
        stem, _, kind = name.partition("_")
        return self.directory / f"{stem}.{'key' if kind == 'key' else 'pem'}"


def _openssl(directory: Path, *args: str) -> None:
    proc = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"openssl {' '.join(args)}:\n{proc.stderr}"


def _signed(directory: Path, name: str, subject: str, extensions: str) -> None:
    _openssl(directory, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subject)
    (directory / f"{name}.ext").write_text(extensions, encoding="ascii")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-sha256", "-out", f"{name}.pem", "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is not installed (needed to make test certificates)")
    directory = tmp_path_factory.mktemp("pki")
    _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-sha256", "-subj", "/CN=sr2fhir test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _signed(directory, "server", "/CN=localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n")
    _signed(directory, "client", "/CN=MODALITY",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n")
    _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.pem",
             "-days", "2", "-sha256", "-subj", "/CN=MODALITY", "-addext", "extendedKeyUsage=clientAuth")
    return Pki(directory)


def client_context(pki: Pki, *, certificate: str | None = "client", version: ssl.TLSVersion | None = None,
                   ) -> ssl.SSLContext:
    """A client context that trusts the test CA (and checks the host name), with a certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if certificate is not None:
        context.load_cert_chain(pki.directory / f"{certificate}.pem", pki.directory / f"{certificate}.key")
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 is deprecated
            context.minimum_version = context.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # else OpenSSL 3 will not even offer TLS 1.1
    return context


def tls_settings(pki: Pki, **overrides: Any) -> dict[str, Any]:
    """The ``dicom.tls`` section for the test certificates, mutual TLS required."""
    return {"enabled": True, "certificate": str(pki.server), "private_key": str(pki.server_key),
            "ca_certificates": str(pki.ca), "require_client_certificate": True, **overrides}


# --------------------------------------------------------------------------- in-process listener


@pytest.fixture
def serve_tls(pki: Pki, writer: SpoolWriter) -> Iterator[Callable[..., Listener]]:
    """``serve_tls(**dicom_tls_overrides)``: a TLS listener on 127.0.0.1:<ephemeral>."""
    started: list[Listener] = []

    def start(*, acse_timeout_s: float = 30, **overrides: Any) -> Listener:
        settings = tls_settings(pki, **overrides)
        context = build_server_context(
            certificate=Path(settings["certificate"]), private_key=Path(settings["private_key"]),
            ca_certificates=Path(settings["ca_certificates"]) if settings["ca_certificates"] else None,
            require_client_certificate=settings["require_client_certificate"], ciphers=settings.get("ciphers"),
        )
        listener = start_listener(host=LOCALHOST, port=0, ae_title="SR2FHIR", writer=writer, ssl_context=context,
                                  acse_timeout_s=acse_timeout_s)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop(drain_timeout_s=5)


def test_a_tls_association_with_a_client_certificate_stores_an_sr(serve_tls, pki, logs, tmp_path):
    listener = serve_tls()
    ds = report("tls-store")
    scu = Scu(listener.port, tls_args=(client_context(pki), "localhost"))
    assert scu.store(ds) == [SUCCESS]
    assert scu.assoc.dul.socket.socket.version() in ("TLSv1.2", "TLSv1.3")
    scu.release()
    assert logs.wait_for("sr_spooled")["sop_instance_uid"] == ds.SOPInstanceUID
    assert Spool(tmp_path / "spool").status().pending == 1
    assert logs.named("tls_handshake_failed") == []


def test_the_server_certificate_verifies_for_the_ip_address_too(serve_tls, pki):
    listener = serve_tls()
    scu = Scu(listener.port, tls_args=(client_context(pki), LOCALHOST))
    assert scu.assoc.is_established
    scu.release()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_tls_1_2_and_1_3_clients_are_served(serve_tls, pki, version):
    listener = serve_tls()
    scu = Scu(listener.port, tls_args=(client_context(pki, version=version), "localhost"))
    assert scu.store(report(f"tls-{version.name}")) == [SUCCESS]
    assert scu.assoc.dul.socket.socket.version() == version.name.replace("_", ".")  # "TLSv1.2"
    scu.release()


def test_a_client_without_a_certificate_is_refused_when_one_is_required(serve_tls, pki, logs):
    listener = serve_tls()
    scu = Scu(listener.port, tls_args=(client_context(pki, certificate=None), "localhost"))
    assert not scu.assoc.is_established
    event = logs.wait_for("tls_handshake_failed")
    assert event["peer_address"] == LOCALHOST
    assert event["reason"] == "no client certificate (PEER_DID_NOT_RETURN_A_CERTIFICATE)"
    assert logs.named("sr_spooled") == []


def test_a_self_signed_client_certificate_is_refused(serve_tls, pki, logs):
    listener = serve_tls()
    scu = Scu(listener.port, tls_args=(client_context(pki, certificate="rogue"), "localhost"))
    assert not scu.assoc.is_established
    assert logs.wait_for("tls_handshake_failed")["reason"] == "client certificate rejected: self-signed certificate"


def test_without_require_a_presented_certificate_is_still_verified(serve_tls, pki, logs):
    listener = serve_tls(require_client_certificate=False)
    anonymous = Scu(listener.port, tls_args=(client_context(pki, certificate=None), "localhost"))
    assert anonymous.store(report("tls-anonymous")) == [SUCCESS]
    anonymous.release()
    rogue = Scu(listener.port, tls_args=(client_context(pki, certificate="rogue"), "localhost"))
    assert not rogue.assoc.is_established
    assert logs.wait_for("tls_handshake_failed")["reason"].startswith("client certificate rejected")


def _handshake(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection((LOCALHOST, port), timeout=20) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return str(tls.version())


def test_a_tls_1_1_client_is_refused(serve_tls, pki, logs):
    old = client_context(pki, version=ssl.TLSVersion.TLSv1_1)
    # Control: this OpenSSL must be able to speak TLS 1.1 at all, or the test proves nothing.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.load_cert_chain(pki.server, pki.server_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1_1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_server((LOCALHOST, 0)) as control:
        outcome: list[BaseException | str] = []

        def accept() -> None:
            conn, _ = control.accept()
            try:
                with permissive.wrap_socket(conn, server_side=True) as tls:
                    outcome.append(str(tls.version()))
            except (OSError, ValueError) as exc:
                outcome.append(exc)

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            version = _handshake(control.getsockname()[1], old)
        except (OSError, ValueError) as exc:
            pytest.skip(f"this OpenSSL ({ssl.OPENSSL_VERSION}) cannot negotiate TLS 1.1 even at SECLEVEL=0: {exc}")
        thread.join(timeout=20)
    assert version == "TLSv1.1"

    listener = serve_tls()
    with pytest.raises(ssl.SSLError):
        _handshake(listener.port, old)
    assert logs.wait_for("tls_handshake_failed")["reason"].startswith("TLS version below 1.2 offered")
    scu = Scu(listener.port, tls_args=(client_context(pki), "localhost"))  # still serving
    assert scu.assoc.is_established
    scu.release()


def test_plain_dicom_to_a_tls_listener_fails_cleanly_and_the_listener_keeps_serving(serve_tls, pki, logs):
    listener = serve_tls()
    plain = Scu(listener.port)
    assert not plain.assoc.is_established
    assert logs.wait_for("tls_handshake_failed")["reason"] == "not TLS (plain DICOM or another protocol?) " \
                                                              "(WRONG_VERSION_NUMBER)"
    scu = Scu(listener.port, tls_args=(client_context(pki), "localhost"))
    assert scu.store(report("after-plain")) == [SUCCESS]
    scu.release()


def test_a_client_that_never_starts_its_handshake_blocks_nobody(serve_tls, pki, logs):
    listener = serve_tls()
    with socket.create_connection((LOCALHOST, listener.port)) as idle:
        # With the handshake in pynetdicom's accept loop this association would wait forever.
        scu = Scu(listener.port, tls_args=(client_context(pki), "localhost"))
        assert scu.store(report("beside-idle")) == [SUCCESS]
        scu.release()
        assert logs.named("tls_handshake_failed") == []
        idle.shutdown(socket.SHUT_RDWR)
    assert logs.wait_for("tls_handshake_failed")["reason"] == "connection closed during the TLS handshake"


def test_a_stalled_handshake_is_dropped_after_the_acse_timeout(serve_tls, pki, logs):
    listener = serve_tls(acse_timeout_s=0.2)
    with socket.create_connection((LOCALHOST, listener.port)) as idle:
        assert logs.wait_for("tls_handshake_failed")["reason"] == "no TLS handshake within 0.2 s"
        assert idle.recv(1) == b""  # the listener closed it


def test_a_context_allowing_old_versions_is_refused(writer, pki):
    context = build_server_context(certificate=pki.server, private_key=pki.server_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ValueError, match="TLS 1.2"):
        start_listener(host=LOCALHOST, port=0, ae_title="SR2FHIR", writer=writer, ssl_context=context)


def test_server_ssl_context_follows_the_settings(tmp_path, pki):
    config = write_config(tmp_path, dicom={"tls": tls_settings(pki, ciphers="ECDHE+AESGCM")})
    context = server_ssl_context(load_settings(config, environ={}).dicom.tls)
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]
    assert tls12 and all(name.startswith("ECDHE-") and "GCM" in name for name in tls12)
    optional = write_config(tmp_path, dicom={"tls": tls_settings(pki, require_client_certificate=False)})
    assert server_ssl_context(load_settings(optional, environ={}).dicom.tls).verify_mode == ssl.CERT_OPTIONAL
    no_ca = write_config(tmp_path, dicom={"tls": tls_settings(pki, require_client_certificate=False,
                                                                ca_certificates=None)})
    assert server_ssl_context(load_settings(no_ca, environ={}).dicom.tls).verify_mode == ssl.CERT_NONE
    off = write_config(tmp_path, dicom={"tls": {"enabled": False}})
    assert server_ssl_context(load_settings(off, environ={}).dicom.tls) is None


# --------------------------------------------------------------------------- sr2fhir serve


def _storescu_tls_support() -> str | None:
    """None if dcmtk's storescu can do TLS here, else why not."""
    if shutil.which("storescu") is None:
        return "dcmtk's storescu is not installed (scripts/test.sh installs it)"
    help_text = subprocess.run(["storescu", "--help"], capture_output=True, text=True, timeout=30, check=False).stdout
    if "--enable-tls" not in help_text:
        return "this dcmtk build of storescu has no TLS support (no --enable-tls in storescu --help)"
    return None


def _storescu(port: int, pki: Pki, files: list[Path], *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", "-aet", "PACS", "-aec", "SR2FHIR", *tls, "127.0.0.1", str(port), *map(str, files)],
        env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture(params=[1, 2], ids=["listener_processes=1", "listener_processes=2"])
def tls_daemon(tmp_path: Path, pki: Pki, request: pytest.FixtureRequest) -> Iterator[DaemonProcess]:
    """The daemon with TLS, serving in its own process or in two association processes
    (each wraps the connections handed to it)."""
    dicom = {"tls": tls_settings(pki), "listener_processes": request.param}
    with DaemonProcess(write_config(tmp_path, dicom=dicom)) as running:
        yield running


def test_sr2fhir_serve_with_tls_stores_and_delivers_and_refuses_plain_dicom(tls_daemon, pki, tmp_path):
    ds = report("daemon-tls")
    scu = Scu(tls_daemon.port, tls_args=(client_context(pki), "localhost"))
    assert scu.store(ds) == [SUCCESS]
    scu.release()
    tls_daemon.wait_for("bundle_delivered", lambda e: e.get("sop_instance_uid") == ds.SOPInstanceUID)
    assert (tmp_path / "outbox" / f"{ds.SOPInstanceUID}.json").exists()
    assert not Scu(tls_daemon.port).assoc.is_established  # plain DICOM
    assert "WRONG_VERSION_NUMBER" in tls_daemon.wait_for("tls_handshake_failed")["reason"]
    assert not Scu(tls_daemon.port, tls_args=(client_context(pki, certificate="rogue"), "localhost")).assoc.is_established
    tls_daemon.wait_for("tls_handshake_failed", lambda e: "self-signed" in e["reason"])
    again, alongside = report("daemon-tls-again"), report("daemon-tls-alongside")
    scu = Scu(tls_daemon.port, tls_args=(client_context(pki), "localhost"))
    other = Scu(tls_daemon.port, tls_args=(client_context(pki), "localhost"))  # open at once: with 2 processes, on the other
    assert scu.store(again) == [SUCCESS]
    assert other.store(alongside) == [SUCCESS]
    scu.release()
    other.release()
    for ds in (again, alongside):
        tls_daemon.wait_for("bundle_delivered", lambda e, uid=ds.SOPInstanceUID: e.get("sop_instance_uid") == uid)
    # one process (no listener_process key), or TLS served by both association processes
    assert {e.get("listener_process") for e in tls_daemon.named("sr_spooled")} in ({None}, {0, 1})


@pytest.mark.skipif(_storescu_tls_support() is not None, reason=str(_storescu_tls_support()))
def test_dcmtk_storescu_over_tls(tls_daemon, pki, tmp_path):
    files = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.dcm"
        report(f"dcmtk-tls-{name}").save_as(path, enforce_file_format=True)
        files.append(path)
    proc = _storescu(tls_daemon.port, pki, files, "+tls", str(pki.client_key), str(pki.client), "+cf", str(pki.ca))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("a", "b"):
        tls_daemon.wait_for("bundle_delivered", lambda e, n=name: e.get("sop_instance_uid") == report(
            f"dcmtk-tls-{n}").SOPInstanceUID)
    assert {e["calling_ae"] for e in tls_daemon.named("sr_spooled")} == {"PACS"}
    rogue = _storescu(tls_daemon.port, pki, files[:1], "+tls", str(pki.rogue_key), str(pki.rogue), "+cf", str(pki.ca))
    assert rogue.returncode != 0
    anonymous = _storescu(tls_daemon.port, pki, files[:1], "+tla", "+cf", str(pki.ca))
    assert anonymous.returncode != 0
    tls_daemon.wait_for("tls_handshake_failed", lambda e: e["reason"].startswith("no client certificate"))


@pytest.mark.parametrize("processes", [1, 2], ids=["listener_processes=1", "listener_processes=2"])
def test_sr2fhir_serve_with_tls_checks_the_calling_ae_title_and_its_address(tmp_path, pki, processes):
    peers = [{"ae_title": "MODALITY", "addresses": ["127.0.0.0/8"]}, {"ae_title": "PACS", "addresses": ["10.0.0.0/8"]}]
    config = write_config(tmp_path, dicom={"tls": tls_settings(pki), "allowed_peers": peers,
                                           "listener_processes": processes})
    with DaemonProcess(config) as daemon:
        tls = (client_context(pki), "localhost")
        ds = report("daemon-peer")
        scu = Scu(daemon.port, calling="MODALITY", tls_args=tls)
        assert scu.store(ds) == [SUCCESS]
        scu.release()
        assert Scu(daemon.port, calling="PACS", tls_args=tls).rejection == (0x01, 0x01, 0x03)
        event = daemon.wait_for("association_rejected")
        assert (event["calling_ae"], event["peer_address"]) == ("PACS", LOCALHOST)
        assert event["reason"] == "calling AE title not allowed from this address"
        assert Scu(daemon.port, calling="INTRUDER", tls_args=tls).rejection == (0x01, 0x01, 0x03)
        daemon.wait_for("association_rejected", lambda e: e["reason"] == "calling AE title not allowed")
        daemon.wait_for("bundle_delivered", lambda e: e.get("sop_instance_uid") == ds.SOPInstanceUID)


def test_sr2fhir_serve_refuses_associations_while_free_space_is_below_the_reserve(tmp_path):
    config = write_config(tmp_path, spool={"min_free_bytes": "1000 TiB"})
    with DaemonProcess(config) as daemon:
        assert Scu(daemon.port).rejection == (0x02, 0x03, 0x01)  # transient, temporary congestion
        event = daemon.wait_for("association_rejected")
        assert event["reason"] == "free disk space below spool.min_free_bytes" and event["transient"] is True
    assert not daemon.named("sr_spooled")


def test_sr2fhir_serve_refuses_to_start_with_an_unusable_tls_section(tmp_path, pki):
    config = write_config(tmp_path, dicom={"tls": tls_settings(pki, certificate=str(tmp_path / "missing.pem"),
                                                               private_key=str(pki.client_key))})
    proc = subprocess.run([sys.executable, "-m", "scp.cli", "serve", "--config", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"sr2fhir: error: {config}: dicom.tls.certificate: no such file: {tmp_path / 'missing.pem'}",
    ]
