"""Score the model and simple baselines on the held-out test conditions.

Baselines, fitted on the same split: ``no_change`` predicts the control mean;
``mean`` predicts the mean expression over all training conditions. Only conditions
whose split is ``test`` are scored; validation and training conditions never are.
DE genes are the dataset's ``uns['top_non_dropout_de_20']`` (GEARS), computed here
the same way when the dataset lacks them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from grape import __version__
from grape._io import atomic_path, write_text_atomic
from grape.cli import PathArg
from grape.data import DatasetOptions, pseudobulk, read_dataset
from grape.de import add_de_rankings, de_key
from grape.metrics import METRICS, score
from grape.split import read_split

log = logging.getLogger(__name__)

CLI_PATHS = {
    "dataset": PathArg("single-cell h5ad (GEARS contract)"),
    "predictions": PathArg(
        "predictions.h5ad of each model variant from `grape train` (.../train/<variant>/predictions.h5ad)", many=True
    ),
    "split": PathArg("split.tsv from `grape split`"),
    "out_dir": PathArg("output directory: metrics.tsv, per_condition.tsv, metrics.json"),
}


@dataclass(frozen=True)
class Options(DatasetOptions):
    """Options of the evaluate stage (config sections ``dataset`` and ``evaluate``)."""

    n_de: int = field(default=20, metadata={"help": "number of top DE genes for the *_de metrics"})


def de_indices(adata: ad.AnnData, conditions: list[str], *, options: Options) -> dict[str, np.ndarray]:
    """Index of each condition's top non-dropout DE genes in ``adata.var``."""
    if "top_non_dropout_de_20" not in adata.uns or options.n_de != 20:
        add_de_rankings(adata, options=options, n_top=options.n_de)
    table = adata.uns["top_non_dropout_de_20"]
    position = {g: i for i, g in enumerate(adata.var_names.astype(str))}
    cell_type = (adata.obs.groupby(options.condition_key, observed=True)[options.cell_type_key].first()
                 if options.cell_type_key in adata.obs.columns else None)
    out = {}
    for cond in conditions:
        key = de_key(str(cell_type[cond]) if cell_type is not None else "", cond)
        if key not in table:
            raise KeyError(f"no DE genes for condition {cond!r} (uns key {key!r})")
        out[cond] = np.array([position[g] for g in np.asarray(table[key]).astype(str)[: options.n_de]])
    return out


def baseline_predictions(means: pd.DataFrame, split: pd.DataFrame, *, control: str) -> dict[str, pd.DataFrame]:
    """Predictions of the no-change and mean baselines for every condition."""
    train = split.loc[split["split"] == "train", "condition"]
    ctrl = means.loc[control].to_numpy()
    mean = means.loc[train].to_numpy().mean(axis=0)
    conds = split["condition"].tolist()
    cols = means.columns
    return {
        "no_change": pd.DataFrame(np.tile(ctrl, (len(conds), 1)), index=conds, columns=cols),
        "mean": pd.DataFrame(np.tile(mean, (len(conds), 1)), index=conds, columns=cols),
    }


def evaluate(
    models: dict[str, pd.DataFrame], truth: pd.DataFrame, control: np.ndarray, split: pd.DataFrame,
    de: dict[str, np.ndarray],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-condition scores on test conditions and their means per model and subgroup."""
    test = split.loc[split["split"] == "test"]
    rows = []
    for model, pred in models.items():
        for cond, subgroup in zip(test["condition"], test["subgroup"]):
            values = score(pred.loc[cond].to_numpy(), truth.loc[cond].to_numpy(), control, de[cond])
            rows.append({"model": model, "condition": cond, "subgroup": subgroup, **values})
    per_condition = pd.DataFrame(rows)
    long = per_condition.melt(id_vars=["model", "condition", "subgroup"], var_name="metric")
    by_group = long.groupby(["model", "subgroup", "metric"], sort=False)["value"].agg(["mean", "size"])
    overall = long.groupby(["model", "metric"], sort=False)["value"].agg(["mean", "size"])
    overall.index = pd.MultiIndex.from_tuples([(m, "all", k) for m, k in overall.index],
                                              names=["model", "subgroup", "metric"])
    summary = pd.concat([overall, by_group]).reset_index()
    summary = summary.rename(columns={"mean": "value", "size": "n_conditions"})
    summary["higher_is_better"] = summary["metric"].map(lambda k: METRICS[k].higher_is_better)
    return per_condition, summary


def model_name(predictions: Path) -> str:
    """``grape`` for the full model, ``grape_<variant>`` for ``.../train/<variant>/predictions.h5ad``."""
    path = Path(predictions)
    if path.parent.parent.name == "train" and path.parent.name != "full":
        return f"grape_{path.parent.name}"
    return "grape"


def run(*, options: Options, dataset: Path, predictions: list[Path], split: Path, out_dir: Path) -> None:
    """Evaluate and write metrics.tsv, per_condition.tsv and metrics.json."""
    adata = read_dataset(dataset, options=options)
    means = pseudobulk(adata, options=options)
    split_table = read_split(split, [c for c in means.index if c != options.control])
    genes = adata.var_names.astype(str).tolist()
    models = {}
    for path in [predictions] if isinstance(predictions, (str, Path)) else predictions:
        pred = ad.read_h5ad(path)
        if pred.var_names.astype(str).tolist() != genes:
            raise ValueError(f"{path}: genes differ from {dataset}")
        name = model_name(path)
        if name in models:
            raise ValueError(f"two predictions files for model {name!r}: {path}")
        models[name] = pd.DataFrame(pred.X, index=pred.obs_names.astype(str), columns=means.columns)
    test_conds = split_table.loc[split_table["split"] == "test", "condition"].tolist()
    log.info("evaluating %s and baselines on %d test conditions", ", ".join(models), len(test_conds))
    models.update(baseline_predictions(means, split_table, control=options.control))
    per_condition, summary = evaluate(
        models, means, means.loc[options.control].to_numpy(), split_table, de_indices(adata, test_conds, options=options)
    )
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "per_condition.tsv") as tmp:
        per_condition.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_path(out_dir / "metrics.tsv") as tmp:
        summary.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    write_text_atomic(out_dir / "metrics.json", json.dumps({
        "grape_version": __version__,
        "dataset": str(dataset),
        "n_test_conditions": len(test_conds),
        "metrics": {m: {k: round(float(v), 6) for k, v in g.loc[g["subgroup"] == "all"].set_index("metric")["value"].items()}
                    for m, g in summary.groupby("model", sort=False)},
    }, indent=2))
