"""Vendor unit spellings -> the Radiation Dose Summary IG's units, with the value converted.

The IG ("Concepts mapping" in its background page) fixes one unit per component: ``mGy`` for
doses, ``mGy.cm`` for dose-length products, ``mGy.cm2`` for dose-area products, ``s`` for times,
``MBq`` for activities, ``cm3`` for volumes. RDSRs write what their vendor chose: UCUM
``Gy.m2`` (1 Gy.m2 = 10^7 mGy.cm2), ``dGy.cm2``, ``cGy.cm2``, and non-UCUM spellings such as
``mGycm`` or ``Gym2``. A unit code is parsed into (SI prefix, base unit, length prefix, length
exponent) and converted exactly (``Decimal``, powers of ten); a code that does not parse, or
measures another kind of quantity than the component, is refused with :class:`UnitProblem`:
never guessed.
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import Enum

__all__ = ["Dimension", "UnitProblem", "to_ig_unit", "plain_decimal"]


class Dimension(Enum):
    """The kinds of quantity the IG's components measure, with the IG's UCUM unit for each."""

    DOSE = "mGy"
    DOSE_LENGTH = "mGy.cm"
    DOSE_AREA = "mGy.cm2"
    TIME = "s"
    ACTIVITY = "MBq"
    VOLUME = "cm3"


class UnitProblem(ValueError):
    """A unit that cannot be converted to the component's IG unit (the message says why)."""


_PREFIX = {"": 0, "k": 3, "d": -1, "c": -2, "m": -3, "u": -6, "µ": -6, "μ": -6, "n": -9,
           "M": 6, "G": 9}
# <prefix>Gy, optionally times <prefix>m[2]; separators "." "*" "·" " " or none (mGycm, Gym2).
_GRAY = re.compile(r"^(?P<p>[kdcmuµμ]?)Gy(?:\s*[.*·x]?\s*(?P<lp>[dcmuµμ]?)(?P<metre>m)(?P<exp>\^?[12])?)?$")
_TIME = {"s": 0, "sec": 0, "ms": -3, "min": None, "h": None}
_TIME_FACTORS = {"min": Decimal(60), "h": Decimal(3600)}
_BECQUEREL = re.compile(r"^(?P<p>[kMGTm]?)Bq$")
_CURIE = re.compile(r"^(?P<p>[mµuμ]?)Ci$")
_CURIE_IN_MBQ = {"": Decimal(37000), "m": Decimal(37), "u": Decimal("0.037"), "µ": Decimal("0.037"),
                 "μ": Decimal("0.037")}
_VOLUME = {"cm3": Decimal(1), "ml": Decimal(1), "mL": Decimal(1), "l": Decimal(1000), "L": Decimal(1000),
           "dl": Decimal(100), "dL": Decimal(100), "mm3": Decimal("0.001")}


def to_ig_unit(value: Decimal, unit_code: str, dimension: Dimension) -> Decimal:
    """``value`` (in ``unit_code``) expressed in the IG unit of ``dimension``.

    Raises :class:`UnitProblem` when ``unit_code`` is unknown or of another dimension.
    """
    code = unit_code.strip()
    if dimension in (Dimension.DOSE, Dimension.DOSE_LENGTH, Dimension.DOSE_AREA):
        return _gray(value, code, dimension)
    if dimension is Dimension.TIME:
        return _time(value, code)
    if dimension is Dimension.ACTIVITY:
        return _activity(value, code)
    return _volume(value, code)


def _gray(value: Decimal, code: str, dimension: Dimension) -> Decimal:
    match = _GRAY.match(code)
    if match is None:
        raise UnitProblem(f"unit {code!r} is not a known spelling of a dose in gray "
                          f"(expected {dimension.value} or a convertible spelling such as Gy.m2, dGy.cm2, mGycm)")
    exponent = int((match.group("exp") or "1").lstrip("^")) if match.group("metre") else 0
    wanted = {Dimension.DOSE: 0, Dimension.DOSE_LENGTH: 1, Dimension.DOSE_AREA: 2}[dimension]
    if exponent != wanted:
        measured = {0: "a dose", 1: "a dose-length product", 2: "a dose-area product"}[exponent]
        raise UnitProblem(f"unit {code!r} measures {measured}, not the {dimension.value} this total is in")
    power = _PREFIX[match.group("p")] + 3  # gray prefix -> mGy
    if exponent:
        length_power = _PREFIX[match.group("lp") or ""] + 2  # metre prefix -> cm
        power += length_power * exponent
    return value.scaleb(power)


def _time(value: Decimal, code: str) -> Decimal:
    if code not in _TIME:
        raise UnitProblem(f"unit {code!r} is not a known unit of time (expected s, ms, min or h)")
    power = _TIME[code]
    return value.scaleb(power) if power is not None else value * _TIME_FACTORS[code]


def _activity(value: Decimal, code: str) -> Decimal:
    becquerel = _BECQUEREL.match(code)
    if becquerel is not None:
        return value.scaleb(_PREFIX[becquerel.group("p")] - 6)
    curie = _CURIE.match(code)
    if curie is not None:
        return value * _CURIE_IN_MBQ[curie.group("p")]
    raise UnitProblem(f"unit {code!r} is not a known unit of activity (expected MBq, Bq, kBq, GBq, mCi or uCi)")


def _volume(value: Decimal, code: str) -> Decimal:
    if code not in _VOLUME:
        raise UnitProblem(f"unit {code!r} is not a known unit of volume (expected cm3, ml or l)")
    return value * _VOLUME[code]


def plain_decimal(value: Decimal) -> Decimal:
    """``value`` without an exponent (2.4126E+3 -> 2412.6), keeping its significant digits.

    A FHIR decimal may have an exponent, but servers and readers expect plain numbers.
    """
    return Decimal(format(value, "f"))
