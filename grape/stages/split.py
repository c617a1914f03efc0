"""The split stage: seeded train / validation / test split of the dataset's conditions, written as a TSV.

The split is :func:`grape.data.split.split_dataset`; this command reads the dataset and writes
the table (condition, split, subgroup) atomically.
"""

from __future__ import annotations

from pathlib import Path

from grape.data.dataset import read_dataset
from grape.data.split import Options, split_dataset
from grape.io.files import atomic_path
from grape.stages import PathArg

FILES = {
    "dataset": PathArg("single-cell h5ad (GEARS contract)"),
    "table": PathArg("split table given by the user (split.kind table): condition, split[, subgroup]",
                     required=False),
    "out": PathArg("output TSV: condition, split (train/val/test), subgroup"),
}

__all__ = ["FILES", "Options", "run"]


def run(*, options: Options, dataset: Path, out: Path, table: Path | None = None) -> None:
    """Split the dataset's conditions and write the table."""
    result = split_dataset(read_dataset(dataset, options=options), options=options, table=table)
    with atomic_path(out) as tmp:
        result.to_csv(tmp, sep="\t", index=False)
