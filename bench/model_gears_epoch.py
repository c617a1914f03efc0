"""Seconds per training epoch of GEARS (the ``cell-gears`` package) on the demo.

Run with the interpreter of a separate virtualenv holding ``cell-gears`` (it pins its own
dependencies), never the project's; ``bench/model_speed.py`` calls it. GEARS downloads
its GO gene sets from Dataverse in ``PertData.__init__``, which is unreachable offline:
this script writes a synthetic ``gene2go_all.pkl`` (each gene gets 5 of 60 random
terms, seeded) before GEARS looks for it, so GEARS builds its GO graph (top-20
neighbours per gene, as usual) from that. The graph's content does not change the cost of
an epoch. An epoch is GEARS' own: one pass over the training cells plus its evaluation
of the training and validation sets (its ``train()`` also tests the model once at the end;
that cost is subtracted). Prints one JSON line.

    /tmp/gears-venv/bin/python bench/model_gears_epoch.py --h5ad resources/demo/<settings hash>/perturb.h5ad --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h5ad", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from gears import GEARS, PertData

    adata = ad.read_h5ad(args.h5ad)
    genes = set(adata.var["gene_name"].astype(str))
    for cond in adata.obs["condition"].astype(str).unique():
        genes.update(g for g in cond.split("+") if g != "ctrl")
    rng = np.random.default_rng(0)
    gene2go = {g: {f"GO:{t:07d}" for t in rng.choice(60, size=5, replace=False)} for g in sorted(genes)}
    args.h5ad = args.h5ad.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # GEARS writes its GO graph under ./data
        (Path(tmp) / "data").mkdir()
        with open(Path(tmp) / "gene2go_all.pkl", "wb") as handle:
            pickle.dump(gene2go, handle)
        start = time.perf_counter()
        pert_data = PertData(tmp, default_pert_graph=False)
        pert_data.new_data_process(dataset_name="demo", adata=adata)
        pert_data.prepare_split(split="simulation", seed=1)
        pert_data.get_dataloader(batch_size=args.batch_size, test_batch_size=128)
        model = GEARS(pert_data, device="cpu")
        model.model_initialize(hidden_size=args.hidden)
        setup = time.perf_counter() - start
        # GEARS' train() also tests the model once at its end: time train(1) and train(1 + epochs)
        # and take the difference, so only whole epochs are counted (after one warm-up call).
        model.train(epochs=1)
        start = time.perf_counter()
        model.train(epochs=1)
        one = time.perf_counter() - start
        start = time.perf_counter()
        model.train(epochs=1 + args.epochs)
        many = time.perf_counter() - start
        n_train = len(pert_data.dataloader["train_loader"].dataset)
    json.dump({"setup_seconds": setup, "epoch_seconds": [(many - one) / args.epochs] * args.epochs,
               "train_cells": n_train, "threads": torch.get_num_threads()}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
