"""Field types and validators shared by the settings models."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, IPvAnyNetwork

__all__ = ["AETitle", "Frozen", "LogLevel", "Network", "Port", "Seconds", "check_ae_title", "lower", "parse_network"]

MIB = 1024 * 1024


class Frozen(BaseModel):
    """Base of every settings model: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def check_ae_title(value: str) -> str:
    """PS3.5 §6.2 AE VR: 1-16 characters of the default repertoire, no backslash, no
    control characters; leading and trailing spaces are not significant (removed here)."""
    title = value.strip(" ")
    if not title:
        raise ValueError("must not be empty or all spaces")
    if len(title) > 16:
        raise ValueError(f"must be at most 16 characters (has {len(title)})")
    if "\\" in title:
        raise ValueError("must not contain a backslash")
    if any(not " " <= char <= "~" for char in title):
        raise ValueError("must contain only printable ASCII characters (no control characters)")
    return title


AETitle = Annotated[str, AfterValidator(check_ae_title)]
"""A DICOM Application Entity title, stripped of insignificant spaces."""

Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Port = Annotated[int, Field(ge=0, le=65535)]


def lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def parse_network(value: Any) -> Any:
    """``10.0.0.7`` (one address) or ``10.0.0.0/24`` (a network), IPv4 or IPv6; no host names."""
    if isinstance(value, (IPv4Network, IPv6Network)):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be an IP address or network, e.g. 10.0.0.7 or 10.0.0.0/24")
    text = value.strip()
    try:
        return ip_network(text)
    except ValueError:
        pass
    try:
        network = ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address or network (e.g. 10.0.0.7 or 10.0.0.0/24; host names are not accepted)"
        ) from None
    raise ValueError(f"{text} has host bits set (did you mean {network}?)")


Network = Annotated[IPvAnyNetwork, BeforeValidator(parse_network)]
