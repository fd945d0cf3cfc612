"""Split one transaction Bundle into several, for servers that cap a transaction's size.

Servers in the field limit the entries of a transaction (Medplum: 50 updates, 8 once a
conditional entry is present; Firely: 150-200; Azure: 500). :func:`split_transaction` cuts a
Bundle into transactions of at most ``max_entries`` entries each, to be sent in order:

- a referenced resource is in an earlier chunk than the resources referring to it, or in the
  same one; resources that reference each other in a circle (a strongly connected component of
  the reference graph) stay in one chunk, which must then hold them all
  (:class:`ComponentTooLargeError` otherwise);
- a reference that crosses chunks still resolves: a literal ``Type/id`` is left as it is; a
  ``urn:uuid:``/``urn:oid:`` fullUrl, which means nothing outside its own transaction, becomes
  the target's own address: ``Type/id`` for ``PUT Type/id``, the conditional reference
  ``Type?<query>`` for a conditional update (``PUT Type?<query>``) or a conditional create
  (``POST`` with ``ifNoneExist``), which FHIR servers resolve inside a transaction ("conditional
  references", FHIR R5 http.html#trules). A placeholder reference to a plain ``POST`` cannot
  cross chunks (:class:`UnaddressableReferenceError`);
- entries keep their order where the references allow it, and the result depends on nothing
  but the Bundle and ``max_entries``: the same input gives the same chunks.

Pure functions over plain dicts; the input is never modified (resources whose references are
rewritten are copied).
"""

from __future__ import annotations

import copy
import heapq
import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "ComponentTooLargeError",
    "SplitError",
    "UnaddressableReferenceError",
    "entry_address",
    "split_transaction",
]

SETTING = "fhir.max_entries_per_request"
"""The setting that bounds chunks: named in every error that asks the operator to change it."""

_PLACEHOLDER = re.compile(r"urn:(uuid|oid):", re.ASCII)
_LITERAL_TAIL = re.compile(r"([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(/_history/[^/]+)?$", re.ASCII)


class SplitError(ValueError):
    """The Bundle cannot be split into transactions of at most ``max_entries`` entries."""


class ComponentTooLargeError(SplitError):
    """Resources that reference each other in a circle are more than one transaction may hold."""

    def __init__(self, size: int, max_entries: int) -> None:
        self.size = size
        self.max_entries = max_entries
        super().__init__(
            f"{size} resources of this Bundle reference each other in a circle and must be sent in one "
            f"transaction, but {SETTING} is {max_entries}: set {SETTING} to at least {size}"
        )


class UnaddressableReferenceError(SplitError):
    """A reference would cross chunks to an entry that has no address outside its transaction."""


def split_transaction(bundle: dict[str, Any], max_entries: int) -> list[dict[str, Any]]:
    """The transaction ``bundle`` as transactions of at most ``max_entries`` entries each.

    Send them in the order returned. A Bundle that already fits is returned as the only chunk
    (the same object). Raises :class:`ComponentTooLargeError` when a reference circle is larger
    than ``max_entries``, :class:`UnaddressableReferenceError` when a reference that must cross
    chunks has nothing to point at, ``ValueError`` for ``max_entries`` < 1 or a Bundle that is not
    a transaction.
    """
    if max_entries < 1:
        raise ValueError(f"max_entries must be at least 1, not {max_entries}")
    if not (isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle" and bundle.get("type") == "transaction"):
        raise ValueError("split_transaction() takes a transaction Bundle")
    entries: list[dict[str, Any]] = list(bundle.get("entry") or [])
    if len(entries) <= max_entries:
        return [bundle]
    targets = _reference_targets(entries)
    components = _ordered_components(len(entries), targets)
    chunks: list[list[int]] = []
    largest = max(map(len, components), default=0)
    if largest > max_entries:  # the largest circle: the setting it names is then enough for all
        raise ComponentTooLargeError(largest, max_entries)
    for component in components:
        if not chunks or len(chunks[-1]) + len(component) > max_entries:
            chunks.append([])
        chunks[-1].extend(component)
    chunk_of = {index: number for number, chunk in enumerate(chunks) for index in chunk}
    head = {key: value for key, value in bundle.items() if key != "entry"}
    return [
        {**head, "entry": [_entry_in_chunk(entries, index, chunk_of, targets) for index in chunk]}
        for chunk in chunks
    ]


def entry_address(entry: dict[str, Any]) -> str | None:
    """Where an entry's resource can be referenced from outside its transaction: ``Type/id``
    for ``PUT Type/id``, ``Type?<query>`` for a conditional update or create; None for a plain
    ``POST`` (the server picks the id) or an entry without a request."""
    request = entry.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("url"), str):
        return None
    method, url = request.get("method"), request["url"]
    if method == "PUT":
        return url
    if method == "POST" and isinstance(request.get("ifNoneExist"), str) and request["ifNoneExist"]:
        return f"{url}?{request['ifNoneExist'].lstrip('?')}"
    return None


# -- the reference graph ---------------------------------------------------------------------


