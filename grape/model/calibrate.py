"""Shrink the model's predictions toward the simple baselines by one factor fitted on validation.

The baselines no deep model reliably beats are the mean of the fitting conditions (unseen
singles) and the sum of the two observed single changes (doubles of seen singles). With
``train.calibrate: validation`` the train stage writes, for every validation and test row,

    calibrated = anchor + lam * (model - anchor)

in changes from control, where ``anchor`` is that baseline and ``lam`` in [0, 1] is one number
per kind of row (singles, doubles), fitted by least squares on the validation rows of that kind:
``lam = <model - anchor, observed - anchor> / |model - anchor|^2`` over their genes, clipped to
[0, 1]. ``lam = 0`` is the baseline itself, ``lam = 1`` the model unchanged. A validation row's
anchor comes from training rows only (it is a held-out condition there); a test row's from the
training and validation rows, as the evaluation's baselines are fitted. Training rows are left
as predicted. A kind without validation rows keeps ``lam = 1``. Doubles with a single that is
not a fitting condition of the same cell state have no additive anchor and are left as predicted.
Every anchor is per cell state (context). With ``train.calibrate_anchor: mean_target`` an unseen
single's anchor is the evaluation's ``mean_target`` baseline instead of ``mean``: at the row's own
perturbed gene (when measured) the anchor is the mean change of the fitting singles' own targets,
so that shrinking toward the baseline keeps the change that the perturbation makes to its own
target (the other conditions' mean says nothing about that gene).

``train.calibrate: validation_gene`` fits one factor per kind and gene instead: each gene's
least-squares factor over the validation rows is an estimate with its own sampling variance
(its residual variance over its squared steps), and the estimates are pooled toward the kind's
single factor by a random-effects model (DerSimonian-Laird's between-gene variance ``tau^2``,
the precision-weighted compromise ``(lam_g / v_g + lam / tau^2) / (1 / v_g + 1 / tau^2)``), then
clipped to [0, 1]. Where the validation rows show no variation between genes beyond their
sampling noise (``tau^2 = 0``), or there are fewer than two validation rows, every gene gets the
kind's factor: ``validation`` exactly. A gene whose step is real on validation keeps it; a gene
whose step is noise there moves toward the baseline.

``train.calibrate_seen1`` covers the doubles with exactly one fitting single of their cell state
(GEARS' ``combo_seen1``), which otherwise have no anchor and stay as predicted (``none``). They
are a kind of their own, ``seen1``, with their own factor, fitted on the validation doubles of
that kind. ``additive`` anchors them at the seen single's observed change, which is the
evaluation's additive baseline: the unseen gene adds nothing. ``additive_mean`` (the default)
adds, for the unseen gene, the mean change of the fitting singles (singles only, since a double
is two effects). With ``calibrate_anchor: mean_target``, the unseen gene's own measured column
then takes the seen single's change there plus the fitting singles' mean own-target change. So
the unseen half gets the mean baseline of an unseen single.

``train.calibrate_seen0`` does the same for the doubles with no fitting single (``combo_seen0``),
kind ``seen0``: ``mean`` anchors them at the mean change of all fitting conditions (the evaluation's
mean baseline), ``mean_doubles`` at the mean change of the fitting doubles (its ``mean_doubles``;
doubles are left as predicted where none fit), ``additive_mean`` at twice the fitting singles' mean
change (each unseen gene the mean single; the default). With ``calibrate_anchor: mean_target`` each perturbed
gene's own measured column then takes the fitting singles' mean own-target change (plus, for
``additive_mean``, the other gene's mean change there), as the ``mean_target`` baseline does.
``none`` leaves them as predicted. A split has few such validation doubles, so their
factor is fitted on them together with the validation singles (each row at its own anchor): both
are predictions for genes that no fitting condition perturbs.

``train.calibrate_scale: doubles`` then multiplies every calibrated validation and test double's
change from control by one factor, ``sum |observed| / sum |calibrated|`` over the validation
doubles' genes: a least-squares fit shrinks its predictions toward the centre of the doubles, which
leaves correlation and direction as they are but makes the doubles' predictions less distinct from
each other's observations (discrimination); the factor restores the observed size. It is 1 without
validation doubles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from grape.model.train import Problem

KINDS = ("singles", "doubles", "seen1", "seen0")
SEEN1 = ("none", "additive", "additive_mean")  # train.calibrate_seen1
SEEN0 = ("none", "mean", "mean_doubles", "additive_mean")  # train.calibrate_seen0


def _none() -> tuple[np.ndarray, None]:
    """No rows of a kind: ``(rows, anchors)`` with no rows."""
    return np.zeros(0, dtype=np.int64), None


@dataclass(frozen=True)
class Calibration:
    """The fitted factors and how many validation rows fitted each."""

    lam: dict[str, float]
    n_val_rows: dict[str, int]
    gene_lam: dict[str, np.ndarray] | None = None  # validation_gene: the factor of each gene, per kind
    tau2: dict[str, float] | None = None  # validation_gene: the between-gene variance of the factors
    scale: dict[str, float] | None = None  # calibrate_scale: the factor of the scaled kinds' changes

    def record(self) -> dict:
        out = {"lambda": dict(self.lam), "n_val_rows": dict(self.n_val_rows)}
        if self.scale is not None:
            out["scale"] = dict(self.scale)
        if self.gene_lam is not None:
            out["per_gene"] = {
                kind: {"tau2": float(self.tau2[kind]),
                       "quantiles": {q: round(float(np.quantile(lam, float(q))), 4)
                                     for q in ("0.05", "0.25", "0.5", "0.75", "0.95")}}
                for kind, lam in self.gene_lam.items()}
        return out


def shrink_factor(pred: np.ndarray, anchor: np.ndarray, observed: np.ndarray) -> float:
    """Least-squares ``lam`` of ``anchor + lam * (pred - anchor)`` against ``observed``, in [0, 1]."""
    step = (pred - anchor).ravel().astype(np.float64)
    target = (observed - anchor).ravel().astype(np.float64)
    denom = float(step @ step)
    if denom == 0.0:
        return 1.0
    return float(np.clip(step @ target / denom, 0.0, 1.0))


def gene_factors(pred: np.ndarray, anchor: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-gene factors ``[G]`` of ``anchor + lam_g * (pred - anchor)`` against ``observed`` (rows ``[n, G]``),
    pooled toward the single least-squares factor by a random-effects model (see the module text),
    and the between-gene variance ``tau^2``."""
    step = (pred - anchor).astype(np.float64)
    target = (observed - anchor).astype(np.float64)
    n, g = step.shape
    sxx, sxy = (step * step).sum(0), (step * target).sum(0)
    total = float(sxx.sum())
    pooled = float(sxy.sum() / total) if total > 0 else 1.0  # the single factor, before clipping
    lam = np.full(g, float(np.clip(pooled, 0.0, 1.0)))
    informative = sxx > 1e-12 * max(total, 1e-300)
    if n < 2 or informative.sum() < 2:
        return lam, 0.0
    est = sxy[informative] / sxx[informative]
    resid = ((target[:, informative] - est * step[:, informative]) ** 2).sum(0) / (n - 1)
    var = np.maximum(resid, 1e-12 * float(resid.max(initial=0.0)) + 1e-300) / sxx[informative]
    w = 1.0 / var
    centre = float((w * est).sum() / w.sum())
    q = float((w * (est - centre) ** 2).sum())
    tau2 = max(0.0, (q - (len(est) - 1)) / float(w.sum() - (w * w).sum() / w.sum()))
    if tau2 == 0.0:
        return lam, 0.0
    lam[informative] = np.clip((est / var + pooled / tau2) / (1.0 / var + 1.0 / tau2), 0.0, 1.0)
    return lam, tau2


