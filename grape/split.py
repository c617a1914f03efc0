"""Seeded train / validation / test splits of perturbation conditions, as GEARS defines them.

Simulation split: a fraction ``train_gene_fraction`` of the singly perturbed genes
are *train genes*. Singles of the other genes are test conditions
(``unseen_single``). A double whose two genes are both train genes is
``combo_seen2``; a fraction ``seen2_train_fraction`` of those train, the rest test.
Doubles with one or no train gene are test (``combo_seen1``, ``combo_seen0``). The
validation set is carved out of the training conditions the same way with the
next seed. Every random choice comes from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from grape._io import atomic_path
from grape.cli import PathArg
from grape.data import DatasetOptions, condition_genes, read_dataset

log = logging.getLogger(__name__)

CLI_PATHS = {
    "dataset": PathArg("single-cell h5ad (GEARS contract)"),
    "out": PathArg("output TSV: condition, split (train/val/test), subgroup"),
}

SPLIT_COLUMNS = ["condition", "split", "subgroup"]


def _one_split(
    conditions: Sequence[tuple[str, ...]], *, seed: int, train_gene_fraction: float, seen2_train_fraction: float
) -> tuple[list[str], list[str]]:
    """Assign each non-control condition to train or held out, with its subgroup."""
    rng = np.random.default_rng(seed)
    singles = sorted({c[0] for c in conditions if len(c) == 1})
    n_train = int(round(train_gene_fraction * len(singles)))
    train_genes = set(rng.permutation(np.array(singles, dtype=object))[:n_train].tolist()) if singles else set()
    split, subgroup = [], []
    seen2 = [i for i, c in enumerate(conditions) if len(c) == 2 and all(g in train_genes for g in c)]
    seen2_held = set(rng.permutation(seen2)[int(round(seen2_train_fraction * len(seen2))):].tolist())
    for i, genes in enumerate(conditions):
        if len(genes) == 1:
            seen = genes[0] in train_genes
            split.append("train" if seen else "held")
            subgroup.append("seen_single" if seen else "unseen_single")
        else:
            n_seen = sum(g in train_genes for g in genes)
            held = n_seen < 2 or i in seen2_held
            split.append("held" if held else "train")
            subgroup.append(f"combo_seen{n_seen}")
    return split, subgroup


def simulation_split(
    conditions: Sequence[str],
    *,
    genes_of: Callable[[str], tuple[str, ...]],
    seed: int = 1,
    train_gene_fraction: float = 0.75,
    seen2_train_fraction: float = 0.75,
) -> pd.DataFrame:
    """GEARS' simulation split of ``conditions`` (control excluded) into train / val / test.

    ``genes_of`` maps a condition to its perturbed genes (``()`` for the control).
    Returns a table with columns condition, split, subgroup (subgroups of test and
    val conditions: unseen_single, combo_seen0, combo_seen1, combo_seen2).
    """
    conds = sorted(c for c in conditions if genes_of(c))
    genes = [genes_of(c) for c in conds]
    bad = [c for c, g in zip(conds, genes) if len(g) > 2]
    if bad:
        raise ValueError(f"conditions with more than two genes are not supported: {', '.join(bad[:5])}")
    outer, outer_group = _one_split(genes, seed=seed, train_gene_fraction=train_gene_fraction,
                                    seen2_train_fraction=seen2_train_fraction)
    train_idx = [i for i, s in enumerate(outer) if s == "train"]
    inner, inner_group = _one_split([genes[i] for i in train_idx], seed=seed + 1,
                                    train_gene_fraction=train_gene_fraction,
                                    seen2_train_fraction=seen2_train_fraction)
    split = ["test" if s == "held" else "train" for s in outer]
    subgroup = list(outer_group)
    for j, i in enumerate(train_idx):
        if inner[j] == "held":
            split[i], subgroup[i] = "val", inner_group[j]
    table = pd.DataFrame({"condition": conds, "split": split, "subgroup": subgroup})
    counts = table["split"].value_counts()
    for name in ("train", "val", "test"):
        if counts.get(name, 0) == 0:
            raise ValueError(
                f"too few conditions for the split: no {name} condition among {len(conds)} "
                f"(train_gene_fraction={train_gene_fraction}, seen2_train_fraction={seen2_train_fraction})"
            )
    return table


@dataclass(frozen=True)
class Options(DatasetOptions):
    """Options of the split stage (config sections ``dataset`` and ``split``)."""

    seed: int = field(default=1, metadata={"help": "seed of the split"})
    train_gene_fraction: float = field(default=0.75, metadata={"help": "fraction of singly perturbed genes seen in training"})
    seen2_train_fraction: float = field(
        default=0.75, metadata={"help": "fraction of doubles with both genes seen that go to training"}
    )


def read_split(path: str | Path, conditions: Sequence[str]) -> pd.DataFrame:
    """Read a split table and check that it covers exactly ``conditions`` (control excluded)."""
    table = pd.read_csv(path, sep="\t", dtype=str)
    missing_cols = [c for c in SPLIT_COLUMNS if c not in table.columns]
    if missing_cols:
        raise ValueError(f"{path}: missing columns {', '.join(missing_cols)}")
    bad = sorted(set(table["split"]) - {"train", "val", "test"})
    if bad:
        raise ValueError(f"{path}: unknown split values {', '.join(bad)} (use train, val, test)")
    listed, wanted = set(table["condition"]), set(conditions)
    if listed != wanted:
        extra, absent = sorted(listed - wanted), sorted(wanted - listed)
        raise ValueError(
            f"{path}: conditions differ from the dataset's; not in the dataset: {', '.join(extra[:5]) or '-'}; "
            f"not in the split: {', '.join(absent[:5]) or '-'}"
        )
    return table


def run(*, options: Options, dataset: Path, out: Path) -> None:
    """Split the dataset's conditions and write the table."""
    adata = read_dataset(dataset, options=options)
    conditions = [c for c in adata.obs[options.condition_key].astype(str).unique() if c != options.control]
    table = simulation_split(
        conditions, genes_of=lambda c: condition_genes(c, options=options), seed=options.seed,
        train_gene_fraction=options.train_gene_fraction, seen2_train_fraction=options.seen2_train_fraction,
    )
    log.info("split: %s", table.groupby(["split", "subgroup"]).size().to_dict())
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
