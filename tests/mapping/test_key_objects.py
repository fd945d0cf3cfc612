"""Key Object Selection (TID 2010) -> R5 ImagingSelection (``mapping.key_objects``).

One selection per referenced series, grouped by the evidence; the document's title, modifiers,
observers and description on each; rejection notes; R4 (``basic`` and ``omit``); bad inputs;
and every KOS Bundle through validate-ig and the HL7 validator engine (R5 and R4).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapping import MappingOptions, map_sr, serialize
from mapping.documents import DocumentKind
from mapping.errors import MissingContentItem
from mapping.ids import report_scoped_id
from mapping.r4 import from_basic, is_selection_basic
from tests.mapping.test_r4_definitions import check_bundle, r4_definitions  # noqa: F401 (fixture)
from tests.support import kos_builders as kos
from tests.support.conformance import SHARED, assert_conformant, require_shared
from tests.support.kos_builders import KeyObject, key_object_selection
from tests.support.sr_builders import COMPREHENSIVE_SR, SEGMENTATION_STORAGE, coded, text_item, uid

DCM = "http://dicom.nema.org/resources/ontology/DCM"
KOS_UID = uid("kos")
CT_SERIES, MR_SERIES, PRIOR_SERIES = uid("kos:series:ct"), uid("kos:series:mr"), uid("kos:series:prior")
STUDY, PRIOR_STUDY = uid("study"), uid("prior-study")


def _ct(name: str, **more) -> KeyObject:
    return KeyObject(uid(name), **more)


def _mr(name: str, **more) -> KeyObject:
    return KeyObject(uid(name), series_uid=MR_SERIES, sop_class_uid=kos.MR_IMAGE_STORAGE, **more)


def _prior(name: str) -> KeyObject:
    return KeyObject(uid(name), series_uid=PRIOR_SERIES, study_uid=PRIOR_STUDY)


def _map(ds: pydicom.Dataset, **options):
    return map_sr(ds, MappingOptions(**options))


def _resources(bundle: dict, resource_type: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def _selections(bundle: dict) -> list[dict]:
    return _resources(bundle, "ImagingSelection")


def _notes(result) -> list[str]:
    return [str(note) for note in result.skipped]


def _round_trip(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Through Part-10 bytes and back, as the daemon reads it."""
    from io import BytesIO
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))


def _several_series() -> pydicom.Dataset:
    return key_object_selection([_ct("ct-1"), _mr("mr-1", frames=(2, 5)), _ct("ct-2"), _mr("mr-2")])


