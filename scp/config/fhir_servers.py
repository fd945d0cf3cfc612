"""Server presets: ``fhir.server: hapi`` sets the delivery keys that server needs, in one word.

A preset only fills keys the configuration leaves out; a key written in the file or the
environment always wins. The table is also the README's compatibility table: keep the two
in step (``tests/scp/test_fhir_servers.py`` checks that every preset is documented).
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["PRESETS", "ServerName", "apply_preset"]

ServerName = Literal["generic", "hapi", "azure", "google", "firely", "medplum"]

PRESETS: dict[str, dict[str, Any]] = {
    # Any FHIR R4/R5 server that takes client-assigned ids and transactions of any size.
    "generic": {},
    # HAPI FHIR JPA (and Smile CDR): R4 by default, R5 if configured; client ids allowed.
    "hapi": {"version": "auto", "write_mode": "put"},
    # Azure Health Data Services: R4 only, at most 500 entries per Bundle.
    "azure": {"version": "r4", "write_mode": "put", "max_entries_per_request": 500},
    # Google Cloud Healthcare API: R4 or R5 per store; PUT with a client id is refused
    # unless the store enables update-as-create, so key every write on its identifier.
    "google": {"version": "auto", "write_mode": "conditional-update"},
    # Firely Server: R4 by default, R5 opt-in; 150-200 entries per transaction by default.
    "firely": {"version": "auto", "write_mode": "put", "max_entries_per_request": 150},
    # Medplum: R4 only (no ImagingSelection); no create-as-update with a client id; at most
    # 8 entries in a transaction that holds a conditional entry.
    "medplum": {"version": "r4", "write_mode": "conditional-update", "max_entries_per_request": 8},
}


def apply_preset(fhir: dict[str, Any]) -> dict[str, Any]:
    """``fhir`` (the raw ``fhir`` section) with its preset's keys filled in where absent.

    An unknown ``server`` is left alone for the model to report with the known names.
    """
    server = fhir.get("server", "generic")
    preset = PRESETS.get(server, {}) if isinstance(server, str) else {}
    return {**preset, **fhir}
