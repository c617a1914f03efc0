"""Seconds of the checks that must stop a bad real run before any expensive work: the preflight
stage on each shipped real-screen configuration, and the loading of the real prior sources.

For each of ``workflow/configs/{papalexi2021,jurkat_tcr,carpool_thp1,norman_devel}.yaml`` whose
file lies in ``../shared/data``: the configuration as the workflow validates it (``config.yaml``
overlaid by the screen's file), the subset written first where the config has one (the dataset
stage's work, timed apart), then :func:`grape.data.preflight.inspect` ``--repeats`` times; and
``graph.priors`` with the TF -> target table and the GO gene sets loaded for the screen's
measured genes (:func:`grape.graph.priors.load_priors`). One row per screen and step, best and
slowest of the repeats.

    .venv/bin/python bench/preflight_bench.py --repeats 3 --out bench/preflight_bench.tsv
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import anndata as ad
import pandas as pd

from grape.config import ConfigError
from grape.data.preflight import inspect
from grape.graph.priors import load_priors
from grape.io.datasets import subset_dataset
from tune import REPO, merged_config

SCREENS = ("papalexi2021", "jurkat_tcr", "carpool_thp1", "norman_devel")
PRIORS = {"tf_targets": {"kind": "edges", "path": "../shared/data/tf_targets_human.tsv.gz"},
          "go_bp": {"kind": "gmt", "path": "../shared/data/go_bp_gene_sets.gmt.gz"}}


def timed(repeats: int, run) -> tuple[float, float, object]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
    return min(seconds), max(seconds), result


def bench_screen(name: str, repeats: int, scratch: Path) -> list[dict]:
    try:
        config = merged_config(REPO / "workflow" / "configs" / f"{name}.yaml")
    except ConfigError as error:  # its file is not in ../shared/data
        logging.warning("%s: skipped (%s)", name, error)
        return []
    source = REPO / config["dataset"]["path"]
    rows = []
    if config["dataset"]["subset"]:
        path = scratch / f"{name}.h5ad"

        def write_subset():
            full = ad.read_h5ad(source)
            subset_dataset(full, config["dataset"]["subset"], source=str(source)).write_h5ad(path)

        best, worst, _ = timed(1, write_subset)
        rows.append({"screen": name, "step": "subset (dataset stage)", "best_s": best, "slowest_s": worst})
    else:
        path = source
    best, worst, report = timed(repeats, lambda: inspect(path, config=config))
    rows.append({"screen": name, "step": "preflight", "best_s": best, "slowest_s": worst,
                 "rows": report["rows"], "features": report["features"],
                 "conditions": report["conditions"]["total"]})
    backed = ad.read_h5ad(path, backed="r")
    genes = backed.var_names.astype(str).tolist()
    backed.file.close()
    priors = {k: {**v, "path": str(REPO / v["path"])} for k, v in PRIORS.items()}
    best, worst, sources = timed(repeats, lambda: load_priors(priors, genes))
    rows.append({"screen": name, "step": "prior sources (TF + GO)", "best_s": best, "slowest_s": worst,
                 "features": len(genes), "edges": sum(int(s.edge_index.shape[1]) for s in sources)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--screens", nargs="+", default=list(SCREENS), choices=SCREENS)
    parser.add_argument("--out", type=Path, default=None, help="TSV of the figures")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.chdir(REPO)  # the configs' paths are relative to the project, as Snakemake runs them
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.screens:
            rows += bench_screen(name, args.repeats, Path(scratch))
    table = pd.DataFrame(rows)
    counts = [c for c in ("rows", "features", "conditions", "edges") if c in table]
    table[counts] = table[counts].astype("Int64")
    table["load_1min"] = os.getloadavg()[0]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        table.to_csv(args.out, sep="\t", index=False, float_format="%.4g")


if __name__ == "__main__":
    main()
