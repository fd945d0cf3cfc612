"""The spool's plain files: directory layout, dead letters, re-queue hand-over, done copies.

The pending instances live in ``spool.db`` (:mod:`scp.spool.db`); what operators look at
and move stays files, written the same way as before the database existed:

    failed/<id>.dcm, failed/<id>.json    a dead letter: the bytes and the JSON sidecar
    requeue/<id>.dcm, requeue/<id>.json  dead letters handed back by ``sr2fhir spool retry``
    done/<id>.dcm                        delivered items, only with retention "keep"
    consumer.lock                        flock'ed by the one consumer; holds its pid

Each file is written under a temporary name (``.<name>.tmp``), fdatasync'ed and renamed
into place; the directory is fsync'ed after. The ``.json`` marks a dead letter: it
exists when its ``.json`` does. Listings skip temporary files and names that are no
item id (``<epoch>-<seq>``, or ``<created_ns>-<pid>-<offset>`` from the journal spool).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.files import write_atomically
from .db import fsync_dir
from .items import ItemId, SpoolError, spool_error

__all__ = [
    "CONSUMER_LOCK",
    "DATA_SUFFIX",
    "DONE_DIR",
    "FAILED_DIR",
    "REQUEUE_DIR",
    "SIDECAR_SPOOL_KEY",
    "SIDECAR_SUFFIX",
    "FailedItem",
    "SpoolLayout",
    "id_key",
    "write_file",
]

CONSUMER_LOCK = "consumer.lock"
FAILED_DIR = "failed"
REQUEUE_DIR = "requeue"
DONE_DIR = "done"
DATA_SUFFIX = ".dcm"
SIDECAR_SUFFIX = ".json"
TEMP_PREFIX = "."
"""Files being written start with a dot and end in ``.tmp``; listings skip them."""
TEMP_SUFFIX = ".tmp"
SIDECAR_SPOOL_KEY = "spool"
"""Sidecar key under which the spool keeps the record fields a re-queue needs."""

_ITEM_ID = re.compile(r"^\d+-\d+(?:-\d+)?$")


@dataclass(frozen=True)
class FailedItem:
    """A dead letter; ``sidecar`` is the whole JSON sidecar as stored."""

    id: ItemId
    sop_instance_uid: str
    reason: str
    sidecar: dict[str, Any]


def id_key(item_id: str) -> tuple[int, ...]:
    """Sort key of an item id: oldest first, journal-era ids before database ones."""
    return tuple(int(part) for part in item_id.split("-")) if _ITEM_ID.match(item_id) else ()


def write_file(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write ``path`` atomically with its data fsynced; the caller fsyncs the directory."""
    write_atomically(path, data, sync_directory=False)


class SpoolLayout:
    """Paths and names under the spool directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.consumer_lock = root / CONSUMER_LOCK
        self.failed = root / FAILED_DIR
        self.requeue = root / REQUEUE_DIR
        self.done = root / DONE_DIR

    def ensure(self, *, keep_done: bool) -> None:
        """Create the tree if needed; :class:`SpoolError` if it is not a writable directory."""
        dirs = [self.failed, self.requeue] + ([self.done] if keep_done else [])
        try:
            for directory in dirs:
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool directory {self.root}: {exc.strerror or exc}") from exc
        if not all(os.access(d, os.W_OK | os.X_OK) for d in [self.root, *dirs]):
            raise SpoolError(f"the spool directory {self.root} is not writable")

    @staticmethod
    def entries(directory: Path) -> dict[str, set[str]]:
        """Item id -> suffixes present in a dead-letter directory (temp files skipped)."""
        found: dict[str, set[str]] = {}
        for name in os.listdir(directory):
            stem, dot, suffix = name.rpartition(".")
            if dot and not name.startswith(TEMP_PREFIX) and _ITEM_ID.match(stem):
                found.setdefault(stem, set()).add(dot + suffix)
        return found

    def write_dead_letter(self, item_id: ItemId, data: bytes, sidecar: bytes) -> None:
        """``failed/<id>.dcm``, then ``failed/<id>.json``, then the directory fsync."""
        write_file(self.failed / f"{item_id}{DATA_SUFFIX}", data)
        write_file(self.failed / f"{item_id}{SIDECAR_SUFFIX}", sidecar)
        fsync_dir(self.failed)

    def failed_items(self) -> list[FailedItem]:
        """The dead letters, oldest id first."""
        result = []
        for item_id, suffixes in sorted(self.entries(self.failed).items(), key=lambda e: id_key(e[0])):
            if SIDECAR_SUFFIX not in suffixes:
                continue
            try:
                sidecar = json.loads((self.failed / f"{item_id}{SIDECAR_SUFFIX}").read_bytes())
                if not isinstance(sidecar, dict):
                    raise ValueError("not a JSON object")
            except FileNotFoundError:
                continue  # re-queued meanwhile
            except (OSError, ValueError) as exc:
                sidecar = {"reason": f"unreadable sidecar: {exc}"}
            spooled = sidecar.get(SIDECAR_SPOOL_KEY)
            sop_instance_uid = str(spooled.get("sop_instance_uid", "")) if isinstance(spooled, dict) else ""
            result.append(FailedItem(item_id, sop_instance_uid, str(sidecar.get("reason", "")), sidecar))
        return result

    def requeue_items(self, ids: list[ItemId] | None) -> list[ItemId]:
        """Rename dead letters (``None``: all) into ``requeue/``: ``.dcm`` then ``.json``.

        Unknown ids raise ``KeyError`` before anything is moved.
        """
        failed, requeue = self.failed, self.requeue
        known = {i for i, suffixes in self.entries(failed).items() if SIDECAR_SUFFIX in suffixes}
        targets = sorted(known, key=id_key) if ids is None else list(dict.fromkeys(ids))
        unknown = [i for i in targets if i not in known]
        if unknown:
            raise KeyError(f"no dead letter with id {', '.join(unknown)} in {failed} (see `sr2fhir spool failed`)")
        try:
            moved = []
            for item_id in targets:
                with contextlib.suppress(FileNotFoundError):  # already moved by an interrupted requeue
                    os.rename(failed / f"{item_id}{DATA_SUFFIX}", requeue / f"{item_id}{DATA_SUFFIX}")
                with contextlib.suppress(FileNotFoundError):  # a concurrent requeue was faster
                    os.rename(failed / f"{item_id}{SIDECAR_SUFFIX}", requeue / f"{item_id}{SIDECAR_SUFFIX}")
                    moved.append(item_id)
            if moved:
                fsync_dir(requeue)
                fsync_dir(failed)
        except OSError as exc:
            raise spool_error(exc, "cannot re-queue dead letters") from exc
        return moved

    def requeued(self) -> list[tuple[ItemId, Path, Path]]:
        """Complete entries of ``requeue/`` as (old id, payload path, sidecar path), oldest
        first; a lone ``.json`` (its item already taken, rule 5) is removed on the way."""
        found = []
        for old_id, suffixes in sorted(self.entries(self.requeue).items(), key=lambda entry: id_key(entry[0])):
            data_path = self.requeue / f"{old_id}{DATA_SUFFIX}"
            sidecar_path = self.requeue / f"{old_id}{SIDECAR_SUFFIX}"
            if SIDECAR_SUFFIX not in suffixes:
                continue  # the CLI is moving it right now, or was interrupted doing so
            if DATA_SUFFIX not in suffixes:
                sidecar_path.unlink(missing_ok=True)
                continue
            found.append((old_id, data_path, sidecar_path))
        return found
