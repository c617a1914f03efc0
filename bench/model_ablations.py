"""The full model against every ablation on the demo, over several training seeds.

The demo's workflow trains each variant once (``train.seed``); with 28 test conditions
the seed alone moves pearson_delta by a few hundredths, so this script retrains every
variant with several seeds on the same split and graph (those of ``results/<run>``, from
``make demo``) and reports the mean and spread. Each training is ``python -m grape train``
with the stage's defaults (the demo's configuration) and one CPU thread; ``--jobs`` run at
once. Scores: pearson_delta (per test condition, then averaged; overall and per GEARS
subgroup) and MSE of the mean expression; and the network recovery of each variant's
learned network (precision at k against the demo's true network, as ``grape network``).

    .venv/bin/python bench/model_ablations.py --seeds 0 1 2 --jobs 2 --out bench/model_ablations.tsv
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import yaml

from grape.graph import network
from grape.data.dataset import DatasetOptions, pseudobulk
from grape.graph.build import load_graph
from grape.variants import ABLATIONS, model_graph_variant

log = logging.getLogger("bench.model_ablations")
ROOT = Path(__file__).resolve().parents[1]


def demo_dir(results: Path) -> Path:
    """The run's demo directory (resources/demo/<settings hash>/), as its preflight report records it."""
    report = json.loads((results / "preflight" / "preflight.json").read_text())
    return (ROOT / report["dataset"]).parent


def train(variant: str, seed: int, out: Path, results: Path, extra: list[str]) -> Path:
    cmd = [sys.executable, "-m", "grape", "train", "--dataset", str(demo_dir(results) / "perturb.h5ad"),
           "--graph", str(results / f"graph/{model_graph_variant(variant)}/graph.safetensors"), "--split", str(results / "split/split.tsv"),
           "--mapping", str(results / "annotate/mapping.tsv"),
           "--out-dir", str(out), "--seed", str(seed), "--threads", "1", "--device", "cpu", *extra]
    if variant != "full":
        cmd += ["--ablation", variant]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{variant} seed {seed} failed:\n{result.stderr[-2000:]}")
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=None,
                        help="default: full and the ablations of workflow/configs/demo_ablations.yaml (make ablations)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--run", default="demo")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("extra", nargs="*", help="more train flags after --")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    results = ROOT / "results" / args.run
    if args.variants is None:
        demo = yaml.safe_load((ROOT / "workflow/configs/demo_ablations.yaml").read_text())
        args.variants = ["full", *demo["train"]["ablations"]]
    unknown = [v for v in args.variants if v != "full" and v not in ABLATIONS]
    missing = [str(results / f"graph/{model_graph_variant(v)}/graph.safetensors") for v in args.variants
               if v != "full" and v in ABLATIONS
               and not (results / f"graph/{model_graph_variant(v)}/graph.safetensors").exists()]
    if unknown or missing:
        raise SystemExit(f"unknown variants {unknown} (known: {', '.join(ABLATIONS)})" if unknown else
                         f"no graph for these variants, build them first (make ablations): {', '.join(missing)}")
    options = DatasetOptions()
    adata = ad.read_h5ad(demo_dir(results) / "perturb.h5ad")
    means = pseudobulk(adata, options=options)
    ctrl = means.loc[options.control].to_numpy()
    split = pd.read_csv(results / "split/split.tsv", sep="\t")
    test = split.loc[split["split"] == "test"]
    genes = load_graph(results / "graph/full/graph.safetensors").genes
    truth = pd.read_csv(demo_dir(results) / "truth_network.tsv", sep="\t", dtype=str)
    prior = network.prior_network(load_graph(results / "graph/full/graph.safetensors"))
    net_options = network.Options(ks=args.ks)

    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(v, s, Path(tmp) / f"{v}_{s}") for v in args.variants for s in args.seeds]
        with ThreadPoolExecutor(args.jobs) as pool:
            outs = list(pool.map(lambda job: train(*job, results, args.extra), jobs))
        rows = []
        for (variant, seed, _), out in zip(jobs, outs):
            pred = ad.read_h5ad(out / "predictions.h5ad")
            frame = pd.DataFrame(np.asarray(pred.X), index=pred.obs_names.astype(str), columns=means.columns)
            per = pd.DataFrame({
                "subgroup": test["subgroup"].to_numpy(),
                "pearson_delta": [pearson(frame.loc[c].to_numpy() - ctrl, means.loc[c].to_numpy() - ctrl)
                                  for c in test["condition"]],
                "mse": [float(np.mean((frame.loc[c].to_numpy() - means.loc[c].to_numpy()) ** 2))
                        for c in test["condition"]],
            })
            row = {"variant": variant, "seed": seed, "pearson_delta": per["pearson_delta"].mean(),
                   "mse": per["mse"].mean()}
            row.update({f"pd_{g}": v for g, v in per.groupby("subgroup")["pearson_delta"].mean().items()})
            recovery = network.recovery(prior, {"learned": pd.read_csv(out / "network.tsv", sep="\t")}, truth,
                                        options=net_options, genes=genes).set_index(["graph", "k"])["precision"]
            row.update({f"precision@{k}": recovery[("learned", k)] for k in args.ks})
            row.update({f"prior_precision@{k}": recovery[("prior", k)] for k in args.ks})
            rows.append(row)
    table = pd.DataFrame(rows)
    summary = table.drop(columns="seed").groupby("variant", sort=False).agg(["mean", "std"])
    log.info("per seed:\n%s", table.round(4).to_string(index=False))
    log.info("mean and sd over seeds %s:\n%s", args.seeds, summary.round(4).to_string())
    if args.out:
        table.to_csv(args.out, sep="\t", index=False, float_format="%.5g")


if __name__ == "__main__":
    main()
