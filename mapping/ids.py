"""Deterministic resource ids: UUIDv5 over the identity of what a resource stands for.

Resending an SR yields the same ids, so ``PUT Type/id`` is idempotent. Per-report things use
``report_scoped_id(sop_instance_uid, path, kind)``. Things shared between reports (a tracked
lesion, a device, an algorithm) use ``content_id(kind, content)``: the id is a function of
everything the resource says, so reports that say the same meet on one resource, and a report
that says something else (another finding site under the same Tracking UID, other algorithm
parameters under the same name and version, a software upgrade under the same Device UID)
gets its own resource instead of overwriting the one earlier reports point at.
"""

from __future__ import annotations

import json
import uuid

__all__ = ["NAMESPACE", "content_id", "report_scoped_id", "shared_id"]

# Fixed namespace for sr2fhir ids; changing it changes every id the project has ever written.
NAMESPACE = uuid.UUID("1c0f8a52-9d6e-5b1e-a3f0-5f2d8e7c4b19")


def report_scoped_id(sop_instance_uid: str, path: str, kind: str) -> str:
    """Id of a resource made from one content item (``path``) of one SR instance."""
    return str(uuid.uuid5(NAMESPACE, f"sr|{sop_instance_uid}|{path}|{kind}"))


def shared_id(kind: str, *identity: str) -> str:
    """Id of a resource identified by its own identity (Tracking UID, Device UID, ...)."""
    return str(uuid.uuid5(NAMESPACE, "|".join(("shared", kind, *identity))))


def content_id(kind: str, content: dict) -> str:
    """Id of a shared resource, keyed on its whole content (``id`` and ``meta`` aside)."""
    body = {key: value for key, value in content.items() if key not in ("id", "meta")}
    return shared_id(kind, json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str))
