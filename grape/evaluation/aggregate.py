"""Results over repeated splits: the mean per model and subgroup, and the paired difference
of the model to each baseline with a bootstrap 95% interval.

One split is noise: the field's papers disagree largely because each reports one. The input
is the per-condition table of several splits (``evaluate/per_condition.tsv`` of each, with
a ``split`` column naming the split it came from). For each model, subgroup and metric the
summary gives the mean over splits of the per-split means (each split weighs the same,
however many test conditions it holds); for each (model, baseline) pair it gives the mean
paired difference, ``model - baseline`` on the same condition of the same split, signed so
that a positive ``gain`` is always better (for a metric where lower is better the gain is
``baseline - model``), with a percentile interval from a bootstrap that resamples splits,
and conditions within each split, keeping the pairs together. "Better than the baseline"
means the interval excludes zero.

The headline (:func:`headline`) is "model minus best baseline": per subgroup and metric the
baseline with the best mean is the one the model is compared with.

:func:`aggregate` does all three for every model of the table (GRAPE and each ablation variant)
against every baseline in it, and compares each ablation variant with the full model on the same
cases, with the metrics' directions from the metric registry
(:data:`grape.evaluation.metrics.METRICS`); :func:`headline_markdown` writes the headline as a
table (the ``grape aggregate`` stage's ``headline.md``, and the top of the report's summary).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grape.evaluation.baselines import BASELINES
from grape.evaluation.metrics import METRICS
from grape.options import options_class

KEYS = ("split", "condition", "context")
"""Columns that identify one test case: a condition of a split (and its context, when the run has several)."""


def _keys(table: pd.DataFrame) -> list[str]:
    return [k for k in KEYS if k in table.columns]


def _check(table: pd.DataFrame, metrics: Sequence[str]) -> None:
    missing = [c for c in ("split", "condition", "model", "subgroup", *metrics) if c not in table.columns]
    if missing:
        raise ValueError(f"per-condition table lacks column(s) {', '.join(missing)} (columns: {', '.join(table.columns)})")


def _pairs(table: pd.DataFrame, model: str, baseline: str, metric: str, subgroup: str | None) -> pd.DataFrame:
    """Per test case the model's and the baseline's value of ``metric`` (cases both have)."""
    rows = table if subgroup is None else table[table["subgroup"] == subgroup]
    keys = _keys(rows)
    a = rows.loc[rows["model"] == model, [*keys, metric]].set_index(keys)[metric]
    b = rows.loc[rows["model"] == baseline, [*keys, metric]].set_index(keys)[metric]
    joined = pd.concat({"model": a, "baseline": b}, axis=1, join="inner").dropna()
    return joined.reset_index()


def split_weighted_mean(values: np.ndarray, split: np.ndarray) -> float:
    """Mean over splits of each split's mean (each split weighs the same)."""
    frame = pd.DataFrame({"v": values, "s": split})
    return float(frame.groupby("s", sort=True)["v"].mean().mean())


