"""Paired difference between the models of two workflow runs on the same repeated splits.

Two runs of one screen with the same ``split.seeds`` (say the default model and one option changed,
``run=<name>``) test the same conditions of the same splits. This reads each run's
``splits/seed<k>/evaluate/per_condition.tsv``, takes the model ``--model`` (default ``grape``) of
each, and gives the paired difference of the second to the first per metric for one subgroup,
signed so that positive means the second is better, with the aggregate stage's bootstrap interval
(:func:`grape.evaluation.aggregate.compare`: splits, then the conditions within them).

    .venv/bin/python bench/compare_runs.py results/papalexi2021 results/papalexi2021_ens5 \\
        --subgroup unseen_single --labels default ensemble5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from grape.evaluation.aggregate import Options, compare, directions, verdict
from grape.stages.aggregate import read_splits

METRICS = tuple(Options().metrics)


def per_condition(run: Path, model: str, label: str) -> pd.DataFrame:
    paths = sorted((run / "splits").glob("seed*/evaluate/per_condition.tsv"))
    if not paths:
        raise SystemExit(f"{run}: no splits/seed<k>/evaluate/per_condition.tsv (a run with split.seeds)")
    table = read_splits(paths)
    table = table[table["model"] == model]
    if table.empty:
        raise SystemExit(f"{run}: no model {model!r} in its per_condition tables")
    return table.assign(model=label)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, help="results/<run> of the reference")
    parser.add_argument("second", type=Path, help="results/<run> compared with it")
    parser.add_argument("--subgroup", default="all")
    parser.add_argument("--model", default="grape", help="the model's name in both runs")
    parser.add_argument("--second-model", default=None, help="the model's name in the second run, if other")
    parser.add_argument("--labels", nargs=2, default=("first", "second"))
    parser.add_argument("--metrics", nargs="+", default=list(METRICS))
    args = parser.parse_args(argv)
    a = per_condition(args.first, args.model, args.labels[0])
    b = per_condition(args.second, args.second_model or args.model, args.labels[1])
    table = pd.concat([a, b], ignore_index=True)
    result = compare(table, model=args.labels[1], baselines=[args.labels[0]], metrics=args.metrics,
                     higher_is_better=directions(args.metrics))
    result = result[result["subgroup"] == args.subgroup]
    print(f"| {args.labels[1]} minus {args.labels[0]} ({args.subgroup}) | " + " | ".join(args.metrics) + " |")
    print("|---|" + "---|" * len(args.metrics))
    cells = {r["metric"]: f"{r['gain']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] {verdict(r)}"
             for _, r in result.iterrows()}
    cases = int(result["cases"].max()) if len(result) else 0
    print(f"| {int(result['splits'].max()) if len(result) else 0} splits / {cases} cases | "
          + " | ".join(cells.get(m, "") for m in args.metrics) + " |")


if __name__ == "__main__":
    main()
