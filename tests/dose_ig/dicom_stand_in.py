"""Write a stand-in for the one ``fhir.dicom`` ValueSet the dose IG's profiles bind with strength
``required``: DICOM CID 33 "Modality" (``ModalityDevice.type``).

    python tests/dose_ig/dicom_stand_in.py OUT_DIR

``fhir.dicom`` (DICOM's FHIR package) is not on any registry this project reaches; without it the
validator only warns ``Terminology_TX_ValueSet_NotFound`` on ``Device.type`` and never checks the
binding. The codes come from pydicom's copy of PS3.16 CID 33 (``pydicom.sr.codedict``); the
ValueSet carries the URL and version the IG binds to, so the binding resolves to it (README.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pydicom
from pydicom.sr.codedict import codes

CID33_URL = "http://dicom.nema.org/medical/dicom/current/output/chtml/part16/sect_CID_33.html"
# The version the IG binds to (Modality.fsh): the binding names it, so the stand-in must carry it.
CID33_VERSION = "2025.2.20250411"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def cid33_value_set() -> dict:
    """CID 33 as an R4 ValueSet listing pydicom's codes (all DCM)."""
    concepts = sorted(codes.CID33.concepts.values(), key=lambda code: code.value)
    schemes = {code.scheme_designator for code in concepts}
    if schemes != {"DCM"}:
        raise ValueError(f"pydicom {pydicom.__version__}: CID 33 has codes outside DCM: {sorted(schemes)}")
    return {
        "resourceType": "ValueSet",
        "id": "sr2fhir-stand-in-dicom-cid-33",
        "url": CID33_URL,
        "version": CID33_VERSION,
        "name": "Modality",
        "title": "Modality (CID 33) - sr2fhir test stand-in",
        "status": "active",
        "experimental": True,
        "description": (f"Test stand-in for the fhir.dicom package's CID 33 ValueSet, listing the codes of "
                        f"pydicom {pydicom.__version__}'s PS3.16 CID 33 table. Not the published ValueSet."),
        "compose": {"include": [{
            "system": DCM,
            "concept": [{"code": code.value, "display": code.meaning} for code in concepts],
        }]},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python dicom_stand_in.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    value_set = cid33_value_set()
    (out / f"ValueSet-{value_set['id']}.json").write_text(json.dumps(value_set, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
