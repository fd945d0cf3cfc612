"""Whose fault is a failure: every row of the classification table (fhir_client.results).

The server side is a MockTransport handler (a peer, as in the other fhir_client tests): the
transaction POST gets the answer under test, ``GET [base]/metadata`` a CapabilityStatement or
not. The TLS rows at the end use a real TLS server on 127.0.0.1 with openssl-made certificates.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from fhir_client import (
    EndpointProblem,
    FhirClient,
    FhirSettings,
    Outcome,
    RetrySettings,
    SendResult,
    TlsSettings,
)
from fhir_client.errors import TokenRequestError
from fhir_client.results import ENDPOINT_STATUS_PROBLEMS, endpoint_problem_of_error

from .fakes import (
    fhir_json,
    fhir_settings,
    make_client,
    operation_outcome,
    transaction_bundle,
    transaction_response,
)

CAPABILITY = {"resourceType": "CapabilityStatement", "fhirVersion": "5.0.0", "status": "active"}
HTML = httpx.Response(200, headers={"Content-Type": "text/html"}, text="<html><form>Sign in</form></html>")
OO = operation_outcome("Bundle.entry[2].resource: unknown code", expression="Bundle.entry[2].resource")


def html(status_code: int) -> httpx.Response:
    return httpx.Response(status_code, headers={"Content-Type": "text/html"}, text=f"<html>{status_code}</html>")


def send_to(answer: httpx.Response, *, metadata_ok: bool = True) -> tuple[SendResult, list[str]]:
    """Send one Bundle; the POST gets ``answer``, ``[base]/metadata`` a CapabilityStatement
    (``metadata_ok``) or a 404 page. Returns the result and the requests as ``METHOD path``."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.method == "GET" and request.url.path.endswith("/metadata"):
            return fhir_json(200, CAPABILITY) if metadata_ok else html(404)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    async def go() -> SendResult:
        retry = RetrySettings(max_attempts=3, initial_backoff_s=1, max_backoff_s=1, jitter_s=0)
        client, _ = make_client(handler, settings=fhir_settings(retry=retry))
        async with client:
            return await client.send(transaction_bundle())

    return asyncio.run(go()), seen


POST = "POST /fhir"
METADATA = "GET /fhir/metadata"

