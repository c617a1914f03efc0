"""Benchmarks of the evaluate stage: its time and memory at full-transcriptome scale, and the
baselines on the real Norman 2019 subset.

``--scale``: a synthetic dataset (sparse, ``--genes`` genes, ``--singles`` singles and
``--doubles`` doubles with ``--cells`` cells each), GEARS' simulation split, one model whose
predictions are the truth plus noise; times ``grape.stages.evaluate.run`` as the workflow calls it (the
DE rankings computed by the stage, all four baselines, every metric) and reports its peak memory.

``--norman``: the Norman 2019 cells of ``../shared/data/perturbench_devel.h5ad`` (skipped when
absent), GEARS' simulation split (seed 1), and the four baselines scored by the evaluate code on
the test conditions: what a model must beat on real data.

    .venv/bin/python bench/evaluate_bench.py --scale --genes 20000
    .venv/bin/python bench/evaluate_bench.py --norman
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grape.evaluation import evaluate  # noqa: E402
from grape.stages import evaluate as evaluate_stage  # noqa: E402
from grape.evaluation.baselines import fit_predict  # noqa: E402
from grape.data.dataset import DatasetOptions, condition_genes  # noqa: E402
from grape.evaluation.de import add_de_rankings  # noqa: E402
from grape.data.split import simulation_split  # noqa: E402

NORMAN = REPO.parent / "shared" / "data" / "perturbench_devel.h5ad"


def synthetic(n_genes: int, n_singles: int, n_doubles: int, cells: int, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    genes = [f"G{i:05d}" for i in range(n_genes)]
    singles = rng.choice(n_genes, n_singles, replace=False)
    pairs = {tuple(sorted(rng.choice(singles, 2, replace=False))) for _ in range(n_doubles * 2)}
    conds = ["ctrl"] + [f"{genes[g]}+ctrl" for g in singles] + [f"{genes[a]}+{genes[b]}" for a, b in list(pairs)[:n_doubles]]
    base = rng.gamma(0.5, 1.0, size=n_genes)
    blocks, labels = [], []
    for cond in conds:
        n = cells * (4 if cond == "ctrl" else 1)
        shift = np.zeros(n_genes)
        for g in condition_genes(cond, options=DatasetOptions()):
            idx = rng.choice(n_genes, 200, replace=False)
            shift[idx] += rng.normal(scale=0.5, size=200)
        lam = np.clip(base + shift, 0, None)
        blocks.append(sp.csr_matrix(np.log1p(rng.poisson(lam, size=(n, n_genes))).astype(np.float32)))
        labels += [cond] * n
    obs = pd.DataFrame({"condition": labels, "cell_type": "synthetic"}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=sp.vstack(blocks).tocsr(), obs=obs, var=pd.DataFrame({"gene_name": genes}, index=genes))


def scale(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    adata = synthetic(args.genes, args.singles, args.doubles, args.cells)
    options = evaluate.Options()
    conds = [c for c in adata.obs["condition"].unique() if c != "ctrl"]
    split = simulation_split(conds, genes_of=lambda c: condition_genes(c, options=options), seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adata.write_h5ad(tmp / "data.h5ad")
        split.to_csv(tmp / "split.tsv", sep="\t", index=False)
        means, _ = evaluate.condition_stats(adata, options=options)
        rng = np.random.default_rng(1)
        pred = ad.AnnData(X=(means.loc[conds].to_numpy() + rng.normal(scale=0.05, size=(len(conds), args.genes)))
                          .astype(np.float32), obs=pd.DataFrame(index=conds), var=pd.DataFrame(index=adata.var_names))
        (tmp / "train" / "full").mkdir(parents=True)
        pred.write_h5ad(tmp / "train" / "full" / "predictions.h5ad")
        del adata, means, pred
        built = time.perf_counter() - t0
        start = time.perf_counter()
        evaluate_stage.run(options=options, dataset=tmp / "data.h5ad", predictions=[tmp / "train" / "full" / "predictions.h5ad"],
                     split=tmp / "split.tsv", out_dir=tmp / "eval")
        took = time.perf_counter() - start
        n_test = int((split["split"] == "test").sum())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| {args.genes} genes, {len(conds)} conditions ({n_test} test), {args.cells} cells each "
          f"| {took:.1f} s | {peak:.0f} MB | (data built in {built:.1f} s)")


def norman(args: argparse.Namespace) -> None:
    if not NORMAN.exists():
        print(f"skipped: {NORMAN} is absent")
        return
    data = ad.read_h5ad(NORMAN)
    data = data[data.obs["dataset"] == "norman19"].copy()
    options = evaluate.Options(control="control")
    data.obs["gene_name"] = None
    data.var["gene_name"] = data.var_names.astype(str)
    conds = sorted(c for c in data.obs["condition"].astype(str).unique() if c != "control")

    def genes_of(c: str) -> tuple[str, ...]:
        return condition_genes(c, options=options)

    split = simulation_split(conds, genes_of=genes_of, seed=args.seed)
    add_de_rankings(data, options=options)
    means, stds = evaluate.condition_stats(data, options=options)
    index = evaluate.gene_index(data, options=options)
    test = split.loc[split["split"] == "test", "condition"].tolist()
    ranked, top = evaluate.de_genes(data, test, options=options)
    targets = {c: np.array(sorted({index[g] for g in genes_of(c) if g in index}), dtype=np.int64) for c in test}
    baselines = fit_predict(list(options.baselines), means, split, control="control", genes_of=genes_of,
                            gene_index=index)
    _, summary = evaluate.evaluate({k: b.predictions for k, b in baselines.items() if b.predictions is not None},
                                   means, stds,
                                   means.loc["control"].to_numpy(), split, ranked, top, targets=targets)
    wide = summary.pivot_table(index=["subgroup", "model"], columns="metric", values="value", sort=False)
    counts = summary.groupby("subgroup")["n_conditions"].max()
    cols = ["mse_de", "pearson_delta", "pearson_delta_de", "frac_correct_direction_20", "discrimination_score_l1"]
    print(f"split seed {args.seed}: test conditions { {k: int(v) for k, v in counts.items()} }; additive coverage "
          f"{baselines['additive'].notes['test_conditions']}; linear {baselines['linear'].notes}; perturbed genes measured: "
          f"{sum(1 for c in conds for g in genes_of(c) if g in index)} of {sum(len(genes_of(c)) for c in conds)}")
    print("| subgroup | model | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for (group, model), row in wide.iterrows():
        print(f"| {group} (n={counts[group]}) | {model} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", action="store_true")
    parser.add_argument("--norman", action="store_true")
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--singles", type=int, default=150)
    parser.add_argument("--doubles", type=int, default=100)
    parser.add_argument("--cells", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.scale:
        scale(args)
    if args.norman:
        norman(args)


if __name__ == "__main__":
    main()