def _addresses(entries: list[dict[str, Any]]) -> dict[str, int]:
    """Every string by which a reference inside the Bundle can name an entry -> its index."""
    found: dict[str, int] = {}
    for index, entry in enumerate(entries):
        names = []
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and full_url:
            names.append(full_url)
            tail = _LITERAL_TAIL.search(full_url) if "://" in full_url else None
            if tail is not None:
                names.append(tail.group(1))
        resource = entry.get("resource")
        if isinstance(resource, dict) and isinstance(resource.get("id"), str) and isinstance(
                resource.get("resourceType"), str):
            names.append(f"{resource['resourceType']}/{resource['id']}")
        address = entry_address(entry)
        if address is not None and "?" not in address:
            names.append(address)
        for name in names:
            found.setdefault(name, index)
    return found


def _references(value: Any) -> Iterator[dict[str, Any]]:
    """Every Reference-like dict (one with a string ``reference``) inside ``value``."""
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value
        for child in value.values():
            yield from _references(child)
    elif isinstance(value, list):
        for child in value:
            yield from _references(child)


def _reference_targets(entries: list[dict[str, Any]]) -> list[dict[str, int]]:
    """Per entry: reference string (without ``#fragment``) -> index of the entry it names."""
    addresses = _addresses(entries)
    targets: list[dict[str, int]] = []
    for index, entry in enumerate(entries):
        named: dict[str, int] = {}
        for reference in _references(entry.get("resource")):
            target = reference["reference"].split("#", 1)[0]
            found = addresses.get(target)
            if found is not None and found != index:
                named[target] = found
        targets.append(named)
    return targets


def _ordered_components(count: int, targets: list[dict[str, int]]) -> list[list[int]]:
    """Strongly connected components (members in Bundle order), referenced ones first; among
    those free to go, the one holding the earliest entry (so a Bundle already in order stays so)."""
    edges = [sorted(set(named.values())) for named in targets]
    component_of = _tarjan(count, edges)
    members: dict[int, list[int]] = {}
    for index in range(count):
        members.setdefault(component_of[index], []).append(index)
    waiting_for = {c: set() for c in members}  # component -> components it references
    needed_by: dict[int, set[int]] = {c: set() for c in members}
    for index, out in enumerate(edges):
        for target in out:
            source_c, target_c = component_of[index], component_of[target]
            if source_c != target_c:
                waiting_for[source_c].add(target_c)
                needed_by[target_c].add(source_c)
    ready = [(members[c][0], c) for c, deps in waiting_for.items() if not deps]
    heapq.heapify(ready)
    ordered: list[list[int]] = []
    while ready:
        _, component = heapq.heappop(ready)
        ordered.append(members[component])
        for dependent in sorted(needed_by[component]):
            waiting_for[dependent].discard(component)
            if not waiting_for[dependent]:
                heapq.heappush(ready, (members[dependent][0], dependent))
    assert len(ordered) == len(members), "the condensation of a graph has no cycles"
    return ordered


def _tarjan(count: int, edges: list[list[int]]) -> list[int]:
    """Component number of each node (Tarjan's algorithm, iterative: Bundles may be long chains)."""
    index_of = [-1] * count
    low = [0] * count
    on_stack = [False] * count
    component = [-1] * count
    stack: list[int] = []
    counter = components = 0
    for root in range(count):
        if index_of[root] != -1:
            continue
        work = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index_of[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack[node] = True
            for next_position in range(position, len(edges[node])):
                target = edges[node][next_position]
                if index_of[target] == -1:
                    work.append((node, next_position + 1))
                    work.append((target, 0))
                    break
                if on_stack[target]:
                    low[node] = min(low[node], index_of[target])
            else:
                if low[node] == index_of[node]:
                    while True:
                        member = stack.pop()
                        on_stack[member] = False
                        component[member] = components
                        if member == node:
                            break
                    components += 1
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
    return component


# -- chunks ----------------------------------------------------------------------------------


def _entry_in_chunk(entries: list[dict[str, Any]], index: int, chunk_of: dict[int, int],
                    targets: list[dict[str, int]]) -> dict[str, Any]:
    """The entry as sent in its chunk: placeholder references to earlier chunks rewritten."""
    entry = entries[index]
    crossing = {reference: target for reference, target in targets[index].items()
                if chunk_of[target] != chunk_of[index] and _PLACEHOLDER.match(reference)}
    if not crossing:
        return entry
    rewritten = {}
    for reference, target in crossing.items():
        address = entry_address(entries[target])
        if address is None:
            raise UnaddressableReferenceError(
                f"entry {index} references entry {target} ({reference}), which must go in an earlier transaction "
                f"but has no address outside this one (a POST without ifNoneExist); raise {SETTING} or write it "
                "with PUT or a conditional request")
        rewritten[reference] = address
    resource = copy.deepcopy(entry["resource"])
    for found in _references(resource):
        target, hash_mark, fragment = found["reference"].partition("#")
        if target in rewritten:
            found["reference"] = rewritten[target] + hash_mark + fragment
    return {**entry, "resource": resource}
