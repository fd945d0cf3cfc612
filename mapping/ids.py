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

import hashlib
import json
import uuid

__all__ = ["NAMESPACE", "content_id", "report_scoped_id", "shared_id"]

# Fixed namespace for sr2fhir ids; changing it changes every id the project has ever written.
NAMESPACE = uuid.UUID("1c0f8a52-9d6e-5b1e-a3f0-5f2d8e7c4b19")
_NAMESPACE_BYTES = NAMESPACE.bytes


def report_scoped_id(sop_instance_uid: str, path: str, kind: str) -> str:
    """Id of a resource made from one content item (``path``) of one SR instance."""
    return _uuid5(f"sr|{sop_instance_uid}|{path}|{kind}")


def shared_id(kind: str, *identity: str) -> str:
    """Id of a resource identified by its own identity (Tracking UID, Device UID, ...)."""
    return _uuid5("|".join(("shared", kind, *identity)))


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(NAMESPACE, name))`` (RFC 4122 4.3) without building two UUID objects
    on the way: a large report asks for thousands of ids."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def content_id(kind: str, content: dict) -> str:
    """Id of a shared resource, keyed on its whole content (``id`` and ``meta`` aside)."""
    body = {key: value for key, value in content.items() if key not in ("id", "meta")}
    return shared_id(kind, json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str))