# (id, answer to the transaction, does [base]/metadata answer FHIR, outcome, problem, requests seen)
TABLE = [
    ("200 transaction-response", fhir_json(200, transaction_response()), True, Outcome.DELIVERED, None, [POST]),
    # orjson (the fast path) refuses these bodies; they are read as the standard library reads them
    ("200 transaction-response in UTF-16", httpx.Response(200, headers={"Content-Type": "application/fhir+json"},
     content=json.dumps(transaction_response()).encode("utf-16")), True, Outcome.DELIVERED, None, [POST]),
    ("200 transaction-response after a UTF-8 BOM", httpx.Response(200, headers={"Content-Type": "application/fhir+json"},
     content=b"\xef\xbb\xbf" + json.dumps(transaction_response()).encode()), True, Outcome.DELIVERED, None, [POST]),
    ("200 with a failed entry", fhir_json(200, transaction_response("201 Created", "422 Unprocessable Entity")),
     True, Outcome.REJECTED, None, [POST]),
    ("200 HTML login page", HTML, True, Outcome.ENDPOINT, EndpointProblem.NOT_FHIR, [POST]),
    ("200 OperationOutcome", fhir_json(200, OO), True, Outcome.ENDPOINT, EndpointProblem.NOT_FHIR, [POST]),
    ("201 without a body", httpx.Response(201), True, Outcome.ENDPOINT, EndpointProblem.NOT_FHIR, [POST]),
    ("301 moved", httpx.Response(301, headers={"Location": "https://new.example.org/fhir"}), True,
     Outcome.ENDPOINT, EndpointProblem.REDIRECTED, [POST]),
    ("302 to a login page", httpx.Response(302, headers={"Location": "https://sso.example.org/login"}), True,
     Outcome.ENDPOINT, EndpointProblem.REDIRECTED, [POST]),
    ("400 with an OperationOutcome", fhir_json(400, OO), False, Outcome.REJECTED, None, [POST]),
    ("400 without an OperationOutcome, metadata answers", html(400), True, Outcome.REJECTED, None, [POST, METADATA]),
    ("400 without an OperationOutcome, no FHIR at the base", html(400), False,
     Outcome.ENDPOINT, EndpointProblem.NOT_FHIR, [POST, METADATA]),
    ("401 after the one refresh", fhir_json(401, OO), True, Outcome.ENDPOINT, EndpointProblem.UNAUTHORIZED, [POST]),
    ("403 with an OperationOutcome", fhir_json(403, OO), True, Outcome.ENDPOINT, EndpointProblem.FORBIDDEN, [POST]),
    ("403 from a proxy", html(403), True, Outcome.ENDPOINT, EndpointProblem.FORBIDDEN, [POST]),
    ("404 conditional reference not found", fhir_json(404, operation_outcome("no Patient matches", code="not-found")),
     True, Outcome.REJECTED, None, [POST, METADATA]),
    ("404 page at a wrong base URL", html(404), False, Outcome.ENDPOINT, EndpointProblem.NOT_FOUND, [POST, METADATA]),
    ("404 OperationOutcome at a wrong base URL", fhir_json(404, operation_outcome("unknown path", code="not-found")),
     False, Outcome.ENDPOINT, EndpointProblem.NOT_FOUND, [POST, METADATA]),
    ("405", html(405), True, Outcome.ENDPOINT, EndpointProblem.METHOD_NOT_ALLOWED, [POST]),
    ("406", fhir_json(406), True, Outcome.ENDPOINT, EndpointProblem.FORMAT_REFUSED, [POST]),
    ("407 proxy authentication", html(407), True, Outcome.ENDPOINT, EndpointProblem.UNAUTHORIZED, [POST]),
    ("410 gone, metadata answers", fhir_json(410, OO), True, Outcome.REJECTED, None, [POST, METADATA]),
    ("412 with an OperationOutcome", fhir_json(412, OO), False, Outcome.REJECTED, None, [POST]),
    ("413 too large", html(413), False, Outcome.REJECTED, None, [POST]),
    ("415", fhir_json(415), True, Outcome.ENDPOINT, EndpointProblem.FORMAT_REFUSED, [POST]),
    ("422 with an OperationOutcome", fhir_json(422, OO), False, Outcome.REJECTED, None, [POST]),
    ("422 without a body", fhir_json(422), False, Outcome.REJECTED, None, [POST]),
    ("431 with an OperationOutcome", fhir_json(431, OO), False, Outcome.REJECTED, None, [POST]),
    ("431 without one, metadata answers", html(431), True, Outcome.REJECTED, None, [POST, METADATA]),
    ("501", fhir_json(501), True, Outcome.ENDPOINT, EndpointProblem.METHOD_NOT_ALLOWED, [POST]),
    ("505", html(505), True, Outcome.ENDPOINT, EndpointProblem.METHOD_NOT_ALLOWED, [POST]),
    ("408 retried", fhir_json(408), True, Outcome.DEFERRED, None, [POST] * 3),
    ("429 retried", fhir_json(429), True, Outcome.DEFERRED, None, [POST] * 3),
    ("500 retried", html(500), True, Outcome.DEFERRED, None, [POST] * 3),
    ("503 retried", fhir_json(503, OO), True, Outcome.DEFERRED, None, [POST] * 3),
]


