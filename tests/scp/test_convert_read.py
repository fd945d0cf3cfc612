"""How ``sr2fhir convert`` reads a file: ``check_every_element`` rejects exactly what a full
``Dataset.walk`` rejects, leaves the Content Sequence raw for ``map_sr``'s fast reader, and the
Bundles are those of the daemon's reader (``map_sr(dcmread(bytes))``).
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from mapping import MappingOptions, map_sr, serialize
from scp.commands.convert import ConvertError, convert_file, convert_to_json, read_sr
from scp.commands.element_check import check_every_element
from tests.support import sr_builders as sr

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_BYTES = (REPO / "examples" / "measurement-report.dcm").read_bytes()
CONTENT_SEQUENCE = 0x0040A730


def _walk_fails(data: bytes) -> bool:
    ds = pydicom.dcmread(BytesIO(data))
    try:
        ds.walk(lambda _ds, _elem: None)
    except Exception:  # noqa: BLE001 - any failure is the verdict being compared
        return True
    return False


def _check_fails(data: bytes) -> bool:
    ds = pydicom.dcmread(BytesIO(data))
    try:
        check_every_element(ds)
    except Exception:  # noqa: BLE001
        return True
    return False


def _readable(data: bytes) -> bool:
    try:
        pydicom.dcmread(BytesIO(data))
    except Exception:  # noqa: BLE001 - dcmread itself refuses: nothing to compare
        return False
    return True


def _scoord_report() -> Dataset:
    (ct, ct_1), = sr.ct_image_refs(1)
    group = sr.measurement_group(items=[sr.scoord_item("POLYLINE", [1, 2, 3, 4, 5, 6, 1, 2], sr.source_image(ct, ct_1))],
                                 measurements=[sr.num_item(sr.LENGTH, "12.5", sr.MM), sr.num_item(sr.AREA, 3, sr.MM2)])
    return sr.measurement_report([group])


class TestSameVerdictAsAFullDecode:
    @pytest.mark.parametrize("seed", range(4))
    def test_random_corruptions_fail_exactly_when_walk_fails(self, seed: int) -> None:
        """Overwrite bytes of the dataset (not the preamble or File Meta) with random values:
        whenever pydicom can still open the file, both checks agree."""
        rng = random.Random(seed)
        start = 132 + 12 + int.from_bytes(EXAMPLE_BYTES[140:144], "little")
        compared = failures = 0
        for _ in range(120):
            data = bytearray(EXAMPLE_BYTES)
            for _ in range(rng.choice((1, 1, 2, 4))):
                data[rng.randrange(start, len(data))] = rng.randrange(256)
            if not _readable(bytes(data)):
                continue
            walk_fails = _walk_fails(bytes(data))
            assert _check_fails(bytes(data)) == walk_fails, f"seed {seed}: {bytes(data).hex()}"
            compared += 1
            failures += walk_fails
        assert compared > 60 and failures > 0  # the corruptions did reach values pydicom refuses

    @pytest.mark.parametrize("length", [2, 6, 7])
    def test_float_value_of_a_wrong_byte_length_deep_in_the_tree(self, length: int) -> None:
        header = b"\x70\x00\x22\x00FL"  # (0070,0022) Graphic Data, 32 bytes
        # Defined-length sequences around it would no longer add up: make them undefined first.
        data = sr.to_part10_bytes(sr.with_undefined_lengths(_scoord_report()))
        at = data.index(header)
        broken = data[:at + 6] + length.to_bytes(2, "little") + data[at + 8:at + 8 + length] + data[at + 8 + 32:]
        assert _walk_fails(broken)
        assert _check_fails(broken)

    def test_undecodable_value_in_an_element_the_mapping_never_reads(self) -> None:
        """The mapping would just convert this file; convert refuses it, as it did with walk."""
        ds = sr.with_undefined_lengths(_scoord_report())
        ds.ContentSequence[0].ReferencedSegmentNumber = 1  # (0062,000B) US: no use to the mapping here
        good = b"\x62\x00\x0b\x00US\x02\x00\x01\x00"
        data = sr.to_part10_bytes(ds)
        assert data.count(good) == 1
        broken = data.replace(good, b"\x62\x00\x0b\x00US\x03\x00\x01\x00\x00")
        assert not _walk_fails(data) and not _check_fails(data)
        assert _walk_fails(broken) and _check_fails(broken)

    @pytest.mark.parametrize("transfer_syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
    def test_other_transfer_syntaxes_are_checked_too(self, tmp_path: Path, transfer_syntax: str) -> None:
        ds = _scoord_report()
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        path = tmp_path / "other.dcm"
        ds.save_as(path, enforce_file_format=True)
        read_sr(path)
        assert not _check_fails(path.read_bytes())


class TestTheDaemonsReader:
    def test_the_content_sequence_stays_raw_for_the_mapping(self, tmp_path: Path) -> None:
        path = tmp_path / "large.dcm"
        path.write_bytes(sr.to_part10_bytes(sr.large_report(3, 2)))
        ds = read_sr(path)
        assert isinstance(ds.get_item(CONTENT_SEQUENCE), RawDataElement)

    @pytest.mark.parametrize("build", [lambda: sr.large_report(3, 2), _scoord_report,
                                       lambda: sr.with_undefined_lengths(_scoord_report())])
    def test_bundles_are_the_daemons(self, tmp_path: Path, build: Callable[[], Dataset]) -> None:
        data = sr.to_part10_bytes(build())
        path = tmp_path / "report.dcm"
        path.write_bytes(data)
        options = MappingOptions()
        daemon = map_sr(pydicom.dcmread(BytesIO(data)), options)
        converted = convert_file(path, options)
        assert serialize(converted.result.bundle) == serialize(daemon.bundle)
        assert converted.result.skipped == daemon.skipped

    def test_a_truncated_file_is_refused_before_mapping(self, tmp_path: Path) -> None:
        path = tmp_path / "cut.dcm"
        path.write_bytes(EXAMPLE_BYTES[:-1])
        with pytest.raises(ConvertError, match="truncated|unreadable"):
            read_sr(path)


def test_converting_a_large_report_leaves_no_reference_cycles(tmp_path: Path) -> None:
    """``settle_collector`` runs the cyclic collector rarely because a conversion frees all it
    made by reference counting alone."""
    path = tmp_path / "large.dcm"
    path.write_bytes(sr.to_part10_bytes(sr.large_report(6, 3)))
    convert_to_json(path, MappingOptions(), 2)  # first use: caches, lazily imported modules
    gc.collect()
    gc.disable()
    try:
        outcome = convert_to_json(path, MappingOptions(), 2)
        del outcome
        assert gc.collect() == 0
    finally:
        gc.enable()
