"""``fhir.server`` presets and where the write mode lives (``fhir.write_mode``, formerly ``mapping``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scp.config import ConfigError, Settings, load_settings
from scp.config.fhir_servers import PRESETS

README = Path(__file__).resolve().parents[2] / "README.md"


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_settings(path, environ=environ or {})


@pytest.mark.parametrize("server", sorted(PRESETS))
def test_each_preset_sets_what_its_table_says(tmp_path, server):
    settings = load(tmp_path, f"fhir:\n  server: {server}\n")
    for key, value in PRESETS[server].items():
        assert getattr(settings.fhir, key) == value, key
    assert settings.mapping.write_mode == settings.fhir.write_mode  # the mapping writes what the preset says


def test_a_key_written_in_the_file_wins_over_the_preset(tmp_path):
    settings = load(tmp_path, "fhir:\n  server: medplum\n  max_entries_per_request: 5\n  version: auto\n")
    assert (settings.fhir.max_entries_per_request, settings.fhir.version) == (5, "auto")
    assert settings.fhir.write_mode == "conditional-update"  # not written: from the preset


def test_the_environment_can_choose_the_preset(tmp_path):
    settings = load(tmp_path, "fhir: {}\n", {"SR2FHIR_FHIR__SERVER": "azure"})
    assert (settings.fhir.version, settings.fhir.max_entries_per_request) == ("r4", 500)


def test_an_unknown_server_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, "fhir:\n  server: epic\n")
    assert "fhir.server" in str(raised.value) and "hapi" in str(raised.value)


def test_generic_sets_nothing():
    settings = Settings()
    assert (settings.fhir.server, settings.fhir.version, settings.fhir.write_mode) == ("generic", "auto", "put")
    assert settings.fhir.max_entries_per_request is None


def test_mapping_write_mode_of_earlier_releases_is_still_read(tmp_path):
    settings = load(tmp_path, "mapping:\n  write_mode: conditional\n")
    assert settings.fhir.write_mode == settings.mapping.write_mode == "conditional"


def test_two_different_write_modes_are_refused(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, "mapping:\n  write_mode: conditional\nfhir:\n  write_mode: put\n")
    assert "set only fhir.write_mode" in str(raised.value)


def test_the_release_is_not_a_mapping_key(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, "mapping:\n  fhir_version: r4\n")
    assert "use fhir.version" in str(raised.value)


def test_the_readme_table_documents_every_preset():
    table = README.read_text()
    for server in PRESETS:
        assert re.search(rf"^\| `{server}` \|", table, re.MULTILINE), f"README has no row for fhir.server: {server}"
