"""The ``sr2fhir`` command line: parse, then call one function per subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from mapping import MappingOptions

from .convert import run_convert

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so tests and docs can inspect it)."""
    parser = argparse.ArgumentParser(
        prog="sr2fhir",
        description="DICOM SR (TID 1500 Measurement Report) to FHIR R5, per the HL7 DICOM SR IG.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert", help="map SR files to FHIR transaction Bundles (JSON)",
        description="Map DICOM SR files to FHIR R5 transaction Bundles. Warnings about skipped "
        "content items go to stderr; the Bundles alone go to the output.",
    )
    convert.add_argument("inputs", nargs="+", type=Path, metavar="INPUT.dcm", help="DICOM SR file(s)")
    where = convert.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the Bundle to FILE (one input only)")
    where.add_argument("-d", "--output-dir", type=Path, metavar="DIR",
                       help="write one <SOP Instance UID>.json per input into DIR")
    convert.add_argument("--write-mode", choices=("put", "conditional"), default="put",
                         help="put: PUT Type/<deterministic id> (default); conditional: POST + ifNoneExist")
    convert.add_argument("--timezone", default="UTC", metavar="TZ",
                         help="IANA time zone for DICOM times without an offset (default: UTC)")
    convert.add_argument("--compact", action="store_true", help="no indentation in the JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sr2fhir`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "convert":
        return _convert(parser, args)
    parser.error(f"unknown command {args.command!r}")
    return 2


def _convert(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.output is not None and len(args.inputs) > 1:
        parser.error("--output takes one input; use --output-dir for several")
    try:
        options = MappingOptions(write_mode=args.write_mode, default_timezone=args.timezone)
    except ValidationError as exc:
        parser.error(f"--timezone: {exc.errors()[0]['msg'].removeprefix('Value error, ')}")
    return run_convert(
        args.inputs, options, output=args.output, output_dir=args.output_dir,
        indent=None if args.compact else 2,
    )


if __name__ == "__main__":
    sys.exit(main())
