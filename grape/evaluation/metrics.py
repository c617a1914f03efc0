"""The field's perturbation-prediction metrics, per test condition, in one registry.

Every metric reads a :class:`Panel`: for C conditions and G genes, the predicted and
observed **mean** expression of each condition (the observed mean is over the
condition's cells), the observed per-cell standard deviation, the control mean
(over control cells), and each condition's DE genes. A metric returns one value
per condition; the evaluate stage then averages conditions (overall and per test
subgroup), as GEARS does. "Delta" means the change from the control mean.

Semantics, read from the sources named in each entry's ``source``:

* GEARS (``cell-gears`` 0.1.2, ``gears/inference.py``): ``compute_metrics`` gives
  ``mse``, ``pearson``, ``mse_de``, ``pearson_de`` (``_de`` = the condition's top-20
  genes of ``uns['rank_genes_groups_cov_all']``); ``deeper_analysis`` gives
  ``pearson_delta``, ``pearson_delta_de`` and ``frac_correct_direction_{all,20,50,100,200}``
  (top-N of the same ranking); ``non_dropout_analysis`` gives
  ``frac_opposite_direction_top20_non_dropout``, ``frac_sigma_below_1_non_dropout`` and
  ``mse_top20_de_non_dropout`` (genes of ``uns['top_non_dropout_de_20']``).
  As in GEARS, a correlation that is undefined (a constant vector, e.g. the
  no-change baseline's deltas) counts as 0, and a direction is ``sign(x - control)``
  with ``sign(0) = 0`` (a gene predicted unchanged is never "correct").
  Two deliberate differences, both moot on real data: ``frac_correct_direction_N``
  divides by the number of ranked genes used, ``min(N, G)`` (GEARS divides by N even
  when fewer than N genes exist), and ``frac_sigma_below_1`` is NaN instead of
  raising when no DE gene varies across cells.
* GRAPE (``predict.py`` of the paper's code): ``rmse`` is the square root of a
  condition's mean squared error over all genes, averaged over conditions;
  ``direction_acc`` / ``direction_acc_de20`` / ``direction_acc_de40`` are the fraction
  of genes (all / top-20 / top-40 ranked DE genes) whose predicted direction from the
  control mean equals the observed one. By definition ``direction_acc`` equals
  ``frac_correct_direction_all`` and ``direction_acc_de20`` equals
  ``frac_correct_direction_20``; they are kept under GRAPE's names for comparison
  with its paper.
* cell-eval (0.8.2, ``discrimination_score`` with ``metric="l1"``):
  ``discrimination_score_l1``. For test condition i, with predicted effect
  ``p_i = pred_i - control`` and observed effects ``t_j = truth_j - control`` of all
  C test conditions, ``d_j = sum_g |t_jg - p_ig|`` over the genes g that are not
  perturbed in condition i; ``rank_i`` = the position of i when the d_j are sorted
  ascending (stable: ties keep the condition order), counting from 0; the score is
  ``1 - rank_i / C`` (1 = the prediction is closest to its own observation; the
  lowest possible value is 1/C). Differences from cell-eval: our models predict
  condition means, not cells, so the predicted effect is taken against the observed
  control mean; and the excluded target genes are the condition's perturbed genes
  (cell-eval drops the gene whose name equals the perturbation label, which for a
  single-gene label is the same gene). The panel is all test conditions of the run,
  so a condition's score does not depend on how the conditions are grouped later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

N_TOP_NON_DROPOUT = 20
DIRECTION_TOP = (20, 50, 100, 200)


@dataclass(frozen=True)
class Panel:
    """Everything the metrics read, for C conditions and G genes (float64 arrays).

    ``de_ranked[i]``: gene indices of condition i ranked by |t| (GEARS'
    ``rank_genes_groups_cov_all``), at least the first 200 or all genes;
    ``de_non_dropout[i]``: indices of its top non-dropout DE genes (GEARS'
    ``top_non_dropout_de_20``); ``targets[i]``: indices of its perturbed genes that are
    measured (may be empty); ``n_de``: how many ranked genes the ``*_de`` metrics use.
    """

    conditions: tuple[str, ...]
    pred: np.ndarray
    truth: np.ndarray
    truth_std: np.ndarray
    control: np.ndarray
    de_ranked: tuple[np.ndarray, ...]
    de_non_dropout: tuple[np.ndarray, ...]
    targets: tuple[np.ndarray, ...] = ()
    n_de: int = 20

    def __post_init__(self) -> None:
        c = len(self.conditions)
        for name in ("pred", "truth", "truth_std"):
            arr = getattr(self, name)
            if arr.ndim != 2 or arr.shape[0] != c:
                raise ValueError(f"Panel.{name}: expected shape ({c}, n_genes), got {arr.shape}")
        g = self.truth.shape[1]
        if self.pred.shape != self.truth.shape or self.truth_std.shape != self.truth.shape:
            raise ValueError(f"Panel: pred {self.pred.shape}, truth {self.truth.shape} and "
                             f"truth_std {self.truth_std.shape} differ")
        if self.control.shape != (g,):
            raise ValueError(f"Panel.control: expected shape ({g},), got {self.control.shape}")
        if len(self.de_ranked) != c or len(self.de_non_dropout) != c:
            raise ValueError("Panel: one DE ranking and one non-dropout DE set per condition are required")
        if self.targets and len(self.targets) != c:
            raise ValueError("Panel.targets: one entry per condition (or none at all)")
        if self.n_de < 1:
            raise ValueError(f"Panel.n_de must be >= 1, got {self.n_de}")

    @property
    def n_conditions(self) -> int:
        return len(self.conditions)

    def ranked(self, i: int, n: int) -> np.ndarray:
        """The first ``n`` ranked DE genes of condition ``i`` (fewer when fewer exist)."""
        return np.asarray(self.de_ranked[i][:n], dtype=np.int64)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two vectors; 0 when undefined (a constant vector), as GEARS counts it."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    if not denom > 0:
        return 0.0
    return float(np.clip((a * b).sum() / denom, -1.0, 1.0))


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a - b) ** 2))


def _direction_change(panel: Panel, i: int, idx: np.ndarray | None) -> np.ndarray:
    """``|sign(pred - ctrl) - sign(truth - ctrl)|`` on genes ``idx`` (all genes when None): 0, 1 or 2."""
    sel = slice(None) if idx is None else idx
    pred = np.sign(panel.pred[i, sel] - panel.control[sel])
    truth = np.sign(panel.truth[i, sel] - panel.control[sel])
    return np.abs(pred - truth)


def _frac_correct(panel: Panel, i: int, idx: np.ndarray | None) -> float:
    change = _direction_change(panel, i, idx)
    return float(np.mean(change == 0)) if change.size else float("nan")


def _frac_sigma_below_1(panel: Panel, i: int) -> float:
    de = np.asarray(panel.de_non_dropout[i][: panel.n_de], dtype=np.int64)
    mean, std = panel.truth[i, de], panel.truth_std[i, de]
    all_zero = (mean == 0) & (std == 0)  # every cell is 0 (GEARS: min == max == 0)
    varying = std > 0
    if all_zero.all() or not varying.any():
        return float("nan")
    sigma = np.abs(panel.pred[i, de][varying] - mean[varying]) / std[varying]
    return float(1.0 - np.mean(sigma > 1))


def discrimination_l1(panel: Panel) -> np.ndarray:
    """cell-eval's discrimination score (L1) of every condition of the panel (see the module text)."""
    c = panel.n_conditions
    true_effects = panel.truth - panel.control
    pred_effects = panel.pred - panel.control
    out = np.empty(c)
    for i in range(c):
        dist = np.abs(true_effects - pred_effects[i]).sum(axis=1)
        if panel.targets and len(panel.targets[i]):
            target = np.unique(np.asarray(panel.targets[i], dtype=np.int64))  # left out of the distance
            dist -= np.abs(true_effects[:, target] - pred_effects[i, target]).sum(axis=1)
        order = np.argsort(dist, kind="stable")
        rank = int(np.flatnonzero(order == i)[0])
        out[i] = 1.0 - rank / c
    return out


