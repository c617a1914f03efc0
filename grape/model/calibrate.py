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
Every anchor is per cell state (context).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from grape.model.train import Problem

KINDS = ("singles", "doubles")


@dataclass(frozen=True)
class Calibration:
    """The fitted factors and how many validation rows fitted each."""

    lam: dict[str, float]
    n_val_rows: dict[str, int]

    def record(self) -> dict:
        return {"lambda": dict(self.lam), "n_val_rows": dict(self.n_val_rows)}


def shrink_factor(pred: np.ndarray, anchor: np.ndarray, observed: np.ndarray) -> float:
    """Least-squares ``lam`` of ``anchor + lam * (pred - anchor)`` against ``observed``, in [0, 1]."""
    step = (pred - anchor).ravel().astype(np.float64)
    target = (observed - anchor).ravel().astype(np.float64)
    denom = float(step @ step)
    if denom == 0.0:
        return 1.0
    return float(np.clip(step @ target / denom, 0.0, 1.0))


def _anchors(problem: Problem, delta: np.ndarray, fit: np.ndarray, rows: np.ndarray) -> dict[str, tuple]:
    """Anchor of each of ``rows`` from the rows where ``fit`` holds: ``{kind: (rows, anchors)}``."""
    context = problem.context_index.numpy()
    perturbed = problem.perturbed.numpy()
    single = perturbed[:, 1] < 0
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
        out["singles"] = (singles, np.stack([means[context[r]] for r in singles]) if len(singles) else None)
    doubles = rows[~single[rows]]
    if len(doubles):
        observed = {(int(context[r]), int(perturbed[r, 0])): r for r in np.flatnonzero(fit & single)}
        kept, anchors = [], []
        for r in doubles:
            a, b = (observed.get((int(context[r]), int(g))) for g in perturbed[r])
            if a is not None and b is not None:
                kept.append(r)
                anchors.append(delta[a] + delta[b])
        out["doubles"] = (np.array(kept, dtype=np.int64), np.stack(anchors) if anchors else None)
    return out


def calibrate(problem: Problem, split: pd.DataFrame, predictions: np.ndarray) -> tuple[np.ndarray, Calibration]:
    """Calibrated predicted mean expression ``[R, G]`` of every row (see the module text)."""
    label = split.set_index("condition")["split"]
    row_split = label.reindex(problem.conditions).fillna("").astype(str).to_numpy()
    controls = problem.controls[problem.context_index.numpy()]
    pred = predictions - controls
    observed = problem.delta.numpy()
    train, val = row_split == "train", row_split == "val"
    test = ~(train | val)
    lam: dict[str, float] = {}
    counts: dict[str, int] = {}
    val_anchor = _anchors(problem, observed, train, np.flatnonzero(val))
    for kind in KINDS:
        rows, anchors = val_anchor.get(kind, (np.zeros(0, dtype=np.int64), None))
        counts[kind] = int(len(rows))
        lam[kind] = shrink_factor(pred[rows], anchors, observed[rows]) if len(rows) else 1.0
    out = pred.copy()
    for anchored in (val_anchor, _anchors(problem, observed, train | val, np.flatnonzero(test))):
        for kind, (rows, anchors) in anchored.items():
            if len(rows):
                out[rows] = anchors + lam[kind] * (pred[rows] - anchors)
    return (out + controls).astype(predictions.dtype), Calibration(lam, counts)
