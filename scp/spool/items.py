"""What the spool hands out and raises: errors, the record fields, pending items.

Shared by :mod:`scp.spool` (which re-exports every public name here),
:mod:`scp.spool.db`, :mod:`scp.spool.consumer` and :mod:`scp.spool.legacy`.
"""

from __future__ import annotations

import errno
import sqlite3
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeAlias

from ..common.times import utc_now_iso

__all__ = [
    "ItemId",
    "Payload",
    "PayloadSource",
    "RecordFields",
    "SpoolCorruptError",
    "SpoolError",
    "SpoolFullError",
    "SpoolItem",
    "SpoolLockedError",
    "checked",
    "crc_problem",
    "received_us",
    "spool_error",
    "utc_now_iso",
]

ItemId: TypeAlias = str
_FULL_CODES = frozenset({sqlite3.SQLITE_FULL, getattr(sqlite3, "SQLITE_IOERR_SHMSIZE", 4874)})
"""SQLite's "database or disk is full", and the -shm file that could not grow (ENOSPC)."""
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNPARSEABLE_US = -(2**62)
"""``received_us`` of a ``received_at`` that is not ISO 8601: sorts first, and visibly."""


class SpoolError(Exception):
    """Base class of spool errors; the spool could not do what was asked.

    ::

        SpoolError
         ├── SpoolFullError     no space or quota left: answer C-STORE 0xA700
         ├── SpoolLockedError   another consumer already reads this spool
         └── SpoolCorruptError  an item's bytes no longer match their CRC
    """


class SpoolFullError(SpoolError):
    """The file system is full (ENOSPC, SQLITE_FULL), the quota is spent (EDQUOT), or less
    than the spool's reserve is left."""


class SpoolLockedError(SpoolError):
    """Another process holds ``consumer.lock``: only one forwarder may run per spool."""


class SpoolCorruptError(SpoolError):
    """An item's payload failed its CRC check when read back."""


def spool_error(exc: BaseException, doing: str) -> SpoolError:
    """The :class:`SpoolError` for an ``OSError`` or ``sqlite3.Error`` met while ``doing``."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and (code in _FULL_CODES or code & 0xFF in _FULL_CODES):
            return SpoolFullError(f"{doing}: No space left on device (SQLite: {exc})")
        return SpoolError(f"{doing}: {exc}")
    if isinstance(exc, OSError):
        kind = SpoolFullError if exc.errno in _FULL_ERRNOS else SpoolError
        return kind(f"{doing}: {exc.strerror or exc}")
    return SpoolError(f"{doing}: {exc}")


def received_us(timestamp: str) -> int:
    """An ISO 8601 timestamp as microseconds since the epoch (no offset: UTC)."""
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return UNPARSEABLE_US
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class RecordFields:
    """What the spool keeps about an instance besides its bytes."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    calling_ae: str
    received_at: str = field(default_factory=utc_now_iso)
    """ISO 8601 UTC; defaults to the time the fields were created."""

    def to_json(self) -> dict[str, str]:
        """The fields as a JSON-ready dict (dead-letter sidecars keep them)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, obj: object) -> RecordFields:
        """Rebuild from :meth:`to_json` output; unknown keys are ignored. Raises ``ValueError``."""
        if not isinstance(obj, Mapping):
            raise ValueError("record header is not a JSON object")
        try:
            values = {name: obj[name] for name in cls.__dataclass_fields__}
        except KeyError as exc:
            raise ValueError(f"record header lacks {exc.args[0]!r}") from exc
        if not all(isinstance(value, str) for value in values.values()):
            raise ValueError("record header values must be strings")
        return cls(**values)


Payload: TypeAlias = "bytes | bytearray | memoryview"


def crc_problem(payload: bytes, crc: int) -> str | None:
    """What is wrong with ``payload`` given its stored CRC-32 (``None``: nothing)."""
    return None if zlib.crc32(payload) == crc else f"CRC mismatch in its payload ({len(payload)} bytes)"


def checked(item_id: ItemId, payload: bytes, crc: int) -> bytes:
    """``payload``, or :class:`SpoolCorruptError` if it fails its CRC."""
    problem = crc_problem(payload, crc)
    if problem is not None:
        raise SpoolCorruptError(f"item {item_id}: {problem}")
    return payload


class PayloadSource(Protocol):
    """Where :meth:`SpoolItem.read` gets the bytes (:class:`scp.spool.db.PayloadReader`)."""

    def read(self, seq: int) -> tuple[bytes, int] | None:
        """(payload, crc32) of item ``seq``, or ``None`` when it is no longer there."""


@dataclass(frozen=True)
class SpoolItem:
    """A pending instance. ``read()`` returns its bytes as received."""

    id: ItemId
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    calling_ae: str
    received_at: str
    size: int
    """Length of the DICOM bytes."""
    seq: int = field(repr=False, compare=False)
    """Its row in ``spool.db`` (the spool's order: lower is older)."""
    _reader: PayloadSource = field(repr=False, compare=False)

    def read(self) -> bytes:
        """The DICOM bytes; :class:`SpoolCorruptError` if they fail their CRC, :class:`SpoolError`
        if the item is gone (delivered, superseded)."""
        found = self._reader.read(self.seq)
        if found is None:
            raise SpoolError(f"item {self.id} is no longer in the spool")
        return checked(self.id, *found)

    def record_fields(self) -> RecordFields:
        """The fields as given to :meth:`scp.spool.SpoolWriter.put`."""
        return RecordFields(
            self.sop_instance_uid, self.sop_class_uid, self.transfer_syntax_uid, self.calling_ae, self.received_at
        )

