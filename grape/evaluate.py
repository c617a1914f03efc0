"""Score the model variants and the baselines on the held-out test conditions.

Only conditions whose split is ``test`` are scored; validation and training
conditions never are. Each model's prediction of a condition is its predicted mean
expression; the observed one is the mean over the condition's cells (float64), and
deltas are taken against the mean over the control cells. Every metric of
:mod:`grape.metrics` is computed per condition, then averaged over conditions,
overall (``subgroup = all``) and per test subgroup (GEARS: ``unseen_single``,
``combo_seen0/1/2``); conditions where a metric is undefined (NaN) are left out of
its mean and ``n_conditions`` says how many were averaged.

The baselines of :mod:`grape.baselines` named in ``evaluate.baselines`` are fitted
here, on the same split (the conditions labelled ``evaluate.baseline_splits``,
default train and val, never test), and scored the same way.

DE genes come from the dataset's ``uns`` (GEARS' ``rank_genes_groups_cov_all`` and
``top_non_dropout_de_20``, keyed by ``obs['condition_name']`` when present, else by
``{cell_type}_{condition}_1+1``); when they are missing they are computed with
:func:`grape.de.add_de_rankings` (GEARS' method). Pseudobulk data (``dataset.level:
pseudobulk``, one row per condition) have no cells: without rankings in ``uns`` their
genes are ranked by the absolute change from control, and ``frac_sigma_below_1`` (which
needs the spread over cells) is undefined; with ``dataset.relative`` the control, when
absent, is zero.

Outputs: ``metrics.tsv`` (model x subgroup x metric), ``per_condition.tsv`` (model x
condition, every metric), ``metrics.json`` (the summary: package version, test
conditions, overall and per-subgroup means, the metric registry, baseline notes, the
run's configuration, and the provenance of the data and of each model: paths and
sha256 of the dataset, the split and each variant's predictions and weights, and
the content of its ``model.yaml``), and ``test_predictions.h5ad`` (observed means of
the test conditions in ``X``, each model's predictions in ``layers[model]``, the
control mean in ``var['control_mean']``, the first ranked DE genes in
``obsm['de_ranked']``) for the report's plots.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

from grape import __version__
from grape._io import atomic_path, sha256_file, write_text_atomic
from grape.baselines import BASELINES, FIT_SPLITS, check_fit_splits, fit_predict
from grape.cli import PathArg
from grape.data import DatasetOptions, condition_genes, gene_symbols, read_dataset
from grape.de import RANK_KEY, TOP_NON_DROPOUT_KEY, add_de_rankings, de_key, gears_gene_sets
from grape.metrics import DIRECTION_TOP, METRICS, Panel, registry_table, score
from grape.split import read_split

log = logging.getLogger(__name__)

CLI_PATHS = {
    "dataset": PathArg("single-cell h5ad (GEARS contract)"),
    "predictions": PathArg(
        "predictions.h5ad of each model variant from `grape train` (.../train/<variant>/predictions.h5ad)", many=True
    ),
    "split": PathArg("split.tsv from `grape split`"),
    "run_config": PathArg("the run's resolved configuration, YAML or JSON, recorded in metrics.json "
                          "('-' reads it from standard input)", required=False),
    "out_dir": PathArg("output directory: metrics.tsv, per_condition.tsv, metrics.json, test_predictions.h5ad"),
}

N_RANKED_KEPT = max(DIRECTION_TOP)  # ranked DE genes kept per condition (the metrics read at most 200)


@dataclass(frozen=True)
class Options(DatasetOptions):
    """Options of the evaluate stage (config sections ``dataset`` and ``evaluate``)."""

    n_de: int = field(default=20, metadata={"help": "number of top DE genes for the *_de metrics (GEARS: 20)"})
    baselines: list[str] = field(
        default_factory=lambda: list(BASELINES),
        metadata={"help": f"baselines fitted on the same split and scored beside the model ({', '.join(BASELINES)})"},
    )
    baseline_splits: list[str] = field(
        default_factory=lambda: list(FIT_SPLITS),
        metadata={"help": "split labels whose conditions the baselines are fitted on (train, val; never test)"},
    )
    linear_pca_dim: int = field(default=10, metadata={"help": "linear baseline: principal components of the gene embedding"})
    linear_ridge: float = field(default=0.1, metadata={"help": "linear baseline: ridge penalty"})


# --------------------------------------------------------------------------- data


def condition_stats(adata: ad.AnnData, *, options: DatasetOptions) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and standard deviation (ddof=0) over the cells of each condition, in float64.

    Rows are conditions (sorted), columns ``var_names``; computed one condition at a
    time, so a sparse matrix is never densified whole.
    """
    labels = adata.obs[options.condition_key].astype(str).to_numpy()
    x = adata.X
    if sp.issparse(x) and not isinstance(x, (sp.csr_matrix, sp.csr_array)):
        x = sp.csr_matrix(x)
    conds = sorted(set(labels))
    mean = np.empty((len(conds), adata.n_vars))
    std = np.empty_like(mean)
    for row, cond in enumerate(conds):
        block = x[np.flatnonzero(labels == cond)]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        block = block.astype(np.float64)
        mean[row] = block.mean(axis=0)
        std[row] = block.std(axis=0)
    index = pd.Index(conds, name="condition")
    genes = adata.var_names.astype(str)
    means, stds = pd.DataFrame(mean, index=index, columns=genes), pd.DataFrame(std, index=index, columns=genes)
    if options.relative and options.control not in means.index:  # changes from control: the control is 0
        means.loc[options.control] = 0.0
        stds.loc[options.control] = 0.0
        means, stds = means.sort_index(), stds.sort_index()
    return means, stds