class TestOneSelectionPerSeries:
    def test_instances_are_grouped_by_series_in_document_order(self):
        result = _map(_round_trip(_several_series()))
        assert result.kind is DocumentKind.KEY_OBJECT_SELECTION
        ct, mr = _selections(result.bundle)
        assert (ct["seriesUid"], mr["seriesUid"]) == (CT_SERIES, MR_SERIES)
        assert [i["uid"] for i in ct["instance"]] == [uid("ct-1"), uid("ct-2")]
        assert [i["uid"] for i in mr["instance"]] == [uid("mr-1"), uid("mr-2")]
        assert mr["instance"][0]["sopClass"] == {
            "system": "https://dicom.nema.org/medical/dicom/current/output/chtml/part04/sect_B.5",
            "code": kos.MR_IMAGE_STORAGE, "display": "MR Image Storage"}

    def test_each_selection_carries_the_document(self):
        result = _map(_several_series())
        for selection in _selections(result.bundle):
            assert selection["code"] == {"coding": [{"system": DCM, "code": "113000", "display": "Of Interest"}]}
            assert selection["status"] == "available"
            assert selection["identifier"] == [{"system": "urn:dicom:uid", "value": f"urn:oid:{KOS_UID}"}]
            assert selection["subject"] == {"type": "Patient", "identifier": {"value": "PID-1"}}
            assert selection["basedOn"][0]["identifier"]["value"] == "ACC-1"
            assert selection["issued"] == "2024-03-01T10:15:00+00:00"
            assert selection["studyUid"] == STUDY
            assert selection["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{STUDY}"
            assert "meta" not in selection  # no IG profile fits a KOS selection

    def test_issued_takes_the_timezone_offset(self):
        result = _map(key_object_selection([_ct("ct-1")], timezone_offset="+0100"))
        assert _selections(result.bundle)[0]["issued"] == "2024-03-01T10:15:00+01:00"

    def test_frames_become_subset(self):
        ds = key_object_selection([KeyObject(uid("enh-1"), sop_class_uid=kos.ENHANCED_CT_STORAGE, frames=(1, 3, 17))])
        (selection,) = _selections(_map(ds).bundle)
        assert selection["instance"] == [{"uid": uid("enh-1"), "sopClass": {
            "system": "https://dicom.nema.org/medical/dicom/current/output/chtml/part04/sect_B.5",
            "code": kos.ENHANCED_CT_STORAGE, "display": "Enhanced CT Image Storage"}, "subset": ["1", "3", "17"]}]

    def test_segment_numbers_of_a_segmentation_become_subset(self):
        segmentation = KeyObject(uid("seg"), sop_class_uid=SEGMENTATION_STORAGE, segments=(2,), frames=(4,))
        ds = key_object_selection([segmentation])
        result = _map(ds)
        assert _selections(result.bundle)[0]["instance"][0]["subset"] == ["2"]
        assert any("Referenced Frame Number (0008,1160) not mapped" in n for n in _notes(result))

    def test_a_twice_referenced_instance_is_merged(self):
        frames = [KeyObject(uid("enh-1"), frames=(1, 2)), KeyObject(uid("enh-1"), frames=(2, 5))]
        result = _map(key_object_selection(frames))
        assert _selections(result.bundle)[0]["instance"] == [{**_selections(result.bundle)[0]["instance"][0],
                                                              "subset": ["1", "2", "5"]}]
        assert any(n.startswith("1.2: instance referenced again") for n in _notes(result))
        whole = [KeyObject(uid("enh-1"), frames=(1, 2)), KeyObject(uid("enh-1"))]
        assert "subset" not in _selections(_map(key_object_selection(whole)).bundle)[0]["instance"][0]

    def test_several_studies_give_each_selection_its_study(self):
        ds = key_object_selection([_ct("ct-1"), _prior("prior-1"), _ct("ct-2")])
        current, prior = _selections(_map(ds).bundle)
        assert (current["studyUid"], current["seriesUid"]) == (STUDY, CT_SERIES)
        assert (prior["studyUid"], prior["seriesUid"]) == (PRIOR_STUDY, PRIOR_SERIES)
        assert prior["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{PRIOR_STUDY}"
        # The selection was made for the KOS's order, whatever study the images are in.
        assert prior["basedOn"] == current["basedOn"]

    def test_composite_and_waveform_references_are_instances(self):
        ds = key_object_selection([KeyObject(uid("sr"), sop_class_uid=COMPREHENSIVE_SR, value_type="COMPOSITE"),
                                   KeyObject(uid("ecg"), sop_class_uid=kos.ECG_12_LEAD_STORAGE, value_type="WAVEFORM")])
        (selection,) = _selections(_map(ds).bundle)
        assert [i["sopClass"]["code"] for i in selection["instance"]] == [COMPREHENSIVE_SR, kos.ECG_12_LEAD_STORAGE]

    def test_template_2010_in_another_sr_class_is_a_key_object_selection(self):
        result = _map(key_object_selection([_ct("ct-1")], sop_class_uid=COMPREHENSIVE_SR))
        assert result.kind is DocumentKind.KEY_OBJECT_SELECTION and len(_selections(result.bundle)) == 1

    def test_ids_are_deterministic_and_scoped_to_the_document(self):
        first, again = _map(_several_series()).bundle, _map(_round_trip(_several_series())).bundle
        assert serialize(first) == serialize(again)
        ct = _selections(first)[0]
        assert ct["id"] == report_scoped_id(KOS_UID, "1", f"key-object-selection|{STUDY}|{CT_SERIES}")
        other = _map(key_object_selection([_ct("ct-1")], sop_instance_uid=uid("another-kos"))).bundle
        assert _selections(other)[0]["id"] != ct["id"]

    @pytest.mark.parametrize("write_mode", ["conditional", "conditional-update"])
    def test_conditional_modes_key_each_selection_on_its_own_identifier(self, write_mode):
        bundle = _map(_several_series(), write_mode=write_mode).bundle
        keys = [e["request"].get("ifNoneExist") or e["request"]["url"] for e in bundle["entry"]]
        assert len(set(keys)) == len(keys) == 2
        for selection in _selections(bundle):  # the KOS identifier stays, the key is added
            assert selection["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{KOS_UID}"}
            assert selection["identifier"][1]["system"] == "urn:ietf:rfc:3986"

    def test_highdicom_document(self):
        document, images = kos.highdicom_key_object_selection()
        result = _map(_round_trip(document))
        ct, enhanced = _selections(result.bundle)
        assert [i["uid"] for i in ct["instance"]] == [images[0].SOPInstanceUID, images[1].SOPInstanceUID]
        assert enhanced["seriesUid"] == images[2].SeriesInstanceUID
        assert {r["resourceType"] for r in (e["resource"] for e in result.bundle["entry"])} == {
            "Practitioner", "Device", "ImagingSelection"}
        assert "Key images for the tumour board" in ct["text"]["div"]


class TestObserversAndDescription:
    def test_person_and_device_observers_are_performers(self):
        ds = key_object_selection([_ct("ct-1")], person_observer="Rad^Ann", device_observer_uid=uid("ai-node"),
                                  device_observer_name="Key Image AI")
        bundle = _map(ds).bundle
        (practitioner,), (device,) = _resources(bundle, "Practitioner"), _resources(bundle, "Device")
        assert practitioner["name"] == [{"family": "Rad", "given": ["Ann"]}]
        assert device["displayName"] == "Key Image AI"
        assert _selections(bundle)[0]["performer"] == [
            {"actor": {"reference": f"Practitioner/{practitioner['id']}"}},
            {"actor": {"reference": f"Device/{device['id']}"}}]

    def test_a_device_observer_that_is_the_equipment_is_the_equipment_device(self):
        ds = key_object_selection([_ct("ct-1")], device_observer_uid=uid("kos-device"))
        (device,) = _resources(_map(ds).bundle, "Device")
        assert device["meta"]["profile"][0].endswith("/dicom-general-equipment")
        assert device["identifier"][0]["value"] == f"urn:oid:{uid('kos-device')}"

    def test_no_observer_no_performer(self):
        bundle = _map(key_object_selection([_ct("ct-1")])).bundle
        assert "performer" not in _selections(bundle)[0]
        assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["ImagingSelection"]

    def test_description_is_the_narrative(self):
        ds = key_object_selection([_ct("ct-1")], description="Compare with prior <2023> & follow up\r\nSee series 3",
                                  descriptions=["Second\x1b remark"])
        (selection,) = _selections(_map(_round_trip(ds)).bundle)
        assert selection["text"] == {"status": "additional", "div": (
            '<div xmlns="http://www.w3.org/1999/xhtml"><p><b>Of Interest</b></p>'
            "<p>Compare with prior &lt;2023&gt; &amp; follow up<br/>See series 3</p><p>Second remark</p></div>")}

    def test_no_description_no_narrative(self):
        ds = key_object_selection([_ct("ct-1")], description="   ")
        assert "text" not in _selections(_map(ds).bundle)[0]

    def test_document_title_modifiers_are_categories(self):
        ds = key_object_selection([_ct("ct-1")], title=kos.REJECTED_FOR_QUALITY_REASONS,
                                  modifiers=[kos.IMAGE_ARTIFACTS])
        assert _selections(_map(ds).bundle)[0]["category"] == [
            {"coding": [{"system": DCM, "code": "111207", "display": "Image artifact(s)"}]}]

    def test_other_items_are_noted(self):
        result = _map(key_object_selection([_ct("ct-1")], language=True,
                                           extra_items=[text_item(coded("121106", "DCM", "Comment"), "x")]))
        assert "1.1 (DCM,121049): language of content not mapped" in " | ".join(_notes(result))
        assert "1.2 (DCM,121106): TEXT is not a TID 2010 item sr2fhir maps" in _notes(result)


class TestRejectionNotes:
    """Mapped as selections coded with the rejection title; nothing else is written or changed."""

    @pytest.mark.parametrize("title", kos.REJECTION_TITLES, ids=lambda t: t.CodeValue)
    def test_a_rejection_note_is_a_selection_coded_with_its_title(self, title):
        ds = key_object_selection([_ct("ct-1"), _mr("mr-1")], title=title, person_observer="Tech^Tom")
        bundle = _map(ds).bundle
        selections = _selections(bundle)
        assert len(selections) == 2
        for selection in selections:
            # What `ImagingSelection?code=http://dicom.nema.org/resources/ontology/DCM|<code>` matches.
            assert selection["code"]["coding"] == [{"system": DCM, "code": title.CodeValue,
                                                    "display": title.CodeMeaning}]
            assert selection["status"] == "available"  # the note is valid; the instances are what is rejected
        # Pure mapping: only this document's own resources, written by PUT; nothing deleted or patched.
        assert {e["request"]["method"] for e in bundle["entry"]} == {"PUT"}
        assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"ImagingSelection", "Practitioner"}

    def test_rejection_note_does_not_touch_resources_of_earlier_documents(self):
        earlier = _map(key_object_selection([_ct("ct-1")], sop_instance_uid=uid("kos-before"))).bundle
        rejection = _map(key_object_selection([_ct("ct-1")], title=kos.REJECTED_FOR_PATIENT_SAFETY_REASONS,
                                              sop_instance_uid=uid("rejection"))).bundle
        written = {e["request"]["url"] for e in rejection["entry"]}
        assert not written & {e["request"]["url"] for e in earlier["entry"]}
        assert _selections(earlier)[0]["code"]["coding"][0]["code"] == "113000"


class TestR4:
    def test_basic_carries_the_selection_losslessly(self, r4_definitions):
        ds = key_object_selection([_ct("ct-1"), _mr("mr-1", frames=(2,))], person_observer="Rad^Ann",
                                  description="Key images", modifiers=[kos.IMAGE_ARTIFACTS])
        r5 = _map(ds).bundle
        r4 = _map(ds, fhir_version="r4").bundle
        basics = [r for r in _resources(r4, "Basic") if is_selection_basic(r)]
        assert len(basics) == 2 and not _selections(r4)
        assert [from_basic(b) for b in basics] == _selections(r5)
        assert basics[0]["text"]["status"] == "additional"
        assert [e["request"]["url"].split("/")[0] for e in r4["entry"]] == ["Practitioner", "Basic", "Basic"]
        assert check_bundle(r4_definitions, r4) == []

    def test_omit_refuses_a_key_object_selection_with_the_setting_named(self):
        ds = key_object_selection([_ct("ct-1")])
        with pytest.raises(MissingContentItem, match=r"fhir\.r4_imaging_selection 'omit'.*Set "
                                                     r"fhir\.r4_imaging_selection to 'basic'") as raised:
            _map(ds, fhir_version="r4", r4_imaging_selection="omit")
        assert raised.value.path == "1"
        # R5 ignores the R4 setting.
        assert _selections(_map(ds, r4_imaging_selection="omit").bundle)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length .* exceeds")
class TestBadInput:
    def test_an_instance_absent_from_the_evidence_is_selected_without_study_and_series(self):
        ds = key_object_selection([_ct("ct-1"), _ct("stray")], evidence=[_ct("ct-1")])
        result = _map(ds)
        known, unknown = _selections(result.bundle)
        assert known["seriesUid"] == CT_SERIES
        assert [i["uid"] for i in unknown["instance"]] == [uid("stray")]
        assert not {"studyUid", "seriesUid", "derivedFrom"} & unknown.keys()
        assert (f"1.2: SOP Instance {uid('stray')} is not in the Current Requested Procedure Evidence Sequence "
                "(0040,A375): its study and series are unknown; selected without studyUid and seriesUid"
                ) in _notes(result)

    def test_no_evidence_at_all(self):
        result = _map(key_object_selection([_ct("ct-1"), _mr("mr-1")], evidence=[]))
        (selection,) = _selections(result.bundle)
        assert len(selection["instance"]) == 2 and "studyUid" not in selection
        assert sum("is not in the Current Requested Procedure Evidence" in n for n in _notes(result)) == 2

    def test_no_referenced_instance(self):
        ds = key_object_selection([], description="nothing selected")
        with pytest.raises(MissingContentItem, match=r"^1: Key Object Selection selects no instance that could be "
                                                     r"mapped: no readable IMAGE, COMPOSITE or WAVEFORM"):
            _map(ds)

    def test_unreadable_reference_uids(self):
        bad = [KeyObject("1.2.abc"), KeyObject("1." + "2" * 70), KeyObject(uid("ct-1"), sop_class_uid="CT image")]
        result = _map(key_object_selection(bad))
        (selection,) = _selections(result.bundle)
        assert selection["instance"] == [{"uid": uid("ct-1")}]
        notes = _notes(result)
        for path in ("1.1", "1.2"):
            assert (f"{path}: Referenced SOP Instance UID (0008,1155) is not a valid UID (dotted digits, at most 64 "
                    "characters: instance.uid is a FHIR id); reference not mapped") in notes
        assert "1.3: Referenced SOP Class UID (0008,1150) is not a valid UID; instance.sopClass left out" in notes
        assert not any("1.2.abc" in n for n in notes)  # an unchecked value is never echoed

    def test_only_unreadable_references(self):
        with pytest.raises(MissingContentItem, match=r"selects no instance.*\(1 item\(s\) skipped; first: 1\.1: "
                                                     r"Referenced SOP Instance UID \(0008,1155\) is not a valid UID"):
            _map(key_object_selection([KeyObject("not-a-uid")]))

    def test_reference_without_referenced_sop_sequence(self):
        ds = key_object_selection([_ct("ct-1"), _ct("ct-2")])
        del ds.ContentSequence[0].ReferencedSOPSequence
        result = _map(ds)
        assert [i["uid"] for i in _selections(result.bundle)[0]["instance"]] == [uid("ct-2")]
        assert "1.1: IMAGE: no Referenced SOP Sequence (0008,1199)" in _notes(result)

    def test_evidence_with_an_over_long_series_uid(self):
        long_series = "1." + "3" * 70
        ds = key_object_selection([KeyObject(uid("ct-1"), series_uid=long_series)])
        result = _map(ds)
        (selection,) = _selections(result.bundle)
        assert "seriesUid" not in selection and selection["studyUid"] == STUDY
        assert any("Series Instance UID that is not a valid UID of at most 64 characters" in n for n in _notes(result))

    def test_no_document_title(self):
        with pytest.raises(MissingContentItem, match=r"without a document title .*ImagingSelection\.code is mandatory"):
            _map(key_object_selection([_ct("ct-1")], title=None))


# Validators -----------------------------------------------------------------------------------

def _validation_cases() -> dict[str, pydicom.Dataset]:
    everything = dict(person_observer="Rad^Ann", device_observer_uid=uid("ai-node"), device_observer_name="AI",
                      description="Key images <for> the board\nline 2 & more", modifiers=[kos.IMAGE_ARTIFACTS],
                      language=True)
    cases = {
        "several-series": key_object_selection([_ct("ct-1"), _mr("mr-1", frames=(1, 2)), _prior("prior-1")],
                                               **everything),
        "equipment-observer": key_object_selection([_ct("ct-1")], device_observer_uid=uid("kos-device")),
        "absent-from-evidence": key_object_selection([_ct("ct-1"), _ct("stray")], evidence=[_ct("ct-1")]),
        "highdicom": kos.highdicom_key_object_selection()[0],
    }
    for title in kos.REJECTION_TITLES:
        cases[f"rejection-{title.CodeValue}"] = key_object_selection([_ct("ct-1"), _mr("mr-1")], title=title,
                                                                     person_observer="Tech^Tom")
    return cases


def _bundles(**options) -> dict[str, dict]:
    return {name: _map(ds, **options).bundle for name, ds in _validation_cases().items()}


@pytest.mark.conformance
@pytest.mark.parametrize("write_mode", ["put", "conditional", "conditional-update"])
def test_validate_ig_zero_errors(tmp_path, write_mode):
    assert_conformant({f"kos-{write_mode}-{name}": b for name, b in _bundles(write_mode=write_mode).items()}, tmp_path)


@pytest.mark.conformance
def test_r4_bundles_against_r4_core(r4_definitions):
    for write_mode in ("put", "conditional", "conditional-update"):
        for name, bundle in _bundles(write_mode=write_mode, fhir_version="r4").items():
            assert check_bundle(r4_definitions, bundle) == [], f"{write_mode} {name}"


@pytest.mark.conformance
def test_validator_engine_r5_and_r4(tmp_path):
    """No engine error but the kinds tests/mapping/test_validator_engine.py accepts (each KOS
    selection claims no profile, so the IG-slice errors listed there cannot even occur here)."""
    require_shared(SHARED / "spec" / "ig-json")
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.skip("java and mvn are needed for the HAPI validator engine")
    from tests.hapi_server.validator import validate_with_engine
    from tests.mapping.test_validator_engine import ACCEPTED_R4, ACCEPTED_R5

    def write(version: str, bundles: dict[str, dict]) -> list[Path]:
        paths = []
        for name, bundle in bundles.items():
            path = tmp_path / f"{version}-{name}.json"
            path.write_bytes(serialize(bundle))
            paths.append(path)
        return paths

    r5_paths, r4_paths = [], []
    for write_mode in ("put", "conditional-update"):
        r5_paths += write(f"r5-{write_mode}", _bundles(write_mode=write_mode))
        r4_paths += write(f"r4-{write_mode}", _bundles(write_mode=write_mode, fhir_version="r4"))
    r5_issues = validate_with_engine(r5_paths, "r5", SHARED / "spec" / "ig-json")
    r4_issues = validate_with_engine(r4_paths, "r4", xver_r5_for_r4=True)
    for issues, accepted, paths in ((r5_issues, ACCEPTED_R5, r5_paths), (r4_issues, ACCEPTED_R4, r4_paths)):
        assert {i["file"] for i in issues} == {str(p) for p in paths}  # every file was validated
        errors = [i for i in issues if i["severity"] in ("error", "fatal")
                  and not any(i["messageId"] == message_id and re.search(pattern, i["message"])
                              for message_id, pattern, _ in accepted)]
        assert not errors, "\n".join(f"{Path(i['file']).name} {i['location']}: [{i['messageId']}] {i['message']}"
                                     for i in errors[:30])


# Properties ------------------------------------------------------------------------------------

def _placed_key_object(image: int, frames: list[int]) -> KeyObject:
    """Image ``image`` of series ``image // 3``, in study ``series % 2``: an instance lives in one place."""
    series = image // 3
    return KeyObject(uid(f"prop:image:{image}"), series_uid=uid(f"prop:series:{series}"),
                     study_uid=uid(f"prop:study:{series % 2}"), frames=tuple(frames))


# (reference, whether the evidence lists it): references may repeat an instance, with other frames.
_key_objects = st.lists(st.tuples(st.builds(_placed_key_object, st.integers(0, 8),
                                            st.lists(st.integers(1, 9), max_size=3, unique=True)),
                                  st.booleans()), min_size=1, max_size=10)


@settings(max_examples=60, deadline=None)
@given(entries=_key_objects)
def test_every_instance_is_selected_once_under_its_own_series(entries):
    """Whatever the mix of series, studies, frames, repeats and evidence gaps: each referenced
    instance is in exactly one selection, whose study and series are the instance's (absent when
    the evidence does not list it), each (study, series) is one selection, and ids are unique."""
    objects = [obj for obj, _ in entries]
    listed = [obj for obj, in_evidence in entries if in_evidence]
    where = {obj.sop_instance_uid: (obj.study_uid, obj.series_uid) for obj in listed}
    selections = _selections(_map(key_object_selection(objects, evidence=listed)).bundle)
    seen = [i["uid"] for s in selections for i in s["instance"]]
    assert sorted(seen) == sorted({obj.sop_instance_uid for obj in objects})
    keys = [(s.get("studyUid"), s.get("seriesUid")) for s in selections]
    assert len(set(keys)) == len(keys)
    assert len({s["id"] for s in selections}) == len(selections)
    for selection in selections:
        for instance in selection["instance"]:
            assert (selection.get("studyUid"), selection.get("seriesUid")) == where.get(instance["uid"], (None, None))
