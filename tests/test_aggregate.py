"""grape.evaluation.aggregate and the aggregate stage: results over repeated splits and the paired bootstrap, on constructed cases."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from grape.evaluation.aggregate import (
    Options,
    compare,
    directions,
    headline,
    paired_bootstrap,
    split_weighted_mean,
    summarize,
)
from grape.evaluation.metrics import METRICS
from grape.options import key_schema
from grape.stages import aggregate as aggregate_stage

DIRECTION = {"pearson_delta": True, "rmse": False}


def _table(shift: float, *, noise: float = 0.05, splits: int = 5, conditions: int = 40, seed: int = 0) -> pd.DataFrame:
    """A model that is ``shift`` better than baseline ``additive`` on every case (plus noise), and a
    baseline ``mean`` that is worse than ``additive`` by 0.2."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(splits):
        for c in range(conditions):
            base = rng.normal(0.5, 0.2)
            err = rng.normal(1.0, 0.2)
            subgroup = "combo_seen2" if c % 2 else "combo_seen1"
            case = {"split": f"seed{s}", "condition": f"G{c}+G{c + 1}", "subgroup": subgroup}
            rows.append({**case, "model": "additive", "pearson_delta": base, "rmse": err})
            rows.append({**case, "model": "mean", "pearson_delta": base - 0.2, "rmse": err + 0.2})
            rows.append({**case, "model": "grape", "pearson_delta": base + shift + rng.normal(0, noise),
                         "rmse": err - shift + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_a_known_difference_is_recovered_with_an_interval_excluding_zero():
    table = _table(0.1)
    result = compare(table, model="grape", baselines=["additive", "mean"], metrics=["pearson_delta", "rmse"],
                     higher_is_better=DIRECTION, n_boot=500)
    row = result[(result["baseline"] == "additive") & (result["subgroup"] == "all")].set_index("metric")
    for metric in ("pearson_delta", "rmse"):  # lower-is-better rmse: the gain is signed so that positive is better
        assert row.loc[metric, "gain"] == pytest.approx(0.1, abs=0.01)
        assert 0 < row.loc[metric, "low"] < 0.1 < row.loc[metric, "high"] < 0.12
        assert row.loc[metric, "better"] and not row.loc[metric, "worse"]
        assert row.loc[metric, "splits"] == 5 and row.loc[metric, "cases"] == 200
    against_mean = result[(result["baseline"] == "mean") & (result["subgroup"] == "all")].set_index("metric")
    assert against_mean.loc["pearson_delta", "gain"] == pytest.approx(0.3, abs=0.01)
    assert set(result["subgroup"]) == {"all", "combo_seen1", "combo_seen2"}


def test_no_difference_gives_an_interval_around_zero_and_a_worse_model_is_worse():
    null = compare(_table(0.0), model="grape", baselines=["additive"], metrics=["pearson_delta"],
                   higher_is_better=DIRECTION, n_boot=500)
    row = null[null["subgroup"] == "all"].iloc[0]
    assert row["low"] < 0 < row["high"] and not row["better"] and not row["worse"]
    worse = compare(_table(-0.05), model="grape", baselines=["additive"], metrics=["rmse"],
                    higher_is_better=DIRECTION, n_boot=500)
    assert worse[worse["subgroup"] == "all"].iloc[0]["worse"]


def test_pairs_are_kept_by_condition_and_split():
    """A model shifted by a constant on every case has a zero-width interval: resampling keeps each pair whole."""
    estimate, low, high = paired_bootstrap(np.full(30, 0.25), np.repeat(["a", "b", "c"], 10), n_boot=200)
    assert estimate == low == high == pytest.approx(0.25)
    table = _table(0.1, noise=0.0)
    shuffled = table.sample(frac=1.0, random_state=3)  # row order must not matter
    a = compare(table, model="grape", baselines=["additive"], metrics=["pearson_delta"], higher_is_better=DIRECTION,
                n_boot=100)
    b = compare(shuffled, model="grape", baselines=["additive"], metrics=["pearson_delta"],
                higher_is_better=DIRECTION, n_boot=100)
    assert a["gain"].to_numpy() == pytest.approx(b["gain"].to_numpy())
    assert a.loc[a["subgroup"] == "all", "high"].iloc[0] - a.loc[a["subgroup"] == "all", "low"].iloc[0] < 1e-9


def test_each_split_weighs_the_same():
    values = np.array([1.0] * 9 + [0.0])
    split = np.array(["big"] * 9 + ["small"])
    assert split_weighted_mean(values, split) == pytest.approx(0.5)
    assert paired_bootstrap(values, split, n_boot=50)[0] == pytest.approx(0.5)


def test_headline_is_against_the_best_baseline():
    table = _table(0.1)
    summary = summarize(table, metrics=["pearson_delta", "rmse"])
    assert set(summary["model"]) == {"grape", "additive", "mean"}
    assert summary.query("model == 'mean' and subgroup == 'all' and metric == 'pearson_delta'")["splits"].iloc[0] == 5
    comparison = compare(table, model="grape", baselines=["additive", "mean"], metrics=["pearson_delta", "rmse"],
                         higher_is_better=DIRECTION, n_boot=200)
    top = headline(comparison, summary, higher_is_better=DIRECTION)
    assert set(top["baseline"]) == {"additive"}  # additive beats mean on both metrics, in every subgroup
    assert len(top) == 3 * 2


def test_missing_columns_and_directions_are_named():
    table = _table(0.1).drop(columns="split")
    with pytest.raises(ValueError, match="lacks column.*split"):
        summarize(table, metrics=["pearson_delta"])
    with pytest.raises(ValueError, match="no direction .* mse_de"):
        compare(_table(0.1).assign(mse_de=1.0), model="grape", baselines=["additive"], metrics=["mse_de"],
                higher_is_better=DIRECTION)


# --- the aggregate stage -------------------------------------------------------------------------


def _write_splits(root, table: pd.DataFrame) -> list:
    """Each split's rows as its evaluation writes them (no split column), at <root>/splits/<split>/evaluate/."""
    paths = []
    for split, rows in table.groupby("split", sort=True):
        path = root / "splits" / str(split) / "evaluate" / "per_condition.tsv"
        path.parent.mkdir(parents=True)
        rows.drop(columns="split").to_csv(path, sep="\t", index=False)
        paths.append(path)
    return paths


def test_the_stage_writes_every_table_over_the_splits_against_the_best_baseline(tmp_path):
    table = _table(0.1, splits=2, conditions=12)
    variant = table[table["model"] == "grape"].assign(model="grape_no_gsl")
    variant["pearson_delta"] -= 0.5  # far worse than every baseline
    paths = _write_splits(tmp_path, pd.concat([table, variant], ignore_index=True))
    out = tmp_path / "aggregate"
    aggregate_stage.run(options=Options(metrics=["pearson_delta", "rmse"], n_boot=100), per_condition=paths,
                        out_dir=out)
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert set(summary["model"]) == {"grape", "grape_no_gsl", "additive", "mean"}
    assert set(summary["splits"]) == {2}
    comparison = pd.read_csv(out / "comparison.tsv", sep="\t")
    assert set(zip(comparison["model"], comparison["baseline"])) == {
        (m, b) for m in ("grape", "grape_no_gsl") for b in ("additive", "mean")}
    top = pd.read_csv(out / "headline.tsv", sep="\t")
    assert set(top["baseline"]) == {"additive"}  # the best baseline, never mean
    assert len(top) == 2 * 3 * 2  # models x subgroups (all and two) x metrics
    assert list(top["model"].unique()) == ["grape", "grape_no_gsl"] and top["subgroup"].iloc[0] == "all"
    grape = top[(top["model"] == "grape") & (top["subgroup"] == "all")].set_index("metric")
    assert grape.loc["rmse", "gain"] == pytest.approx(0.1, abs=0.05) and grape.loc["rmse", "better"]
    text = (out / "headline.md").read_text()
    assert text.startswith("# Model minus best baseline over 2 splits")
    gain = r"([+-]\d\.\d{4}) \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\]"  # mean [low, high]
    assert re.search(rf"^\| grape \| all \| rmse ↓ \| additive \| {gain} \| better \| 2 \| 24 \|$", text, re.M)
    worse = re.search(rf"^\| grape_no_gsl \| all \| pearson_delta ↑ \| additive \| {gain} \| worse \| 2 \| 24 \|$",
                      text, re.M)
    assert worse and float(worse.group(1)) == pytest.approx(-0.4, abs=0.05)
    ablations = pd.read_csv(out / "ablations.tsv", sep="\t")  # the variant against the full model
    assert set(zip(ablations["model"], ablations["baseline"])) == {("grape_no_gsl", "grape")}
    row = ablations[ablations["subgroup"] == "all"].set_index("metric")
    assert row.loc["pearson_delta", "gain"] == pytest.approx(-0.5) and row.loc["pearson_delta", "worse"]
    assert row.loc["pearson_delta", "high"] == pytest.approx(-0.5)  # the same shift on every case: no spread
    assert row.loc["rmse", "gain"] == pytest.approx(0.0) and not (row.loc["rmse", "better"] or row.loc["rmse", "worse"])


def test_without_ablations_the_ablations_table_is_a_header(tmp_path):
    paths = _write_splits(tmp_path, _table(0.1, splits=2, conditions=4))
    aggregate_stage.run(options=Options(metrics=["pearson_delta"], n_boot=10), per_condition=paths,
                        out_dir=tmp_path / "aggregate")
    ablations = pd.read_csv(tmp_path / "aggregate" / "ablations.tsv", sep="\t")
    assert ablations.empty and list(ablations.columns)[:3] == ["model", "baseline", "subgroup"]


def test_each_table_is_named_by_its_split_directory(tmp_path):
    paths = _write_splits(tmp_path, _table(0.1, splits=2, conditions=4))
    table = aggregate_stage.read_splits(paths)
    assert list(pd.unique(table["split"])) == ["seed0", "seed1"] and len(table) == 2 * 4 * 3
    with pytest.raises(ValueError, match="same split seed0"):
        aggregate_stage.read_splits([paths[0], paths[0]])


def test_the_schema_offers_the_registered_metrics():
    """aggregate.metrics is checked with the config, before any job: its choices are the metric registry's names."""
    assert key_schema("aggregate", "metrics")["items"]["enum"] == list(METRICS)


def test_aggregate_options_name_unknown_metrics():
    assert Options().metrics[:2] == ["pearson_delta", "rmse"]  # the schema's default
    assert directions(["rmse", "pearson_delta"]) == {"rmse": False, "pearson_delta": True}  # the registry's
    with pytest.raises(ValueError, match="aggregate.metrics: unknown metric.*pearson_dleta"):
        Options(metrics=["pearson_dleta"])
