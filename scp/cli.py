"""The ``sr2fhir`` command line: parse, then call one function per subcommand.

Each subcommand's module is imported only when that command runs: ``sr2fhir convert`` must
not pay for (or depend on) pynetdicom, prometheus_client and httpx.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["main", "build_parser", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = "config.yaml"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so tests and docs can inspect it)."""
    parser = argparse.ArgumentParser(
        prog="sr2fhir",
        description="DICOM SR (TID 1500 Measurement Report) to FHIR R5, per the HL7 DICOM SR IG.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert", help="map SR files to FHIR transaction Bundles (JSON)",
        description="Map DICOM SR files to FHIR R5 (or R4) transaction Bundles. Warnings about skipped "
        "content items go to stderr; the Bundles alone go to the output.",
    )
    convert.add_argument("inputs", nargs="+", type=Path, metavar="INPUT.dcm", help="DICOM SR file(s)")
    where = convert.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the Bundle to FILE (one input only)")
    where.add_argument("-d", "--output-dir", type=Path, metavar="DIR",
                       help="write one <SOP Instance UID>.json per input into DIR")
    convert.add_argument("--write-mode", choices=("put", "conditional", "conditional-update"), default="put",
                         help="put: PUT Type/<deterministic id> (default); conditional: POST + ifNoneExist; "
                         "conditional-update: PUT Type?identifier=system|value")
    convert.add_argument("--fhir-version", choices=("r5", "r4"), default="r5",
                         help="the FHIR release to write (default: r5)")
    convert.add_argument("--r4-imaging-selection", choices=("basic", "omit"), default="basic",
                         help="with --fhir-version r4: ImagingSelections as R4 Basic resources (default) or left out")
    convert.add_argument("--timezone", default="UTC", metavar="TZ",
                         help="IANA time zone for DICOM times without an offset (default: UTC)")
    convert.add_argument("--compact", action="store_true", help="no indentation in the JSON")
    convert.add_argument("-j", "--jobs", type=_positive_int, default=None, metavar="N",
                         help="convert in N processes (default: one per CPU); output order is input order")

    serve = commands.add_parser(
        "serve", help="run the daemon: C-STORE SCP -> spool -> FHIR server (or outbox)",
        description="Receive SRs over DICOM, spool them durably, map and deliver them. "
        "Without fhir.base_url the Bundles go to fhir.outbox_directory.",
    )
    _config_argument(serve)

    check = commands.add_parser(
        "check-config", help="validate the configuration and test the port, spool and FHIR server",
        description="Exit status: 0 all good; 2 invalid configuration; otherwise the sum of 4 (DICOM port), "
        "8 (spool/outbox directory), 16 (FHIR server), 32 (OAuth2 token endpoint).",
    )
    _config_argument(check)

    spool = commands.add_parser("spool", help="inspect the spool and re-queue dead letters")
    spool_commands = spool.add_subparsers(dest="spool_command", required=True, metavar="ACTION")
    for name, text in (("status", "backlog and dead-letter counts"), ("failed", "list dead letters with their reason")):
        _config_argument(spool_commands.add_parser(name, help=text))
    retry = spool_commands.add_parser("retry", help="re-queue dead letters (all, or the IDs given)")
    retry.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids from `sr2fhir spool failed`")
    retry.add_argument("--endpoint-problems", action="store_true",
                       help="re-queue the dead letters an earlier release made for an endpoint problem "
                       "(marked by `sr2fhir spool failed`)")
    _config_argument(retry)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=None, metavar="FILE",
                        help=f"configuration file (default: ./{DEFAULT_CONFIG} when it exists, else built-in defaults)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sr2fhir`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "convert":
        return _convert(parser, args)
    from .config import ConfigError

    try:
        config_path, settings = _settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"sr2fhir: error: {problem}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from .service.daemon import serve
        from .telemetry.logs import configure_logging

        configure_logging(settings.log)
        return serve(settings, config_path)
    if args.command == "check-config":
        from .commands.check_config import check_config

        return check_config(settings, str(config_path) if config_path else "built-in defaults")
    from .commands.spool import run_spool_command

    return run_spool_command(args.spool_command, settings, getattr(args, "ids", None),
                             endpoint_problems=getattr(args, "endpoint_problems", False))


def _version() -> str:
    try:
        return version("sr2fhir")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


def _settings(path: Path | None) -> tuple[Path | None, Settings]:
    """The explicit file, else ./config.yaml when present, else the built-in defaults."""
    from .config import load_settings

    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = Path(DEFAULT_CONFIG)
    return (path.resolve() if path is not None else None), load_settings(path)


def _convert(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from mapping import MappingOptions

    from .commands.convert import run_convert
    from .commands.ordered_pool import settle_collector

    if args.output is not None and len(args.inputs) > 1:
        parser.error("--output takes one input; use --output-dir for several")
    try:
        options = MappingOptions(write_mode=args.write_mode, default_timezone=args.timezone,
                                 fhir_version=args.fhir_version, r4_imaging_selection=args.r4_imaging_selection)
    except ValidationError as exc:
        parser.error(f"--timezone: {exc.errors()[0]['msg'].removeprefix('Value error, ')}")
    settle_collector()  # forked workers inherit it
    return run_convert(
        args.inputs, options, output=args.output, output_dir=args.output_dir,
        indent=None if args.compact else 2, jobs=args.jobs,
    )


if __name__ == "__main__":
    sys.exit(main())
