"""``sr2fhir convert``: map SR files to FHIR transaction Bundles (files in, JSON out).

Each input is read, mapped and written independently: one bad file is reported on stderr
(one line naming the file and the problem) and the others still convert. Inputs are converted
in ``jobs`` worker processes (read, map and serialise there); this process writes the Bundles
and the stderr lines in input order, so the output does not depend on ``jobs``.

Reading takes the daemon's fast path: ``dcmread`` leaves the Content Sequence raw for
``map_sr``'s raw reader, and :func:`~.element_check.check_every_element` proves every value
decodes without building pydicom Datasets (a full ``Dataset.walk`` cost five times the mapping).
"""

from __future__ import annotations

import os
import struct
import sys
import uuid
import warnings
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import TextIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import BytesLengthException, InvalidDicomError

from mapping import MappingError, MappingOptions, MappingResult, map_sr, serialize

from .element_check import check_every_element
from .ordered_pool import default_jobs, ordered_map
from .progress import Progress

__all__ = ["ConvertError", "Converted", "Outcome", "read_sr", "convert_file", "convert_to_json", "run_convert"]

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
    """Read a DICOM Part 10 file and check every value decodes (so a truncated or malformed
    file is found here, not while mapping); the elements stay undecoded for ``map_sr``."""
    try:
        data = path.read_bytes()
        ds = pydicom.dcmread(BytesIO(data))
        if _truncated(ds, data):
            raise ConvertError("truncated DICOM file (the last element runs past the end of the file)")
        check_every_element(ds)
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


@dataclass(frozen=True, slots=True)
class Outcome:
    """One input's result as the writer needs it (small and picklable, to cross from a worker
    process): the Bundle's JSON (or the file a worker wrote it to), or the error; and the
    warnings, both as stderr lines."""

    path: Path
    messages: tuple[str, ...]
    sop_instance_uid: str | None = None
    json: bytes | None = None
    spooled: Path | None = None

    @property
    def converted(self) -> bool:
        return self.json is not None or self.spooled is not None


def convert_to_json(path: Path, options: MappingOptions, indent: int | None, *,
                    spool_dir: Path | None = None, spool_prefix: str = ".sr2fhir-") -> Outcome:
    """Read, map and serialise one file (what a worker does); never raises :class:`ConvertError`.

    With ``spool_dir``, the JSON (and a newline) goes to a new hidden file there, named in
    :attr:`Outcome.spooled`, rather than back through the pipe: the writer only renames it. An
    indented 60-group Bundle is 2.5 MB, and copying it to the writer cost that process 8 ms a
    report, an eighth of the report's whole cost, on the one process all workers wait for.
    """
    try:
        converted = convert_file(path, options)
    except ConvertError as exc:
        return Outcome(path, (f"sr2fhir: error: {path}: {exc}",))
    notes = (*converted.warnings, *map(str, converted.result.skipped))
    messages = tuple(f"sr2fhir: warning: {path}: {note}" for note in notes)
    text = serialize(converted.result.bundle, indent=indent)
    if spool_dir is None:
        return Outcome(path, messages, converted.sop_instance_uid, text)
    spool_dir.mkdir(parents=True, exist_ok=True)  # only once something converted, as without workers
    spooled = spool_dir / f"{spool_prefix}{uuid.uuid4().hex}.part"
    # Created as write_bytes creates a file (0666 less the umask), not 0600 as mkstemp would.
    with os.fdopen(os.open(spooled, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
        f.write(text)
        f.write(b"\n")
    return Outcome(path, messages, converted.sop_instance_uid, spooled=spooled)


def run_convert(
    inputs: Sequence[Path],
    options: MappingOptions,
    *,
    output: Path | None = None,
    output_dir: Path | None = None,
    indent: int | None = 2,
    jobs: int | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Convert every input; return the exit status (0 all converted, 1 any failed).

    Output: ``output_dir/<SOP Instance UID>.json`` per input; or one file; or stdout (one
    Bundle, or one compact Bundle per line when there are several inputs). ``jobs`` worker
    processes (default: one per CPU this process may use) convert; the output, and the error
    and warning lines on stderr, come in input order whatever ``jobs`` is (into ``output_dir``,
    workers write hidden files that this process renames in input order, so of two inputs
    with one SOP Instance UID the later one's Bundle stays, as with one job). With stderr on a
    terminal and many inputs, a progress bar shows below those lines.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    jobs = jobs or default_jobs()
    to_stdout = output_dir is None and output is None
    json_indent = None if to_stdout and len(inputs) > 1 else indent
    spool = output_dir is not None and jobs > 1 and len(inputs) > 1
    spool_prefix = f".sr2fhir-convert-{os.getpid()}-"
    convert = partial(convert_to_json, options=options, indent=json_indent,
                      spool_dir=output_dir if spool else None, spool_prefix=spool_prefix)
    progress = Progress(len(inputs), stderr)
    failed = 0
    try:
        for outcome in ordered_map(convert, inputs, jobs):
            for message in outcome.messages:
                progress.line(message)
            if not outcome.converted:
                failed += 1
            elif output_dir is not None:
                target = output_dir / f"{outcome.sop_instance_uid}.json"
                if outcome.spooled is not None:
                    os.replace(outcome.spooled, target)
                else:
                    output_dir.mkdir(parents=True, exist_ok=True)  # only once something converted
                    target.write_bytes(outcome.json + b"\n")
            elif output is not None:
                output.write_bytes(outcome.json + b"\n")
            else:
                stdout.write(outcome.json.decode("utf-8") + "\n")
            progress.advance()
    except KeyboardInterrupt:
        progress.finish()
        print(f"sr2fhir: interrupted after {progress.done} of {len(inputs)} inputs", file=stderr)
        return 130
    except BrokenProcessPool as exc:  # a worker was killed (out of memory?): name the input it stopped at
        progress.finish()
        stopped_at = inputs[progress.done] if progress.done < len(inputs) else inputs[-1]
        print(f"sr2fhir: error: a worker process died while converting {stopped_at} or the inputs after it "
              f"({exc}); {progress.done} of {len(inputs)} inputs done", file=stderr)
        return 1
    finally:
        if spool and output_dir.is_dir():  # a run cut short leaves no hidden files behind
            for leftover in output_dir.glob(f"{spool_prefix}*.part"):
                leftover.unlink(missing_ok=True)
    progress.finish()
    return 1 if failed else 0


def _truncated(ds: pydicom.Dataset, data: bytes) -> bool:
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
        return data[-8:] not in _SEQUENCE_DELIMITERS
    return last.value_tell + last.length > len(data)


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