@pytest.mark.parametrize(("answer", "metadata_ok", "outcome", "problem", "requests"),
                         [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_classification_table(answer, metadata_ok, outcome, problem, requests):
    result, seen = send_to(answer, metadata_ok=metadata_ok)
    assert (result.outcome, result.endpoint_problem) == (outcome, problem), result.diagnostics
    assert seen == requests
    assert result.status_code == answer.status_code


def test_every_endpoint_status_is_in_the_table():
    covered = {row[1].status_code for row in TABLE if row[3] is Outcome.ENDPOINT}
    assert set(ENDPOINT_STATUS_PROBLEMS) <= covered


def test_diagnostics_say_why():
    result, _ = send_to(html(404), metadata_ok=False)
    assert result.diagnostics == ("HTTP 404 Not Found (text/html, not FHIR); [base]/metadata is no FHIR server either")
    result, _ = send_to(fhir_json(404, operation_outcome("no Patient matches", code="not-found")))
    assert result.diagnostics == ("HTTP 404 Not Found: error not-found: no Patient matches; "
                                  "[base]/metadata answers, so the server refused this Bundle")
    result, _ = send_to(HTML)
    assert result.diagnostics == "HTTP 200 OK but the body is not a transaction-response Bundle (not FHIR: text/html)"
    result, _ = send_to(httpx.Response(301, headers={"Location": "https://new.example.org/fhir"}))
    assert "redirected to https://new.example.org/fhir; check fhir.base_url" in result.diagnostics


def tls_error(cause: BaseException) -> httpx.ConnectError:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise httpx.ConnectError(str(exc)) from exc
    except httpx.ConnectError as error:
        return error


@pytest.mark.parametrize(("error", "problem"), [
    (tls_error(ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")),
     EndpointProblem.TLS),
    (tls_error(ssl.CertificateError("hostname mismatch")), EndpointProblem.TLS),
    (tls_error(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")), EndpointProblem.TLS),
    (tls_error(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")), None),
    (httpx.ConnectError("connection refused"), None),
    (httpx.ReadTimeout("slow"), None),
    (TokenRequestError("token endpoint answered HTTP 401 (invalid_client)", status_code=401, error="invalid_client"),
     EndpointProblem.TOKEN_REFUSED),
    (TokenRequestError("token endpoint answered HTTP 400 (invalid_client)", status_code=400, error="invalid_client"),
     EndpointProblem.TOKEN_REFUSED),
    (TokenRequestError("token endpoint answered HTTP 200 without an access_token", status_code=200),
     EndpointProblem.TOKEN_REFUSED),
    (TokenRequestError("token endpoint answered HTTP 503", status_code=503), None),
    (TokenRequestError("token endpoint answered HTTP 429", status_code=429), None),
], ids=["cert verify", "hostname", "plain http on a tls port", "eof in handshake", "refused", "timeout",
        "token 401", "token 400", "token without access_token", "token 503", "token 429"])
def test_errors_instead_of_answers(error, problem):
    assert endpoint_problem_of_error(error) is problem
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        raise error

    async def go() -> SendResult:
        retry = RetrySettings(max_attempts=3, initial_backoff_s=1, max_backoff_s=1, jitter_s=0)
        client, _ = make_client(handler, settings=fhir_settings(retry=retry))
        async with client:
            return await client.send(transaction_bundle())

    result = asyncio.run(go())
    if problem is None:
        assert result.outcome is Outcome.DEFERRED and len(seen) == 3
    else:
        assert (result.outcome, result.endpoint_problem, len(seen)) == (Outcome.ENDPOINT, problem, 1)


# -- real TLS peers ----------------------------------------------------------------------------


class _Answer(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps(transaction_response()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _certificate(directory: Path, name: str, san: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """An HTTPS server on 127.0.0.1 whose certificate names only ``other.example``; yields its
    base URL, that certificate, and one for 127.0.0.1 that it does not use."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is not installed (needed to make test certificates)")
    cert, key = _certificate(tmp_path, "other", "DNS:other.example")
    unrelated, _ = _certificate(tmp_path, "loopback", "IP:127.0.0.1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/fhir", cert, unrelated
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def send_over_tls(base_url: str, tls: TlsSettings) -> SendResult:
    async def go() -> SendResult:
        settings = FhirSettings(base_url=base_url, tls=tls, retry=RetrySettings(max_attempts=3, jitter_s=0,
                                                                                 initial_backoff_s=0, max_backoff_s=0))
        async with FhirClient(settings) as client:
            return await client.send(transaction_bundle())

    return asyncio.run(go())


@pytest.mark.integration
def test_a_certificate_nobody_trusts_is_the_endpoints_fault(tls_server):
    base_url, _cert, unrelated = tls_server
    result = send_over_tls(base_url, TlsSettings(ca_bundle=unrelated))
    assert (result.outcome, result.endpoint_problem, result.attempts) == (Outcome.ENDPOINT, EndpointProblem.TLS, 1)
    assert "CERTIFICATE_VERIFY_FAILED" in result.diagnostics


@pytest.mark.integration
def test_a_certificate_for_another_host_name_is_the_endpoints_fault(tls_server):
    base_url, cert, _unrelated = tls_server
    result = send_over_tls(base_url, TlsSettings(ca_bundle=cert))
    assert (result.outcome, result.endpoint_problem, result.attempts) == (Outcome.ENDPOINT, EndpointProblem.TLS, 1)
    assert "127.0.0.1" in result.diagnostics or "mismatch" in result.diagnostics


@pytest.mark.integration
def test_the_same_server_without_verification_delivers(tls_server):
    base_url, _cert, _unrelated = tls_server
    assert send_over_tls(base_url, TlsSettings(verify=False)).outcome is Outcome.DELIVERED
