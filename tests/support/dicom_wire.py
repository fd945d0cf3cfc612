"""Raw DICOM Upper Layer (PS3.8) on a plain socket, for sending what a polite SCU never would.

pynetdicom's SCU refuses to send malformed or oversized PDUs, to stop half-way through a
dataset, or to reset the connection; the hostile-input tests need exactly that. This module
encodes the few PDUs they need byte by byte (PS3.8 §9.3) and speaks just enough DIMSE
(PS3.7 §9.3.1 C-STORE, command sets in Implicit VR Little Endian) to read a status back::

    with RawAssociation.open(port, [(1, COMPREHENSIVE_SR, [EXPLICIT_VR_LE])]) as assoc:
        assert assoc.accepted_transfer_syntax(1) == EXPLICIT_VR_LE
        status = assoc.c_store(1, sop_class, sop_instance, dataset_bytes)     # 0x0000, ...
        assoc.c_store_partial(1, sop_class, sop_instance, dataset_bytes, 0.5)  # then:
        assoc.abort()        # A-ABORT PDU        | assoc.reset()  TCP RST (SO_LINGER 0)
                             # assoc.close()      plain FIN        | assoc.release()

Every socket operation has a timeout (:data:`DEFAULT_TIMEOUT_S`); nothing here loops
without a bound. Loopback only: :func:`RawAssociation.open` connects to 127.0.0.1.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

__all__ = [
    "APPLICATION_CONTEXT",
    "DEFAULT_TIMEOUT_S",
    "EXPLICIT_VR_LE",
    "IMPLICIT_VR_LE",
    "JPEG_BASELINE",
    "AssociationRejected",
    "ContextResult",
    "PeerClosed",
    "RawAssociation",
    "a_abort",
    "a_associate_rq",
    "a_release_rq",
    "c_store_rq",
    "encode_dataset",
    "fragment",
    "p_data_tf",
    "pdu_header",
    "pdv",
]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.7433.1.1"
DEFAULT_TIMEOUT_S = 20.0
MAX_PDU_READ = 64 * 1024 * 1024  # we never read a PDU the SCP claims is bigger than this

# PDU types (PS3.8 §9.3.1)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 1, 2, 3, 4, 5, 6, 7


class PeerClosed(ConnectionError):
    """The SCP closed the connection (or aborted) where an answer was expected."""


class AssociationRejected(ConnectionError):
    """A-ASSOCIATE-RJ: ``result``, ``source``, ``reason`` as in PS3.8 Table 9-21."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(f"association rejected (result {result}, source {source}, reason {reason})")
        self.result, self.source, self.reason = result, source, reason


# --------------------------------------------------------------------------- encoding


def pdu_header(pdu_type: int, length: int) -> bytes:
    """Type, reserved byte, 32-bit big-endian length (of what follows)."""
    return struct.pack(">BBL", pdu_type, 0, length)


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _ae(title: str) -> bytes:
    return title.encode("ascii")[:16].ljust(16, b" ")


def a_associate_rq(called: str, calling: str, contexts: Iterable[tuple[int, str, Sequence[str]]], *,
                   max_pdu: int = 16382) -> bytes:
    """A-ASSOCIATE-RQ proposing ``contexts`` = (odd context id, abstract syntax, transfer syntaxes)."""
    body = struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + bytes(32)
    body += _item(0x10, APPLICATION_CONTEXT.encode("ascii"))
    for context_id, abstract, transfer_syntaxes in contexts:
        sub = _item(0x30, abstract.encode("ascii"))
        sub += b"".join(_item(0x40, ts.encode("ascii")) for ts in transfer_syntaxes)
        body += _item(0x20, struct.pack(">BBBB", context_id, 0, 0, 0) + sub)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, IMPLEMENTATION_CLASS_UID.encode("ascii"))
    body += _item(0x50, user)
    return pdu_header(ASSOCIATE_RQ, len(body)) + body


def pdv(context_id: int, data: bytes, *, command: bool, last: bool) -> bytes:
    """One Presentation Data Value item (length, context id, message control header, fragment)."""
    header = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    return struct.pack(">LBB", len(data) + 2, context_id, header) + data