def per_condition(fn: Callable[[Panel, int], float]) -> Callable[[Panel], np.ndarray]:
    """Lift a function of one condition to the whole panel."""

    def compute(panel: Panel) -> np.ndarray:
        return np.array([fn(panel, i) for i in range(panel.n_conditions)], dtype=np.float64)

    return compute


@dataclass(frozen=True)
class Metric:
    """One metric: how to compute it per condition, its best value and its direction."""

    name: str
    compute: Callable[[Panel], np.ndarray]
    higher_is_better: bool
    best: float
    source: str
    description: str
    headline: bool = field(default=False)  # shown in the summary table


def _de_metric(kind: str, n: int | None = None) -> Callable[[Panel], np.ndarray]:
    def fn(panel: Panel, i: int) -> float:
        de = panel.ranked(i, panel.n_de if n is None else n)
        p, t, c = panel.pred[i, de], panel.truth[i, de], panel.control[de]
        if kind == "mse":
            return _mse(p, t)
        if kind == "pearson":
            return pearson(p, t)
        if kind == "pearson_delta":
            return pearson(p - c, t - c)
        if kind == "direction":
            return _frac_correct(panel, i, de)
        raise ValueError(kind)

    return per_condition(fn)


def _non_dropout(kind: str) -> Callable[[Panel], np.ndarray]:
    def fn(panel: Panel, i: int) -> float:
        de = np.asarray(panel.de_non_dropout[i][: panel.n_de], dtype=np.int64)
        if kind == "opposite":
            change = _direction_change(panel, i, de)
            return float(np.mean(change == 2)) if change.size else float("nan")
        return _mse(panel.pred[i, de], panel.truth[i, de])

    return per_condition(fn)


