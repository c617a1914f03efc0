"""Simple baselines, fitted on the training conditions of the same split as the model.

Each baseline sees only the condition means of the control and of the conditions
whose split is in ``evaluate.baseline_splits`` (default ``train`` and ``val``: the
model fits on ``train`` and picks its epoch on ``val``, so both are information it
uses; ``test`` is refused), and predicts the mean expression of every condition of
the split. The evaluate stage scores them on the
test conditions beside the model. Which ones run is ``evaluate.baselines``.

``no_change``
    the control mean, for every condition.
``mean``
    the mean over the fitting conditions of their mean expression.
``mean_target``
    the mean baseline, except at a condition's own perturbed genes that are measured: there the
    control plus the mean change of a fitting single's own target gene (over the fitting singles
    whose gene is measured). A knockdown lowers its target's mRNA, an activation raises it, a
    knockout may leave it as it is: the other conditions' changes of that gene say nothing about
    it, so the mean baseline misses the one change every screen's design makes. Equal to ``mean``
    where no fitting single's gene is measured. A model that only learns "the target moves by the
    usual amount" ties it.
``mean_doubles``
    the mean over the fitting doubles (two perturbed genes) of their mean expression, for
    every condition: the mean baseline of the double-perturbation setting (skipped when no
    double is a fitting condition).
``additive``
    control + the sum, over the condition's perturbed genes, of the gene's single
    effect (its ``A+ctrl`` mean minus the control mean, from a fitting condition).
    This is exact for a double whose two singles are fitting conditions
    (``combo_seen2`` in GEARS' split). A gene whose single is not a fitting
    condition contributes **zero**:
    a ``combo_seen1`` double is predicted as control + the seen single's effect,
    and a ``combo_seen0`` double or an unseen single as the control (the no-change
    prediction). All test conditions are therefore scored for every model; how
    many were fully additive, partly or not at all is in ``metrics.json``
    (``baselines.additive``).
``linear``
    the linear model of Ahlmann-Eltze, Huber & Anders (Nature Methods 2025), as in
    the paper's code (``run_linear_pretrained_model.R``,
    ``run_lpm_double_prediction.R``): with ``Y`` the fitting conditions' changes from control
    (genes x conditions, the control itself included as a column of zeros) and
    ``b`` its row means, ``Y - b ≈ G W Pᵀ``, where ``G`` (genes x K) holds the first
    K principal-component scores of the fitting conditions' pseudobulk expression matrix
    (genes x conditions, each condition's column centred, as R's ``prcomp``), a
    condition's perturbation embedding (a row of ``P``) is the sum of the rows of
    ``G`` of its perturbed genes (the control's is 0), and
    ``W = (GᵀG + λI)⁻¹ Gᵀ (Y - b) P (PᵀP + λI)⁻¹`` (ridge, λ = ``linear_ridge``,
    K = ``linear_pca_dim``). The prediction is ``control + b + G W p``. (The columns
    of ``G`` sum to zero over genes, like the centred expression they come from, so
    ``G W p`` never shifts all genes together; ``b`` carries such shifts.) A perturbed
    gene that is not measured has no row in ``G``: it contributes zero, and
    fitting conditions with such a gene are left out of the fit (as in the
    paper's code); counts are in ``metrics.json`` (``baselines.linear``). When no
    fitting condition perturbs only measured genes (a highly-variable-gene subset
    often lacks the perturbed genes), the baseline is skipped with a warning and
    ``baselines.linear.skipped`` says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("no_change", "mean", "mean_target", "mean_doubles", "additive", "linear")
FIT_SPLITS: tuple[str, ...] = ("train", "val")


class BaselineUnavailable(ValueError):
    """The data do not allow this baseline (e.g. no perturbed gene is measured for the linear model)."""


@dataclass(frozen=True)
class Baseline:
    """A baseline's predicted mean expression (conditions x genes) and facts about its fit.

    ``predictions`` is None when the baseline could not be fitted on these data; ``notes``
    then says why (``skipped``).
    """

    predictions: pd.DataFrame | None
    notes: dict[str, Any] = field(default_factory=dict)


def check_fit_splits(fit_splits: Sequence[str]) -> None:
    """Refuse split labels other than train and val (a baseline never sees a test condition)."""
    bad = [s for s in fit_splits if s not in FIT_SPLITS]
    if bad or not fit_splits:
        raise ValueError(f"evaluate.baseline_splits: {', '.join(map(repr, bad)) or 'empty'} not allowed "
                         f"(baselines are fitted on {' and/or '.join(FIT_SPLITS)} conditions only)")


def fitting_conditions(split: pd.DataFrame, fit_splits: Sequence[str] = FIT_SPLITS) -> list[str]:
    """Conditions whose split label is in ``fit_splits`` (``test`` is refused)."""
    check_fit_splits(fit_splits)
    conds = split.loc[split["split"].isin(list(fit_splits)), "condition"].astype(str).tolist()
    if not conds:
        raise ValueError(f"the split has no {'/'.join(fit_splits)} condition: the baselines cannot be fitted")
    return conds


def _frame(values: np.ndarray, conditions: Sequence[str], genes: pd.Index) -> pd.DataFrame:
    return pd.DataFrame(values, index=pd.Index(list(conditions), name="condition"), columns=genes)


def no_change(means: pd.DataFrame, split: pd.DataFrame, *, control: str) -> Baseline:
    """The control mean for every condition of the split."""
    conds = split["condition"].astype(str).tolist()
    ctrl = means.loc[control].to_numpy(dtype=np.float64)
    return Baseline(_frame(np.tile(ctrl, (len(conds), 1)), conds, means.columns))


def mean_baseline(means: pd.DataFrame, split: pd.DataFrame, *, fit_splits: Sequence[str] = FIT_SPLITS) -> Baseline:
    """The mean of the fitting conditions' mean expression, for every condition."""
    train = fitting_conditions(split, fit_splits)
    conds = split["condition"].astype(str).tolist()
    mean = means.loc[train].to_numpy(dtype=np.float64).mean(axis=0)
    return Baseline(_frame(np.tile(mean, (len(conds), 1)), conds, means.columns),
                    {"n_fit_conditions": len(train)})


