"""Deterministic resource ids: UUIDv5 over the identity of what a resource stands for.

Resending an SR yields the same ids, so ``PUT Type/id`` is idempotent. Per-report things use
``report_scoped_id(sop_instance_uid, path, kind)``; things shared between reports (a tracked
lesion, a device, an algorithm) use ``shared_id(kind, *identity)`` so reports meet on one
resource.
"""

from __future__ import annotations

import uuid

__all__ = ["NAMESPACE", "report_scoped_id", "shared_id"]

# Fixed namespace for sr2fhir ids; changing it changes every id the project has ever written.
NAMESPACE = uuid.UUID("1c0f8a52-9d6e-5b1e-a3f0-5f2d8e7c4b19")


def report_scoped_id(sop_instance_uid: str, path: str, kind: str) -> str:
    """Id of a resource made from one content item (``path``) of one SR instance."""
    return str(uuid.uuid5(NAMESPACE, f"sr|{sop_instance_uid}|{path}|{kind}"))


def shared_id(kind: str, *identity: str) -> str:
    """Id of a resource identified by its own identity (Tracking UID, Device UID, ...)."""
    return str(uuid.uuid5(NAMESPACE, "|".join(("shared", kind, *identity))))
