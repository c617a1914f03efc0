"""GEARS metrics of the model variants and the baselines on the held-out test conditions.

Reads the dataset, the split, each variant's ``predictions.h5ad`` (and the mapping and the
run's configuration); scores them with :mod:`grape.evaluation.evaluate`; writes
``metrics.tsv``, ``per_condition.tsv``, ``metrics.json`` (with the provenance of every
input: paths, sha256, each variant's ``model.yaml``), ``test_predictions.h5ad`` and the
cell-eval pair ``cell_eval_pred.h5ad`` / ``cell_eval_real.h5ad``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd
import yaml

from grape.annotation.identity import GeneIdentity
from grape.data.dataset import read_dataset, row_names
from grape.data.split import read_split
from grape.evaluation.evaluate import (
    Options,
    cell_eval_tables,
    check_options,
    evaluate_all,
    model_name,
    prediction_frame,
    prepare,
    summary_record,
)
from grape.io.files import atomic_path, sha256_file, write_text_atomic
from grape.stages import PathArg

__all__ = ["FILES", "Options", "run"]

log = logging.getLogger(__name__)

FILES = {
    "dataset": PathArg("single-cell h5ad (GEARS contract)"),
    "predictions": PathArg(
        "predictions.h5ad of each model variant from `grape train` (.../train/<variant>/predictions.h5ad)", many=True
    ),
    "split": PathArg("split.tsv from `grape split`"),
    "mapping": PathArg("mapping.tsv from `grape annotate` (aliases, excluded features)", required=False),
    "run_config": PathArg("the run's resolved configuration, YAML or JSON, recorded in metrics.json "
                          "('-' reads it from standard input)", required=False),
    "out_dir": PathArg("output directory: metrics.tsv, per_condition.tsv, metrics.json, test_predictions.h5ad, "
                       "cell_eval_pred.h5ad and cell_eval_real.h5ad (cell-eval run's input)"),
}


def read_run_config(path: Path | None) -> Any:
    """The run's configuration (``-``: standard input), or None."""
    if path is None:
        return None
    text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"run configuration {path}: not YAML or JSON ({err})") from err


def read_predictions(paths: list[Path], genes: list[str], rows: list[str]) -> dict[str, pd.DataFrame]:
    """Each variant's predicted means by model name (:func:`grape.evaluation.evaluate.model_name`),
    checked by :func:`grape.evaluation.evaluate.prediction_frame`."""
    models: dict[str, pd.DataFrame] = {}
    for path in paths:
        name = model_name(path)
        if name in models:
            raise ValueError(f"two predictions files for model {name!r}: {path}")
        models[name] = prediction_frame(ad.read_h5ad(path), genes, rows, where=str(path))
    return models


def _file_record(path: Path) -> dict[str, Any]:
    path = Path(path)
    return {"path": str(path), "sha256": sha256_file(path) if path.exists() else None}


def model_provenance(predictions: Path) -> dict[str, Any]:
    """Paths and checksums of a variant's predictions and weights, and its model.yaml content."""
    folder = Path(predictions).parent
    record: dict[str, Any] = {"predictions": _file_record(Path(predictions))}
    weights = folder / "model.safetensors"
    record["weights"] = _file_record(weights) if weights.exists() else None
    model_yaml = folder / "model.yaml"
    record["model_yaml"] = yaml.safe_load(model_yaml.read_text()) if model_yaml.exists() else None
    return record


def run(
    *,
    options: Options,
    dataset: Path,
    predictions: list[Path],
    split: Path,
    out_dir: Path,
    run_config: Path | None = None,
    mapping: Path | None = None,
) -> None:
    """Evaluate; write metrics.tsv, per_condition.tsv, metrics.json, test_predictions.h5ad and the cell-eval pair.

    ``mapping``: ``annotate/mapping.tsv`` (the workflow always passes it); without it no
    feature is excluded and perturbed labels are matched to measured genes by name only.
    """
    check_options(options)
    config = read_run_config(run_config)
    predictions = [Path(predictions)] if isinstance(predictions, (str, Path)) else [Path(p) for p in predictions]
    identity = GeneIdentity.read(mapping) if mapping is not None else None
    data = prepare(read_dataset(dataset, options=options), options=options, identity=identity)
    split_table = read_split(split, data.conditions)
    rows = data.test_rows(split_table)
    models = read_predictions(predictions, data.genes, row_names([c for _, c in rows], [k for k, _ in rows]))
    result = evaluate_all(data, split_table, models, options=options)

    out_dir = Path(out_dir)
    with atomic_path(out_dir / "per_condition.tsv") as tmp:
        result.per_condition.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_path(out_dir / "metrics.tsv") as tmp:
        result.summary.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    provenance = {
        "dataset": _file_record(Path(dataset)),
        "split": _file_record(Path(split)),
        "mapping": _file_record(Path(mapping)) if mapping is not None else None,
        "models": {model_name(p): model_provenance(p) for p in predictions},
    }
    record = summary_record(result, options=options, excluded=data.excluded, config=config, provenance=provenance)
    write_text_atomic(out_dir / "metrics.json", json.dumps(record, indent=2, default=str))
    with atomic_path(out_dir / "test_predictions.h5ad") as tmp:
        result.table.write_h5ad(tmp)
    pair = cell_eval_tables(data, result, options=options)
    if pair is not None:
        for table, name in zip(pair, ("cell_eval_pred.h5ad", "cell_eval_real.h5ad")):
            with atomic_path(out_dir / name) as tmp:
                table.write_h5ad(tmp)
        log.info("cell-eval files of grape: %s and %s (%d rows, %d genes)", out_dir / "cell_eval_pred.h5ad",
                 out_dir / "cell_eval_real.h5ad", pair[1].n_obs, pair[1].n_vars)