def mean_target(means: pd.DataFrame, split: pd.DataFrame, *, control: str, genes_of: Callable[[str], tuple[str, ...]],
                gene_index: Mapping[str, int], fit_splits: Sequence[str] = FIT_SPLITS) -> Baseline:
    """The mean baseline with each measured perturbed gene at the control plus the fitting singles'
    mean change of their own target (module text)."""
    train = fitting_conditions(split, fit_splits)
    ctrl = means.loc[control].to_numpy(dtype=np.float64)
    singles = [(c, genes_of(c)[0]) for c in train if len(genes_of(c)) == 1]
    own = [means.loc[c].iloc[gene_index[g]] - ctrl[gene_index[g]] for c, g in singles if g in gene_index]
    base = mean_baseline(means, split, fit_splits=fit_splits)
    pred = base.predictions.copy()
    notes = {**base.notes, "n_fit_singles_with_measured_target": len(own)}
    if not own:
        return Baseline(pred, {**notes, "own_target_change": None})
    change = float(np.mean(own))
    values = pred.to_numpy()
    for row, cond in enumerate(pred.index):
        for g in genes_of(cond):
            if g in gene_index:
                values[row, gene_index[g]] = ctrl[gene_index[g]] + change
    return Baseline(_frame(values, pred.index, means.columns), {**notes, "own_target_change": change})


def mean_doubles(means: pd.DataFrame, split: pd.DataFrame, *, genes_of: Callable[[str], tuple[str, ...]],
                 fit_splits: Sequence[str] = FIT_SPLITS) -> Baseline:
    """The mean of the fitting doubles' mean expression, for every condition."""
    doubles = [c for c in fitting_conditions(split, fit_splits) if len(genes_of(c)) == 2]
    if not doubles:
        raise BaselineUnavailable("no double among the fitting conditions")
    conds = split["condition"].astype(str).tolist()
    mean = means.loc[doubles].to_numpy(dtype=np.float64).mean(axis=0)
    return Baseline(_frame(np.tile(mean, (len(conds), 1)), conds, means.columns), {"n_fit_conditions": len(doubles)})


