"""Training inputs for the speed benchmarks, built without the pipeline (shared by the bench scripts).

Three kinds, all one cell state:

* ``carpool``: ``../shared/data/carpool_thp1_pseudobulk.h5ad`` (absolute pseudobulk means;
  the 241 guide-pair count features and ``Cas13d`` are no targets): 1,759 measured genes plus the
  perturbed genes that are not measured are the nodes; 186 conditions (28 singles, 158
  doubles), targets the real changes from ``ctrl``. Split (seeded): every single trains, 20% of
  the doubles are test, 10% validation.
* ``random``: ``genes`` nodes, all measured, the CaRPool conditions' structure (the same
  singles and doubles, on the first nodes) with random targets (a sparse random effect per
  perturbed gene, doubles additive plus noise). For timing only.
* ``demo``: the demo's size (300 genes, 48 singles, 24 doubles, the demo split's shares), random
  targets as above.

Features are random (text 384-d, DNA 136-d, seeded), so the graph costs what a real one costs
(the sparse prior: the chunked top-10 per modality, every gene 10 incoming edges) but carries
no biology; 70% of the nodes are ``coding``. Inputs are saved as plain tensors (``torch.save``
of a dict of tensors and lists) so that the old and the new code train on identical inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CARPOOL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "carpool_thp1_pseudobulk.h5ad"


def _features(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    text = torch.nn.functional.normalize(torch.randn(n, 384, generator=generator), dim=1)
    dna = torch.rand(n, 136, generator=generator)
    return text, dna


def _zscore(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0, keepdim=True)) / x.std(0, keepdim=True).clamp(min=1e-6)


def _split(conditions: list[str], singles: list[bool], *, test: float, val: float, seed: int) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    doubles = [c for c, s in zip(conditions, singles) if not s]
    order = rng.permutation(len(doubles))
    n_test, n_val = round(test * len(doubles)), round(val * len(doubles))
    test_set = {doubles[i] for i in order[:n_test]}
    val_set = {doubles[i] for i in order[n_test:n_test + n_val]}
    split = {"train": [], "val": [], "test": []}
    for c in conditions:
        split["test" if c in test_set else "val" if c in val_set else "train"].append(c)
    return split


def carpool_conditions() -> tuple[list[str], list[list[str]], np.ndarray, list[str], np.ndarray]:
    """CaRPool's conditions, their genes, the changes of the gene features, their names and the control."""
    import anndata as ad

    adata = ad.read_h5ad(CARPOOL)
    names = adata.var_names.astype(str).tolist()
    keep = np.array([":" not in v and v != "Cas13d" for v in names])
    x = np.asarray(adata.X, dtype=np.float32)
    conds = adata.obs["condition"].astype(str).tolist()
    ctrl = x[conds.index("ctrl")]
    rows = [i for i, c in enumerate(conds) if c != "ctrl"]
    genes = [[g for g in conds[i].split("+") if g != "ctrl"] for i in rows]
    delta = (x[rows] - ctrl)[:, keep]
    return [conds[i] for i in rows], genes, delta, [n for n, k in zip(names, keep) if k], ctrl[keep]


def build(kind: str, *, genes: int = 5000, seed: int = 0, split_seed: int = 0) -> dict:
    """The inputs of one benchmark problem (see the module docstring)."""
    from grape.graph.build import prior_edges

    generator = torch.Generator().manual_seed(seed)
    if kind == "carpool":
        conditions, cond_genes, delta, measured, control = carpool_conditions()
        nodes = list(dict.fromkeys([*measured, *[g for gs in cond_genes for g in gs]]))
        node = {g: i for i, g in enumerate(nodes)}
        measured_nodes = torch.tensor([node[g] for g in measured])
        delta = torch.from_numpy(delta)
        control = torch.from_numpy(control)
    else:
        if kind == "demo":
            genes, n_singles, n_doubles = 300, 48, 24
        elif kind == "random":
            n_singles, n_doubles = 28, 158
        else:
            raise ValueError(f"unknown kind {kind!r}")
        nodes = [f"G{i}" for i in range(genes)]
        singles = [f"G{i}" for i in range(n_singles)]
        rng = np.random.default_rng(seed)
        pairs: list[tuple[int, int]] = []
        while len(pairs) < n_doubles:
            a, b = sorted(rng.choice(n_singles, 2, replace=False).tolist())
            if (a, b) not in pairs:
                pairs.append((a, b))
        cond_genes = [[g] for g in singles] + [[singles[a], singles[b]] for a, b in pairs]
        conditions = ["+".join(g if len(g) == 2 else [g[0], "ctrl"]) for g in cond_genes]
        effect = torch.randn(n_singles, genes, generator=generator) * (torch.rand(n_singles, genes, generator=generator)
                                                                        < 0.05)
        single_delta = [effect[i] for i in range(n_singles)]
        delta = torch.stack([*single_delta, *[effect[a] + effect[b] for a, b in pairs]])
        delta = delta + 0.05 * torch.randn(delta.shape, generator=generator)
        node = {g: i for i, g in enumerate(nodes)}
        measured_nodes = torch.arange(genes)
        control = torch.rand(genes, generator=generator) * 3
    n = len(nodes)
    text, dna = _features(n, generator)
    edge_index, edge_weight = prior_edges([text, dna], top_k=10, min_similarity=-1.0, chunk_size=4096)
    perturbed = torch.full((len(conditions), 2), -1, dtype=torch.long)
    for i, gs in enumerate(cond_genes):
        perturbed[i, : len(gs)] = torch.tensor([node[g] for g in gs])
    level = torch.zeros(n)
    flag = torch.zeros(n)
    level[measured_nodes] = control
    flag[measured_nodes] = 1.0
    singles = [len(gs) == 1 for gs in cond_genes]
    split = _split(conditions, singles, test=0.2 if kind != "demo" else 0.4, val=0.1 if kind != "demo" else 0.2,
                   seed=split_seed)
    return {
        "kind": kind, "nodes": nodes, "conditions": conditions, "perturbed": perturbed, "delta": delta.float(),
        "control": control.numpy(), "measured_nodes": measured_nodes, "text": _zscore(text), "dna": _zscore(dna),
        "context": torch.stack([_zscore(level.unsqueeze(1)).squeeze(1), flag], 1),
        "node_type": (torch.rand(n, generator=generator) < 0.3).long(), "edge_index": edge_index,
        "edge_weight": edge_weight, "split": split,
    }
