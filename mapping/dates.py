"""DICOM DA / TM / DT -> FHIR ``instant`` (seconds and a zone are mandatory there)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

__all__ = ["to_instant", "parse_offset", "zone"]

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