def ranked_by_change(
    means: pd.DataFrame, conditions: list[str], *, options: DatasetOptions
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """DE genes of pseudobulk data (no cells, so no t-test): genes ranked by |change from control|.

    The non-dropout set is GEARS' (non-zero in the condition, or zero in both the condition
    and the control); with relative data (X already a change) every gene counts.
    """
    ctrl = means.loc[options.control].to_numpy(dtype=np.float64)
    ranked, top = {}, {}
    for cond in conditions:
        mean = means.loc[cond].to_numpy(dtype=np.float64)
        order = np.argsort(-np.abs(mean - ctrl), kind="stable")
        allowed = np.arange(len(mean)) if options.relative else gears_gene_sets(mean, ctrl)[1]
        ranked[cond] = order[:N_RANKED_KEPT]
        top[cond] = order[np.isin(order, allowed)][: max(20, getattr(options, "n_de", 20))]
    return ranked, top


def _de_keys(
    adata: ad.AnnData, conditions: list[str], *, options: DatasetOptions, use_condition_name: bool = True
) -> dict[str, str]:
    """The ``uns`` key of each condition's DE entries: GEARS' ``obs['condition_name']`` when present
    (and ``use_condition_name``), else :func:`grape.de.de_key` of its cell type (``cell`` without one)."""
    obs = adata.obs
    first = obs.groupby(obs[options.condition_key].astype(str), observed=True).first()
    keys = {}
    for cond in conditions:
        if use_condition_name and "condition_name" in obs.columns:
            keys[cond] = str(first.loc[cond, "condition_name"])
        else:
            cell_type = str(first.loc[cond, options.cell_type_key]) if options.cell_type_key in obs.columns else "cell"
            keys[cond] = de_key(cell_type, cond)
    return keys


def de_genes(
    adata: ad.AnnData, conditions: list[str], *, options: Options
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each condition's ranked DE gene indices (first 200) and top non-dropout DE gene indices."""
    keys = _de_keys(adata, conditions, options=options)
    ranked_table, top_table = adata.uns.get(RANK_KEY, {}), adata.uns.get(TOP_NON_DROPOUT_KEY, {})
    complete = all(k in ranked_table and k in top_table for k in keys.values())
    if options.level == "pseudobulk" and not complete:
        log.info("pseudobulk data without DE rankings in uns: genes ranked by |change from control|")
        return ranked_by_change(condition_stats(adata, options=options)[0], conditions, options=options)
    if not complete or (options.n_de > 20 and any(len(top_table[k]) < options.n_de for k in keys.values())):
        log.info("computing DE rankings (the dataset's uns lacks them for some test conditions)")
        add_de_rankings(adata, options=options, n_top=max(20, options.n_de))
        keys = _de_keys(adata, conditions, options=options, use_condition_name=False)
        ranked_table, top_table = adata.uns[RANK_KEY], adata.uns[TOP_NON_DROPOUT_KEY]
    position = {g: i for i, g in enumerate(adata.var_names.astype(str))}
    for i, g in enumerate(gene_symbols(adata, options=options)):
        position.setdefault(str(g), i)

    def indices(names: Any, cond: str, what: str) -> np.ndarray:
        names = np.asarray(names).astype(str)
        missing = [g for g in names if g not in position]
        if missing:
            raise ValueError(f"uns[{what!r}] of condition {cond!r} names genes not in var: {', '.join(missing[:5])}")
        return np.array([position[g] for g in names], dtype=np.int64)

    ranked = {c: indices(ranked_table[keys[c]][:N_RANKED_KEPT], c, RANK_KEY) for c in conditions}
    top = {c: indices(top_table[keys[c]], c, TOP_NON_DROPOUT_KEY) for c in conditions}
    return ranked, top


def gene_index(adata: ad.AnnData, *, options: DatasetOptions) -> dict[str, int]:
    """Column of each gene by symbol and by ``var_name`` (conditions may name either)."""
    index = {str(g): i for i, g in enumerate(adata.var_names.astype(str))}
    for i, g in enumerate(gene_symbols(adata, options=options)):
        index.setdefault(str(g), i)
    return index


def model_name(predictions: Path) -> str:
    """``grape`` for the full model, ``grape_<variant>`` for ``.../train/<variant>/predictions.h5ad``."""
    path = Path(predictions)
    if path.parent.parent.name == "train" and path.parent.name != "full":
        return f"grape_{path.parent.name}"
    return "grape"


def read_predictions(paths: list[Path], genes: list[str], conditions: list[str], *, dataset: Path) -> dict[str, pd.DataFrame]:
    """Each variant's predicted means of ``conditions``, checked against the dataset's genes."""
    models: dict[str, pd.DataFrame] = {}
    for path in paths:
        pred = ad.read_h5ad(path)
        if pred.var_names.astype(str).tolist() != genes:
            raise ValueError(f"{path}: genes differ from {dataset}")
        name = model_name(path)
        if name in models:
            raise ValueError(f"two predictions files for model {name!r}: {path}")
        frame = pd.DataFrame(np.asarray(pred.X.toarray() if sp.issparse(pred.X) else pred.X, dtype=np.float64),
                             index=pred.obs_names.astype(str), columns=genes)
        missing = [c for c in conditions if c not in frame.index]
        if missing:
            raise ValueError(f"{path}: no prediction for test condition(s) {', '.join(missing[:5])}")
        models[name] = frame
    return models


# --------------------------------------------------------------------------- scoring


def evaluate(
    models: dict[str, pd.DataFrame],
    truth: pd.DataFrame,
    truth_std: pd.DataFrame,
    control: np.ndarray,
    split: pd.DataFrame,
    ranked: dict[str, np.ndarray],
    top_non_dropout: dict[str, np.ndarray],
    *,
    targets: dict[str, np.ndarray] | None = None,
    n_de: int = 20,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-condition scores of every model on the test conditions, and their means per model and subgroup."""
    test = split.loc[split["split"] == "test"]
    conds = test["condition"].astype(str).tolist()
    if not conds:
        raise ValueError("the split has no test condition")
    frames = []
    for model, pred in models.items():
        panel = Panel(
            conditions=tuple(conds),
            pred=pred.loc[conds].to_numpy(dtype=np.float64),
            truth=truth.loc[conds].to_numpy(dtype=np.float64),
            truth_std=truth_std.loc[conds].to_numpy(dtype=np.float64),
            control=np.asarray(control, dtype=np.float64),
            de_ranked=tuple(ranked[c] for c in conds),
            de_non_dropout=tuple(top_non_dropout[c] for c in conds),
            targets=tuple(targets[c] for c in conds) if targets else (),
            n_de=n_de,
        )
        scores = score(panel).reset_index()
        scores.insert(0, "model", model)
        scores.insert(2, "subgroup", test["subgroup"].astype(str).to_numpy())
        frames.append(scores)
    per_condition = pd.concat(frames, ignore_index=True)
    return per_condition, summarize(per_condition)


def summarize(per_condition: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric over conditions (NaN left out), overall and per subgroup, in long form."""
    long = per_condition.melt(id_vars=["model", "condition", "subgroup"], var_name="metric")
    overall = long.assign(subgroup="all")
    both = pd.concat([overall, long], ignore_index=True)
    summary = (both.groupby(["model", "subgroup", "metric"], sort=False)["value"]
               .agg(value="mean", n_conditions="count").reset_index())
    summary["higher_is_better"] = summary["metric"].map(lambda k: METRICS[k].higher_is_better)
    summary["best"] = summary["metric"].map(lambda k: METRICS[k].best)
    return summary


# --------------------------------------------------------------------------- provenance


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


def read_run_config(path: Path | None) -> Any:
    """The run's configuration (``-``: standard input), or None."""
    if path is None:
        return None
    text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"run configuration {path}: not YAML or JSON ({err})") from err


def _json_value(x: Any) -> Any:
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return round(float(x), 6) if isinstance(x, (float, np.floating)) else x


# --------------------------------------------------------------------------- stage


def run(
    *,
    options: Options,
    dataset: Path,
    predictions: list[Path],
    split: Path,
    out_dir: Path,
    run_config: Path | None = None,
) -> None:
    """Evaluate; write metrics.tsv, per_condition.tsv, metrics.json and test_predictions.h5ad."""
    unknown = [b for b in options.baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"evaluate.baselines: unknown baseline(s) {', '.join(unknown)} (known: {', '.join(BASELINES)})")
    config = read_run_config(run_config)
    check_fit_splits(options.baseline_splits)
    predictions = [Path(predictions)] if isinstance(predictions, (str, Path)) else [Path(p) for p in predictions]
    adata = read_dataset(dataset, options=options)
    means, stds = condition_stats(adata, options=options)
    split_table = read_split(split, [c for c in means.index if c != options.control])
    test = split_table.loc[split_table["split"] == "test"]
    test_conds = test["condition"].astype(str).tolist()
    genes = adata.var_names.astype(str).tolist()
    models = read_predictions(predictions, genes, test_conds, dataset=Path(dataset))
    ranked, top = de_genes(adata, test_conds, options=options)
    index = gene_index(adata, options=options)

    def genes_of(cond: str) -> tuple[str, ...]:
        return condition_genes(cond, options=options)

    targets = {c: np.array(sorted({index[g] for g in genes_of(c) if g in index}), dtype=np.int64) for c in test_conds}
    baselines = fit_predict(options.baselines, means, split_table, control=options.control, genes_of=genes_of,
                            gene_index=index, pca_dim=options.linear_pca_dim, ridge=options.linear_ridge,
                            fit_splits=options.baseline_splits)
    all_models = {**models, **{name: b.predictions for name, b in baselines.items() if b.predictions is not None}}
    log.info("evaluating %s on %d test conditions", ", ".join(all_models), len(test_conds))
    control = means.loc[options.control].to_numpy()
    per_condition, summary = evaluate(all_models, means, stds, control, split_table, ranked, top,
                                      targets=targets, n_de=options.n_de)

    out_dir = Path(out_dir)
    with atomic_path(out_dir / "per_condition.tsv") as tmp:
        per_condition.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_path(out_dir / "metrics.tsv") as tmp:
        summary.to_csv(tmp, sep="\t", index=False, float_format="%.6g")

    by_group: dict[str, dict[str, dict[str, Any]]] = {}
    for row in summary.itertuples(index=False):
        by_group.setdefault(row.model, {}).setdefault(row.subgroup, {})[row.metric] = _json_value(row.value)
    registry = registry_table().set_index("metric")
    write_text_atomic(out_dir / "metrics.json", json.dumps({
        "grape_version": __version__,
        "n_test_conditions": len(test_conds),
        "test_conditions": {str(k): int(v) for k, v in test.groupby("subgroup").size().items()},
        "models": list(all_models),
        "metrics": {m: groups["all"] for m, groups in by_group.items()},
        "by_subgroup": {m: {g: v for g, v in groups.items() if g != "all"} for m, groups in by_group.items()},
        "registry": {name: {"best": r.best, "higher_is_better": bool(r.higher_is_better), "source": r.source,
                            "description": r.description} for name, r in registry.iterrows()},
        "baselines": {name: b.notes for name, b in baselines.items()},
        "options": {k: getattr(options, k) for k in options.__dataclass_fields__},
        "config": config,
        "provenance": {
            "dataset": _file_record(Path(dataset)),
            "split": _file_record(Path(split)),
            "models": {model_name(p): model_provenance(p) for p in predictions},
        },
    }, indent=2, default=str))

    # observed and predicted means of the test conditions, for the report's plots
    n_keep = min(N_RANKED_KEPT, len(genes))
    de_ranked = np.full((len(test_conds), n_keep), -1, dtype=np.int64)
    for row, cond in enumerate(test_conds):
        de_ranked[row, : len(ranked[cond][:n_keep])] = ranked[cond][:n_keep]
    var = pd.DataFrame({"gene_name": gene_symbols(adata, options=options), "control_mean": control},
                       index=pd.Index(genes))
    obs = pd.DataFrame({"subgroup": test["subgroup"].astype(str).to_numpy()}, index=pd.Index(test_conds))
    table = ad.AnnData(X=means.loc[test_conds].to_numpy(dtype=np.float32), obs=obs, var=var,
                       layers={m: p.loc[test_conds].to_numpy(dtype=np.float32) for m, p in all_models.items()},
                       obsm={"de_ranked": de_ranked})
    table.uns["models"] = list(all_models)
    with atomic_path(out_dir / "test_predictions.h5ad") as tmp:
        table.write_h5ad(tmp)
