"""The transaction Bundle: fullUrls, requests, determinism, idempotent ids, write modes."""

from __future__ import annotations

import re
from io import BytesIO

import pydicom
import pytest

from mapping import MappingOptions, map_sr, serialize
from mapping.bundle import BundleBuilder, identifier_query
from mapping.ids import content_id, report_scoped_id
from tests.support import sr_builders as sr
from tests.support.bundle_queries import one, resources

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def rich_report(**kwargs):
    region = sr.scoord_item("POLYLINE", [1, 2, 3, 4], sr.source_image(sr.CT_IMAGE_STORAGE, sr.uid("ct:1")))
    group = sr.measurement_group("1410", items=[region], finding_site=sr.finding_site_item(sr.LUNG),
                                 algorithm=sr.algorithm_items("Finder", "1"),
                                 measurements=[sr.num_item(sr.LENGTH, 4, sr.MM, observation_uid=sr.uid("n1"))],
                                 qualitative=[sr.code_item(sr.MALIGNANCY, sr.HIGHLY_SUSPICIOUS)])
    return sr.measurement_report([group], **kwargs)


def all_references(value):
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value["reference"]
        for child in value.values():
            yield from all_references(child)
    elif isinstance(value, list):
        for child in value:
            yield from all_references(child)


def test_transaction_with_urn_uuid_full_urls_and_put_requests():
    bundle = map_sr(rich_report()).bundle
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    urls = [entry["fullUrl"] for entry in bundle["entry"]]
    assert len(urls) == len(set(urls))
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert UUID.match(resource["id"])
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
        assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
        assert resource["meta"]["profile"][0].startswith("http://hl7.org/fhir/uv/dicom-sr/StructureDefinition/")


def test_put_mode_references_are_literal_type_id_of_entries_that_come_first():
    bundle = map_sr(rich_report()).bundle
    position = {entry["request"]["url"]: i for i, entry in enumerate(bundle["entry"])}
    for index, entry in enumerate(bundle["entry"]):
        references = list(all_references(entry["resource"]))
        assert not [r for r in references if r.startswith("urn:")]  # splittable: no placeholders
        assert all(position[r] < index for r in references)  # referenced resources first
    assert list(all_references(bundle))


@pytest.mark.parametrize("write_mode", ["conditional", "conditional-update"])
def test_conditional_mode_references_are_full_urls_of_entries_that_come_first(write_mode):
    bundle = map_sr(rich_report(), MappingOptions(write_mode=write_mode)).bundle
    position = {entry["fullUrl"]: i for i, entry in enumerate(bundle["entry"])}
    references = list(all_references(bundle))
    assert references
    for index, entry in enumerate(bundle["entry"]):
        assert all(position[r] < index for r in all_references(entry["resource"]))


def test_same_input_gives_byte_identical_output():
    first = serialize(map_sr(rich_report()).bundle)
    reread = pydicom.dcmread(BytesIO(sr.to_part10_bytes(rich_report())))
    assert serialize(map_sr(reread).bundle) == first
    assert serialize(map_sr(reread).bundle) == first


def test_resending_an_sr_yields_the_same_ids_and_another_sr_new_ones():
    ids = [e["fullUrl"] for e in map_sr(rich_report()).bundle["entry"]]
    again = [e["fullUrl"] for e in map_sr(rich_report()).bundle["entry"]]
    other = map_sr(rich_report(sop_instance_uid=sr.uid("another-sr"))).bundle
    assert ids == again
    observation_ids = {r["id"] for r in resources(other, resource_type="Observation")}
    assert observation_ids.isdisjoint(ids_of(map_sr(rich_report()).bundle, "Observation"))


def ids_of(bundle, resource_type):
    return {r["id"] for r in resources(bundle, resource_type=resource_type)}


def test_ids_are_uuid5_of_report_path_and_kind():
    bundle = map_sr(rich_report()).bundle
    group = one(bundle, "imaging-measurement-group")
    assert group["id"] == report_scoped_id(sr.uid("sr"), "1.5.1", "imaging-measurement-group")
    site = one(bundle, "dicom-sr-finding-site")
    assert site["id"] == content_id("finding-site", site)  # shared: keyed on all it says


