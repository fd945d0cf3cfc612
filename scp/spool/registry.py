"""The registry of delivered reports and of the reports they replace, in ``spool.db``.

An amended or corrected SR names the SRs it replaces in its Predecessor Documents Sequence
(0040,A360). To retire a predecessor's resources on the FHIR server once its successor is
there (:mod:`scp.delivery.supersession`), the worker must remember what each SR delivered,
across restarts, for as long as an amendment may come (``spool.remember_delivered_days``).

Two tables (schema version 3, see :mod:`scp.spool.db`)::

    delivered_reports   one row per delivered SR SOP Instance UID: delivered_us (time of the
                        last delivery, microseconds since the epoch), entries (the Bundle
                        entries a successor may have to rewrite, as compressed JSON; opaque
                        here: :mod:`scp.delivery.supersession` decides what they are)
    supersessions       one row per (predecessor UID, successor UID): carried (compressed
                        JSON list of the resource keys the successor itself wrote), state,
                        recorded_us

A supersession's ``state``:

- ``awaiting``: the successor is delivered, the predecessor never was (or is forgotten). If it
  arrives later, its own Bundle goes out with the resources already retired (and the row
  becomes ``done``).
- ``pending``: both are delivered; the predecessor's resources are still to be rewritten.
- ``done``: rewritten, or the predecessor was delivered already retired.
- ``failed``: the server refused the rewrite (logged; an operator's matter).

Crash safety: the rows are written in the same transaction that removes the successor's
item from the spool (:meth:`scp.spool.SpoolConsumer.settle`), so a successor is never settled
without its supersessions being on record; a ``pending`` row is carried out after a restart.

Every statement runs inside the caller's write transaction, or through :func:`~.db.retrying`.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .db import REGISTRY_TABLES, retrying

__all__ = [
    "REGISTRY_TABLES",
    "DeliveredReport",
    "Supersession",
    "SupersessionState",
    "forget_before",
    "forget_oldest",
    "pending_supersessions",
    "record_delivered",
    "set_supersession_state",
    "supersessions_of",
]

SupersessionState = Literal["awaiting", "pending", "done", "failed"]



def _pack(data: bytes) -> bytes:
    return zlib.compress(data, 6)


def _unpack(blob: bytes) -> bytes:
    return zlib.decompress(blob)


@dataclass(frozen=True, slots=True)
class DeliveredReport:
    """What to record when an SR's item is settled as delivered.

    ``entries``: the JSON (bytes) of the entries a successor may have to rewrite.
    ``predecessors``: the SOP Instance UIDs it replaces, each recorded with ``carried``
    (JSON bytes: the keys of the resources it wrote itself). ``retired_for``: the
    successors whose supersession its Bundle already carried out (it was delivered with
    its resources retired); those rows become ``done``.
    """

    sop_instance_uid: str
    entries: bytes
    delivered_us: int
    predecessors: Sequence[str] = ()
    carried: bytes = b"[]"
    retired_for: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Supersession:
    """One row of ``supersessions``; ``entries`` is the predecessor's (None when unknown)."""

    predecessor_uid: str
    successor_uid: str
    carried: bytes
    state: SupersessionState
    recorded_us: int
    entries: bytes | None = None


