"""split_transaction: transactions of bounded size whose references still resolve."""

from __future__ import annotations

import copy
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fhir_client.chunks import (
    ComponentTooLargeError,
    UnaddressableReferenceError,
    entry_address,
    split_transaction,
)

MODES = ("put", "conditional", "conditional-update")
PLACEHOLDER = re.compile(r"^urn:(uuid|oid):")


def entry(index: int, mode: str, references: list[int], resource_type: str = "Observation") -> dict:
    """Entry ``index`` written as the mapping writes it in ``mode``, referencing ``references``."""
    rid = f"id-{index}"
    resource = {"resourceType": resource_type, "hasMember": [{"reference": ref(target, mode)} for target in references]}
    if mode == "put":
        resource["id"] = rid
        return {"fullUrl": f"urn:uuid:{rid}", "resource": resource, "request": {"method": "PUT", "url": f"{resource_type}/{rid}"}}
    resource["identifier"] = [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{rid}"}]
    query = f"identifier=urn:ietf:rfc:3986|urn:uuid:{rid}"
    request = ({"method": "POST", "url": resource_type, "ifNoneExist": query} if mode == "conditional"
               else {"method": "PUT", "url": f"{resource_type}?{query}"})
    return {"fullUrl": f"urn:uuid:entry-{index}", "resource": resource, "request": request}


def ref(target: int, mode: str) -> str:
    return f"Observation/id-{target}" if mode == "put" else f"urn:uuid:entry-{target}"


def transaction(mode: str, graph: list[list[int]]) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [entry(i, mode, out) for i, out in enumerate(graph)]}


