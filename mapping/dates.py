"""DICOM DA / TM / DT -> FHIR ``dateTime`` (keeps the source's precision) and ``instant``.

An ``instant`` needs seconds and a zone; a ``dateTime`` may stop at the year, month or day,
and needs seconds and a zone only once it has a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

__all__ = ["Timing", "to_instant", "to_timing", "parse_offset", "zone"]


@dataclass(frozen=True, slots=True)
class Timing:
    """When an observation was made (``effectiveDateTime``) and when it was issued (``issued``)."""

    effective: str
    issued: str

_DT = re.compile(
    r"^(?P<Y>\d{4})(?P<m>\d{2})?(?P<d>\d{2})?(?P<H>\d{2})?(?P<M>\d{2})?(?P<S>\d{2})?"
    r"(?:\.(?P<f>\d{1,6}))?(?P<z>[+-]\d{4})?$"
)


def zone(name: str) -> tzinfo:
    """The tzinfo for an IANA name (validated by ``MappingOptions``)."""
    return timezone.utc if name == "UTC" else ZoneInfo(name)


def parse_offset(value: str | None) -> tzinfo | None:
    """Timezone Offset From UTC (0008,0201), ``+hhmm`` / ``-hhmm``, or None when absent/invalid."""
    if not value:
        return None
    match = re.fullmatch(r"([+-])(\d{2})(\d{2})", value.strip())
    if not match:
        return None
    sign = 1 if match.group(1) == "+" else -1
    hours, minutes = int(match.group(2)), int(match.group(3))
    if hours > 14 or minutes > 59:
        return None
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def to_instant(dicom_datetime: str, default_zone: tzinfo) -> str | None:
    """A DICOM DT (or DA + TM concatenated) as an ISO 8601 instant, or None when unreadable.

    Missing month/day default to 01, missing time parts to 0; a DT without an offset is in
    ``default_zone``.
    """
    match = _DT.match(dicom_datetime.strip().replace(":", ""))
    if not match:
        return None
    parts = match.groupdict()
    try:
        fraction = parts["f"] or ""
        moment = datetime(
            int(parts["Y"]), int(parts["m"] or 1), int(parts["d"] or 1),
            int(parts["H"] or 0), int(parts["M"] or 0), int(parts["S"] or 0),
            int(fraction.ljust(6, "0")) if fraction else 0,
        )
    except ValueError:
        return None
    offset = parse_offset(parts["z"]) if parts["z"] else None
    if parts["z"] and offset is None:
        return None
    moment = moment.replace(tzinfo=offset or default_zone)
    return moment.isoformat(timespec="milliseconds" if fraction else "seconds")



def to_timing(dicom_datetime: str, default_zone: tzinfo, issued_fallback: str) -> Timing | None:
    """A DICOM DT as ``effectiveDateTime`` with the precision it has, plus an ``issued`` instant.

    "2024" stays "2024" and "202403" becomes "2024-03": a dateTime may be partial, and inventing
    January 1st at midnight would state a precision the SR never had. A value with a time
    becomes a full instant (FHIR needs seconds once there is a time, so missing minutes and
    seconds are 0). ``issued`` is an instant: it takes the value when it has a time, else
    ``issued_fallback`` (the document's Content Date/Time). None when unreadable.
    """
    match = _DT.match(dicom_datetime.strip().replace(":", ""))
    if not match:
        return None
    parts = match.groupdict()
    if parts["H"]:
        instant = to_instant(dicom_datetime, default_zone)
        return Timing(instant, instant) if instant is not None else None
    year, month, day = parts["Y"], parts["m"], parts["d"]
    try:  # validate the calendar fields that are present
        datetime(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None
    if parts["z"] and parse_offset(parts["z"]) is None:
        return None
    effective = "-".join(p for p in (year, month, day) if p)
    return Timing(effective, issued_fallback)
