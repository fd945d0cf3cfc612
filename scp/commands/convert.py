"""``sr2fhir convert``: map SR files to FHIR transaction Bundles (files in, JSON out).

Each input is read, mapped and written independently: one bad file is reported on stderr
(one line naming the file and the problem) and the others still convert.
"""

from __future__ import annotations

import struct
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import BytesLengthException, InvalidDicomError

from mapping import MappingError, MappingOptions, MappingResult, map_sr, serialize

__all__ = ["ConvertError", "Converted", "read_sr", "convert_file", "run_convert"]

# What pydicom raises on files that are not DICOM, truncated, or malformed.
_READ_ERRORS = (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError,
                IndexError, AttributeError, OverflowError, NotImplementedError, struct.error,
                BytesLengthException)


UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")


class ConvertError(Exception):
    """One input could not be converted; the message is the one line shown to the user."""


@dataclass(frozen=True, slots=True)
class Converted:
    """A converted input: the mapping result and the warnings raised while reading it."""

    path: Path
    sop_instance_uid: str
    result: MappingResult
    warnings: tuple[str, ...] = field(default=())


def read_sr(path: Path) -> pydicom.Dataset:
    """Read a DICOM Part 10 file fully (so truncation is found here, not while mapping)."""
    try:
        ds = pydicom.dcmread(path)
        if _truncated(ds, path.stat().st_size):
            raise ConvertError("truncated DICOM file (the last element runs past the end of the file)")
        ds.walk(lambda _ds, _elem: None)  # decode every element now: malformed values fail here
    except FileNotFoundError as exc:
        raise ConvertError(f"no such file ({exc.strerror})") from exc
    except IsADirectoryError as exc:
        raise ConvertError("is a directory, not a DICOM file") from exc
    except PermissionError as exc:
        raise ConvertError(f"cannot read the file ({exc.strerror})") from exc
    except InvalidDicomError as exc:
        raise ConvertError(f"not a DICOM Part 10 file ({_brief(exc)})") from exc
    except _READ_ERRORS as exc:
        raise ConvertError(f"unreadable or truncated DICOM file ({type(exc).__name__}: {_brief(exc)})") from exc
    return ds


def convert_file(path: Path, options: MappingOptions) -> Converted:
    """Read and map one file; :class:`ConvertError` says why it could not be."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_sr(path)
        try:
            result = map_sr(ds, options)
        except MappingError as exc:
            raise ConvertError(str(exc)) from exc
    notes = tuple(dict.fromkeys(f"pydicom: {w.message}" for w in caught))
    return Converted(path, str(ds.SOPInstanceUID), result, notes)


def run_convert(
    inputs: Sequence[Path],
    options: MappingOptions,
    *,
    output: Path | None = None,
    output_dir: Path | None = None,
    indent: int | None = 2,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Convert every input; return the exit status (0 all converted, 1 any failed).

    Output: ``output_dir/<SOP Instance UID>.json`` per input; or one file; or stdout (one
    Bundle, or one compact Bundle per line when there are several inputs).
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    failed = 0
    several = len(inputs) > 1
    for path in inputs:
        try:
            converted = convert_file(path, options)
        except ConvertError as exc:
            print(f"sr2fhir: error: {path}: {exc}", file=stderr)
            failed += 1
            continue
        for note in (*converted.warnings, *map(str, converted.result.skipped)):
            print(f"sr2fhir: warning: {path}: {note}", file=stderr)
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            target = output_dir / f"{converted.sop_instance_uid}.json"
            target.write_bytes(serialize(converted.result.bundle, indent=indent) + b"\n")
        elif output is not None:
            output.write_bytes(serialize(converted.result.bundle, indent=indent) + b"\n")
        else:
            text = serialize(converted.result.bundle, indent=None if several else indent).decode("utf-8")
            stdout.write(text + "\n")
    return 1 if failed else 0


def _truncated(ds: pydicom.Dataset, file_size: int) -> bool:
    """True when the file ends inside its last element.

    pydicom reads a cut-off file without complaint, so check the last top-level element
    before any value is decoded: a defined length must fit in the file; an undefined length
    must be closed by a Sequence Delimitation Item at the very end of the file.
    """
    if not ds:
        return False
    last = ds.get_item(max(ds.keys()))
    if not isinstance(last, RawDataElement) or last.value_tell is None:
        return False
    if last.length == UNDEFINED_LENGTH:
        with open(ds.filename, "rb") as f:
            f.seek(max(file_size - 8, 0))
            return f.read(8) not in _SEQUENCE_DELIMITERS
    return last.value_tell + last.length > file_size


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
