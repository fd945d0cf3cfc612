"""Logging for the daemon: structlog events and stdlib records in one format, on one stream.

:func:`configure_logging` is called once per process at start-up (by ``cli.main``, and
by the worker process); modules only do ``log = structlog.get_logger()`` and log
past-tense events with stable keys (``log.info("sr_spooled", sop_instance_uid=...)``).

The chain (structlog's production chain, rendered through the standard library so that
pynetdicom's and httpx's records come out the same way)::

    structlog event ─ merge contextvars ─ level ─ logger name ─ UTC ISO timestamp ─ PHI
      redaction ─ ProcessorFormatter.wrap_for_formatter ─┐
    stdlib record (pynetdicom, httpx, py.warnings) ─ same steps (foreign_pre_chain) ─┤
                                                   one StreamHandler on the root logger:
                            exception formatting, JSONRenderer (off a TTY) or ConsoleRenderer

Level filtering happens before any processing (a filtering bound logger), so debug
calls cost next to nothing at ``info``. Library loggers are held at WARNING unless the
level is ``debug``. Python warnings (pydicom's, for instance) are routed into logging.

PHI: unless ``include_phi`` is set, event keys naming patient data (:data:`PHI_KEYS`,
compared without case and underscores, also inside nested dicts) are replaced by
``"[redacted]"``. Free text is not inspected: do not put patient data into event names
or messages. Tracebacks are rendered without local variables for the same reason.

An association process (``dicom.listener_processes`` > 1) calls
:func:`configure_forwarded_logging` instead: its events, level-filtered, go to the daemon
as plain dicts and are rendered (timestamp, redaction, format) by the daemon's chain above,
so there is one stream in one format.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from ..config import LogSettings

__all__ = ["PHI_KEYS", "REDACTED", "configure_forwarded_logging", "configure_logging", "redact_phi"]

PHI_KEYS: frozenset[str] = frozenset(
    {
        # Patient Module (PS3.3 C.7.1.1) attributes that identify the patient, by
        # keyword and in snake case.
        "PatientName", "patient_name",
        "PatientID", "patient_id",
        "PatientBirthDate", "patient_birth_date",
        "PatientBirthTime", "patient_birth_time",
        "OtherPatientIDs", "other_patient_ids",
        "OtherPatientIDsSequence", "other_patient_ids_sequence",
        "OtherPatientNames", "other_patient_names",
        "PatientBirthName", "patient_birth_name",
        "PatientMotherBirthName", "patient_mother_birth_name",
        "PatientAddress", "patient_address",
        "PatientTelephoneNumbers", "patient_telephone_numbers",
    }
)
"""Event keys whose values are patient data; matched ignoring case and underscores."""

REDACTED = "[redacted]"

_HANDLER_NAME = "sr2fhir"
_LIBRARY_LOGGERS = ("pynetdicom", "httpx", "httpcore")
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


@functools.lru_cache(maxsize=1024)
def _normalized(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


_PHI_NORMALIZED = frozenset(_normalized(key) for key in PHI_KEYS)


def _is_phi(key: object) -> bool:
    return isinstance(key, str) and _normalized(key) in _PHI_NORMALIZED


def _redact(value: Any) -> Any:
    """A copy of ``value`` with PHI keys redacted in nested mappings (the original, which
    may be the caller's object, is left alone)."""
    if isinstance(value, Mapping):
        return {key: REDACTED if _is_phi(key) else _redact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(item) for item in value)
    return value


def redact_phi(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace the values of patient-data keys by ``"[redacted]"``."""
    for key, value in event_dict.items():
        if _is_phi(key):
            event_dict[key] = REDACTED
        elif isinstance(value, (Mapping, list, tuple)) and key != "_record":
            event_dict[key] = _redact(value)
    return event_dict


def configure_logging(
    settings: LogSettings, *, stream: TextIO | None = None, is_tty: bool | None = None
) -> None:
    """Configure structlog and the standard library's root logger to write to ``stream``
    (default: ``sys.stdout`` at call time). ``is_tty`` overrides the terminal detection
    that ``format: auto`` uses. Calling it again replaces the previous configuration."""
    stream = sys.stdout if stream is None else stream
    if is_tty is None:
        is_tty = _isatty(stream)
    level = _LEVELS[settings.level]
    as_json = settings.format == "json" or (settings.format == "auto" and not is_tty)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not settings.include_phi:
        shared.append(redact_phi)

    rendering: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if as_json:
        rendering += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        rendering.append(
            structlog.dev.ConsoleRenderer(colors=is_tty, exception_formatter=structlog.dev.plain_traceback)
        )

    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=rendering))
    _install_root_handler(handler, level)

    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        context_class=dict,
        # Not cached: a cached module-level logger would keep this configuration for
        # good, defeating structlog.testing.capture_logs and reconfiguration in tests.
        cache_logger_on_first_use=False,
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _ForwardingHandler(logging.Handler):
    """Stdlib records (pynetdicom's) of an association process, sent on as events."""

    def __init__(self, send: Callable[[str, dict[str, Any]], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event: dict[str, Any] = {"event": record.getMessage(), "logger": record.name}
            if record.exc_info:
                event["exception"] = logging.Formatter().formatException(record.exc_info)
            self._send(record.levelname.lower(), event)
        except Exception:  # noqa: BLE001 - logging must not raise into the caller
            self.handleError(record)


def configure_forwarded_logging(settings: LogSettings, send: Callable[[str, dict[str, Any]], None]) -> None:
    """Log through ``send(method_name, event_dict)`` (an association process: the daemon renders).

    Level filtering and exception formatting happen here; timestamps, PHI redaction and the
    output format are the receiving daemon's (:func:`configure_logging`)."""
    level = _LEVELS[settings.level]

    def forward(_logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        send(method_name, event_dict)
        raise structlog.DropEvent

    _install_root_handler(_ForwardingHandler(send), level)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.format_exc_info, forward],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.ReturnLoggerFactory(),
        context_class=dict,
        cache_logger_on_first_use=False,
    )


def _install_root_handler(handler: logging.Handler, level: int) -> None:
    """Make ``handler`` the root logger's sr2fhir handler (replacing an earlier one), at ``level``;
    the libraries' loggers no chattier than WARNING unless ``level`` is DEBUG."""
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for previous in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(previous)
        previous.close()
    root.addHandler(handler)
    root.setLevel(level)
    library_level = logging.DEBUG if level <= logging.DEBUG else max(level, logging.WARNING)
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
    logging.captureWarnings(True)
