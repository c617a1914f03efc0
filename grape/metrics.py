"""GEARS' core metrics on condition means, in a registry that records each metric's best value.

Every metric takes a condition's predicted and observed mean expression (over all
measured genes), the control mean, and the indices of the condition's top DE genes;
metrics are computed per condition and then averaged, as GEARS does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


@dataclass(frozen=True)
class Metric:
    """One metric: how to compute it, its best value and whether higher is better."""

    name: str
    compute: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]
    higher_is_better: bool
    best: float
    description: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("mse", lambda p, t, c, de: float(np.mean((p - t) ** 2)), False, 0.0,
               "mean squared error of the mean expression, all genes"),
        Metric("mse_de", lambda p, t, c, de: float(np.mean((p[de] - t[de]) ** 2)), False, 0.0,
               "mean squared error on the top-20 DE genes"),
        Metric("pearson", lambda p, t, c, de: _pearson(p, t), True, 1.0,
               "Pearson correlation of the mean expression, all genes"),
        Metric("pearson_delta", lambda p, t, c, de: _pearson(p - c, t - c), True, 1.0,
               "Pearson correlation of the change from the control mean, all genes"),
        Metric("pearson_delta_de", lambda p, t, c, de: _pearson(p[de] - c[de], t[de] - c[de]), True, 1.0,
               "Pearson correlation of the change from the control mean, top-20 DE genes"),
    ]
}


def score(pred: np.ndarray, truth: np.ndarray, control: np.ndarray, de_idx: np.ndarray) -> dict[str, float]:
    """All registered metrics for one condition."""
    return {name: m.compute(pred, truth, control, de_idx) for name, m in METRICS.items()}