def paired_bootstrap(diff: np.ndarray, split: np.ndarray, *, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Mean paired difference (split-weighted) and its bootstrap interval.

    Each replicate draws splits with replacement, then within each drawn split its cases with
    replacement, and takes the split-weighted mean of the drawn differences; the interval is the
    replicates' ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles. With one split only the
    cases are resampled.
    """
    diff = np.asarray(diff, dtype=float)
    split = np.asarray(split)
    if diff.size == 0:
        return float("nan"), float("nan"), float("nan")
    labels, index = np.unique(split, return_inverse=True)
    groups = [diff[index == i] for i in range(len(labels))]
    estimate = float(np.mean([g.mean() for g in groups]))
    rng = np.random.default_rng(seed)
    n = len(groups)
    chosen = rng.integers(n, size=(n_boot, n)) if n > 1 else np.zeros((n_boot, 1), dtype=int)
    # every (replicate, slot) draws its own resample of the split it chose: the resampled mean of each
    # split for every slot, then the chosen one picked
    resampled = np.stack([g[rng.integers(len(g), size=(n_boot, n, len(g)))].mean(-1) for g in groups])  # [S, B, n]
    reps = resampled[chosen, np.arange(n_boot)[:, None], np.arange(n)[None, :]].mean(1)
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return estimate, float(low), float(high)


def summarize(table: pd.DataFrame, *, metrics: Sequence[str]) -> pd.DataFrame:
    """Mean over splits per model, subgroup (and ``all``) and metric, with the number of splits and cases."""
    _check(table, metrics)
    rows = []
    for subgroup in ["all", *sorted(table["subgroup"].astype(str).unique())]:
        part = table if subgroup == "all" else table[table["subgroup"].astype(str) == subgroup]
        for model, by_model in part.groupby("model", sort=True):
            for metric in metrics:
                values = by_model[["split", metric]].dropna()
                if values.empty:
                    continue
                rows.append({"model": model, "subgroup": subgroup, "metric": metric,
                             "mean": split_weighted_mean(values[metric].to_numpy(), values["split"].to_numpy()),
                             "splits": values["split"].nunique(), "cases": len(values)})
    return pd.DataFrame(rows, columns=["model", "subgroup", "metric", "mean", "splits", "cases"])


def compare(table: pd.DataFrame, *, model: str, baselines: Sequence[str], metrics: Sequence[str],
            higher_is_better: Mapping[str, bool], n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Paired difference of ``model`` to each baseline per subgroup (and ``all``) and metric.

    ``gain`` is the mean difference signed so that positive is better; ``low`` and ``high`` its
    bootstrap 95% interval; ``better`` / ``worse``: the interval lies above / below zero.
    """
    _check(table, metrics)
    unknown = [m for m in metrics if m not in higher_is_better]
    if unknown:
        raise ValueError(f"no direction (higher or lower is better) known for metric(s) {', '.join(unknown)}")
    rows = []
    for subgroup in [None, *sorted(table["subgroup"].astype(str).unique())]:
        for baseline in baselines:
            for metric in metrics:
                pairs = _pairs(table, model, baseline, metric, subgroup)
                if pairs.empty:
                    continue
                sign = 1.0 if higher_is_better[metric] else -1.0
                diff = sign * (pairs["model"].to_numpy() - pairs["baseline"].to_numpy())
                gain, low, high = paired_bootstrap(diff, pairs["split"].to_numpy(), n_boot=n_boot, seed=seed)
                rows.append({"model": model, "baseline": baseline, "subgroup": subgroup or "all", "metric": metric,
                             "gain": gain, "low": low, "high": high, "better": low > 0, "worse": high < 0,
                             "splits": pairs["split"].nunique(), "cases": len(pairs)})
    return pd.DataFrame(rows, columns=["model", "baseline", "subgroup", "metric", "gain", "low", "high", "better",
                                       "worse", "splits", "cases"])


def headline(comparison: pd.DataFrame, summary: pd.DataFrame, *,
             higher_is_better: Mapping[str, bool]) -> pd.DataFrame:
    """"Model minus best baseline" per subgroup and metric: the row of :func:`compare` against the
    baseline whose mean (in ``summary``) is best there."""
    rows = []
    for (subgroup, metric), part in comparison.groupby(["subgroup", "metric"], sort=True):
        means = summary[(summary["subgroup"] == subgroup) & (summary["metric"] == metric)
                        & summary["model"].isin(part["baseline"])].set_index("model")["mean"]
        if means.empty:
            continue
        best = means.idxmax() if higher_is_better[metric] else means.idxmin()
        rows.append(part[part["baseline"] == best].iloc[0])
    return pd.DataFrame(rows, columns=comparison.columns).reset_index(drop=True)


# --- the aggregate stage's tables ------------------------------------------------------------


@dataclass(frozen=True)
class Options(options_class("aggregate")):
    """Options of the aggregate stage (config section ``aggregate``)."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"aggregate.metrics: unknown metric(s) {', '.join(unknown)} "
                             f"(the metric registry has {', '.join(METRICS)})")
        if self.n_boot < 1:
            raise ValueError(f"aggregate.n_boot must be at least 1, got {self.n_boot}")


def directions(metrics: Sequence[str]) -> dict[str, bool]:
    """Whether higher is better, per metric, from the metric registry."""
    return {m: METRICS[m].higher_is_better for m in metrics}


def models_and_baselines(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The models of a per-condition table (GRAPE, ``grape_<variant>``: every name that is no baseline of
    :data:`grape.evaluation.baselines.BASELINES`) and its baselines, ``grape`` first, baselines in registry order."""
    names = [str(m) for m in pd.unique(table["model"])]
    baselines = [b for b in BASELINES if b in names]
    models = sorted((m for m in names if m not in BASELINES), key=lambda m: (m != "grape", m))
    if not models or not baselines:
        raise ValueError(f"the per-condition table needs a model and a baseline to compare (models: {', '.join(names)})")
    return models, baselines


def _order(frame: pd.DataFrame, metrics: Sequence[str], models: Sequence[str]) -> pd.DataFrame:
    """Rows by model (as listed), subgroup (``all`` first) and metric (as listed)."""
    if frame.empty:
        return frame.reset_index(drop=True)
    subgroups = ["all", *sorted(set(frame["subgroup"].astype(str)) - {"all"})]
    rank = {"model": {m: i for i, m in enumerate(models)}, "subgroup": {g: i for i, g in enumerate(subgroups)},
            "metric": {m: i for i, m in enumerate(metrics)}}
    return frame.sort_values(["model", "subgroup", "metric"], key=lambda c: c.astype(str).map(rank[c.name]),
                             kind="stable").reset_index(drop=True)


def aggregate(table: pd.DataFrame, *, options: Options) -> dict[str, pd.DataFrame]:
    """The four tables over the splits of ``table`` (a ``split`` column naming each split):
    ``summary`` (:func:`summarize`, every model and baseline), ``comparison`` (:func:`compare` of every
    model against every baseline), ``headline`` (:func:`headline` of every model) and ``ablations``
    (:func:`compare` of each ablation variant ``grape_<variant>`` against the full model ``grape``, its
    ``baseline`` column ``grape``: a positive gain means the variant is better; no rows without variants)."""
    metrics = list(options.metrics)
    _check(table, metrics)
    models, baselines = models_and_baselines(table)
    higher = directions(metrics)
    summary = summarize(table, metrics=metrics)

    def against(model: str, references: Sequence[str]) -> pd.DataFrame:
        return compare(table, model=model, baselines=references, metrics=metrics, higher_is_better=higher,
                       n_boot=options.n_boot, seed=options.seed)

    compared = [against(m, baselines) for m in models]
    comparison = pd.concat(compared, ignore_index=True)
    top = pd.concat([headline(c, summary, higher_is_better=higher) for c in compared], ignore_index=True)
    variants = [m for m in models if m != "grape"] if "grape" in models else []
    ablations = pd.concat([against(m, ["grape"]) for m in variants], ignore_index=True) if variants else \
        comparison.iloc[:0]
    order = [*models, *baselines]
    return {"summary": _order(summary, metrics, order), "comparison": _order(comparison, metrics, order),
            "headline": _order(top, metrics, order), "ablations": _order(ablations, metrics, order)}


def verdict(row: Mapping) -> str:
    """``better`` / ``worse`` when the interval lies above / below zero, else ``level``."""
    return "better" if bool(row["better"]) else "worse" if bool(row["worse"]) else "level"


def headline_markdown(top: pd.DataFrame, *, digits: int = 4, heading: str = "#") -> str:
    """The headline (:func:`headline` rows, ``model`` column included) as Markdown: a title naming the
    number of splits, what the numbers are, and per subgroup and metric the best baseline, the gain
    with its interval and the verdict (a model column when there are several models)."""
    n = int(top["splits"].max()) if len(top) else 0
    lines = [f"{heading} Model minus best baseline over {n} splits", "",
             "Per test subgroup and metric, the baseline with the best mean over splits, and the mean paired "
             "difference of the model to it on the same test conditions (↑ higher is better: model - baseline; "
             "↓ lower is better: baseline - model, so a positive gain is always better), with a bootstrap 95% "
             "interval [low, high] that resamples splits and the conditions within them; better / worse: the "
             "interval lies above / below zero, level: it holds zero; cases: the test conditions of all splits.",
             ""]
    several = top["model"].nunique() > 1
    header = [*(["model"] if several else []), "subgroup", "metric", "best baseline", "gain [low, high]", "verdict",
              "splits", "cases"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in top.iterrows():
        arrow = "↑" if METRICS[row["metric"]].higher_is_better else "↓"
        gain = f"{row['gain']:+.{digits}f} [{row['low']:+.{digits}f}, {row['high']:+.{digits}f}]"
        cells = [*([str(row["model"])] if several else []), str(row["subgroup"]), f"{row['metric']} {arrow}",
                 str(row["baseline"]), gain, verdict(row), str(int(row["splits"])), str(int(row["cases"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
