"""scp.config: the settings tree, config.yaml, environment overrides and error lines."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from fhir_client import FhirSettings, OAuth2ClientCredentialsSettings
from mapping import MappingOptions
from scp.config import tls_files
from scp.config import (
    ConfigError,
    DicomSettings,
    FhirDeliverySettings,
    Settings,
    load_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO_ROOT / "config.yaml"


def write_config(directory: Path, text: str, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=environ or {})
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# --------------------------------------------------------------------------- defaults


class TestDefaults:
    def test_sections_have_the_documented_defaults(self):
        settings = Settings()
        assert settings.dicom.ae_title == "SR2FHIR"
        assert (settings.dicom.host, settings.dicom.port) == ("127.0.0.1", 11112)
        assert settings.dicom.max_associations == 16
        assert settings.dicom.allowed_calling_ae_titles == []
        assert settings.dicom.require_called_ae_title is True
        assert settings.dicom.tcp_nodelay is True
        assert min(settings.dicom.acse_timeout_s, settings.dicom.dimse_timeout_s,
                   settings.dicom.network_timeout_s) > 0
        assert settings.spool.directory == Path("spool")
        assert settings.spool.segment_max_bytes == 64 * 1024 * 1024
        assert settings.spool.retention == "delete"
        assert settings.spool.min_free_bytes == 100 * 1024 * 1024
        assert settings.fhir.base_url is None
        assert settings.fhir.outbox_directory == Path("outbox")
        assert settings.fhir.writes_to_outbox
        assert settings.mapping.options() == MappingOptions() and settings.mapping.unmapped == "ignore"
        assert settings.spool.remember_delivered_days == 365
        assert (settings.forwarder.concurrency, settings.forwarder.poll_interval_s,
                settings.forwarder.batch_size) == (4, 0.2, 32)
        assert (settings.log.level, settings.log.format, settings.log.include_phi) == ("info", "auto", False)
        assert (settings.health.host, settings.health.port) == ("127.0.0.1", None)

    def test_fhir_section_is_a_fhir_client_settings(self):
        assert isinstance(Settings().fhir, FhirSettings)

    def test_settings_are_frozen(self):
        settings = Settings()
        with pytest.raises(ValidationError):
            settings.dicom.port = 1  # type: ignore[misc]

    def test_no_file_means_defaults_with_paths_under_the_current_directory(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        settings = load_settings(None, environ={})
        assert settings.dicom == DicomSettings()
        assert settings.spool.directory == tmp_path / "spool"
        assert settings.fhir.outbox_directory == tmp_path / "outbox"

    def test_empty_file_is_all_defaults(self, tmp_path):
        settings = load_settings(write_config(tmp_path, ""), environ={})
        assert settings.dicom == DicomSettings()


# --------------------------------------------------------------------------- config.yaml


class TestShippedConfig:
    def test_it_loads(self):
        settings = load_settings(SHIPPED_CONFIG, environ={})
        assert (settings.dicom.ae_title, settings.dicom.host, settings.dicom.port) == ("SR2FHIR", "127.0.0.1", 11112)
        assert settings.spool.directory == REPO_ROOT / "spool"
        assert settings.fhir.base_url is None
        assert settings.fhir.outbox_directory == REPO_ROOT / "outbox"

    def test_it_states_the_defaults(self):
        shipped = load_settings(SHIPPED_CONFIG, environ={})
        defaults = Settings.model_validate({})
        for section in Settings.model_fields:
            assert _relative_to(getattr(shipped, section), REPO_ROOT) == getattr(defaults, section), section

    def test_every_key_is_present_and_commented(self):
        text = SHIPPED_CONFIG.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        # mapping.write_mode is the earlier releases' name of fhir.write_mode: read, no longer shown;
        # the release and the R4 ImagingSelection form are set from fhir.version/r4_imaging_selection.
        not_shown = {"mapping.write_mode", "mapping.fhir_version", "mapping.r4_imaging_selection"}
        keys = [key for key in _model_keys(Settings) if key not in not_shown]
        missing = [key for key in keys if not _has_key(data, key)]
        assert missing == []
        assert "mapping.write_mode is still read" in text.replace("\n  # ", " ")
        lines = text.splitlines()
        for key in keys:
            leaf = key.split(".")[-1]
            index = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{leaf}:"))
            assert lines[index - 1].strip().startswith("#"), f"{key} has no comment above it"
            env_name = "SR2FHIR_" + key.replace(".", "__").upper()
            assert env_name in text, f"{key}: env form {env_name} not documented"

    def test_the_commented_https_example_is_valid(self, tmp_path):
        text = SHIPPED_CONFIG.read_text(encoding="utf-8")
        block = text.split("# Example — an https server", 1)[1].split("# Example — HTTP Basic", 1)[0]
        body = [line.strip()[2:] for line in block.splitlines()[2:] if line.strip().startswith("# ")]
        for name in ("hospital-ca.pem", "sr2fhir.crt", "sr2fhir.key"):
            (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
        fhir_block = "\n".join(body).replace("/etc/sr2fhir/", "")
        config = write_config(tmp_path, "fhir:\n" + textwrap.indent(fhir_block, "  ") + "\n")
        settings = load_settings(config, environ={"SR2FHIR_FHIR__AUTH__CLIENT_SECRET": "s3cret"})
        assert isinstance(settings.fhir.auth, OAuth2ClientCredentialsSettings)
        assert settings.fhir.reference_mode == "resolve"
        assert settings.fhir.tls.ca_bundle == tmp_path / "hospital-ca.pem"
        assert not settings.fhir.writes_to_outbox


def _model_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _model_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _has_key(data: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _relative_to(model: BaseModel, root: Path) -> BaseModel:
    updates = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path) and value.is_absolute():
            updates[name] = value.relative_to(root)
        elif isinstance(value, BaseModel):
            updates[name] = _relative_to(value, root)
    return model.model_copy(update=updates)


# --------------------------------------------------------------------------- valid files


class TestValidFiles:
    def test_minimal_config_with_a_server(self, tmp_path):
        config = write_config(tmp_path, """\
            dicom: {ae_title: BRIDGE, port: 104}
            spool: {directory: /var/spool/sr2fhir}
            fhir: {base_url: "https://fhir.example.org/r5"}
            """)
        settings = load_settings(config, environ={})
        assert settings.dicom.ae_title == "BRIDGE"
        assert str(settings.fhir.base_url) == "https://fhir.example.org/r5"
        assert settings.spool.directory == Path("/var/spool/sr2fhir")
        assert not settings.fhir.writes_to_outbox

    def test_minimal_config_with_an_outbox(self, tmp_path):
        config = write_config(tmp_path, """\
            dicom: {port: 0}
            spool: {directory: spool}
            fhir: {outbox_directory: bundles}
            """)
        settings = load_settings(config, environ={})
        assert settings.dicom.port == 0
        assert settings.fhir.outbox_directory == tmp_path / "bundles"
        assert settings.fhir.writes_to_outbox

    def test_relative_paths_are_resolved_against_the_config_directory(self, tmp_path, monkeypatch):
        conf_dir = tmp_path / "etc"
        conf_dir.mkdir()
        (conf_dir / "ca.pem").write_text("x")
        elsewhere = tmp_path / "run"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        config = write_config(conf_dir, """\
            spool: {directory: ../var/spool}
            fhir: {tls: {ca_bundle: ca.pem}}
            """)
        settings = load_settings(config, environ={})
        assert settings.spool.directory == tmp_path / "var" / "spool"
        assert settings.fhir.tls.ca_bundle == conf_dir / "ca.pem"
        assert settings.fhir.outbox_directory == conf_dir / "outbox"  # a default, left out of the file

    def test_a_section_with_every_key_commented_out_is_all_defaults(self, tmp_path):
        config = write_config(tmp_path, "fhir:\n  # base_url: https://fhir.example.org\n  tls:\nlog:\n")
        settings = load_settings(config, environ={"SR2FHIR_FHIR__TIMEOUT_S": "5"})
        assert settings.fhir.tls.verify is True
        assert settings.fhir.timeout_s == 5
        assert settings.log == Settings().log

    def test_sizes_accept_units_and_names_are_case_insensitive(self, tmp_path):
        config = write_config(tmp_path, """\
            spool: {segment_max_bytes: 8 MiB, min_free_bytes: 1GB}
            log: {level: DEBUG, format: JSON}
            dicom: {ae_title: "  PACS  ", allowed_calling_ae_titles: [ROUTER, "AI NODE"]}
            """)
        settings = load_settings(config, environ={})
        assert settings.spool.segment_max_bytes == 8 * 1024 * 1024
        assert settings.spool.min_free_bytes == 1_000_000_000
        assert (settings.log.level, settings.log.format) == ("debug", "json")
        assert settings.dicom.ae_title == "PACS"
        assert settings.dicom.allowed_calling_ae_titles == ["ROUTER", "AI NODE"]


# --------------------------------------------------------------------------- errors


class TestErrors:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            pytest.param("dicom:\n  portt: 11112\n", "dicom.portt: unknown key (did you mean 'port'?)", id="unknown-key"),
            pytest.param("dicom:\n  port: eleven\n", "dicom.port: must be a whole number", id="wrong-type"),
            pytest.param("dicom:\n  port: 70000\n", "dicom.port: must be <= 65535", id="port-too-high"),
            pytest.param("dicom:\n  port: -1\n", "dicom.port: must be >= 0", id="port-negative"),
            pytest.param("dicom:\n  ae_title: THIS_TITLE_IS_TOO_LONG\n",
                         "dicom.ae_title: must be at most 16 characters (has 22)", id="ae-too-long"),
            pytest.param("dicom:\n  ae_title: 'A\\B'\n", "dicom.ae_title: must not contain a backslash", id="ae-backslash"),
            pytest.param("dicom:\n  ae_title: '    '\n", "dicom.ae_title: must not be empty or all spaces", id="ae-spaces"),
            pytest.param("dicom:\n  ae_title: \"A\\tB\"\n",
                         "dicom.ae_title: must contain only printable ASCII characters (no control characters)",
                         id="ae-control"),
            pytest.param("dicom:\n  allowed_calling_ae_titles: [OK, '']\n",
                         "dicom.allowed_calling_ae_titles[1]: must not be empty or all spaces", id="ae-in-list"),
            pytest.param("dicom:\n  ae_title: 1234\n", "dicom.ae_title: must be a string (put it in quotes)",
                         id="ae-number"),
            pytest.param("fhir:\n  retry: {initial_backoff_s: 10, max_backoff_s: 5}\n",
                         "fhir.retry.max_backoff_s: max_backoff_s (5.0) must be greater than or equal to "
                         "initial_backoff_s (10.0)", id="impossible-backoff"),
            pytest.param("fhir:\n  base_url: ftp://example.org\n", "fhir.base_url: URL scheme must be 'http' or 'https'",
                         id="url-scheme"),
            pytest.param("fhir:\n  auth: {kind: kerberos}\n",
                         "fhir.auth.kind: must be one of 'none', 'basic', 'bearer', 'oauth2_client_credentials'",
                         id="auth-kind"),
            pytest.param("fhir:\n  auth: {kind: bearer}\n", "fhir.auth.token: required, not given", id="auth-missing"),
            pytest.param("fhir:\n  reference_mode: resolve\n",
                         "fhir.reference_mode: 'resolve' looks references up on the server and needs fhir.base_url",
                         id="resolve-without-server"),
            pytest.param("spool:\n  retention: archive\n", "spool.retention: must be one of 'delete' or 'keep'",
                         id="literal"),
            pytest.param("spool:\n  min_free_bytes: plenty\n",
                         "spool.min_free_bytes: must be a number of bytes, e.g. 67108864 or '64 MiB'", id="size"),
            pytest.param("forwarder:\n  concurrency: 65\n", "forwarder.concurrency: must be <= 64", id="concurrency"),
            pytest.param("forwarder:\n  poll_interval_s: 0\n", "forwarder.poll_interval_s: must be > 0", id="interval"),
            pytest.param("mapping:\n  default_timezone: Mars/Olympus\n",
                         "mapping.default_timezone: unknown time zone 'Mars/Olympus' "
                         "(use an IANA name such as 'Europe/Berlin' or 'UTC')", id="mapping"),
            pytest.param("health:\n  port: 11112\n", "health: port 11112 is already dicom.port; choose another",
                         id="port-clash"),
            pytest.param("dicom: [port, 11112]\n", "dicom: must be a mapping of keys", id="section-not-mapping"),
            pytest.param("logs:\n  level: info\n", "logs: unknown key (did you mean 'log'?)", id="unknown-section"),
        ],
    )
    def test_one_line_with_file_and_key_path(self, tmp_path, text, expected):
        config = write_config(tmp_path, text)
        assert problems_of(config) == [f"{config}: {expected}"]

    def test_every_problem_is_reported_in_file_order(self, tmp_path):
        config = write_config(tmp_path, """\
            dicom: {port: 70000, portt: 1}
            log: {level: loud}
            """)
        assert problems_of(config) == [
            f"{config}: dicom.port: must be <= 65535",
            f"{config}: dicom.portt: unknown key (did you mean 'port'?)",
            f"{config}: log.level: must be one of 'debug', 'info', 'warning', 'error' or 'critical'",
        ]

    def test_label_is_the_path_as_given(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        write_config(tmp_path, "dicom:\n  portt: 1\n")
        assert problems_of(Path("config.yaml")) == ["config.yaml: dicom.portt: unknown key (did you mean 'port'?)"]

    def test_yaml_syntax_error_names_line_and_column(self, tmp_path):
        config = write_config(tmp_path, "dicom:\n  port: 11112\n  ae_title: [SR2FHIR\nspool: {}\n")
        [problem] = problems_of(config)
        assert problem.startswith(f"{config}: line 4, column 6: YAML syntax error: ")

    def test_yaml_error_does_not_quote_the_line(self, tmp_path):
        config = write_config(tmp_path, "fhir:\n  auth: {kind: bearer, token: hunter2: x}\n")
        [problem] = problems_of(config)
        assert "line 2" in problem
        assert "hunter2" not in problem

    def test_duplicate_keys_are_an_error(self, tmp_path):
        config = write_config(tmp_path, "dicom:\n  port: 104\n  port: 11112\n")
        assert problems_of(config) == [
            f"{config}: line 3, column 3: YAML error: duplicate key 'port' (first given at line 2)"
        ]

    def test_top_level_list(self, tmp_path):
        config = write_config(tmp_path, "- dicom\n- spool\n")
        assert problems_of(config) == [
            f"{config}: (top level): must be a mapping of sections "
            "(dicom, spool, fhir, mapping, forwarder, log, health, audit), not a list"
        ]

    def test_missing_explicit_file(self, tmp_path):
        missing = tmp_path / "nope.yaml"
        assert problems_of(missing) == [f"{missing}: no such file"]

    def test_missing_tls_file_names_the_resolved_path(self, tmp_path):
        config = write_config(tmp_path, "fhir:\n  tls: {ca_bundle: ca.pem}\n")
        assert problems_of(config) == [f"{config}: fhir.tls.ca_bundle: no such file: {tmp_path / 'ca.pem'}"]

    def test_config_error_survives_pickling(self):
        error = pickle.loads(pickle.dumps(ConfigError(["a: b: c", "d: e: f"])))
        assert error.problems == ["a: b: c", "d: e: f"]
        assert str(error) == "a: b: c\nd: e: f"

    def test_config_error_is_not_chained_to_the_validation_error(self, tmp_path):
        config = write_config(tmp_path, "fhir:\n  auth: {kind: basic, username: u, password: 12345678}\n")
        with pytest.raises(ConfigError) as caught:
            load_settings(config, environ={})
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
        assert "12345678" not in str(caught.value)


# --------------------------------------------------------------------------- environment


OAUTH_FILE = """\
    fhir:
      base_url: https://fhir.example.org/r5
      auth:
        kind: oauth2_client_credentials
        token_url: https://idp.example.org/token
        client_id: sr2fhir
    """


class TestEnvironment:
    def test_nested_secret_comes_from_the_environment(self, tmp_path):
        config = write_config(tmp_path, OAUTH_FILE)
        settings = load_settings(config, environ={"SR2FHIR_FHIR__AUTH__CLIENT_SECRET": "s3cr3t-value"})
        assert isinstance(settings.fhir.auth.client_secret, SecretStr)
        assert settings.fhir.auth.client_secret.get_secret_value() == "s3cr3t-value"
        assert "s3cr3t-value" not in str(settings)
        assert "s3cr3t-value" not in repr(settings)

    def test_secret_is_taken_verbatim(self, tmp_path):
        config = write_config(tmp_path, OAUTH_FILE)
        settings = load_settings(config, environ={"SR2FHIR_FHIR__AUTH__CLIENT_SECRET": "0012"})
        assert settings.fhir.auth.client_secret.get_secret_value() == "0012"

    def test_secret_never_appears_in_errors(self, tmp_path):
        config = write_config(tmp_path, OAUTH_FILE.replace("https://idp.example.org/token", "not a url"))
        problems = problems_of(config, {"SR2FHIR_FHIR__AUTH__CLIENT_SECRET": "s3cr3t-value",
                                        "SR2FHIR_FHIR__AUTH__CLIENT_SECRET_TYPO": "s3cr3t-value"})
        assert problems == [
            f"{config}: fhir.auth.token_url: must be a URL (relative URL without a base)",
            "env SR2FHIR_FHIR__AUTH__CLIENT_SECRET_TYPO: fhir.auth.client_secret_typo: unknown key "
            "(did you mean 'client_secret'?)",
        ]
        assert all("s3cr3t" not in problem for problem in problems)

    def test_values_are_yaml_scalars(self, tmp_path):
        settings = load_settings(None, environ={
            "SR2FHIR_DICOM__PORT": "11113",
            "SR2FHIR_DICOM__TCP_NODELAY": "false",
            "SR2FHIR_DICOM__AE_TITLE": "1234",
            "SR2FHIR_DICOM__ALLOWED_CALLING_AE_TITLES": "[PACS, AI]",
            "SR2FHIR_FORWARDER__POLL_INTERVAL_S": "0.5",
            "SR2FHIR_LOG__LEVEL": "WARNING",
            "SR2FHIR_HEALTH__PORT": "8080",
        })
        assert settings.dicom.port == 11113
        assert settings.dicom.tcp_nodelay is False
        assert settings.dicom.ae_title == "1234"
        assert settings.dicom.allowed_calling_ae_titles == ["PACS", "AI"]
        assert settings.forwarder.poll_interval_s == 0.5
        assert settings.log.level == "warning"
        assert settings.health.port == 8080

    def test_environment_wins_over_the_file_and_null_unsets(self, tmp_path):
        config = write_config(tmp_path, "dicom: {port: 104}\nfhir: {base_url: 'https://a.example.org'}\n")
        settings = load_settings(config, environ={"SR2FHIR_DICOM__PORT": "11113", "SR2FHIR_FHIR__BASE_URL": "null"})
        assert settings.dicom.port == 11113
        assert settings.fhir.writes_to_outbox

    def test_a_whole_union_member_can_come_from_the_environment(self):
        settings = load_settings(None, environ={
            "SR2FHIR_FHIR__BASE_URL": "https://fhir.example.org",
            "SR2FHIR_FHIR__AUTH__KIND": "bearer",
            "SR2FHIR_FHIR__AUTH__TOKEN": "t0ken",
        })
        assert settings.fhir.auth.token.get_secret_value() == "t0ken"

    def test_errors_name_the_variable(self):
        assert problems_of(None, {"SR2FHIR_DICOM__PORT": "99999"}) == [
            "env SR2FHIR_DICOM__PORT: dicom.port: must be <= 65535"
        ]

    def test_unrelated_variables_are_ignored(self):
        settings = load_settings(None, environ={"SR2FHIR_CONFIG": "/etc/x.yaml", "SR2FHIR_REQUIRE_SHARED": "1",
                                                "OTHER__DICOM__PORT": "1"})
        assert settings.dicom.port == 11112

    def test_relative_paths_from_the_environment_use_the_current_directory(self, tmp_path, monkeypatch):
        conf_dir = tmp_path / "etc"
        conf_dir.mkdir()
        monkeypatch.chdir(tmp_path)
        config = write_config(conf_dir, "spool: {directory: spool}\n")
        settings = load_settings(config, environ={"SR2FHIR_SPOOL__DIRECTORY": "data/spool"})
        assert settings.spool.directory == tmp_path / "data" / "spool"

    def test_default_environ_is_os_environ(self, monkeypatch):
        monkeypatch.setenv("SR2FHIR_DICOM__PORT", "11114")
        assert load_settings(None).dicom.port == 11114


def test_fhir_delivery_settings_keeps_fhir_client_validation():
    with pytest.raises(ValidationError):
        FhirDeliverySettings.model_validate({"timeout_s": 0})


# --------------------------------------------------------------------------- dicom: who may send, TLS


class TestDicomAllowedPeers:
    def test_defaults_let_anyone_in(self):
        dicom = DicomSettings()
        assert dicom.allowed_calling_ae_titles == [] and dicom.allowed_peers == []

    def test_addresses_and_networks_of_both_families(self, tmp_path):
        config = write_config(tmp_path, """\
            dicom:
              allowed_calling_ae_titles: [ROUTER]
              allowed_peers:
                - ae_title: " PACS "
                  addresses: [10.20.0.0/24, 10.30.1.7, "fd00::/64", "::1"]
                - {ae_title: AI_NODE, addresses: [192.168.5.12]}
            """)
        peers = load_settings(config, environ={}).dicom.allowed_peers
        assert [peer.ae_title for peer in peers] == ["PACS", "AI_NODE"]
        assert [str(network) for network in peers[0].addresses] == ["10.20.0.0/24", "10.30.1.7/32", "fd00::/64",
                                                                    "::1/128"]

    @pytest.mark.parametrize(
        ("peers", "expected"),
        [
            pytest.param("[{ae_title: PACS, addresses: [10.0.0.5/24]}]",
                         "dicom.allowed_peers[0].addresses[0]: 10.0.0.5/24 has host bits set (did you mean 10.0.0.0/24?)",
                         id="host-bits"),
            pytest.param("[{ae_title: PACS, addresses: [10.0.0.1, pacs.example.org]}]",
                         "dicom.allowed_peers[0].addresses[1]: 'pacs.example.org' is not an IP address or network "
                         "(e.g. 10.0.0.7 or 10.0.0.0/24; host names are not accepted)", id="host-name"),
            pytest.param("[{ae_title: PACS, addresses: [10]}]",
                         "dicom.allowed_peers[0].addresses[0]: must be an IP address or network, e.g. 10.0.0.7 or "
                         "10.0.0.0/24", id="number"),
            pytest.param("[{ae_title: PACS, addresses: []}]",
                         "dicom.allowed_peers[0].addresses: must list at least one address or network (to allow any "
                         "address, list the AE title in allowed_calling_ae_titles)", id="no-addresses"),
            pytest.param("[{addresses: [10.0.0.1]}]", "dicom.allowed_peers[0].ae_title: required, not given",
                         id="no-title"),
            pytest.param("[{ae_title: THIS_TITLE_IS_TOO_LONG, addresses: [10.0.0.1]}]",
                         "dicom.allowed_peers[0].ae_title: must be at most 16 characters (has 22)", id="long-title"),
            pytest.param("[{ae_title: PACS, addresses: [10.0.0.1], port: 104}]",
                         "dicom.allowed_peers[0].port: unknown key", id="unknown-key"),
            pytest.param("PACS", "dicom.allowed_peers: must be a list", id="not-a-list"),
        ],
    )
    def test_problems_are_one_line_each(self, tmp_path, peers, expected):
        config = write_config(tmp_path, f"dicom:\n  allowed_peers: {peers}\n")
        assert problems_of(config) == [f"{config}: {expected}"]

    def test_a_title_allowed_from_anywhere_cannot_also_be_pinned(self, tmp_path):
        config = write_config(tmp_path, """\
            dicom:
              allowed_calling_ae_titles: [PACS, ROUTER]
              allowed_peers: [{ae_title: PACS, addresses: [10.0.0.1]}, {ae_title: AI, addresses: [10.0.0.2]}]
            """)
        assert problems_of(config) == [
            (f"{config}: dicom.allowed_peers: PACS also in allowed_calling_ae_titles, which allows any address; "
             "list each AE title in one of the two only")
        ]

    def test_from_the_environment(self):
        settings = load_settings(None, environ={
            "SR2FHIR_DICOM__ALLOWED_PEERS": "[{ae_title: PACS, addresses: [10.0.0.0/8, 127.0.0.1]}]",
        })
        [peer] = settings.dicom.allowed_peers
        assert (peer.ae_title, [str(a) for a in peer.addresses]) == ("PACS", ["10.0.0.0/8", "127.0.0.1/32"])


def _openssl(directory: Path, *args: str) -> None:
    proc = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def pem(tmp_path_factory) -> Path:
    """server.pem/server.key (self-signed), other.key, encrypted.key, combined.pem (cert + key),
    ca.pem (= server.pem), not-pem.txt; made with the openssl command line."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is not installed")
    directory = tmp_path_factory.mktemp("pem")
    for name in ("server", "other"):
        _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}")
    _openssl(directory, "pkey", "-in", "server.key", "-aes256", "-passout", "pass:secret", "-out", "encrypted.key")
    (directory / "combined.pem").write_bytes((directory / "server.pem").read_bytes()
                                             + (directory / "server.key").read_bytes())
    shutil.copy(directory / "server.pem", directory / "ca.pem")
    (directory / "not-pem.txt").write_text("hello\n", encoding="ascii")
    return directory


