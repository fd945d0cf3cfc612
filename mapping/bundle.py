"""Collect resources into one FHIR transaction Bundle.

Every entry has a ``urn:uuid:`` fullUrl built from the resource's deterministic id, so
entries reference each other inside the transaction. ``put`` mode writes ``PUT Type/<id>``;
``conditional`` mode writes ``POST`` with ``ifNoneExist`` on an identifier: the resource's
natural one (Tracking UID, Device UID) or, failing that, the deterministic id as a
``urn:ietf:rfc:3986`` identifier, so both modes key a resource on the same identity.
"""

from __future__ import annotations

import json
import uuid

from .ids import NAMESPACE
from .options import WriteMode

__all__ = ["BundleBuilder", "URI_SYSTEM", "serialize"]

URI_SYSTEM = "urn:ietf:rfc:3986"


class BundleBuilder:
    """Accumulates entries in creation order; the first resource added under an id wins."""

    __slots__ = ("_write_mode", "_entries")

    def __init__(self, write_mode: WriteMode = "put") -> None:
        self._write_mode = write_mode
        self._entries: dict[str, dict] = {}

    def __contains__(self, full_url: str) -> bool:
        return full_url in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, resource: dict, *, natural_identifier: dict | None = None) -> str:
        """Add ``resource`` (which has ``resourceType`` and ``id``); return its fullUrl.

        ``natural_identifier`` must be one of ``resource["identifier"]``; conditional mode
        keys ``ifNoneExist`` on it.
        """
        resource_id = resource["id"]
        if self._write_mode == "put":
            full_url = f"urn:uuid:{resource_id}"
        else:
            # Not the identifier's own value: some servers rewrite every string equal to a
            # fullUrl in a transaction, not only references, which would corrupt the key.
            full_url = f"urn:uuid:{uuid.uuid5(NAMESPACE, f'entry|{resource_id}')}"
        if full_url in self._entries:
            return full_url
        resource_type = resource["resourceType"]
        if self._write_mode == "put":
            request = {"method": "PUT", "url": f"{resource_type}/{resource_id}"}
        else:
            identifier = natural_identifier
            if identifier is None:
                identifier = {"system": URI_SYSTEM, "value": f"urn:uuid:{resource_id}"}
                resource.setdefault("identifier", []).append(identifier)
            del resource["id"]
            request = {
                "method": "POST",
                "url": resource_type,
                "ifNoneExist": f"identifier={identifier['system']}|{identifier['value']}",
            }
        self._entries[full_url] = {"fullUrl": full_url, "resource": resource, "request": request}
        return full_url

    def build(self) -> dict:
        """The transaction Bundle as a plain JSON-able dict."""
        return {"resourceType": "Bundle", "type": "transaction", "entry": list(self._entries.values())}


def serialize(bundle: dict, *, indent: int | None = None) -> bytes:
    """UTF-8 JSON of a Bundle; deterministic (insertion order, no timestamps)."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(bundle, ensure_ascii=False, indent=indent, separators=separators).encode("utf-8")