def additive(
    means: pd.DataFrame,
    split: pd.DataFrame,
    *,
    control: str,
    genes_of: Callable[[str], tuple[str, ...]],
    fit_splits: Sequence[str] = FIT_SPLITS,
) -> Baseline:
    """Control + the sum of the fitted single effects of the condition's genes (unseen genes: zero)."""
    train = fitting_conditions(split, fit_splits)
    ctrl = means.loc[control].to_numpy(dtype=np.float64)
    effect = {genes_of(c)[0]: means.loc[c].to_numpy(dtype=np.float64) - ctrl
              for c in train if len(genes_of(c)) == 1}
    conds = split["condition"].astype(str).tolist()
    out = np.empty((len(conds), means.shape[1]))
    coverage: dict[str, list[str]] = {"all_singles_seen": [], "some_singles_seen": [], "no_single_seen": []}
    test = set(split.loc[split["split"] == "test", "condition"].astype(str))
    for row, cond in enumerate(conds):
        genes = genes_of(cond)
        seen = [g for g in genes if g in effect]
        out[row] = ctrl + sum((effect[g] for g in seen), np.zeros_like(ctrl))
        if cond in test:
            key = ("all_singles_seen" if len(seen) == len(genes)
                   else "some_singles_seen" if seen else "no_single_seen")
            coverage[key].append(cond)
    notes = {
        "unseen_gene_effect": "zero (a condition with no seen single is predicted as the control)",
        "n_fitted_singles": len(effect),
        "test_conditions": {k: len(v) for k, v in coverage.items()},
        "test_conditions_fully_additive": coverage["all_singles_seen"],
    }
    log.info("additive baseline: test conditions by seen singles %s", notes["test_conditions"])
    return Baseline(_frame(out, conds, means.columns), notes)


