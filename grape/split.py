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

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

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
