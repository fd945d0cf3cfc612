"""``mapping.serialize`` (orjson): Decimals with their own digits, byte for byte what simplejson
wrote before, strict JSON (no NaN/Infinity), compact and indented."""

from __future__ import annotations

import json
from decimal import Decimal
from io import BytesIO

import pydicom
import pytest
import simplejson
from pydicom.valuerep import DSfloat

from mapping import map_sr, serialize
from tests.support import sr_builders as sr

EXACT = ["1.10", "0.000012500", "1E+400", "-1E-400", "1.5E-7", "-0", "0E-7", "123456789012345678901234567890.123",
         "2.50E+12"]


def _simplejson(value: object, indent: int | None) -> bytes:
    """What ``serialize`` wrote before orjson: the reference for byte equality."""
    separators = (",", ":") if indent is None else (",", ": ")
    return simplejson.dumps(value, ensure_ascii=False, indent=indent, separators=separators, use_decimal=True,
                            allow_nan=False).encode("utf-8")


@pytest.mark.parametrize("text", EXACT)
def test_a_decimal_is_written_with_its_own_digits(text: str) -> None:
    out = serialize({"valueQuantity": {"value": Decimal(text)}})
    assert out == b'{"valueQuantity":{"value":' + str(Decimal(text)).encode() + b"}}"
    parsed = json.loads(out, parse_float=Decimal, parse_int=Decimal)["valueQuantity"]["value"]
    assert parsed.as_tuple() == Decimal(text).as_tuple()


def test_1_10_stays_1_10_indented_too() -> None:
    assert serialize({"value": Decimal("1.10"), "unit": "mm"}, indent=2) == b'{\n  "value": 1.10,\n  "unit": "mm"\n}'


@pytest.mark.parametrize("indent", [None, 2, 4])
def test_same_bytes_as_simplejson(indent: int | None) -> None:
    value = {"resourceType": "Bundle", "entry": [], "nested": {}, "list": [1, -2.5, 0.1, 1e16, 1e22, True, None],
             "text": 'é€😀 "quoted" \\ \x00\x1f \u2028', "numbers": [Decimal(t) for t in EXACT],
             "ds": DSfloat("1.5")}
    assert serialize(value, indent=indent) == _simplejson(value, indent)


FLOATS = [1e-05, 1e-7, 0.0001, 0.00009999, -1.768796209944412e-05, 2.3e-14, 1e22, 1e16, 5e-324,
          1.7976931348623157e308, 0.30000000000000004, -0.0, 0.0, DSfloat("1.5E-7")]


@pytest.mark.parametrize("indent", [None, 2])
def test_floats_are_spelled_as_simplejson_spelled_them(indent: int | None) -> None:
    """orjson writes 1e-5 or 0.00001768...; repr, and so the Bundles written before, 1e-05 and 1.768...e-05."""
    value = {"region": [{"coordinate": FLOATS}], "text": "Three-dimensional 0.00001 e-5", "n": Decimal("0.00002206")}
    assert serialize(value, indent=indent) == _simplejson(value, indent)
    assert json.loads(serialize(FLOATS)) == FLOATS


@pytest.mark.parametrize("text", ["pre-existing", "0.00001 mm", "2e-5"])
def test_texts_that_look_like_small_floats_stay_texts(text: str) -> None:
    assert serialize({"text": text, "value": 0.5}) == _simplejson({"text": text, "value": 0.5}, None)


@pytest.mark.parametrize("indent", [None, 2])
def test_a_large_report_is_byte_identical_to_simplejson(indent: int | None) -> None:
    bundle = map_sr(pydicom.dcmread(BytesIO(sr.to_part10_bytes(sr.large_report(4, 4))))).bundle
    assert serialize(bundle, indent=indent) == _simplejson(bundle, indent)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), Decimal("NaN"), Decimal("Infinity"),
                                   Decimal("-sNaN")])
def test_non_finite_numbers_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        serialize({"entry": [{"value": value}]})


def test_null_in_a_text_is_not_taken_for_a_nan() -> None:
    assert serialize({"text": "null", "value": 1.5}) == b'{"text":"null","value":1.5}'


def test_objects_that_are_not_json_are_refused() -> None:
    with pytest.raises(TypeError):
        serialize({"value": object()})