def reachable(graph: list[list[int]]) -> list[set[int]]:
    found = []
    for start in range(len(graph)):
        seen, todo = {start}, [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        found.append(seen)
    return found


def largest_cycle_component(graph: list[list[int]]) -> int:
    reach = reachable(graph)
    return max(sum(1 for j in range(len(graph)) if j in reach[i] and i in reach[j]) for i in range(len(graph)))


def references_of(resource: dict) -> list[str]:
    return [member["reference"] for member in resource["hasMember"]]


# -- examples ---------------------------------------------------------------------------------


def test_a_bundle_that_fits_is_the_only_chunk():
    bundle = transaction("put", [[], [0], [0, 1]])
    assert split_transaction(bundle, 3) == [bundle]


@pytest.mark.parametrize("mode", MODES)
def test_a_chain_is_cut_in_order_and_crossing_references_name_the_target(mode):
    bundle = transaction(mode, [[], [0], [1], [2], [3]])
    chunks = split_transaction(bundle, 2)
    assert [[e["fullUrl"] for e in c["entry"]] for c in chunks] == [
        [e["fullUrl"] for e in bundle["entry"][i:i + 2]] for i in (0, 2, 4)]
    assert all(c["resourceType"] == "Bundle" and c["type"] == "transaction" for c in chunks)
    crossing = references_of(chunks[1]["entry"][0]["resource"])  # entry 2 -> entry 1, in chunk 0
    inside = references_of(chunks[1]["entry"][1]["resource"])  # entry 3 -> entry 2, same chunk
    expected = {"put": "Observation/id-1",
                "conditional": "Observation?identifier=urn:ietf:rfc:3986|urn:uuid:id-1",
                "conditional-update": "Observation?identifier=urn:ietf:rfc:3986|urn:uuid:id-1"}[mode]
    assert crossing == [expected]
    assert inside == [ref(2, mode)]


def test_a_reference_circle_stays_in_one_chunk():
    # 1 <-> 2 reference each other; 3 references both; 0 is alone.
    bundle = transaction("conditional", [[], [2], [1], [1, 2]])
    chunks = split_transaction(bundle, 2)
    assert [[e["fullUrl"] for e in c["entry"]] for c in chunks] == [
        ["urn:uuid:entry-0"], ["urn:uuid:entry-1", "urn:uuid:entry-2"], ["urn:uuid:entry-3"]]


def test_a_circle_larger_than_the_limit_names_the_setting_and_the_size_needed():
    bundle = transaction("put", [[1], [2], [0], []])
    with pytest.raises(ComponentTooLargeError) as raised:
        split_transaction(bundle, 2)
    assert "fhir.max_entries_per_request" in str(raised.value) and "at least 3" in str(raised.value)
    assert raised.value.size == 3


def test_referenced_entries_that_come_later_in_the_bundle_are_moved_before():
    bundle = transaction("put", [[2], [], []])  # 0 -> 2: 2 goes first
    chunks = split_transaction(bundle, 1)
    # Among the entries free to go, the earliest in the Bundle goes first.
    assert [c["entry"][0]["fullUrl"] for c in chunks] == ["urn:uuid:id-1", "urn:uuid:id-2", "urn:uuid:id-0"]


def test_a_placeholder_reference_to_a_plain_post_cannot_cross_chunks():
    bundle = transaction("conditional", [[], [0]])
    del bundle["entry"][0]["request"]["ifNoneExist"]
    with pytest.raises(UnaddressableReferenceError, match="fhir.max_entries_per_request"):
        split_transaction(bundle, 1)


def test_fragments_and_absolute_full_urls():
    bundle = transaction("put", [[], [0]])
    bundle["entry"][0]["fullUrl"] = "https://fhir.example/R5/Observation/id-0"
    bundle["entry"][1]["resource"]["hasMember"] = [{"reference": "https://fhir.example/R5/Observation/id-0"},
                                                   {"reference": "Observation/id-0#contained"}]
    chunks = split_transaction(bundle, 1)
    assert [c["entry"][0]["fullUrl"] for c in chunks] == ["https://fhir.example/R5/Observation/id-0", "urn:uuid:id-1"]
    conditional = transaction("conditional", [[], [0]])
    conditional["entry"][1]["resource"]["hasMember"][0]["reference"] += "#part"
    chunks = split_transaction(conditional, 1)
    assert references_of(chunks[1]["entry"][0]["resource"]) == [
        "Observation?identifier=urn:ietf:rfc:3986|urn:uuid:id-0#part"]


def test_entry_addresses():
    assert entry_address(entry(0, "put", [])) == "Observation/id-0"
    assert entry_address(entry(0, "conditional", [])) == "Observation?identifier=urn:ietf:rfc:3986|urn:uuid:id-0"
    assert entry_address(entry(0, "conditional-update", [])) == "Observation?identifier=urn:ietf:rfc:3986|urn:uuid:id-0"
    assert entry_address({"request": {"method": "POST", "url": "Observation"}}) is None


def test_bad_arguments():
    with pytest.raises(ValueError):
        split_transaction(transaction("put", [[]]), 0)
    with pytest.raises(ValueError):
        split_transaction({"resourceType": "Bundle", "type": "batch", "entry": []}, 5)


def test_a_long_chain_does_not_hit_the_recursion_limit():
    graph = [[i - 1] if i else [] for i in range(3000)]
    chunks = split_transaction(transaction("put", graph), 50)
    assert len(chunks) == 60


# -- properties -------------------------------------------------------------------------------


@st.composite
def graphs(draw) -> list[list[int]]:
    """Random reference graphs: mostly backward references (as the mapping writes), some
    forward ones, so cycles of every size appear."""
    size = draw(st.integers(1, 25))
    graph = []
    for i in range(size):
        backward = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        forward = draw(st.lists(st.integers(0, size - 1), max_size=1)) if draw(st.integers(0, 5)) == 0 else []
        graph.append(sorted({*backward, *forward} - {i}))
    return graph


@settings(max_examples=300, deadline=None)
@given(graph=graphs(), mode=st.sampled_from(MODES), max_entries=st.integers(1, 8))
# Two circles, the smaller one first: the error names the larger, so the setting it asks for
# is enough for both (it named the first it met).
@example(graph=[[1], [0], [13], [], [], [0, 2], [], [], [], [], [], [], [], [5]], mode="put", max_entries=1)
def test_split_properties(graph, mode, max_entries):
    bundle = transaction(mode, graph)
    before = copy.deepcopy(bundle)
    needed = largest_cycle_component(graph)
    if needed > max_entries:
        with pytest.raises(ComponentTooLargeError) as raised:
            split_transaction(bundle, max_entries)
        assert raised.value.size == needed
        return
    chunks = split_transaction(bundle, max_entries)
    assert bundle == before, "the input was modified"
    assert split_transaction(bundle, max_entries) == chunks, "not deterministic"
    assert all(1 <= len(c["entry"]) <= max_entries for c in chunks)
    # Every entry exactly once, request and fullUrl as they were.
    sent = [e for c in chunks for e in c["entry"]]
    assert sorted(e["fullUrl"] for e in sent) == sorted(e["fullUrl"] for e in bundle["entry"])
    index_of = {e["fullUrl"]: int(e["fullUrl"].rsplit("-", 1)[1]) for e in sent}
    chunk_of = {index_of[e["fullUrl"]]: n for n, c in enumerate(chunks) for e in c["entry"]}
    for n, c in enumerate(chunks):
        for e in c["entry"]:
            source = index_of[e["fullUrl"]]
            assert e["request"] == bundle["entry"][source]["request"]
            references = references_of(e["resource"])
            for target, written in zip(graph[source], references, strict=True):
                # Referenced entries are in an earlier chunk or the same one.
                assert chunk_of[target] <= n
                if chunk_of[target] == n:
                    assert written == ref(target, mode)  # inside a chunk nothing changes
                else:
                    assert not PLACEHOLDER.match(written), "a crossing reference is still a placeholder"
                    assert written == entry_address(bundle["entry"][target])
    # Members of one reference circle share a chunk.
    reach = reachable(graph)
    for i in range(len(graph)):
        for j in reach[i]:
            if i in reach[j]:
                assert chunk_of[i] == chunk_of[j]
    if max_entries >= len(graph):
        assert chunks == [bundle]
