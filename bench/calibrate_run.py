"""Apply ``train.calibrate: validation`` (or ``validation_gene``) to the saved predictions of a finished run with split.seeds.

The calibration (:mod:`grape.model.calibrate`) runs after training and does not change it, so a run
trained with ``calibrate: none`` gives, from its own ``predictions.h5ad``, exactly the predictions a
run with ``calibrate: validation`` would write, without training again (a 15-minute training per
split on CaRPool). This copies ``results/<run>`` to ``results/<run>_cal``, rewrites every split's
``predictions.h5ad`` (and the ``calibration`` of ``model.yaml``), and prints the fitted factors; the
evaluation and aggregate of the copy then come from the workflow, which must be told to go by file
times only (the copy's train options differ from those it was trained with by this option):

    .venv/bin/python bench/calibrate_run.py results/carpool_thp1 ../shared/data/carpool_thp1_pseudobulk.h5ad
    snakemake results/carpool_thp1_cal/aggregate/headline.md --cores 1 --rerun-triggers mtime \\
        --configfile workflow/configs/carpool_thp1.yaml \\
        --config run=carpool_thp1_cal 'split={seeds: [1, 2, 3, 4, 5]}' 'train={calibrate: validation}'

``--mode validation_gene --suffix _calg`` writes the per-gene calibration into ``results/<run>_calg``
(then ``'train={calibrate: validation_gene}'`` and ``run=<run>_calg`` above); ``--scale doubles`` adds
``train.calibrate_scale: doubles`` (then ``'train={calibrate: validation_gene, calibrate_scale: doubles}'``); ``--anchor mean_target`` sets
``train.calibrate_anchor`` (then ``calibrate_anchor: mean_target`` in ``train``). ``--seen1 additive_mean`` sets
``train.calibrate_seen1`` (then ``calibrate_seen1: additive_mean``), ``--seen0 mean`` ``train.calibrate_seen0``. Snakemake goes by file times with
``--rerun-triggers mtime``: when the inputs of the run (the dataset) are newer than the copy, touch the
copy's files, then its ``train`` outputs, and remove its ``evaluate`` and ``aggregate`` outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import anndata as ad
import yaml

from grape.annotation.identity import GeneIdentity
from grape.data.dataset import read_dataset
from grape.data.split import read_split
from grape.graph.build import load_graph
from grape.model import train
from grape.model.calibrate import SEEN0, SEEN1, calibrate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="results/<run> of a finished run with split.seeds")
    parser.add_argument("dataset", type=Path, help="the h5ad the run trained on: dataset.path of its config, or <run>/dataset/dataset.h5ad when the config has a dataset.subset")
    parser.add_argument("--suffix", default="_cal")
    parser.add_argument("--variant", default="full")
    parser.add_argument("--mode", choices=("validation", "validation_gene"), default="validation")
    parser.add_argument("--scale", choices=("none", "doubles"), default="none", help="train.calibrate_scale")
    parser.add_argument("--anchor", choices=("mean", "mean_target"), default="mean", help="train.calibrate_anchor")
    parser.add_argument("--seen1", choices=SEEN1, default="none",
                        help="train.calibrate_seen1: doubles with one fitting single")
    parser.add_argument("--seen0", choices=SEEN0, default="none",
                        help="train.calibrate_seen0: doubles with no fitting single")
    args = parser.parse_args(argv)
    target = args.run.with_name(args.run.name + args.suffix)
    if target.exists():
        raise SystemExit(f"{target} exists: remove it first")
    shutil.copytree(args.run, target, symlinks=True)
    identity = GeneIdentity.read(target / "annotate" / "mapping.tsv")
    fields = {f.name for f in dataclasses.fields(train.Options)}
    problems: dict[str, train.Problem] = {}  # per graph variant: the splits of a run share one problem
    for model_dir in sorted((target / "splits").glob(f"seed*/train/{args.variant}")):
        record = yaml.safe_load((model_dir / "model.yaml").read_text())
        if record["graph_variant"] not in problems:
            options = train.Options(**{k: v for k, v in record["options"].items() if k in fields})
            graph = load_graph(target / "graph" / record["graph_variant"] / "graph.safetensors")
            problems[record["graph_variant"]] = train.build_problem(read_dataset(args.dataset, options=options),
                                                                    graph, options=options, identity=identity)
        problem = problems[record["graph_variant"]]
        split = read_split(model_dir.parents[1] / "split" / "split.tsv", list(dict.fromkeys(problem.conditions)))
        saved = ad.read_h5ad(model_dir / "predictions.h5ad")
        expected = train.prediction_table(problem, split, saved.X)
        if list(expected.obs_names) != list(saved.obs_names) or list(expected.var_names) != list(saved.var_names):
            raise SystemExit(f"{model_dir}: predictions.h5ad rows or genes differ from the problem's")
        predictions, fitted = calibrate(problem, split, saved.X, per_gene=args.mode == "validation_gene",
                                        scale=() if args.scale == "none" else (args.scale,), anchor=args.anchor, seen1=args.seen1,
                                        seen0=args.seen0)
        saved.X = predictions
        saved.write_h5ad(model_dir / "predictions.h5ad")
        record["calibration"] = fitted.record()
        record["options"]["calibrate"] = args.mode
        record["options"]["calibrate_scale"] = args.scale
        record["options"]["calibrate_anchor"] = args.anchor
        record["options"]["calibrate_seen1"] = args.seen1
        record["options"]["calibrate_seen0"] = args.seen0
        (model_dir / "model.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
        print(f"{model_dir}: {record['calibration']}")


if __name__ == "__main__":
    main()
