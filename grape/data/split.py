"""Seeded train / validation / test splits of perturbation conditions.

Three kinds (``split.kind``):

``simulation``
    GEARS' simulation split. A fraction ``train_gene_fraction`` of the singly
    perturbed genes are *train genes*. Singles of the other genes are test
    conditions (``unseen_single``). A double whose two genes are both train genes
    is ``combo_seen2``; a fraction ``seen2_train_fraction`` of those train, the rest
    test. Doubles with one or no train gene are test (``combo_seen1``,
    ``combo_seen0``). The validation set is carved out of the training conditions
    the same way with the next seed.
``table``
    The user's table (``split.table``: a TSV with columns ``condition`` and
    ``split`` in train / val / test, optionally ``subgroup``); it must list every
    condition of the dataset (a row for the control label is accepted and ignored).
``logo``
    Leave one gene out: fold ``split.fold`` holds out every condition that
    perturbs the fold's gene (the ``fold``-th of the sorted perturbed genes) as
    test; the conditions of a seeded fraction ``val_gene_fraction`` of the other
    genes (and none of the held-out gene) are validation. Run one fold per run
    (``run: logo_3``, ``split: {kind: logo, fold: 3}``); the log names the number
    of folds.

Subgroups of the table and leave-one-gene-out splits follow GEARS' names: a single
is ``unseen_single`` when its gene has no training single, else ``seen_single``;
a double is ``combo_seen<n>`` with n its genes that have a training single. Every
random choice comes from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from grape.data.dataset import DatasetOptions, condition_genes
from grape.options import options_class

log = logging.getLogger(__name__)

SPLIT_COLUMNS = ["condition", "split", "subgroup"]
KINDS = ("simulation", "table", "logo")
SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """The split cannot be made or read; the message names the reason."""


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


def _checked(conds: Sequence[str], genes_of: Callable[[str], tuple[str, ...]]) -> list[tuple[str, ...]]:
    genes = [genes_of(c) for c in conds]
    bad = [c for c, g in zip(conds, genes) if len(g) > 2]
    if bad:
        raise SplitError(f"conditions with more than two genes are not supported: {', '.join(bad[:5])}")
    return genes


def _require_all(table: pd.DataFrame, *, what: str) -> pd.DataFrame:
    counts = table["split"].value_counts()
    empty = [name for name in SPLITS if counts.get(name, 0) == 0]
    if empty:
        raise SplitError(
            f"too few conditions for the split: no {' and no '.join(empty)} condition among "
            f"{len(table)} ({what})"
        )
    return table


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
    genes = _checked(conds, genes_of)
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
    return _require_all(table, what=f"simulation split, train_gene_fraction={train_gene_fraction}, "
                                     f"seen2_train_fraction={seen2_train_fraction}")


def subgroups(table: pd.DataFrame, *, genes_of: Callable[[str], tuple[str, ...]]) -> list[str]:
    """GEARS subgroup of every row of a split table, from the genes with a training single."""
    genes = [genes_of(c) for c in table["condition"]]
    seen = {g[0] for g, s in zip(genes, table["split"]) if s == "train" and len(g) == 1}
    out = []
    for g in genes:
        if len(g) == 1:
            out.append("seen_single" if g[0] in seen else "unseen_single")
        else:
            out.append(f"combo_seen{sum(x in seen for x in g)}")
    return out


def perturbed_gene_list(conditions: Sequence[str], *, genes_of: Callable[[str], tuple[str, ...]]) -> list[str]:
    """Sorted genes perturbed by any condition: fold i of the logo split holds out gene i."""
    return sorted({g for c in conditions for g in genes_of(c)})


def logo_split(
    conditions: Sequence[str],
    *,
    genes_of: Callable[[str], tuple[str, ...]],
    fold: int,
    seed: int = 1,
    val_gene_fraction: float = 0.15,
) -> pd.DataFrame:
    """Leave-one-gene-out fold ``fold``: every condition perturbing that gene is test."""
    conds = sorted(c for c in conditions if genes_of(c))
    genes = _checked(conds, genes_of)
    pool = perturbed_gene_list(conds, genes_of=genes_of)
    if not 0 <= fold < len(pool):
        raise SplitError(f"split.fold {fold} out of range: the dataset has {len(pool)} perturbed genes "
                         f"(folds 0..{len(pool) - 1})")
    held = pool[fold]
    others = [g for g in pool if g != held]
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(val_gene_fraction * len(others)))) if others else 0
    val_genes = set(rng.permutation(np.array(others, dtype=object))[:n_val].tolist())
    split = []
    for g in genes:
        if held in g:
            split.append("test")
        elif any(x in val_genes for x in g):
            split.append("val")
        else:
            split.append("train")
    table = pd.DataFrame({"condition": conds, "split": split})
    table["subgroup"] = subgroups(table, genes_of=genes_of)
    log.info("leave-one-gene-out fold %d of %d: test gene %s", fold, len(pool), held)
    return _require_all(table, what=f"leave-one-gene-out fold {fold} (gene {held})")


def table_split(
    path: str | Path, conditions: Sequence[str], *, genes_of: Callable[[str], tuple[str, ...]]
) -> pd.DataFrame:
    """The user's split table, checked against the dataset's conditions, with subgroups filled in."""
    table = pd.read_csv(path, sep="\t", dtype=str)
    missing = [c for c in ("condition", "split") if c not in table.columns]
    if missing:
        raise SplitError(f"{path}: missing columns {', '.join(missing)} (need condition, split[, subgroup])")
    table = table.dropna(subset=["condition"])
    table = table.loc[[bool(genes_of(c)) for c in table["condition"]]]  # a control row is accepted and ignored
    dup = table.loc[table["condition"].duplicated(), "condition"].unique()
    if len(dup):
        raise SplitError(f"{path}: conditions listed twice: {', '.join(dup[:5])}")
    _check_values(table, path)
    conds = sorted(c for c in conditions if genes_of(c))
    _check_cover(table, conds, path)
    _checked(conds, genes_of)
    table = table.set_index("condition").loc[conds].reset_index()
    if "subgroup" not in table.columns or table["subgroup"].isna().any():
        computed = subgroups(table, genes_of=genes_of)
        given = table["subgroup"] if "subgroup" in table.columns else pd.Series([None] * len(table))
        table["subgroup"] = [g if isinstance(g, str) and g else c for g, c in zip(given, computed)]
    return _require_all(table[SPLIT_COLUMNS], what=str(path))


def _check_values(table: pd.DataFrame, path: str | Path) -> None:
    bad = sorted(set(table["split"].fillna("<empty>")) - set(SPLITS))
    if bad:
        raise SplitError(f"{path}: unknown split values {', '.join(bad)} (use train, val, test)")


def _check_cover(table: pd.DataFrame, conditions: Sequence[str], path: str | Path) -> None:
    listed, wanted = set(table["condition"]), set(conditions)
    if listed != wanted:
        extra, absent = sorted(listed - wanted), sorted(wanted - listed)
        raise SplitError(
            f"{path}: conditions differ from the dataset's; not in the dataset: {', '.join(extra[:5]) or '-'}; "
            f"not in the split: {', '.join(absent[:5]) or '-'}"
        )


# Bases listed last section first: a dataclass's fields follow the reversed MRO (dataset, then split).
@dataclass(frozen=True)
class Options(options_class("split"), DatasetOptions):
    """Options of the split stage (config sections ``dataset`` and ``split``; ``split.table`` is the workflow's)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in KINDS:
            raise ValueError(f"split.kind must be one of {', '.join(KINDS)}, not {self.kind!r}")


def read_split(path: str | Path, conditions: Sequence[str]) -> pd.DataFrame:
    """Read a split table and check that it covers exactly ``conditions`` (control excluded)."""
    table = pd.read_csv(path, sep="\t", dtype=str)
    missing_cols = [c for c in SPLIT_COLUMNS if c not in table.columns]
    if missing_cols:
        raise SplitError(f"{path}: missing columns {', '.join(missing_cols)}")
    _check_values(table, path)
    _check_cover(table, conditions, path)
    return table


def make_split(conditions: Sequence[str], *, options: Options, table: Path | None = None) -> pd.DataFrame:
    """The split of ``conditions`` that ``options.kind`` asks for."""
    def genes_of(c: str) -> tuple[str, ...]:
        return condition_genes(c, options=options)

    if options.kind == "table":
        if table is None:
            raise SplitError("split.kind is table but no split.table was given")
        return table_split(table, conditions, genes_of=genes_of)
    if options.kind == "logo":
        return logo_split(conditions, genes_of=genes_of, fold=options.fold, seed=options.seed,
                          val_gene_fraction=options.val_gene_fraction)
    return simulation_split(conditions, genes_of=genes_of, seed=options.seed,
                            train_gene_fraction=options.train_gene_fraction,
                            seen2_train_fraction=options.seen2_train_fraction)


def split_dataset(adata: ad.AnnData, *, options: Options, table: Path | None = None) -> pd.DataFrame:
    """The split of the dataset's conditions (control excluded) that ``options.kind`` asks for."""
    labels = adata.obs[options.condition_key].astype(str).unique()
    conditions = sorted(c for c in labels if c != options.control)
    result = make_split(conditions, options=options, table=table)
    log.info("%s split: %s", options.kind, result.groupby(["split", "subgroup"]).size().to_dict())
    return result
