"""Seconds per training epoch on the demo: GRAPE beside GEARS (``cell-gears``), in one run.

GRAPE: the full model with the demo's configuration (structure learning, additive
doubles), ``--epochs`` epochs on the demo's split; an epoch is one pass over the
training conditions (pseudobulk changes, batches of 16) plus the validation pass.
GEARS: ``bench/model_gears_epoch.py`` run by ``--gears-python`` (a separate virtualenv
with ``cell-gears``); its epoch is one pass over the training cells plus its own
evaluation of the training and validation sets. Both get the same number of CPU threads.
Needs the demo's results (``make demo``) for the graph and split.

    .venv/bin/python bench/model_speed.py --gears-python /tmp/gears-venv/bin/python --out bench/model_speed.tsv
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from grape.data.dataset import read_dataset
from grape.graph.build import load_graph
from grape.data.split import read_split
from grape.model.train import Options, build_problem, fit, graph_tensors

log = logging.getLogger("bench.model_speed")
ROOT = Path(__file__).resolve().parents[1]


def grape_epochs(*, h5ad: Path, graph: Path, split: Path, epochs: int) -> list[float]:
    options = Options(epochs=epochs, patience=epochs + 1, device="cpu", pretrain_epochs=0)
    adata = read_dataset(h5ad, options=options)
    loaded = load_graph(graph)
    problem = build_problem(adata, loaded, options=options)
    table = read_split(split, problem.conditions)
    control = np.zeros(len(loaded.genes), np.float32)
    flag = np.zeros(len(loaded.genes), np.float32)
    control[problem.measured_nodes.numpy()] = problem.control
    flag[problem.measured_nodes.numpy()] = 1.0
    tensors = graph_tensors(loaded, control, flag)
    _, history, _ = fit(problem, tensors, table, options=options)
    return history["seconds"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gears-python", type=Path, default=Path("/tmp/gears-venv/bin/python"))
    parser.add_argument("--epochs", type=int, default=20, help="GRAPE epochs timed")
    parser.add_argument("--gears-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--run", default="demo", help="results/<run> with the graph and split")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("grape").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    h5ad = ROOT / "resources" / "demo" / "perturb.h5ad"
    results = ROOT / "results" / args.run
    seconds = grape_epochs(h5ad=h5ad, graph=results / "graph" / "full" / "graph.safetensors",
                           split=results / "split" / "split.tsv", epochs=args.epochs)
    rows = [{"model": "grape", "epochs_timed": len(seconds), "median_epoch_seconds": float(np.median(seconds)),
             "unit": "pseudobulk training conditions", "threads": args.threads}]
    if args.gears_python.exists():
        result = subprocess.run(
            [str(args.gears_python), str(ROOT / "bench" / "model_gears_epoch.py"), "--h5ad", str(h5ad),
             "--epochs", str(args.gears_epochs), "--threads", str(args.threads)],
            capture_output=True, text=True, check=False)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode == 0 and lines:
            gears = json.loads(lines[-1])
            rows.append({"model": "gears (cell-gears)", "epochs_timed": len(gears["epoch_seconds"]),
                         "median_epoch_seconds": float(np.median(gears["epoch_seconds"])),
                         "unit": f"{gears['train_cells']} training cells", "threads": gears["threads"]})
        else:
            log.warning("GEARS failed (%d):\n%s", result.returncode, result.stderr[-3000:])
    else:
        log.warning("no GEARS interpreter at %s: GEARS not timed", args.gears_python)
    table = pd.DataFrame(rows)
    if len(table) == 2:
        table["speedup_vs_gears"] = table["median_epoch_seconds"].iloc[1] / table["median_epoch_seconds"]
    log.info("\n%s", table.to_string(index=False))
    if args.out:
        table.to_csv(args.out, sep="\t", index=False, float_format="%.4f")


if __name__ == "__main__":
    main()