_GEARS_C = "GEARS gears/inference.py compute_metrics"
_GEARS_D = "GEARS gears/inference.py deeper_analysis"
_GEARS_N = "GEARS gears/inference.py non_dropout_analysis"
_GRAPE = "GRAPE predict.py"
_CELL_EVAL = "cell-eval metrics discrimination_score (metric='l1')"

_ENTRIES = [
    Metric("mse", per_condition(lambda p, i: _mse(p.pred[i], p.truth[i])), False, 0.0, _GEARS_C,
           "mean squared error of the mean expression, all genes", headline=True),
    Metric("pearson", per_condition(lambda p, i: pearson(p.pred[i], p.truth[i])), True, 1.0, _GEARS_C,
           "Pearson correlation of the mean expression, all genes"),
    Metric("mse_de", _de_metric("mse"), False, 0.0, _GEARS_C,
           "mean squared error on the top-20 DE genes (rank_genes_groups_cov_all)", headline=True),
    Metric("pearson_de", _de_metric("pearson"), True, 1.0, _GEARS_C,
           "Pearson correlation of the mean expression on the top-20 DE genes"),
    Metric("pearson_delta", per_condition(lambda p, i: pearson(p.pred[i] - p.control, p.truth[i] - p.control)),
           True, 1.0, _GEARS_D, "Pearson correlation of the change from the control mean, all genes", headline=True),
    Metric("pearson_delta_de", _de_metric("pearson_delta"), True, 1.0, _GEARS_D,
           "Pearson correlation of the change from the control mean, top-20 DE genes", headline=True),
    Metric("frac_correct_direction_all", per_condition(lambda p, i: _frac_correct(p, i, None)), True, 1.0, _GEARS_D,
           "fraction of all genes whose predicted change has the observed sign"),
    *[Metric(f"frac_correct_direction_{n}", _de_metric("direction", n), True, 1.0, _GEARS_D,
             f"fraction of the top-{n} ranked DE genes whose predicted change has the observed sign",
             headline=(n == 20)) for n in DIRECTION_TOP],
    Metric("frac_opposite_direction_top20_non_dropout", _non_dropout("opposite"), False, 0.0, _GEARS_N,
           "fraction of the top-20 non-dropout DE genes predicted to change in the opposite direction", headline=True),
    Metric("frac_sigma_below_1_non_dropout", per_condition(_frac_sigma_below_1), True, 1.0, _GEARS_N,
           "fraction of the top-20 non-dropout DE genes (with cell-to-cell variation) predicted within one "
           "standard deviation of the observed mean", headline=True),
    Metric("mse_top20_de_non_dropout", _non_dropout("mse"), False, 0.0, _GEARS_N,
           "mean squared error on the top-20 non-dropout DE genes"),
    Metric("rmse", per_condition(lambda p, i: float(np.sqrt(_mse(p.pred[i], p.truth[i])))), False, 0.0, _GRAPE,
           "root mean squared error of the mean expression, all genes"),
    Metric("direction_acc", per_condition(lambda p, i: _frac_correct(p, i, None)), True, 1.0, _GRAPE,
           "fraction of all genes with the observed direction of change (= frac_correct_direction_all)"),
    Metric("direction_acc_de20", _de_metric("direction", 20), True, 1.0, _GRAPE,
           "direction accuracy on the top-20 ranked DE genes (= frac_correct_direction_20)"),
    Metric("direction_acc_de40", _de_metric("direction", 40), True, 1.0, _GRAPE,
           "direction accuracy on the top-40 ranked DE genes"),
    Metric("discrimination_score_l1", discrimination_l1, True, 1.0, _CELL_EVAL,
           "1 - (rank of the condition's own observed effect among all test conditions' observed effects, "
           "by L1 distance to its predicted effect) / number of test conditions", headline=True),
]

METRICS: dict[str, Metric] = {m.name: m for m in _ENTRIES}
HEADLINE: list[str] = [m.name for m in _ENTRIES if m.headline]


def score(panel: Panel, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Every (or the named) registered metric of every condition: conditions x metrics."""
    names = list(METRICS) if metrics is None else list(metrics)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise KeyError(f"unknown metric(s): {', '.join(unknown)} (known: {', '.join(METRICS)})")
    with np.errstate(invalid="ignore", divide="ignore"):
        values = {name: METRICS[name].compute(panel) for name in names}
    return pd.DataFrame(values, index=pd.Index(list(panel.conditions), name="condition"))


def registry_table() -> pd.DataFrame:
    """The registry as a table: name, best value, direction, source, description."""
    return pd.DataFrame([
        {"metric": m.name, "best": m.best, "higher_is_better": m.higher_is_better, "headline": m.headline,
         "source": m.source, "description": m.description}
        for m in METRICS.values()
    ])
