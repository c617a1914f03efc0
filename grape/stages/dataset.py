"""The dataset stage: download, extract or subset a perturbation dataset (``grape dataset <command>``).

``download`` fetches a dataset archive (or bare h5ad), checked and pinned
(:func:`grape.io.datasets.download`); ``extract`` streams its h5ad member out
(:func:`grape.io.datasets.extract`); ``subset`` keeps the cells whose obs columns hold given
values and checks the dataset contract (:func:`grape.io.datasets.checked_subset`). Every
output is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad

from grape.data.dataset import DatasetError
from grape.io.datasets import (
    ExtractOptions,
    FetchOptions,
    SubsetOptions,
    archive_provenance,
    check_h5ad,
    checked_subset,
    download,
    extract,
    subset_provenance,
)
from grape.io.files import atomic_path, write_text_atomic
from grape.stages import Command, PathArg

__all__ = ["COMMANDS", "download_archive", "extract_h5ad", "subset"]


def _write_json(path: Path, record: dict) -> None:
    write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def download_archive(*, options: FetchOptions, out: Path) -> None:
    """Download dataset ``options.name`` from ``options.url`` to ``out``, beside ``out.sha256`` / ``out.md5``."""
    download(options.url, out, name=options.name, sha256=options.sha256, md5=options.md5, member=options.member,
             policy=options.retry_policy())


def extract_h5ad(*, options: ExtractOptions, archive: Path, out: Path, provenance: Path | None = None) -> None:
    """Write the h5ad member of ``archive`` to ``out`` (and where it came from to ``provenance``)."""
    found = extract(archive, out, name=options.name, member=options.member)
    if provenance is not None:
        _write_json(provenance, archive_provenance(archive, found, name=options.name))


def subset(*, options: SubsetOptions, dataset: Path, out: Path, provenance: Path | None = None) -> None:
    """Keep the cells of ``dataset`` selected by ``options.subset``, checked; write ``out`` (and ``provenance``)."""
    dataset = Path(dataset)
    if not dataset.is_file():
        raise DatasetError(f"dataset file not found: {dataset}")
    check_h5ad(dataset)
    adata = ad.read_h5ad(dataset)
    cells_in = adata.n_obs
    kept = checked_subset(adata, options=options, source=str(dataset))
    with atomic_path(out) as tmp:
        kept.write_h5ad(tmp, compression="gzip")
    if provenance is not None:
        _write_json(provenance, subset_provenance(dataset, kept, options=options, cells_in=cells_in))


COMMANDS: dict[str, Command] = {
    "download": Command(
        files={"out": PathArg("the downloaded file; <out>.sha256 / .md5 beside it")},
        options=FetchOptions, run=download_archive,
        help="download, check and pin a dataset archive (or h5ad)",
    ),
    "extract": Command(
        files={"archive": PathArg("the downloaded archive (or h5ad)"),
               "out": PathArg("the extracted h5ad"),
               "provenance": PathArg("JSON record of where the h5ad came from", required=False)},
        options=ExtractOptions, run=extract_h5ad,
        help="extract the h5ad member of a downloaded archive",
    ),
    "subset": Command(
        files={"dataset": PathArg("the h5ad to subset"),
               "out": PathArg("the subset h5ad"),
               "provenance": PathArg("JSON record of the subset", required=False)},
        options=SubsetOptions, run=subset,
        help="keep the cells whose obs columns hold given values",
    ),
}
