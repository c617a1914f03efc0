"""Where the doubles' discrimination goes: the learned interaction, scaled, on a finished run's test doubles.

With ``train.doubles: additive`` and ``observed_singles`` a double's prediction is the sum of its two
observed single changes (the additive baseline) plus the learned interaction. This reads each split's
``predictions.h5ad`` of a run with split.seeds, takes its test doubles whose two singles were observed,
and scores ``additive + lam * interaction`` for several ``lam`` (0: additive, 1: the model), plus the
interaction's part common to all test doubles (its mean over them) and the rest (condition-specific),
with the evaluation's own metric functions (pearson_delta, MSE on all genes, discrimination L1).
Also the ``lam`` that ``train.calibrate: validation`` fits on the validation doubles, and what
``validation`` and ``validation_gene`` (a factor per gene) make of the test doubles, and the latter
with ``calibrate_scale: doubles`` (its factor fitted on the validation doubles). Test conditions
are only scored here, never used to choose anything.

    .venv/bin/python bench/interaction_shrink.py results/carpool_thp1 ../shared/data/carpool_thp1_pseudobulk.h5ad
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from grape.evaluation.metrics import Panel, discrimination_l1, pearson
from grape.model.calibrate import gene_factors, magnitude_factor, shrink_factor

LAMS = (0.0, 0.25, 0.5, 0.75, 1.0)


def score(pred: np.ndarray, truth: np.ndarray, control: np.ndarray, targets: list[np.ndarray],
          conditions: list[str]) -> dict[str, float]:
    empty = tuple(np.zeros(0, dtype=np.int64) for _ in conditions)
    panel = Panel(tuple(conditions), pred + control, truth + control, np.zeros_like(truth), control,
                  empty, empty, tuple(targets))
    return {"pearson_delta": float(np.mean([pearson(p, t) for p, t in zip(pred, truth)])),
            "mse": float(((pred - truth) ** 2).mean()), "discrimination": float(discrimination_l1(panel).mean())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dataset", type=Path, help="the pseudobulk h5ad of the run (one row per condition)")
    parser.add_argument("--condition-key", default="condition")
    parser.add_argument("--control", default="ctrl")
    parser.add_argument("--separator", default="+")
    args = parser.parse_args(argv)
    data = ad.read_h5ad(args.dataset)
    means = pd.DataFrame(np.asarray(data.X, dtype=np.float64), index=data.obs[args.condition_key].astype(str),
                         columns=data.var_names.astype(str))
    sep, ctrl_label = args.separator, args.control

    def genes(cond: str) -> list[str]:
        return [g for g in cond.split(sep) if g != ctrl_label]

    singles = {genes(c)[0]: c for c in means.index if len(genes(c)) == 1}
    rows = []
    for path in sorted(args.run.glob("splits/seed*/train/full/predictions.h5ad")):
        split_dir = path.parents[2]
        pred_all = ad.read_h5ad(path).to_df().astype(np.float64)
        var = list(pred_all.columns)
        control = means.loc[ctrl_label, var].to_numpy()
        split = pd.read_csv(split_dir / "split" / "split.tsv", sep="\t").set_index("condition")["split"]

        def doubles(label: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
            conds = [c for c in pred_all.index if split.get(c) == label and len(genes(c)) == 2
                     and all(g in singles for g in genes(c))]
            pred = pred_all.loc[conds].to_numpy() - control
            truth = means.loc[conds, var].to_numpy() - control
            add = np.stack([sum(means.loc[singles[g], var].to_numpy() - control for g in genes(c)) for c in conds])
            return conds, pred, truth, add

        conds, pred, truth, add = doubles("test")
        _, v_pred, v_truth, v_add = doubles("val")
        index = {g: i for i, g in enumerate(var)}
        targets = [np.array([index[g] for g in genes(c) if g in index], dtype=np.int64) for c in conds]
        inter = pred - add
        record = {"split": split_dir.name, "test doubles": len(conds),
                  "lam fitted on validation": shrink_factor(v_pred, v_add, v_truth)}
        variants = {f"lam {lam}": add + lam * inter for lam in LAMS}
        variants["common part only"] = add + inter.mean(axis=0)
        variants["specific part only"] = add + inter - inter.mean(axis=0)
        # what train.calibrate makes of them: one factor (validation), a factor per gene (validation_gene)
        variants["calibrate: validation"] = add + record["lam fitted on validation"] * inter
        gene_lam, tau2 = gene_factors(v_pred, v_add, v_truth)
        variants["calibrate: validation_gene"] = add + gene_lam * inter
        # calibrate_scale: doubles: the validation doubles' observed size over their calibrated one
        record["magnitude factor"] = magnitude_factor(v_add + gene_lam * (v_pred - v_add), v_truth)
        variants["validation_gene, calibrate_scale: doubles"] = record["magnitude factor"] * (add + gene_lam * inter)
        record["tau2 of validation_gene"] = tau2
        record["median gene lam"] = float(np.median(gene_lam))
        for name, p in variants.items():
            for metric, value in score(p, truth, control, targets, conds).items():
                record[f"{name}: {metric}"] = value
        rows.append(record)
    table = pd.DataFrame(rows)
    if table.empty:
        raise SystemExit(f"{args.run}: no splits/seed<k>/train/full/predictions.h5ad")
    mean = table.drop(columns=["split"]).mean()
    print(table.round(4).T.to_string())
    print("\n| variant | pearson_delta | MSE (all genes) | discrimination |\n|---|---|---|---|")
    for name in [f"lam {lam}" for lam in LAMS] + ["common part only", "specific part only", "calibrate: validation",
                                                  "calibrate: validation_gene",
                                                  "validation_gene, calibrate_scale: doubles"]:
        print(f"| {name} | {mean[f'{name}: pearson_delta']:.4f} | {mean[f'{name}: mse']:.4f} "
              f"| {mean[f'{name}: discrimination']:.4f} |")
    print(f"\nlam fitted on validation: {', '.join(f'{x:.3f}' for x in table['lam fitted on validation'])}")


if __name__ == "__main__":
    main()
