"""A plain ``pip install <checkout>`` (what the systemd service install does) ships every module.

Built as a wheel from this checkout the way pip installs it (an isolated build environment with
the setuptools pyproject.toml asks for, from PyPI), then compared with the source tree: a subpackage the build configuration forgot would be missing
only for real users, since the tests run from an editable install.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("scp", "mapping", "fhir_client")


def test_the_wheel_holds_every_module_of_the_three_packages(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
         str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("sr2fhir-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(ROOT)) for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    assert sources, "no sources found"
    assert sorted(sources - shipped) == []
    assert any(name.endswith("entry_points.txt") and "sr2fhir" in zipfile.ZipFile(wheel).read(name).decode()
               for name in shipped)
