"""The test corpus: every kind of SR the mapping supports, as datasets, by name.

Used wherever "everything we map" must go somewhere: the validator engine (R5 and R4), the
deliveries to HAPI FHIR. The real samples of ``../shared/samples/real`` are included when that
folder is present (the TID 1500 ones; the others are refused by design).
"""

from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset

from mapping import MappingError, MappingOptions, map_sr

from . import sr_builders as sr
from .conformance import SAMPLES
from .report_fixtures import every_profile_report, fidelity_report

__all__ = ["built_reports", "real_samples", "sr_corpus", "corpus_bundles"]

SOP_CLASSES = {"enhanced": sr.ENHANCED_SR, "comprehensive": sr.COMPREHENSIVE_SR,
               "comprehensive3d": sr.COMPREHENSIVE_3D_SR}


def built_reports() -> dict[str, Dataset]:
    """The reports the tests build: every profile in every TID 1500 SOP class, edge cases, highdicom's."""
    reports = {f"every-profile-{name}": every_profile_report(uid) for name, uid in SOP_CLASSES.items()}
    reports["every-profile-no-observation-uids"] = every_profile_report(observation_uids=False)
    reports["fidelity"] = fidelity_report()
    reports["large"] = sr.large_report(n_groups=12, measurements_per_group=4)
    reports["highdicom-planar"] = sr.highdicom_planar_report(n_groups=3, measurements_per_group=2)
    reports["highdicom-volumetric"] = sr.highdicom_volumetric_report()
    for name, ds in reports.items():  # the builders reuse UIDs between variants; a server must see them apart
        ds.SOPInstanceUID = sr.uid(f"corpus-{name}")
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return reports


def real_samples() -> dict[str, Dataset]:
    """The TID 1500 SRs of ``../shared/samples/real`` and the IG's example (empty when absent)."""
    samples = {}
    for path in sorted(SAMPLES.glob("*.dcm")) if SAMPLES.exists() else ():
        ds = pydicom.dcmread(path)
        try:
            map_sr(ds)
        except MappingError:
            continue  # not TID 1500: refused by design
        samples[f"real-{path.stem}"] = ds
    return samples


def sr_corpus(*, with_real: bool = True) -> dict[str, Dataset]:
    """Every report of the corpus by name (distinct SOP Instance UIDs)."""
    corpus = built_reports()
    if with_real:
        corpus.update(real_samples())
    uids = [str(ds.SOPInstanceUID) for ds in corpus.values()]
    assert len(set(uids)) == len(uids), "the corpus holds two reports with one SOP Instance UID"
    return corpus


def corpus_bundles(options: MappingOptions, *, with_real: bool = True) -> dict[str, dict]:
    """The transaction Bundle of every corpus report under ``options``."""
    return {name: map_sr(ds, options).bundle for name, ds in sr_corpus(with_real=with_real).items()}