def _anchors(problem: Problem, delta: np.ndarray, fit: np.ndarray, rows: np.ndarray, *,
             own_target: bool = False, seen1: str = "none", seen0: str = "none") -> dict[str, tuple]:
    """Anchor of each of ``rows`` from the rows where ``fit`` holds: ``{kind: (rows, anchors)}``;
    ``own_target``: a single's anchor at its own measured gene is the fitting singles' mean own-target change."""
    context = problem.context_index.numpy()
    perturbed = problem.perturbed.numpy()
    single = perturbed[:, 1] < 0
    column = {int(node): c for c, node in enumerate(problem.measured_nodes.tolist())}
    cache: dict[tuple[str, int], object] = {}

    def fitting_singles(k: int) -> np.ndarray:
        return fit & single & (context == k)

    def own_change(k: int) -> float | None:
        """The fitting singles' (of cell state ``k``) mean change of their own measured gene, or None."""
        if ("own", k) not in cache:
            changes = [delta[r, column[int(perturbed[r, 0])]] for r in np.flatnonzero(fitting_singles(k))
                       if int(perturbed[r, 0]) in column]
            cache["own", k] = float(np.mean(changes)) if changes else None
        return cache["own", k]

    def singles_mean(k: int) -> np.ndarray:
        if ("mean", k) not in cache:
            cache["mean", k] = delta[fitting_singles(k)].mean(axis=0)
        return cache["mean", k]

    def seen0_anchor(r: int) -> np.ndarray | None:
        """The anchor of double ``r`` with no fitting single (``seen0``), or None where its conditions lack."""
        k = int(context[r])
        if ("seen0", k) not in cache:
            pick = {"mean": fit & (context == k), "mean_doubles": fit & ~single & (context == k),
                    "additive_mean": fitting_singles(k)}[seen0]
            cache["seen0", k] = (delta[pick].mean(axis=0) * (2.0 if seen0 == "additive_mean" else 1.0)
                                 if pick.any() else None)
        if cache["seen0", k] is None:
            return None
        base = cache["seen0", k].copy()
        own = own_change(k) if own_target else None
        if own is not None:
            for g in (int(g) for g in perturbed[r] if int(g) in column):  # the other gene adds its mean there
                base[column[g]] = own + (singles_mean(k)[column[g]] if seen0 == "additive_mean" else 0.0)
        return base

    out: dict[str, tuple] = {}
    singles = rows[single[rows]]
    if len(singles):
        means = {}
        for k in np.unique(context[singles]):
            pick = fit & (context == k)
            if pick.any():
                means[k] = delta[pick].mean(axis=0)
        keep = np.array([context[r] in means for r in singles], dtype=bool)
        singles = singles[keep]
        anchors = np.stack([means[context[r]] for r in singles]) if len(singles) else None
        if own_target and anchors is not None:
            for i, r in enumerate(singles):
                col = column.get(int(perturbed[r, 0]))
                own = own_change(context[r]) if col is not None else None
                if own is not None:
                    anchors[i, col] = own
        out["singles"] = (singles, anchors)
    doubles = rows[~single[rows]]
    if len(doubles):
        observed = {(int(context[r]), int(perturbed[r, 0])): r for r in np.flatnonzero(fit & single)}
        kept, anchors = [], []
        half, half_anchors = [], []
        none_seen, none_anchors = [], []
        for r in doubles:
            a, b = (observed.get((int(context[r]), int(g))) for g in perturbed[r])
            if a is not None and b is not None:
                kept.append(r)
                anchors.append(delta[a] + delta[b])
            elif seen1 != "none" and (a is not None or b is not None):
                seen, unseen = (a, int(perturbed[r, 1])) if a is not None else (b, int(perturbed[r, 0]))
                anchor = delta[seen].copy()
                if seen1 == "additive_mean":
                    anchor += singles_mean(context[r])
                    own = own_change(context[r]) if own_target and unseen in column else None
                    if own is not None:
                        anchor[column[unseen]] = delta[seen, column[unseen]] + own
                half.append(r)
                half_anchors.append(anchor)
            elif seen0 != "none" and a is None and b is None:
                anchor = seen0_anchor(r)
                if anchor is not None:
                    none_seen.append(r)
                    none_anchors.append(anchor)
        out["doubles"] = (np.array(kept, dtype=np.int64), np.stack(anchors) if anchors else None)
        if half:
            out["seen1"] = (np.array(half, dtype=np.int64), np.stack(half_anchors))
        if none_seen:
            out["seen0"] = (np.array(none_seen, dtype=np.int64), np.stack(none_anchors))
    return out


