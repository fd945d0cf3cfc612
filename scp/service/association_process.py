"""An association process: serves the DICOM associations the daemon's acceptor hands it.

Started by the daemon (``dicom.listener_processes`` > 1) as
``python -m scp.service.association_process --control-fd N --index I --host H --port P [--config FILE]``
with one end of its :class:`~scp.dicom.handoff.Channel` as fd N. It runs the same pynetdicom
listener, admission gate and C-STORE handler as a single-process daemon, with its own spool
writer (SQLite serialises the processes' commits; each put is durable before its answer, as
always), and sends back what the daemon keeps for all processes: each C-STORE answer
(metrics, audit), each connection's end (the global association count) and its log events.

It dies with the daemon (PR_SET_PDEATHSIG); on SIGTERM, or when the daemon closes the
channel, it stops taking connections, lets its associations finish (bounded) and exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from mapping.references import patient_reference

from ..config import ConfigError, load_settings
from ..dicom.handoff import Channel, HandedConnections, plain
from ..dicom.listener import start_listener
from ..dicom.tls import server_ssl_context
from ..spool import open_spool
from ..telemetry.logs import configure_forwarded_logging
from .listener_options import listener_options
from .worker import die_with_parent

__all__ = ["ForwardAnswers", "main"]

log = structlog.get_logger()

DRAIN_TIMEOUT_S = 10.0


class ForwardAnswers:
    """The store observer of an association process: each answer goes to the daemon, whose
    metrics and audit trail count it (one message of ~200 bytes instead of a metrics update
    and an audit line written here)."""

    def __init__(self, channel: Channel, *, include_phi: bool) -> None:
        self._channel = channel
        self._include_phi = include_phi

    def store_answered(self, event: Any, status: int) -> None:
        try:
            requestor = event.assoc.requestor
            patient = None
            if self._include_phi and status == 0:
                try:
                    patient = plain(patient_reference(event.dataset))
                except Exception:  # noqa: BLE001 - no readable Patient ID: the event goes without it
                    patient = None
            self._channel.send(("store", str(requestor.ae_title).strip(), requestor.address or None,
                                str(event.request.AffectedSOPInstanceUID or ""),
                                str(event.request.AffectedSOPClassUID or ""), int(status),
                                event.timestamp.isoformat(), patient))
        except Exception:  # noqa: BLE001 - never into the C-STORE answer
            log.exception("store_answer_not_forwarded")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of an association process."""
    die_with_parent()
    parser = argparse.ArgumentParser(prog="sr2fhir-association-process")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    channel = Channel(socket.socket(fileno=args.control_fd))
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"sr2fhir association process: {exc}", file=sys.stderr)
        return 2

    def send_log(method_name: str, event_dict: dict[str, Any]) -> None:
        try:
            channel.send(("log", method_name, plain(event_dict)))
        except OSError:
            pass  # the daemon is gone

    configure_forwarded_logging(settings.log, send_log)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    dicom = settings.dicom
    writer = open_spool(settings.spool).writer()
    handed = HandedConnections(channel, (args.host, args.port), ended=stop)
    try:
        listener = start_listener(
            host=args.host, port=args.port, writer=writer, ssl_context=server_ssl_context(dicom.tls),
            **listener_options(settings),
            store_observers=[ForwardAnswers(channel, include_phi=settings.audit.include_phi)],
            handed=handed,
        )
    except Exception:
        log.exception("association_process_not_started", index=args.index)
        writer.close()
        return 1
    log.info("association_process_started", index=args.index, pid=os.getpid())
    try:
        channel.send(("ready",))
    except OSError:
        stop.set()
    stop.wait()  # SIGTERM, or the daemon closed the channel
    listener.stop(drain_timeout_s=DRAIN_TIMEOUT_S)
    writer.close()
    log.info("association_process_stopped", index=args.index, pid=os.getpid())
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
