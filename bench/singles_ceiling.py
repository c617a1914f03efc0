"""How much of an unseen single's effect a perfect model could add to the mean baseline: a split-half ceiling.

For every single perturbation of a cell-level screen, its cells are split at random into two
halves A and B (the control cells are kept whole, as the evaluation does). Half A is the target:
``delta_A = mean(A) - control``. Two predictions of it are scored:

* ``mean``: the mean baseline, the mean of the other singles' changes over all their cells (the
  evaluation's baseline is the mean of the fitting conditions; leaving one out is that, per condition);
* ``oracle``: the same condition's other half, ``delta_B``: what a model that knew the condition's
  own effect could predict, measured with independent cells (half as many as the evaluation has);
* ``oracle_shrunk``: ``mean + w (delta_B - mean)`` with the one ``w`` per screen that minimises the
  squared error: the best that a model with the effect in hand gains once its noise is shrunk away.

The condition-specific part ``r = delta - mean`` of the two halves gives the reliability of the
specific effect at full depth (Spearman-Brown on the halves' correlation), the share of its
variance that is signal rather than sampling noise. Repeated over ``--repeats`` random halvings;
mean over conditions (and contexts), then over repeats. The top-20 DE MSE of the halves is over
the 20 genes of largest ``|delta_A|`` (the target's own, as the evaluation ranks the observed
condition; the perturbed gene included).

At full depth, besides ``mean`` (leave one out) and ``mean_target`` (the same, with the condition's own
gene, when measured, at the other singles' mean own-target change: the evaluation's baseline):

* ``best_neighbour``: the one other single whose change correlates best with the condition's, chosen
  with hindsight on the condition itself: what a kernel over seen singles could reach if gene
  knowledge pointed at the right neighbour;
* ``text_kernel`` / ``go_kernel`` / ``tf_kernel``: ``mean + w * sum_j a_j (delta_j - mean)`` with ``a`` the softmax over
  the other singles of the genes' similarity over a temperature: the cosine of the packaged MiniLM's
  embeddings of their RefSeq summaries, the Jaccard of their GO:BP gene sets, or the Jaccard of their
  neighbourhoods in the TF -> target table (their targets and their regulators); the best of the nine
  (temperature, ``w``) settings of ``KERNEL_GRID``, chosen on these same conditions (optimistic);

and ``ideal`` is a model that predicts every condition's expected mean exactly: its
error is the condition mean's sampling noise alone (per gene, the cells' variance over their
number), so its expected pearson_delta is ``sqrt(1 - noise / var(delta))`` (variances over genes)
and its RMSE the noise's root mean square. No model can do better in expectation, so
``ideal - mean`` bounds what any model can gain over the mean baseline on the screen's unseen
singles. No model is trained.

    .venv/bin/python bench/singles_ceiling.py --repeats 50 > bench/singles_ceiling.tsv
"""

from __future__ import annotations

import argparse
import gzip
import sys
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from grape.data.normalize import normalize_counts
from grape.evaluation.metrics import pearson

DATA = "../shared/data"
KERNEL_GRID = tuple((tau, w) for tau in (0.02, 0.05, 0.1) for w in (0.3, 0.6, 1.0))


@dataclass(frozen=True)
class Screen:
    name: str
    path: str
    condition: str
    control: str
    context: str | None = None
    subset: tuple[str, str] | None = None
    counts: bool = True
    separator: str | None = None


SCREENS = (
    Screen("papalexi2021", f"{DATA}/papalexi2021_thp1_cells.h5ad", "target", "non-targeting"),
    Screen("jurkat_tcr", f"{DATA}/jurkat_tcr_ko_cells.h5ad", "target", "control", context="stimulation"),
    Screen("norman_devel", f"{DATA}/perturbench_devel.h5ad", "condition", "control",
           subset=("dataset", "norman19"), counts=False, separator="+"),
)


def singles_of(screen: Screen, labels: np.ndarray) -> list[str]:
    """The screen's single perturbations among ``labels`` (no control, no double), sorted."""
    return sorted(c for c in set(labels) if c != screen.control and not (screen.separator and screen.separator in c))