def record_delivered(conn: sqlite3.Connection, report: DeliveredReport) -> list[Supersession]:
    """Record ``report`` (inside the write transaction that settles its item).

    Returns its supersessions as now recorded (``pending`` where the predecessor is known,
    ``awaiting`` where not; a ``done`` one stays done).
    """
    conn.execute(
        "INSERT INTO delivered_reports (sop_instance_uid, delivered_us, entries) VALUES (?, ?, ?)"
        " ON CONFLICT (sop_instance_uid) DO UPDATE SET delivered_us = excluded.delivered_us,"
        " entries = excluded.entries",
        (report.sop_instance_uid, report.delivered_us, _pack(report.entries)))
    for successor in report.retired_for:
        conn.execute("UPDATE supersessions SET state = 'done' WHERE predecessor_uid = ? AND successor_uid = ?",
                     (report.sop_instance_uid, successor))
    # A successor settled while this report was in flight found it unknown: it is known now.
    conn.execute("UPDATE supersessions SET state = 'pending' WHERE predecessor_uid = ? AND state = 'awaiting'",
                 (report.sop_instance_uid,))
    carried = _pack(report.carried)
    for predecessor in report.predecessors:
        if predecessor == report.sop_instance_uid:
            continue
        known = conn.execute("SELECT 1 FROM delivered_reports WHERE sop_instance_uid = ?", (predecessor,)).fetchall()
        conn.execute(
            "INSERT INTO supersessions (predecessor_uid, successor_uid, carried, state, recorded_us)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (predecessor_uid, successor_uid) DO UPDATE SET"
            " carried = excluded.carried, recorded_us = excluded.recorded_us,"
            " state = CASE WHEN supersessions.state = 'done' THEN 'done' ELSE excluded.state END",
            (predecessor, report.sop_instance_uid, carried, "pending" if known else "awaiting", report.delivered_us))
    if not report.predecessors:
        return []
    marks = ",".join("?" * len(report.predecessors))
    rows = conn.execute(
        f"SELECT predecessor_uid, successor_uid, carried, state, recorded_us FROM supersessions"
        f" WHERE successor_uid = ? AND predecessor_uid IN ({marks})",
        (report.sop_instance_uid, *report.predecessors)).fetchall()
    return [Supersession(p, s, _unpack(c), state, at) for p, s, c, state, at in rows]


def supersessions_of(conn: sqlite3.Connection, predecessor_uid: str) -> list[Supersession]:
    """Every recorded successor of ``predecessor_uid`` (any state), oldest first."""
    rows = retrying(lambda: conn.execute(
        "SELECT predecessor_uid, successor_uid, carried, state, recorded_us FROM supersessions"
        " WHERE predecessor_uid = ? ORDER BY recorded_us", (predecessor_uid,)).fetchall())
    return [Supersession(p, s, _unpack(c), state, at) for p, s, c, state, at in rows]


def pending_supersessions(conn: sqlite3.Connection, limit: int, predecessors: Sequence[str] | None = None
                          ) -> list[Supersession]:
    """Up to ``limit`` ``pending`` supersessions, oldest first, with the predecessor's entries
    (only those of ``predecessors`` when given)."""
    query = ("SELECT s.predecessor_uid, s.successor_uid, s.carried, s.state, s.recorded_us, d.entries"
             " FROM supersessions s JOIN delivered_reports d ON d.sop_instance_uid = s.predecessor_uid"
             " WHERE s.state = 'pending'")
    params: tuple = ()
    if predecessors is not None:
        if not predecessors:
            return []
        query += f" AND s.predecessor_uid IN ({','.join('?' * len(predecessors))})"
        params = tuple(predecessors)
    rows = retrying(lambda: conn.execute(query + " ORDER BY s.recorded_us LIMIT ?", (*params, limit)).fetchall())
    return [Supersession(p, s, _unpack(c), state, at, _unpack(e)) for p, s, c, state, at, e in rows]


def set_supersession_state(conn: sqlite3.Connection, predecessor_uid: str, successor_uid: str,
                           state: SupersessionState) -> None:
    """Set a supersession's state (inside a write transaction)."""
    conn.execute("UPDATE supersessions SET state = ? WHERE predecessor_uid = ? AND successor_uid = ?",
                 (state, predecessor_uid, successor_uid))


def forget_before(conn: sqlite3.Connection, before_us: int, limit: int) -> int:
    """Delete up to ``limit`` delivered reports and settled supersessions (not ``pending``)
    recorded before ``before_us`` (inside a write transaction); returns how many rows went."""
    removed = conn.execute(
        "DELETE FROM delivered_reports WHERE rowid IN"
        " (SELECT rowid FROM delivered_reports WHERE delivered_us < ? ORDER BY delivered_us LIMIT ?)",
        (before_us, limit)).rowcount
    removed += conn.execute(
        "DELETE FROM supersessions WHERE rowid IN (SELECT rowid FROM supersessions"
        " WHERE state != 'pending' AND recorded_us < ? LIMIT ?)", (before_us, limit)).rowcount
    return removed


def forget_oldest(conn: sqlite3.Connection, count: int) -> int:
    """Delete the ``count`` oldest delivered reports (inside a write transaction): what the
    spool does when its file system is short of space, so that the registry never takes
    the room of received instances. Returns how many went."""
    return conn.execute(
        "DELETE FROM delivered_reports WHERE rowid IN"
        " (SELECT rowid FROM delivered_reports ORDER BY delivered_us LIMIT ?)", (count,)).rowcount
