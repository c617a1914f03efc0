"""The train stage: train one model variant on its graph variant and write the model, log and predictions.

Reads the dataset (h5ad), the graph of the model variant's graph variant (``grape graph``),
the split and the gene mapping; trains (:func:`grape.model.train.train_model`) and writes,
atomically, ``model.safetensors``, ``model.yaml``, ``history.tsv``, ``predictions.h5ad`` and
``network.tsv`` into the output directory.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from grape.annotation.identity import GeneIdentity
from grape.data.dataset import read_dataset
from grape.data.split import read_split
from grape.features.models import choose_device
from grape.graph.build import load_graph
from grape.io.files import atomic_path, write_text_atomic
from grape.model import train
from grape.model.train import Options
from grape.stages import PathArg

FILES = {
    "dataset": PathArg("single-cell h5ad (GEARS contract)"),
    "graph": PathArg("graph from `grape graph` of the model variant's graph variant (.safetensors)"),
    "split": PathArg("split table from `grape split` (condition, split, subgroup)"),
    "mapping": PathArg("mapping.tsv from `grape annotate` (gene label -> node, excluded features)", required=False),
    "out_dir": PathArg("output directory: model.safetensors, model.yaml, history.tsv, predictions.h5ad, network.tsv"),
}

__all__ = ["FILES", "Options", "run"]


def run(*, options: Options, dataset: Path, graph: Path, split: Path, out_dir: Path,
        mapping: Path | None = None) -> None:
    """Train, and write the model, the log, predictions and the learned network.

    ``mapping``: ``annotate/mapping.tsv`` (the workflow always passes it); without it every
    dataset label is its own node key and no feature is excluded.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    options = options.resolved()
    loaded = load_graph(Path(graph))
    train.check_graph(loaded, options, source=str(graph))
    identity = GeneIdentity.read(mapping) if mapping is not None else None
    adata = read_dataset(dataset, options=options)
    problem = train.build_problem(adata, loaded, options=options, identity=identity)
    split_table = read_split(split, list(dict.fromkeys(problem.conditions)))
    device = str(choose_device(options.device))
    trained = train.train_model(problem, loaded, split_table, options=options, device=device)

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "history.tsv") as tmp:
        trained.history.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_path(out_dir / "network.tsv") as tmp:
        trained.network.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(train.ensemble_state(trained.members or (trained.model,)), str(tmp))
    record = train.model_record(trained, problem, options=options, graph_variant=loaded.variant)
    write_text_atomic(out_dir / "model.yaml", yaml.safe_dump(record, sort_keys=False))
    with atomic_path(out_dir / "predictions.h5ad") as tmp:
        train.prediction_table(problem, split_table, trained.predictions).write_h5ad(tmp)