def _fitting_rows(val_anchor: dict[str, tuple], kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The validation rows and anchors that fit ``kind``'s factor: its own rows; for ``seen0`` also the
    validation singles', since both predict genes that no fitting condition perturbs."""
    rows, anchors = val_anchor.get(kind, _none())
    extra, extra_anchors = val_anchor.get("singles", _none()) if kind == "seen0" else _none()
    if not len(extra):
        return rows, anchors
    if not len(rows):
        return extra, extra_anchors
    return np.concatenate([rows, extra]), np.concatenate([anchors, extra_anchors])


def magnitude_factor(pred: np.ndarray, observed: np.ndarray) -> float:
    """``sum |observed| / sum |pred|`` of changes from control: the factor that makes the predictions as
    large as the observations (1 when there is nothing to scale)."""
    size = float(np.abs(pred).sum(dtype=np.float64))
    return float(np.abs(observed).sum(dtype=np.float64)) / size if size > 0 and len(pred) else 1.0


def calibrate(problem: Problem, split: pd.DataFrame, predictions: np.ndarray, *,
              per_gene: bool = False, scale: tuple[str, ...] = (),
              anchor: str = "mean", seen1: str = "none", seen0: str = "none") -> tuple[np.ndarray, Calibration]:
    """Calibrated predicted mean expression ``[R, G]`` of every row (see the module text); ``per_gene``:
    ``validation_gene``'s factor per kind and gene; ``scale``: the kinds whose calibrated changes are
    brought to the observed size (``calibrate_scale``); ``anchor``: the singles' baseline, ``mean`` or
    ``mean_target`` (``calibrate_anchor``); ``seen1``: the doubles with one fitting single, ``none``,
    ``additive`` or ``additive_mean`` (``calibrate_seen1``); ``seen0``: the doubles with no fitting single,
    ``none``, ``mean``, ``mean_doubles`` or ``additive_mean`` (``calibrate_seen0``)."""
    if anchor not in ("mean", "mean_target"):
        raise ValueError(f"train.calibrate_anchor: {anchor!r} is not one of mean, mean_target")
    if seen1 not in SEEN1:
        raise ValueError(f"train.calibrate_seen1: {seen1!r} is not one of {', '.join(SEEN1)}")
    if seen0 not in SEEN0:
        raise ValueError(f"train.calibrate_seen0: {seen0!r} is not one of {', '.join(SEEN0)}")
    own_target = anchor == "mean_target"
    label = split.set_index("condition")["split"]
    row_split = label.reindex(problem.conditions).fillna("").astype(str).to_numpy()
    controls = problem.controls[problem.context_index.numpy()]
    pred = predictions - controls
    observed = problem.delta.numpy()
    train, val = row_split == "train", row_split == "val"
    test = ~(train | val)
    lam: dict[str, float] = {}
    counts: dict[str, int] = {}
    gene_lam: dict[str, np.ndarray] = {}
    tau2: dict[str, float] = {}
    val_anchor = _anchors(problem, observed, train, np.flatnonzero(val), own_target=own_target, seen1=seen1, seen0=seen0)
    kinds = [kind for kind, on in zip(KINDS, (True, True, seen1 != "none", seen0 != "none")) if on]
    for kind in kinds:
        rows, anchors = _fitting_rows(val_anchor, kind)
        counts[kind] = int(len(rows))
        lam[kind] = shrink_factor(pred[rows], anchors, observed[rows]) if len(rows) else 1.0
        if per_gene:
            gene_lam[kind], tau2[kind] = (gene_factors(pred[rows], anchors, observed[rows]) if len(rows)
                                          else (np.full(pred.shape[1], lam[kind]), 0.0))
    out = pred.copy()
    anchored_sets = (val_anchor, _anchors(problem, observed, train | val, np.flatnonzero(test), own_target=own_target,
                                          seen1=seen1, seen0=seen0))
    for anchored in anchored_sets:
        for kind, (rows, anchors) in anchored.items():
            if len(rows):
                out[rows] = anchors + gene_lam.get(kind, lam[kind]) * (pred[rows] - anchors)
    factors = {}
    for kind in scale:
        rows = val_anchor.get(kind, _none())[0]
        factors[kind] = magnitude_factor(out[rows], observed[rows])
        for anchored in anchored_sets:
            scaled = anchored.get(kind, _none())[0]
            out[scaled] *= factors[kind]
    fitted = Calibration(lam, counts, gene_lam if per_gene else None, tau2 if per_gene else None,
                         factors if scale else None)
    return (out + controls).astype(predictions.dtype), fitted