def pca_scores(x: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` principal-component scores of the rows of ``x`` (columns centred), like R's prcomp."""
    centred = x - x.mean(axis=0, keepdims=True)
    # x is tall (genes x conditions): the SVD of the small R of a QR gives the same right singular
    # vectors V, and the scores U S = centred V, several times faster than an SVD of x itself.
    _, r = np.linalg.qr(centred)
    _, _, vt = np.linalg.svd(r)
    return centred @ vt[:k].T


def ridge_bilinear(y: np.ndarray, g: np.ndarray, p: np.ndarray, ridge: float) -> np.ndarray:
    """``W`` minimising ``||y - g W pᵀ||²`` with ridge ``λ`` on both sides: (GᵀG+λI)⁻¹ Gᵀ y P (PᵀP+λI)⁻¹."""
    left = np.linalg.pinv(g.T @ g + ridge * np.eye(g.shape[1]))
    right = np.linalg.pinv(p.T @ p + ridge * np.eye(p.shape[1]))
    return left @ g.T @ y @ p @ right


def linear(
    means: pd.DataFrame,
    split: pd.DataFrame,
    *,
    control: str,
    genes_of: Callable[[str], tuple[str, ...]],
    gene_index: Mapping[str, int],
    pca_dim: int = 10,
    ridge: float = 0.1,
    fit_splits: Sequence[str] = FIT_SPLITS,
) -> Baseline:
    """Ahlmann-Eltze et al.'s linear model with a PCA gene embedding of the fitting data (module text)."""
    if pca_dim < 1:
        raise ValueError(f"linear baseline: pca_dim must be >= 1, got {pca_dim}")
    if ridge < 0:
        raise ValueError(f"linear baseline: ridge must be >= 0, got {ridge}")
    train = fitting_conditions(split, fit_splits)
    ctrl = means.loc[control].to_numpy(dtype=np.float64)
    expr = means.loc[[*train, control]].to_numpy(dtype=np.float64).T  # genes x (train + control)
    k = min(pca_dim, *expr.shape)
    if k < pca_dim:
        log.warning("linear baseline: %d principal components requested, only %d available", pca_dim, k)
    g = pca_scores(expr, k)

    def embedding(cond: str) -> tuple[np.ndarray, int, int]:
        genes = genes_of(cond)
        rows = [gene_index[x] for x in genes if x in gene_index]
        return (g[rows].sum(axis=0) if rows else np.zeros(k)), len(rows), len(genes)

    fit_conds = [c for c in train if embedding(c)[1] == len(genes_of(c))]
    if not fit_conds:
        raise BaselineUnavailable("no fitting condition perturbs only measured genes, so the linear model has "
                                  "no perturbation embedding to fit")
    y = np.column_stack([means.loc[c].to_numpy(dtype=np.float64) - ctrl for c in fit_conds] + [np.zeros_like(ctrl)])
    p = np.vstack([embedding(c)[0] for c in fit_conds] + [np.zeros(k)])
    center = y.mean(axis=1)
    w = ridge_bilinear(y - center[:, None], g, p, ridge)

    conds = split["condition"].astype(str).tolist()
    emb = [embedding(c) for c in conds]
    pred = (g @ w @ np.vstack([e[0] for e in emb]).T).T + center + ctrl
    test = set(split.loc[split["split"] == "test", "condition"].astype(str))
    partial = sum(1 for c, e in zip(conds, emb) if c in test and 0 < e[1] < e[2])
    missing = sum(1 for c, e in zip(conds, emb) if c in test and e[1] == 0)
    notes = {
        "pca_dim": int(k),
        "ridge": float(ridge),
        "n_fit_conditions": len(fit_conds) + 1,
        "n_fit_conditions_left_out": len(train) - len(fit_conds),
        "test_conditions_with_unmeasured_genes": {"some": partial, "all": missing},
        "unmeasured_gene_embedding": "zero (a condition with no measured perturbed gene gets control + b)",
    }
    log.info("linear baseline: K=%d, ridge=%g, fitted on %d conditions (control included)", k, ridge, len(fit_conds) + 1)
    return Baseline(_frame(pred, conds, means.columns), notes)


def fit_predict(
    names: Sequence[str],
    means: pd.DataFrame,
    split: pd.DataFrame,
    *,
    control: str,
    genes_of: Callable[[str], tuple[str, ...]],
    gene_index: Mapping[str, int],
    pca_dim: int = 10,
    ridge: float = 0.1,
    fit_splits: Sequence[str] = FIT_SPLITS,
) -> dict[str, Baseline]:
    """Fit the named baselines on the ``fit_splits`` conditions and predict every condition of the split.

    ``means``: mean expression per condition (rows, the control included) and gene;
    ``gene_index``: column of a gene named in a condition (symbol or id).
    """
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)} in evaluate.baselines "
                         f"(known: {', '.join(BASELINES)})")
    check_fit_splits(fit_splits)
    if control not in means.index:
        raise ValueError(f"no control condition {control!r} among the condition means")
    out: dict[str, Baseline] = {}
    for name in dict.fromkeys(names):
        if name == "no_change":
            out[name] = no_change(means, split, control=control)
        elif name == "mean":
            out[name] = mean_baseline(means, split, fit_splits=fit_splits)
        elif name == "mean_target":
            out[name] = mean_target(means, split, control=control, genes_of=genes_of, gene_index=gene_index,
                                    fit_splits=fit_splits)
        elif name == "additive":
            out[name] = additive(means, split, control=control, genes_of=genes_of, fit_splits=fit_splits)
        elif name == "mean_doubles":
            try:
                out[name] = mean_doubles(means, split, genes_of=genes_of, fit_splits=fit_splits)
            except BaselineUnavailable as err:
                log.warning("mean_doubles baseline skipped: %s", err)
                out[name] = Baseline(None, {"skipped": str(err)})
        else:
            try:
                out[name] = linear(means, split, control=control, genes_of=genes_of, gene_index=gene_index,
                                   pca_dim=pca_dim, ridge=ridge, fit_splits=fit_splits)
            except BaselineUnavailable as err:
                log.warning("linear baseline skipped: %s", err)
                out[name] = Baseline(None, {"skipped": str(err)})
    return out