def parts(screen: Screen) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Per context: the normalised cells (dense float64) and their condition labels; the genes."""
    adata = ad.read_h5ad(screen.path)
    if screen.subset:
        adata = adata[adata.obs[screen.subset[0]].astype(str) == screen.subset[1]].copy()
    x = normalize_counts(adata.X) if screen.counts else adata.X
    x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    labels = adata.obs[screen.condition].astype(str).to_numpy()
    contexts = adata.obs[screen.context].astype(str).to_numpy() if screen.context else np.full(len(labels), "cell")
    return ({c: (x[contexts == c], labels[contexts == c]) for c in sorted(set(contexts))},
            adata.var_names.astype(str).tolist())


def halves(x: np.ndarray, labels: np.ndarray, *, control: str, singles: list[str], rng: np.random.Generator):
    """Full, half-A and half-B changes from the (whole) control mean, per single (rows)."""
    ctrl = x[labels == control].mean(0)
    full, a, b = [], [], []
    for cond in singles:
        rows = np.flatnonzero(labels == cond)
        rows = rng.permutation(rows)
        cut = len(rows) // 2
        full.append(x[rows].mean(0) - ctrl)
        a.append(x[rows[:cut]].mean(0) - ctrl)
        b.append(x[rows[cut:]].mean(0) - ctrl)
    return np.array(full), np.array(a), np.array(b)


def similarities(genes: list[str]) -> dict[str, np.ndarray]:
    """The genes' text cosine (MiniLM on RefSeq summaries; the symbol where none) and GO:BP Jaccard."""
    from grape.features.models import embed_texts

    summary = (pd.read_csv(f"{DATA}/refseq_summaries_human.tsv.gz", sep="\t").drop_duplicates("Symbol")
               .set_index("Symbol")["Gene_summary"])
    vectors = np.asarray(embed_texts([str(summary.get(g, g)) for g in genes]), dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sets: dict[str, set[str]] = {g: set() for g in genes}
    with gzip.open(f"{DATA}/go_bp_gene_sets.gmt.gz", "rt") as handle:
        for line in handle:
            name, _, *members = line.rstrip("\n").split("\t")
            for g in members:
                if g in sets:
                    sets[g].add(name)
    tf = pd.read_csv(f"{DATA}/tf_targets_human.tsv.gz", sep="\t")
    network: dict[str, set[tuple[str, str]]] = {g: set() for g in genes}  # targets and regulators
    for source, target in zip(tf["source"].astype(str), tf["target"].astype(str)):
        if source in network:
            network[source].add(("target", target))
        if target in network:
            network[target].add(("regulator", source))
    return {"text": vectors @ vectors.T, "go": _jaccard(sets, genes), "tf": _jaccard(network, genes)}


def _jaccard(sets: dict[str, set], genes: list[str]) -> np.ndarray:
    return np.array([[len(sets[a] & sets[b]) / max(1, len(sets[a] | sets[b])) for b in genes] for a in genes])


def full_depth(screen: Screen, data, genes: list[str]) -> dict[str, float]:
    """The baselines (leave one out), the kernels and the ideal model at full depth, averaged over conditions."""
    rows = []
    column = {g: i for i, g in enumerate(genes)}
    for x, labels in data.values():
        singles = singles_of(screen, labels)
        ctrl = x[labels == screen.control].mean(0)
        full = np.array([x[labels == c].mean(0) - ctrl for c in singles])
        own = np.array([full[i, column[c]] if c in column else np.nan for i, c in enumerate(singles)])
        sim = similarities(singles)
        for i, cond in enumerate(singles):
            cells = x[labels == cond]
            noise = cells.var(0, ddof=1) / len(cells)
            t = full[i]
            others = [j for j in range(len(singles)) if j != i]
            mean = full[others].mean(0)
            target = mean.copy()
            if cond in column and np.isfinite(own[others]).any():
                target[column[cond]] = np.nanmean(own[others])
            row = {"cells": len(cells), "pd_mean_full": pearson(mean, t), "pd_mean_target_full": pearson(target, t),
                   "pd_best_neighbour_full": max(pearson(full[j], t) for j in others),
                   "pd_ideal_full": float(np.sqrt(max(0.0, 1 - noise.mean() / t.var()))),
                   "rmse_mean_full": float(np.sqrt(((mean - t) ** 2).mean())),
                   "rmse_ideal_full": float(np.sqrt(noise.mean()))}
            for name, matrix in sim.items():
                for tau, w in KERNEL_GRID:
                    a = matrix[i, others] / tau
                    a = np.exp(a - a.max())
                    pred = mean + w * ((a / a.sum()) @ (full[others] - mean))
                    row[f"{name}_{tau}_{w}"] = pearson(pred, t)
            rows.append(row)
    means = pd.DataFrame(rows).mean()
    kernels = ("text", "go", "tf")
    out = {k: v for k, v in means.items() if not k.startswith(tuple(f"{name}_" for name in kernels))}
    for name in kernels:
        grid = means[[c for c in means.index if c.startswith(f"{name}_")]]
        out[f"pd_{name}_kernel_full"] = grid.max()
        out[f"{name}_kernel_setting"] = grid.idxmax().removeprefix(f"{name}_")
    out["conditions"] = len(rows)
    return out


def top_mse(pred: np.ndarray, target: np.ndarray, n: int = 20) -> float:
    idx = np.argsort(-np.abs(target), kind="stable")[:n]
    return float(((pred[idx] - target[idx]) ** 2).mean())


def one_repeat(screen: Screen, data, rng: np.random.Generator) -> dict[str, float]:
    rows: list[dict[str, float]] = []
    res_a, res_b, resid_pairs = [], [], []
    for x, labels in data.values():
        singles = singles_of(screen, labels)
        full, a, b = halves(x, labels, control=screen.control, singles=singles, rng=rng)
        n = len(singles)
        for i in range(n):
            mean = np.delete(full, i, axis=0).mean(0)
            res_a.append(a[i] - mean)
            res_b.append(b[i] - mean)
            resid_pairs.append((a[i], b[i], mean))
    ra, rb = np.array(res_a), np.array(res_b)
    w = float((ra * rb).sum() / (rb * rb).sum())  # least-squares shrinkage of the half-B effect
    for (ta, tb, mean), r_a, r_b in zip(resid_pairs, ra, rb):
        shrunk = mean + w * (tb - mean)
        rows.append({
            "pd_mean": pearson(mean, ta), "pd_oracle": pearson(tb, ta), "pd_shrunk": pearson(shrunk, ta),
            "rmse_mean": float(np.sqrt(((mean - ta) ** 2).mean())),
            "rmse_oracle": float(np.sqrt(((tb - ta) ** 2).mean())),
            "rmse_shrunk": float(np.sqrt(((shrunk - ta) ** 2).mean())),
            "de20_mse_mean": top_mse(mean, ta), "de20_mse_oracle": top_mse(tb, ta),
            "de20_mse_shrunk": top_mse(shrunk, ta),
            "r_half": pearson(r_a, r_b),
        })
    out = pd.DataFrame(rows).mean().to_dict()
    out["w"] = w
    r = out["r_half"]
    out["reliability_full"] = 2 * r / (1 + r) if r > -1 else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    absent = [screen.path for screen in SCREENS if not Path(screen.path).is_file()]
    if absent:
        raise SystemExit(f"the real screens are not here ({', '.join(absent)}): run from the project root with ../shared/data beside it")
    rng = np.random.default_rng(args.seed)
    table = []
    for screen in SCREENS:
        data, genes = parts(screen)
        reps = pd.DataFrame([one_repeat(screen, data, rng) for _ in range(args.repeats)])
        row = {"screen": screen.name, **full_depth(screen, data, genes), "repeats": args.repeats}
        row["pd_gain_ideal_full"] = row["pd_ideal_full"] - row["pd_mean_full"]
        for col in reps.columns:
            row[col] = reps[col].mean()
        for col in ("pd_mean", "pd_shrunk", "w"):
            row[f"{col}_sd"] = reps[col].std(ddof=1)
        row["pd_gain_oracle"] = row["pd_oracle"] - row["pd_mean"]
        row["pd_gain_shrunk"] = row["pd_shrunk"] - row["pd_mean"]
        row["de20_gain_shrunk"] = 1 - row["de20_mse_shrunk"] / row["de20_mse_mean"]
        table.append(row)
    pd.DataFrame(table).to_csv(sys.stdout, sep="\t", index=False, float_format="%.4f")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
