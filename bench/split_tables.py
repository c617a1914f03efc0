"""Markdown tables of the aggregate stage's outputs, for BENCHMARKS.md.

Reads ``results/<run>/aggregate/summary.tsv`` and ``comparison.tsv`` (written by ``grape
aggregate`` from a run with ``split.seeds``) and prints, for one test subgroup, the mean over
splits of each model and baseline per metric, then each model's paired difference to the
baselines asked for (gain signed so that positive is better, bootstrap 95% interval, verdict), and
with ablations (``ablations.tsv``) each variant's paired difference to the full model.
Nothing is recomputed: the numbers are the aggregate stage's.

    .venv/bin/python bench/split_tables.py results/carpool_thp1/aggregate --subgroup combo_seen2 \
        --baselines additive mean linear
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from grape.evaluation.aggregate import Options, verdict

METRICS = tuple(Options().metrics)  # the aggregate stage's default metrics
SHORT = {"pearson_delta": "pearson_delta", "rmse": "RMSE", "mse_top20_de_non_dropout": "top-20 DE MSE",
         "frac_correct_direction_20": "direction top-20", "discrimination_score_l1": "discrimination"}


def means_table(summary: pd.DataFrame, subgroup: str, models: list[str]) -> str:
    part = summary[summary["subgroup"] == subgroup]
    wide = part.pivot(index="model", columns="metric", values="mean")
    cases = part.groupby("model")["cases"].max()
    rows = ["| model | " + " | ".join(SHORT[m] for m in METRICS if m in wide.columns) + " | splits / cases |",
            "|---" * (sum(m in wide.columns for m in METRICS) + 2) + "|"]
    for model in [m for m in models if m in wide.index]:
        values = " | ".join(f"{wide.loc[model, m]:.4f}" for m in METRICS if m in wide.columns)
        splits = int(part[part["model"] == model]["splits"].max())
        rows.append(f"| {model} | {values} | {splits} / {int(cases[model])} |")
    return "\n".join(rows)


def gains_table(comparison: pd.DataFrame, subgroup: str, models: list[str], baselines: list[str]) -> str:
    part = comparison[comparison["subgroup"] == subgroup]
    rows = ["| model | baseline | " + " | ".join(SHORT[m] for m in METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for model in models:
        for baseline in baselines:
            cells = []
            for metric in METRICS:
                row = part[(part["model"] == model) & (part["baseline"] == baseline) & (part["metric"] == metric)]
                if row.empty:
                    cells.append("")
                    continue
                r = row.iloc[0]
                cells.append(f"{r['gain']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] {verdict(r)}")
            if any(cells):
                rows.append(f"| {model} | {baseline} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("aggregate", type=Path, help="results/<run>/aggregate")
    parser.add_argument("--subgroup", default="all")
    parser.add_argument("--baselines", nargs="+", default=["mean", "additive", "linear"])
    args = parser.parse_args()
    summary = pd.read_csv(args.aggregate / "summary.tsv", sep="\t")
    comparison = pd.read_csv(args.aggregate / "comparison.tsv", sep="\t")
    models = sorted(comparison["model"].unique())
    print(means_table(summary, args.subgroup, [*models, *args.baselines]))
    print()
    print(gains_table(comparison, args.subgroup, models, args.baselines))
    ablations = args.aggregate / "ablations.tsv"
    if ablations.exists() and not (table := pd.read_csv(ablations, sep="\t")).empty:
        print()  # each ablation variant minus the full model
        print(gains_table(table, args.subgroup, sorted(table["model"].unique()), ["grape"]))


if __name__ == "__main__":
    main()
