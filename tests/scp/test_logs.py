"""scp.telemetry.logs: one format for structlog and stdlib records, PHI redaction, level filtering."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from datetime import datetime

import pytest
import structlog
from structlog.testing import capture_logs

from scp.config import LogSettings
from scp.telemetry.logs import PHI_KEYS, REDACTED, configure_logging, redact_phi

_TOUCHED_LOGGERS = ("pynetdicom", "httpx", "httpcore", "py.warnings")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo configure_logging: structlog defaults, root handlers and levels, warnings."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in _TOUCHED_LOGGERS}
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)
    logging.captureWarnings(False)


def configured(is_tty: bool = False, **settings) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(LogSettings(**settings), stream=stream, is_tty=is_tty)
    return stream


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestJson:
    def test_off_a_tty_each_event_is_one_json_line(self):
        stream = configured()
        structlog.get_logger().info("sr_spooled", sop_instance_uid="1.2.3", size_bytes=42)
        [event] = json_lines(stream)
        assert event["event"] == "sr_spooled"
        assert event["level"] == "info"
        assert event["sop_instance_uid"] == "1.2.3"
        assert event["size_bytes"] == 42
        timestamp = datetime.fromisoformat(event["timestamp"])
        assert timestamp.utcoffset().total_seconds() == 0

    def test_format_json_wins_over_a_tty(self):
        stream = configured(is_tty=True, format="json")
        structlog.get_logger().info("bundle_delivered")
        assert json_lines(stream)[0]["event"] == "bundle_delivered"

    def test_stdlib_records_come_out_in_the_same_format(self):
        stream = configured()
        logging.getLogger("pynetdicom.assoc").warning("Association from %s aborted", "PACS")
        [event] = json_lines(stream)
        assert event["event"] == "Association from PACS aborted"
        assert event["level"] == "warning"
        assert event["logger"] == "pynetdicom.assoc"
        assert set(event) >= {"timestamp"}

    def test_bound_context_is_merged(self):
        stream = configured()
        with structlog.contextvars.bound_contextvars(calling_ae="PACS"):
            structlog.get_logger().info("sr_received")
            logging.getLogger("pynetdicom").error("C-STORE failed")
        assert [event["calling_ae"] for event in json_lines(stream)] == ["PACS", "PACS"]

    def test_exceptions_are_rendered(self):
        stream = configured()
        try:
            raise RuntimeError("disk on fire")
        except RuntimeError:
            structlog.get_logger().exception("spool_write_failed")
        [event] = json_lines(stream)
        assert event["level"] == "error"
        assert "RuntimeError: disk on fire" in event["exception"]

    def test_python_warnings_are_logged(self):
        stream = configured()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("odd character set", UserWarning, stacklevel=1)
        [event] = json_lines(stream)
        assert event["logger"] == "py.warnings"
        assert "odd character set" in event["event"]


class TestConsole:
    def test_on_a_tty_lines_are_for_people(self):
        stream = configured(is_tty=True)
        structlog.get_logger().info("sr_received", sop_instance_uid="1.2.3")
        output = stream.getvalue()
        assert "sr_received" in output and "1.2.3" in output
        with pytest.raises(json.JSONDecodeError):
            json.loads(output)

    def test_format_console_off_a_tty_has_no_colours(self):
        stream = configured(format="console")
        structlog.get_logger().warning("bundle_deferred", attempt=3)
        logging.getLogger("httpx").warning("slow")
        output = stream.getvalue()
        assert "\x1b[" not in output
        assert "bundle_deferred" in output and "attempt=3" in output
        assert "slow" in output and "[httpx]" in output

    def test_auto_detects_the_stream(self):
        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        stream = Terminal()
        configure_logging(LogSettings(), stream=stream)
        structlog.get_logger().info("sr_received")
        with pytest.raises(json.JSONDecodeError):
            json.loads(stream.getvalue())


class TestPhi:
    def test_patient_keys_are_redacted_by_default(self):
        stream = configured()
        structlog.get_logger().info(
            "sr_received", sop_instance_uid="1.2.3", patient_name="DOE^JANE", PatientID="MRN123",
            patient_birth_date="19700101", details={"PatientBirthDate": "19700101", "modality": "SR"},
        )
        [event] = json_lines(stream)
        assert event["patient_name"] == REDACTED
        assert event["PatientID"] == REDACTED
        assert event["patient_birth_date"] == REDACTED
        assert event["details"] == {"PatientBirthDate": REDACTED, "modality": "SR"}
        assert event["sop_instance_uid"] == "1.2.3"
        assert "DOE" not in stream.getvalue() and "MRN123" not in stream.getvalue()

    def test_redaction_applies_on_the_console_too(self):
        stream = configured(is_tty=True)
        structlog.get_logger().info("sr_received", patient_id="MRN123")
        assert "MRN123" not in stream.getvalue()

    def test_include_phi_keeps_them(self):
        stream = configured(include_phi=True)
        structlog.get_logger().info("sr_received", patient_name="DOE^JANE", PatientID="MRN123")
        [event] = json_lines(stream)
        assert (event["patient_name"], event["PatientID"]) == ("DOE^JANE", "MRN123")

    @pytest.mark.parametrize("key", sorted(PHI_KEYS))
    def test_every_listed_key_is_redacted(self, key):
        assert redact_phi(None, "info", {"event": "x", key: "secret"})[key] == REDACTED

    def test_matching_ignores_case_and_underscores(self):
        event = redact_phi(None, "info", {"event": "x", "patientName": "A", "PATIENT_ID": "B", "sop_instance_uid": "1"})
        assert event == {"event": "x", "patientName": REDACTED, "PATIENT_ID": REDACTED, "sop_instance_uid": "1"}

    def test_the_callers_nested_dict_is_not_modified(self):
        details = {"PatientName": "DOE^JANE"}
        redact_phi(None, "info", {"event": "x", "details": details})
        assert details == {"PatientName": "DOE^JANE"}

    def test_required_keys_are_listed(self):
        assert PHI_KEYS >= {"patient_name", "patient_id", "patient_birth_date",
                            "PatientName", "PatientID", "PatientBirthDate"}


class TestLevels:
    def test_events_below_the_level_are_dropped(self):
        stream = configured(level="warning")
        log = structlog.get_logger()
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        logging.getLogger("scp.something").info("stdlib info")
        assert [event["event"] for event in json_lines(stream)] == ["w", "e"]

    def test_debug_lets_everything_through(self):
        stream = configured(level="debug")
        structlog.get_logger().debug("d")
        logging.getLogger("pynetdicom.events").debug("PDU dump")
        assert [event["event"] for event in json_lines(stream)] == ["d", "PDU dump"]

    def test_libraries_are_held_at_warning_unless_debug(self):
        stream = configured(level="info")
        logging.getLogger("pynetdicom.acse").info("Association accepted")
        logging.getLogger("httpx").info("HTTP Request: POST ...")
        logging.getLogger("pynetdicom.acse").warning("Association rejected")
        assert [event["event"] for event in json_lines(stream)] == ["Association rejected"]

    def test_libraries_follow_a_stricter_level(self):
        configured(level="error")
        assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.ERROR


class TestReconfiguration:
    def test_calling_again_replaces_the_handler(self):
        first = configured()
        second = configured()
        structlog.get_logger().info("once")
        assert first.getvalue() == ""
        assert len(json_lines(second)) == 1

    def test_module_level_loggers_follow_reconfiguration(self):
        log = structlog.get_logger()
        configured(level="info")
        log.info("first")
        second = configured(level="error")
        log.info("second")
        assert second.getvalue() == ""

    def test_capture_logs_still_works_after_configuration(self):
        configured()
        log = structlog.get_logger()
        with capture_logs() as captured:
            log.info("sr_spooled", sop_instance_uid="1.2.3")
        assert captured == [{"event": "sr_spooled", "sop_instance_uid": "1.2.3", "log_level": "info"}]