def tls_config(directory: Path, pem_dir: Path, **tls: Any) -> Path:
    values = {"enabled": True, "certificate": str(pem_dir / "server.pem"), "private_key": str(pem_dir / "server.key"),
              **tls}
    return write_config(directory, yaml.safe_dump({"dicom": {"tls": values}}))


class TestDicomTls:
    def test_off_by_default(self):
        tls = DicomSettings().tls
        assert (tls.enabled, tls.certificate, tls.private_key, tls.ca_certificates, tls.ciphers) == (
            False, None, None, None, None)
        assert tls.require_client_certificate is False

    def test_a_complete_section_loads_with_paths_relative_to_the_config(self, tmp_path, pem):
        for name in ("server.pem", "server.key", "ca.pem"):
            shutil.copy(pem / name, tmp_path / name)
        config = write_config(tmp_path, """\
            dicom:
              tls:
                enabled: true
                certificate: server.pem
                private_key: server.key
                require_client_certificate: true
                ca_certificates: ca.pem
                ciphers: ECDHE+AESGCM
            """)
        tls = load_settings(config, environ={}).dicom.tls
        assert (tls.certificate, tls.private_key, tls.ca_certificates) == (
            tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem")
        assert tls.enabled and tls.require_client_certificate and tls.ciphers == "ECDHE+AESGCM"

    def test_the_key_may_be_inside_the_certificate_file(self, tmp_path, pem):
        tls = load_settings(tls_config(tmp_path, pem, certificate=str(pem / "combined.pem"), private_key=None),
                            environ={}).dicom.tls
        assert tls.private_key is None

    def test_from_the_environment_with_paths_relative_to_the_current_directory(self, tmp_path, pem, monkeypatch):
        monkeypatch.chdir(pem)
        tls = load_settings(None, environ={
            "SR2FHIR_DICOM__TLS__ENABLED": "true",
            "SR2FHIR_DICOM__TLS__CERTIFICATE": "server.pem",
            "SR2FHIR_DICOM__TLS__PRIVATE_KEY": "server.key",
            "SR2FHIR_DICOM__TLS__CIPHERS": "ECDHE+AESGCM",
        }).dicom.tls
        assert tls.enabled and tls.certificate == pem / "server.pem" and tls.ciphers == "ECDHE+AESGCM"

    @pytest.mark.parametrize(
        ("tls", "expected"),
        [
            pytest.param({"certificate": None, "private_key": None},
                         "dicom.tls.certificate: required when dicom.tls.enabled is true", id="no-certificate"),
            pytest.param({"certificate": "{tmp}/missing.pem"},
                         "dicom.tls.certificate: no such file: {tmp}/missing.pem", id="missing-certificate"),
            pytest.param({"certificate": "{pem}/not-pem.txt"},
                         "dicom.tls.certificate: no PEM certificate in {pem}/not-pem.txt", id="not-a-certificate"),
            pytest.param({"private_key": "{pem}/other.key"},
                         "dicom.tls.private_key: {pem}/other.key is not the private key of dicom.tls.certificate",
                         id="wrong-key"),
            pytest.param({"private_key": "{pem}/encrypted.key"},
                         "dicom.tls.private_key: {pem}/encrypted.key holds an encrypted private key; sr2fhir needs "
                         "an unencrypted key file", id="encrypted-key"),
            pytest.param({"private_key": "{pem}/not-pem.txt"},
                         "dicom.tls.private_key: no usable PEM private key in {pem}/not-pem.txt", id="not-a-key"),
            pytest.param({"private_key": None},
                         "dicom.tls.private_key: required: dicom.tls.certificate ({pem}/server.pem) holds no "
                         "private key", id="no-key-anywhere"),
            pytest.param({"enabled": False, "certificate": None},
                         "dicom.tls.private_key: private_key is set but certificate is not", id="key-without-cert"),
            pytest.param({"require_client_certificate": True},
                         "dicom.tls.ca_certificates: required when require_client_certificate is true (the CA "
                         "certificates client certificates are verified against)", id="no-ca"),
            pytest.param({"ca_certificates": "{pem}/not-pem.txt"},
                         "dicom.tls.ca_certificates: no PEM certificates in {pem}/not-pem.txt", id="ca-not-pem"),
            pytest.param({"ca_certificates": "{tmp}/ca"},
                         "dicom.tls.ca_certificates: no such file: {tmp}/ca", id="ca-missing"),
            pytest.param({"ciphers": "NO-SUCH-CIPHER"},
                         "dicom.tls.ciphers: no cipher suite matches this OpenSSL cipher string", id="ciphers"),
            pytest.param({"ciphers": ""}, "dicom.tls.ciphers: must not be empty", id="empty-ciphers"),
            pytest.param({"enabled": "maybe"}, "dicom.tls.enabled: must be true or false", id="enabled"),
            pytest.param({"certifcate": "x"}, "dicom.tls.certifcate: unknown key (did you mean 'certificate'?)",
                         id="typo"),
        ],
    )
    def test_problems_are_one_line_each(self, tmp_path, pem, tls, expected):
        tls = {key: value.format(tmp=tmp_path, pem=pem) if isinstance(value, str) else value
               for key, value in tls.items()}
        config = tls_config(tmp_path, pem, **tls)
        assert problems_of(config) == [f"{config}: {expected.format(tmp=tmp_path, pem=pem)}"]

    def test_files_are_checked_even_while_disabled(self, tmp_path, pem):
        config = tls_config(tmp_path, pem, enabled=False, ca_certificates=str(tmp_path / "nope.pem"))
        assert problems_of(config) == [f"{config}: dicom.tls.ca_certificates: no such file: {tmp_path / 'nope.pem'}"]

    def test_every_problem_is_reported_at_once(self, tmp_path, pem):
        config = tls_config(tmp_path, pem, certificate=str(tmp_path / "a.pem"), require_client_certificate=True,
                            ciphers="NOPE")
        assert problems_of(config) == [
            f"{config}: dicom.tls.certificate: no such file: {tmp_path / 'a.pem'}",
            (f"{config}: dicom.tls.ca_certificates: required when require_client_certificate is true (the CA "
             "certificates client certificates are verified against)"),
            f"{config}: dicom.tls.ciphers: no cipher suite matches this OpenSSL cipher string",
        ]

    def test_an_unreadable_file_is_named(self, tmp_path, pem, monkeypatch):
        key = tmp_path / "server.key"
        shutil.copy(pem / "server.key", key)
        key.chmod(0)
        if os.geteuid() == 0:  # root reads it anyway: make open() answer as for anyone else
            real_open = open

            def denying_open(path, *args, **kwargs):
                if Path(path) == key:
                    raise PermissionError(13, "Permission denied", str(path))
                return real_open(path, *args, **kwargs)

            monkeypatch.setattr(tls_files, "open", denying_open, raising=False)
        config = tls_config(tmp_path, pem, private_key=str(key))
        assert problems_of(config) == [f"{config}: dicom.tls.private_key: cannot read {key}: Permission denied"]

    def test_the_commented_dicom_example_in_config_yaml_is_valid(self, tmp_path, pem):
        text = SHIPPED_CONFIG.read_text(encoding="utf-8")
        block = text.split("# Example — TLS with client certificates", 1)[1].split("\n\n", 1)[0]
        body = [line.strip()[2:] for line in block.splitlines()[3:] if line.strip().startswith("# ")]
        for name, source in (("dicom.crt", "server.pem"), ("dicom.key", "server.key"), ("hospital-ca.pem", "ca.pem")):
            shutil.copy(pem / source, tmp_path / name)
        config = write_config(tmp_path, "dicom:\n" + textwrap.indent("\n".join(body).replace("/etc/sr2fhir/", ""),
                                                                     "  ") + "\n")
        dicom = load_settings(config, environ={}).dicom
        assert dicom.tls.enabled and dicom.tls.require_client_certificate
        assert dicom.tls.ca_certificates == tmp_path / "hospital-ca.pem"
        assert [peer.ae_title for peer in dicom.allowed_peers] == ["PACS_ROUTER", "AI_NODE"]
