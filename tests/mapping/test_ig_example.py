"""The IG's own test vector TV-1 (Example-MeasurementReport.json) as a structural test.

MAPPING.md §8.2: compare which resources, which links and which codes; not values (the
IG's example resources disagree with its SR on measurement values, Patient ID, dates and
some UIDs).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from pydicom.dataset import Dataset

from mapping import map_sr
from tests.support.bundle_queries import coding, deref, reference_to, one, profiles_of, resources
from tests.support.conformance import IG_EXAMPLE_SR, require_shared

SCT = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


@pytest.fixture(scope="module")
def tv1():
    data = json.loads(require_shared(IG_EXAMPLE_SR).read_text(encoding="utf-8"))
    # The JSON gives Accession Number's value as a string, not a list (MAPPING.md §8.1).
    data["00080050"]["Value"] = [data["00080050"]["Value"]]
    with pytest.warns(UserWarning, match="exceeds the maximum length of 64"):  # its 66-character UIDs
        ds = Dataset.from_json(data)
        result = map_sr(ds)
    return result


def test_skips_only_what_has_no_fhir_target(tv1):
    # Both were dropped without a word before: the 66-character source series UID cannot be a
    # FHIR id, and the IG gives Activity Session no target.
    assert [str(s) for s in tv1.skipped] == [
        "1.4.1.7 (DCM,121232): UID longer than 64 characters: cannot be a seriesUid (FHIR id)",
        "1.4.1.1 (NCIt,C67447): HAS OBS CONTEXT TEXT in a measurement group has no FHIR target in the IG",
    ]


def test_the_expected_resources(tv1, conformant):
    counts = Counter(p for r in resources(tv1.bundle) for p in profiles_of(r))
    assert counts == Counter({
        "dicom-general-equipment": 1, "dicom-participant-person": 1, "dicom-sr-finding-site": 1,
        "referenced-segment": 1, "algorithm-identification": 1, "imaging-measurement": 3,
        "imaging-qualitative-evaluation": 2, "imaging-measurement-group": 1,
    })
    conformant(tv1=tv1.bundle)


def test_group_codes_links_and_members(tv1):
    bundle = tv1.bundle
    group = one(bundle, "imaging-measurement-group")
    assert coding(group["code"]) == (SCT, "241053004")
    assert coding(group["valueCodeableConcept"]) == (SCT, "427359005")
    assert group["status"] == "final"
    assert group["category"][0]["coding"][0]["code"] == "125007"
    assert [profiles_of(deref(bundle, r)) for r in group["derivedFrom"]] == [["referenced-segment"]]
    assert deref(bundle, group["bodyStructure"]) is one(bundle, "dicom-sr-finding-site")
    assert deref(bundle, group["device"]) is one(bundle, "dicom-general-equipment")  # no group-level algorithm
    assert deref(bundle, group["performer"][0]) is one(bundle, "dicom-participant-person")
    members = [deref(bundle, r) for r in group["hasMember"]]
    assert [(profiles_of(m)[0], coding(m["code"])[1]) for m in members] == [
        ("imaging-measurement", "118565006"),
        ("imaging-measurement", "81827009"),
        ("imaging-measurement", "301898006"),
        ("imaging-qualitative-evaluation", "C45992"),
        ("imaging-qualitative-evaluation", "RID36042"),
    ]
    assert group["partOf"][0]["identifier"]["value"] == "urn:oid:1.2.840.113747.20080222.83311413144566317081790268995"
    assert group["basedOn"][0]["identifier"]["value"] == "ACSN-235813"


def test_measurements_use_their_own_algorithm_and_the_groups_selection(tv1):
    bundle = tv1.bundle
    algorithm = one(bundle, "algorithm-identification")
    assert algorithm["displayName"] == "pylidc" and algorithm["version"] == [{"value": "0.2.0"}]
    assert deref(bundle, algorithm["parent"]) is one(bundle, "dicom-general-equipment")
    segment_url = reference_to(bundle, one(bundle, "referenced-segment"))
    for measurement in resources(bundle, "imaging-measurement"):
        # TV-1's example 003 names the equipment although its NUM carries the algorithm (§9.13);
        # the NUM's own TID 4019 wins here, for all three.
        assert measurement["device"] == {"reference": reference_to(bundle, algorithm)}
        assert measurement["derivedFrom"] == [{"reference": segment_url}]
        assert measurement["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    assert [m["valueQuantity"]["code"] for m in resources(bundle, "imaging-measurement")] == ["mm3", "mm", "mm2"]


def test_qualitative_evaluations(tv1):
    bundle = tv1.bundle
    evaluations = resources(bundle, "imaging-qualitative-evaluation")
    assert [coding(e["code"]) for e in evaluations] == [
        ("http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl", "C45992"), ("http://radlex.org", "RID36042")]
    assert [coding(e["valueCodeableConcept"]) for e in evaluations] == [
        ("http://cancerimagingarchive.net", "105"), ("http://cancerimagingarchive.net", "905")]
    for evaluation in evaluations:
        assert evaluation["category"][0]["coding"][0]["code"] == "C0034375"
        assert deref(bundle, evaluation["device"]) is one(bundle, "dicom-general-equipment")


def test_referenced_segment_finding_site_and_practitioner(tv1):
    bundle = tv1.bundle
    segment = one(bundle, "referenced-segment")
    assert segment["code"]["coding"][0] == {"system": DCM, "code": "121191", "display": "Referenced Segment"}
    assert segment["instance"] == [{
        "uid": "1.2.840.113747.20080222.83311413144566317081790268995.2.1",
        "sopClass": {"system": "https://dicom.nema.org/medical/dicom/current/output/chtml/part04/sect_B.5",
                     "code": "1.2.840.10008.5.1.4.1.1.66.4", "display": "Segmentation Storage"},
        "subset": ["1"],
    }]
    site = one(bundle, "dicom-sr-finding-site")
    assert [i["value"] for i in site["identifier"]] == [
        "Nodule 1", "urn:oid:1.2.840.113747.20080222.83311413144566317081790268995.100"]
    assert coding(site["includedStructure"][0]["structure"]) == (SCT, "39607008")
    assert one(bundle, "dicom-participant-person")["name"] == [{"family": "RADIOLOGIST", "given": ["EXAMPLE"]}]
    equipment = one(bundle, "dicom-general-equipment")
    assert equipment["manufacturer"] == "Example Device Manufacturer"
    assert equipment["displayName"] == "Example Imaging Measurement Device"
