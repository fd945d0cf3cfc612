"""Person Observer Name (TID 1002, PNAME DCM 121008) -> dicom-participant-person Practitioner.name.

A DICOM PN has up to three component groups separated by "=" (PS3.5 6.2.1.2): alphabetic,
ideographic, phonetic, each ``family^given^middle^prefix^suffix``. The profile allows one
``Practitioner.name`` (0..1), so the name is the first non-empty group; an ideographic or phonetic
name is marked with the iso21090-EN-representation extension (IDE / SYL), and the groups that
do not fit are listed in ``MappingResult.skipped``.
"""

from __future__ import annotations

import json
from io import BytesIO

import pydicom
import pytest
from pydicom.dataelem import RawDataElement

from mapping import map_sr
from tests.support import sr_builders as sr
from tests.support.bundle_queries import one, resources

EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"
ALPHABETIC = {"family": "Yamada", "given": ["Tarou"]}
IDEOGRAPHIC = {"extension": [{"url": EN_REPRESENTATION, "valueCode": "IDE"}], "family": "山田", "given": ["太郎"]}
PHONETIC = {"extension": [{"url": EN_REPRESENTATION, "valueCode": "SYL"}],
            "family": "やまだ", "given": ["たろう"]}
UTF8 = "ISO_IR 192"
JIS = ["", "ISO 2022 IR 87"]  # ASCII + JIS X 0208 (kanji, kana) with ISO 2022 escapes


def report(person_observer: str, charset: str | list[str] = UTF8):
    group = sr.measurement_group("1410", measurements=[sr.num_item(sr.LENGTH, "19.80", sr.MM)])
    return sr.measurement_report([group], person_observer=person_observer, specific_character_set=charset)


def mapped(person_observer: str, charset: str | list[str] = UTF8):
    result = map_sr(report(person_observer, charset))
    return result.bundle, [str(note) for note in result.skipped]


def names(bundle: dict) -> list[dict]:
    return one(bundle, "dicom-participant-person")["name"]


def test_three_group_japanese_name_keeps_the_alphabetic_name_and_notes_the_other_groups():
    bundle, skipped = mapped(JAPANESE)
    assert names(bundle) == [ALPHABETIC]
    assert [note for note in skipped if "(DCM,121008)" in note] == [
        "1.3 (DCM,121008): ideographic and phonetic component groups not mapped: "
        "dicom-participant-person allows one Practitioner.name, given the alphabetic group"]


def test_empty_alphabetic_group_gives_the_ideographic_name_without_delimiters():
    bundle, skipped = mapped("=山田^太郎")
    practitioner = one(bundle, "dicom-participant-person")
    assert practitioner["name"] == [IDEOGRAPHIC]
    assert "=" not in json.dumps(practitioner, ensure_ascii=False)
    assert "^" not in json.dumps(practitioner, ensure_ascii=False)
    assert not [note for note in skipped if "(DCM,121008)" in note]


@pytest.mark.parametrize(("person_observer", "expected", "note"), [
    ("=山田^太郎=やまだ^たろう", IDEOGRAPHIC, "phonetic component group not mapped"),
    ("==やまだ^たろう", PHONETIC, None),
], ids=["ideographic-and-phonetic", "phonetic-only"])
def test_first_non_empty_group_is_the_name(person_observer, expected, note):
    bundle, skipped = mapped(person_observer)
    assert names(bundle) == [expected]
    notes = [n for n in skipped if "(DCM,121008)" in n]
    assert [note in n for n in notes] == ([True] if note else [])


def test_plain_alphabetic_name_keeps_every_component():
    bundle, skipped = mapped("Doe^Jane^M^Dr^Jr")
    assert names(bundle) == [{"family": "Doe", "given": ["Jane", "M"], "prefix": ["Dr"], "suffix": ["Jr"]}]
    assert not [note for note in skipped if "(DCM,121008)" in note]


@pytest.mark.parametrize("person_observer", ["^^^^", "^ ^=^^", "=^"],
                         ids=["carets", "blank-groups", "empty-ideographic"])
def test_name_without_any_component_gives_no_practitioner(person_observer):
    bundle, skipped = mapped(person_observer)
    assert resources(bundle, "dicom-participant-person") == []
    assert all("performer" not in r for r in resources(bundle, resource_type="Observation"))
    assert "1.3 (DCM,121008): Person Observer Name has no name component: no Practitioner" in skipped


def test_text_valued_name_still_goes_to_name_text():
    ds = report("Rad^Ann")
    item = next(i for i in ds.ContentSequence if i.get("ValueType") == "PNAME")
    del item.PersonName
    item.ValueType = "TEXT"
    item.TextValue = "Dr. Ann Rad = 山田"
    assert names(map_sr(ds).bundle) == [{"text": "Dr. Ann Rad = 山田"}]


@pytest.mark.parametrize("charset", [UTF8, JIS], ids=["utf8", "iso2022-ir87"])
@pytest.mark.parametrize(("person_observer", "expected"), [
    (JAPANESE, [ALPHABETIC]),
    ("=山田^太郎", [IDEOGRAPHIC]),
    ("==やまだ^たろう", [PHONETIC]),
], ids=["three-groups", "ideographic-only", "phonetic-only"])
def test_part10_round_trip_gives_the_same_names(charset, person_observer, expected):
    ds = report(person_observer, charset)
    roundtrip = pydicom.dcmread(BytesIO(sr.to_part10_bytes(ds)))
    # Still raw bytes: the mapper's raw Content Sequence reader decodes the PN itself.
    assert isinstance(roundtrip.get_item("ContentSequence"), RawDataElement)
    assert names(map_sr(roundtrip).bundle) == names(map_sr(ds).bundle) == expected


@pytest.mark.conformance
def test_names_with_en_representation_validate(conformant):
    bundles = {}
    for label, person_observer, expected in [("three-groups", JAPANESE, ALPHABETIC),
                                             ("ideographic", "=山田^太郎=やまだ^たろう", IDEOGRAPHIC),
                                             ("phonetic", "==やまだ^たろう", PHONETIC),
                                             ("all-components", "Doe^Jane^M^Dr^Jr", None)]:
        bundle, _ = mapped(person_observer)
        if expected is not None:
            assert names(bundle) == [expected]
        bundles[label] = bundle
    conformant(**bundles)
