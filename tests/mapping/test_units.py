"""UCUM codes as DICOM writes them -> valid UCUM (mapping.coding.ucum_code)."""

from __future__ import annotations

import pytest

from mapping.coding import ucum_code


@pytest.mark.parametrize(("dicom", "ucum"), [
    ("{SUVbw}g/ml", "g/ml{SUVbw}"),     # DICOM CID 85, dcmqi samples
    ("{SUVlbm}g/ml", "g/ml{SUVlbm}"),
    ("{a}{b}g/ml", "g/ml{a}{b}"),
    ("mg/{x}dl", "mg/dl{x}"),
    ("{a}g/{b}ml", "g/ml{b}{a}"),
])
def test_an_annotation_before_a_unit_symbol_moves_behind_it(dicom, ucum):
    assert ucum_code(dicom) == ucum


@pytest.mark.parametrize("code", ["mm", "1", "{ratio}", "{counts}/s", "g/ml{SUVbw}", "mm2", "[hnsf'U]", "10*3/uL"])
def test_valid_codes_are_unchanged(code):
    assert ucum_code(code) == code