def p_data_tf(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return pdu_header(P_DATA_TF, len(body)) + body


def a_release_rq() -> bytes:
    return pdu_header(RELEASE_RQ, 4) + bytes(4)


def a_abort(source: int = 0, reason: int = 0) -> bytes:
    """A-ABORT from the service user (source 0) by default."""
    return pdu_header(ABORT, 4) + struct.pack(">BBBB", 0, 0, source, reason)


def _element(group: int, element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHL", group, element, len(value)) + value


def c_store_rq(sop_class_uid: str, sop_instance_uid: str, message_id: int = 1, *, priority: int = 0) -> bytes:
    """The C-STORE-RQ command set (Implicit VR Little Endian, PS3.7 Table 9.3-1)."""
    elements = b"".join([
        _element(0x0000, 0x0002, sop_class_uid.encode("ascii")),
        _element(0x0000, 0x0100, struct.pack("<H", 0x0001)),
        _element(0x0000, 0x0110, struct.pack("<H", message_id & 0xFFFF)),
        _element(0x0000, 0x0700, struct.pack("<H", priority)),
        _element(0x0000, 0x0800, struct.pack("<H", 0x0000)),  # a data set follows
        _element(0x0000, 0x1000, sop_instance_uid.encode("ascii")),
    ])
    return _element(0x0000, 0x0000, struct.pack("<L", len(elements))) + elements


def parse_command(data: bytes) -> dict[int, bytes]:
    """An Implicit VR Little Endian command set as {(group << 16 | element): raw value}."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHL", data, pos)
        pos += 8
        out[(group << 16) | element] = data[pos:pos + length]
        pos += length
    return out


def encode_dataset(ds: Dataset, *, implicit_vr: bool = False) -> bytes:
    """The dataset as sent in P-DATA (no preamble, no file meta), little endian."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = implicit_vr
    buffer.is_little_endian = True
    plain = Dataset()
    plain.update(ds)  # file_meta is not part of the dataset on the wire
    write_dataset(buffer, plain)
    return bytes(buffer.getvalue())


def fragment(data: bytes, max_pdu: int) -> list[bytes]:
    """Split ``data`` into fragments that fit one PDV each in a P-DATA-TF of ``max_pdu`` bytes."""
    size = max(1, (max_pdu or 16382) - 6)
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


# --------------------------------------------------------------------------- association


@dataclass
class ContextResult:
    """One presentation context of the A-ASSOCIATE-AC: result 0 = accepted (PS3.8 Table 9-18)."""

    context_id: int
    result: int
    transfer_syntax: str


@dataclass
class RawAssociation:
    """A socket on which an association was requested; see the module docstring."""

    sock: socket.socket
    contexts: dict[int, ContextResult] = field(default_factory=dict)
    peer_max_pdu: int = 0
    """The SCP's Maximum Length (0: unlimited)."""

    @classmethod
    def connect(cls, port: int, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> RawAssociation:
        """Only the TCP connection (nothing sent yet)."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    @classmethod
    def open(cls, port: int, contexts: Iterable[tuple[int, str, Sequence[str]]], *, called: str = "SR2FHIR",
             calling: str = "HOSTILE", max_pdu: int = 16382, timeout_s: float = DEFAULT_TIMEOUT_S) -> RawAssociation:
        """Connect and negotiate; raises :class:`AssociationRejected` or :class:`PeerClosed`."""
        assoc = cls.connect(port, timeout_s=timeout_s)
        try:
            assoc.send(a_associate_rq(called, calling, contexts, max_pdu=max_pdu))
            pdu_type, body = assoc.read_pdu()
            if pdu_type == ASSOCIATE_RJ:
                _, result, source, reason = struct.unpack(">BBBB", body[:4])
                raise AssociationRejected(result, source, reason)
            if pdu_type != ASSOCIATE_AC:
                raise PeerClosed(f"expected A-ASSOCIATE-AC, got PDU type {pdu_type}")
            assoc._parse_ac(body)
        except BaseException:
            assoc.close()
            raise
        return assoc

    def _parse_ac(self, body: bytes) -> None:
        pos = 68  # protocol version, reserved, called AE, calling AE, 32 reserved
        while pos + 4 <= len(body):
            item_type, _, length = struct.unpack_from(">BBH", body, pos)
            value = body[pos + 4:pos + 4 + length]
            pos += 4 + length
            if item_type == 0x21:
                context_id, _, result, _ = struct.unpack_from(">BBBB", value, 0)
                ts = ""
                if len(value) >= 8:
                    _, _, ts_length = struct.unpack_from(">BBH", value, 4)
                    ts = value[8:8 + ts_length].decode("ascii").rstrip("\x00 ")
                self.contexts[context_id] = ContextResult(context_id, result, ts)
            elif item_type == 0x50:
                sub = 0
                while sub + 4 <= len(value):
                    sub_type, _, sub_length = struct.unpack_from(">BBH", value, sub)
                    if sub_type == 0x51 and sub_length == 4:
                        (self.peer_max_pdu,) = struct.unpack_from(">L", value, sub + 4)
                    sub += 4 + sub_length

    def accepted_transfer_syntax(self, context_id: int) -> str | None:
        result = self.contexts.get(context_id)
        return result.transfer_syntax if result is not None and result.result == 0 else None

    # -- raw I/O ---------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exactly(self, count: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < count:  # bounded: each recv returns >= 1 byte or ends the loop
            chunk = self.sock.recv(min(count - len(chunks), 1 << 20))
            if not chunk:
                raise PeerClosed(f"connection closed after {len(chunks)} of {count} bytes")
            chunks += chunk
        return bytes(chunks)

    def read_pdu(self) -> tuple[int, bytes]:
        """The next PDU as (type, body); :class:`PeerClosed` on EOF or reset."""
        try:
            pdu_type, _, length = struct.unpack(">BBL", self._recv_exactly(6))
            if length > MAX_PDU_READ:
                raise PeerClosed(f"the SCP announced a {length}-byte PDU")
            return pdu_type, self._recv_exactly(length)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise PeerClosed(str(exc)) from exc

    def read_until_closed(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[int]:
        """Read PDUs until the SCP closes the connection; returns their types (bounded by count)."""
        self.sock.settimeout(timeout_s)
        types = []
        for _ in range(1000):
            try:
                pdu_type, _ = self.read_pdu()
            except (PeerClosed, OSError):
                return types
            types.append(pdu_type)
        return types

    # -- DIMSE -----------------------------------------------------------------------

    def send_message(self, context_id: int, command: bytes, dataset: bytes | None, *,
                     max_pdu: int | None = None, dataset_fraction: float = 1.0) -> None:
        """Send a command and (a fraction of) its dataset, each fragment in its own P-DATA-TF.

        ``dataset_fraction < 1`` stops before the last fragment (the last bit is never sent).
        """
        limit = self.peer_max_pdu if max_pdu is None else max_pdu
        self.send(p_data_tf(pdv(context_id, command, command=True, last=True)))
        if dataset is None:
            return
        pieces = fragment(dataset, limit)
        if dataset_fraction >= 1.0:
            for index, piece in enumerate(pieces):
                self.send(p_data_tf(pdv(context_id, piece, command=False, last=index == len(pieces) - 1)))
            return
        cut = max(1, int(len(dataset) * dataset_fraction))
        sent = 0
        for piece in pieces:
            piece = piece[:cut - sent]
            if not piece:
                break
            self.send(p_data_tf(pdv(context_id, piece, command=False, last=False)))
            sent += len(piece)

    def read_response(self) -> dict[int, bytes]:
        """The next DIMSE command set received (fragments reassembled)."""
        command = bytearray()
        for _ in range(10_000):  # bounded: a response is a few hundred bytes
            pdu_type, body = self.read_pdu()
            if pdu_type == ABORT:
                raise PeerClosed("the SCP sent A-ABORT")
            if pdu_type != P_DATA_TF:
                raise PeerClosed(f"expected P-DATA-TF, got PDU type {pdu_type}")
            pos = 0
            while pos + 6 <= len(body):
                (length,) = struct.unpack_from(">L", body, pos)
                header = body[pos + 5]
                command += body[pos + 6:pos + 4 + length]
                pos += 4 + length
                if header & 0x01 and header & 0x02:
                    return parse_command(bytes(command))
        raise PeerClosed("no complete response")

    def c_store(self, context_id: int, sop_class_uid: str, sop_instance_uid: str, dataset: bytes, *,
                message_id: int = 1, max_pdu: int | None = None) -> int:
        """A whole C-STORE; returns the response Status."""
        self.send_message(context_id, c_store_rq(sop_class_uid, sop_instance_uid, message_id), dataset,
                          max_pdu=max_pdu)
        response = self.read_response()
        return struct.unpack("<H", response[0x00000900][:2])[0]

    def c_store_partial(self, context_id: int, sop_class_uid: str, sop_instance_uid: str, dataset: bytes,
                        fraction: float, *, message_id: int = 1) -> None:
        """Send the C-STORE-RQ and only ``fraction`` of the dataset (never its last fragment)."""
        self.send_message(context_id, c_store_rq(sop_class_uid, sop_instance_uid, message_id), dataset,
                          dataset_fraction=min(fraction, 0.999))

    # -- endings ---------------------------------------------------------------------

    def release(self) -> bool:
        """A-RELEASE-RQ; True when A-RELEASE-RP came back."""
        try:
            self.send(a_release_rq())
            for _ in range(100):
                pdu_type, _ = self.read_pdu()
                if pdu_type == RELEASE_RP:
                    return True
                if pdu_type == ABORT:
                    return False
            return False
        except (PeerClosed, OSError):
            return False
        finally:
            self.close()

    def abort(self) -> None:
        """A-ABORT, then close."""
        try:
            self.send(a_abort())
        except OSError:
            pass
        finally:
            self.close()

    def reset(self) -> None:
        """Vanish: close with SO_LINGER 0, so the SCP sees a TCP RST, not a FIN."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