def test_conditional_mode_posts_with_if_none_exist_on_an_identifier():
    bundle = map_sr(rich_report(), MappingOptions(write_mode="conditional")).bundle
    for entry in bundle["entry"]:
        resource, request = entry["resource"], entry["request"]
        assert "id" not in resource
        assert request["method"] == "POST" and request["url"] == resource["resourceType"]
        system, value = request["ifNoneExist"].removeprefix("identifier=").split("|", 1)
        assert {"system": system, "value": value} in [
            {"system": i.get("system"), "value": i["value"]} for i in resource["identifier"]]
    site = one(bundle, "dicom-sr-finding-site")
    put_site = one(map_sr(rich_report()).bundle, "dicom-sr-finding-site")
    # Keyed on the content-derived id, not on the Tracking UID that another site may share.
    assert next(e for e in bundle["entry"] if e["resource"] is site)["request"]["ifNoneExist"] == (
        f"identifier=urn:ietf:rfc:3986|urn:uuid:{put_site['id']}")
    equipment = one(bundle, "dicom-general-equipment")
    # The Device profiles allow one identifier: a Device with a Device UID keys on it.
    assert next(e for e in bundle["entry"] if e["resource"] is equipment)["request"]["ifNoneExist"] == (
        f"identifier={equipment['identifier'][0]['system']}|{equipment['identifier'][0]['value']}")


def test_conditional_mode_keys_match_put_ids_and_full_urls_differ_from_identifier_values():
    put = map_sr(rich_report()).bundle
    conditional = map_sr(rich_report(), MappingOptions(write_mode="conditional")).bundle
    keys = [e["request"]["ifNoneExist"].split("|", 1)[1] for e in conditional["entry"]]
    put_keys = [e["fullUrl"] for e in put["entry"]]
    natural = {i: k for i, k in enumerate(keys) if not k.startswith("urn:uuid:")}
    assert [k for i, k in enumerate(keys) if i not in natural] == [k for i, k in enumerate(put_keys) if i not in natural]
    full_urls = {e["fullUrl"] for e in conditional["entry"]}
    assert full_urls.isdisjoint(keys)  # a server rewriting fullUrl strings must not touch the keys


@pytest.mark.parametrize("write_mode", ["put", "conditional", "conditional-update"])
def test_bundles_are_json_serialisable_utf8(write_mode):
    report = rich_report(person_observer="Łukasz^Zoë")
    text = serialize(map_sr(report, MappingOptions(write_mode=write_mode)).bundle).decode("utf-8")
    assert "Łukasz" in text


def test_conditional_update_mode_puts_on_the_same_identifier_conditional_mode_posts_on():
    conditional = map_sr(rich_report(), MappingOptions(write_mode="conditional")).bundle
    update = map_sr(rich_report(), MappingOptions(write_mode="conditional-update")).bundle
    assert [e["fullUrl"] for e in update["entry"]] == [e["fullUrl"] for e in conditional["entry"]]
    for entry, posted in zip(update["entry"], conditional["entry"], strict=True):
        resource, request = entry["resource"], entry["request"]
        assert "id" not in resource
        assert resource == posted["resource"]  # the same identifier is carried, the same references
        assert request == {"method": "PUT", "url": f"{resource['resourceType']}?{posted['request']['ifNoneExist']}"}


def test_conditional_update_urls_escape_search_characters_and_encode_the_query():
    builder = BundleBuilder("conditional-update")
    key = {"system": "http://example.org/ids", "value": "a|b,c$d\\e f&g#h+i%jé"}
    reference = builder.add({"resourceType": "Device", "id": "x", "identifier": [key]}, key_identifier=key)
    (entry,) = builder.build()["entry"]
    assert entry["fullUrl"] == reference and reference.startswith("urn:uuid:")
    assert entry["request"]["url"] == (
        "Device?identifier=http://example.org/ids|a\\|b\\,c\\$d\\\\e%20f%26g%23h%2Bi%25j%C3%A9")
    assert identifier_query({"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"}) == (
        "identifier=urn:ietf:rfc:3986|urn:uuid:1")
