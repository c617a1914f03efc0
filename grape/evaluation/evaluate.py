"""Score the model variants and the baselines on the held-out test conditions.

Only conditions whose split is ``test`` are scored; validation and training
conditions never are. Each model's prediction of a condition is its predicted mean
expression; the observed one is the mean over the condition's cells (float64), and
deltas are taken against the mean over the control cells. Every metric of
:mod:`grape.evaluation.metrics` is computed per condition, then averaged over conditions,
overall (``subgroup = all``) and per test subgroup (GEARS: ``unseen_single``,
``combo_seen0/1/2``); conditions where a metric is undefined (NaN) are left out of
its mean and ``n_conditions`` says how many were averaged.

The baselines of :mod:`grape.evaluation.baselines` named in ``evaluate.baselines`` are fitted
here, on the same split (the conditions labelled ``evaluate.baseline_splits``,
default train and val, never test), and scored the same way.

DE genes come from the dataset's ``uns`` (GEARS' ``rank_genes_groups_cov_all`` and
``top_non_dropout_de_20``, keyed by ``obs['condition_name']`` when present, else by
``{cell_type}_{condition}_1+1``); when they are missing they are computed with
:func:`grape.evaluation.de.add_de_rankings` (GEARS' method). Pseudobulk data (``dataset.level:
pseudobulk``, one row per condition) have no cells: without rankings in ``uns`` their
genes are ranked by the absolute change from control, and ``frac_sigma_below_1`` (which
needs the spread over cells) is undefined; with ``dataset.relative`` the control, when
absent, is zero.

Gene identity: with ``--mapping`` (``annotate/mapping.tsv``) measured features with status
``excluded`` (guides, guide pairs, Cas proteins) are dropped from the truth, the DE
rankings, every metric and the baselines, and a perturbed alias (``C19orf26`` for the
measured ``CBARP``) counts as its measured gene (the perturbed-gene column of
``discrimination_score_l1``, the linear baseline's embedding).

Cell states (contexts, ``dataset.context_key``, default ``dataset.cell_type_key``; a
dataset without the column is one context): each (context, condition) row is scored
against the truth and the control of its own context, with DE genes ranked within the
context; a context's test conditions form one panel (``discrimination_score_l1`` ranks
within the context), and the baselines are fitted per context on that context's
fitting rows. ``metrics.tsv`` has a ``context`` column: ``all`` pools every row, and with
several contexts each context has its rows (overall and per subgroup) as well.

:func:`prepare` readies a dataset, :func:`evaluate_all` scores the models' predictions
(:func:`prediction_frame`) and the baselines; the evaluate stage writes the results:
``metrics.tsv`` (model x context x subgroup x metric, :func:`summarize`), ``per_condition.tsv``
(model x condition x context, every metric), ``metrics.json`` (:func:`summary_record`: package
version, test conditions, overall and per-subgroup means, the metric registry, baseline
notes, the run's configuration, and the provenance of the data and of each model: paths
and sha256 of the dataset, the split and each variant's predictions and weights, and the
content of its ``model.yaml``), and ``test_predictions.h5ad`` (``Evaluation.table``: one row
per test (context, condition), obs ``condition``, ``context``, ``subgroup``; observed means in
``X``, each model's predictions in ``layers[model]``, the control mean in ``var['control_mean']``
with one context and each row's own in ``layers['control']`` with several, the first
ranked DE genes in ``obsm['de_ranked']``) for the report's plots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from grape import __version__
from grape.evaluation.baselines import BASELINES, FIT_SPLITS, check_fit_splits, fit_predict
from grape.data.dataset import (
    POOLED,
    DatasetOptions,
    condition_genes,
    context_column,
    context_parts,
    gene_symbols,
    row_names,
)
from grape.evaluation.de import RANK_KEY, TOP_NON_DROPOUT_KEY, UNS_KEYS, add_de_rankings, de_key, gears_gene_sets
from grape.annotation.identity import GeneIdentity
from grape.evaluation.metrics import DIRECTION_TOP, METRICS, Panel, registry_table, score
from grape.options import options_class

log = logging.getLogger(__name__)

N_RANKED_KEPT = max(DIRECTION_TOP)  # ranked DE genes kept per condition (the metrics read at most 200)


# Bases listed last section first: a dataclass's fields follow the reversed MRO (dataset, then evaluate).
@dataclass(frozen=True)
class Options(options_class("evaluate"), DatasetOptions):
    """Options of the evaluate stage (config sections ``dataset`` and ``evaluate``)."""


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
    (and ``use_condition_name``), else :func:`grape.evaluation.de.de_key` of its cell type (``cell`` without one)."""
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
    adata: ad.AnnData, conditions: list[str], *, options: Options, excluded: set[str] | frozenset[str] = frozenset()
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each condition's ranked DE gene indices (first 200) and top non-dropout DE gene indices.

    Names in ``excluded`` (non-gene features already dropped from ``adata``) are left out of
    rankings read from ``uns``.
    """
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
        if excluded:
            names = names[~np.isin(names, list(excluded))]
        missing = [g for g in names if g not in position]
        if missing:
            raise ValueError(f"uns[{what!r}] of condition {cond!r} names genes not in var: {', '.join(missing[:5])}")
        return np.array([position[g] for g in names], dtype=np.int64)

    ranked = {c: indices(ranked_table[keys[c]], c, RANK_KEY)[:N_RANKED_KEPT] for c in conditions}
    top = {c: indices(top_table[keys[c]], c, TOP_NON_DROPOUT_KEY) for c in conditions}
    return ranked, top


def gene_index(adata: ad.AnnData, *, options: DatasetOptions, identity: GeneIdentity | None = None) -> dict[str, int]:
    """Column of each gene by symbol and by ``var_name`` (conditions may name either); with
    ``identity``, a perturbed label whose node is a measured gene (an alias) gets that gene's column."""
    index = {str(g): i for i, g in enumerate(adata.var_names.astype(str))}
    symbols = gene_symbols(adata, options=options)
    for i, g in enumerate(symbols):
        index.setdefault(str(g), i)
    if identity is not None:
        nodes = identity.nodes()
        column_of_node = {nodes.get(str(g), str(g)): i for i, g in enumerate(symbols)}
        for label, node in nodes.items():
            if label not in index and node in column_of_node:
                index[label] = column_of_node[node]
    return index


def model_name(predictions: Path) -> str:
    """``grape`` for the full model, ``grape_<variant>`` for ``.../train/<variant>/predictions.h5ad``."""
    path = Path(predictions)
    if path.parent.parent.name == "train" and path.parent.name != "full":
        return f"grape_{path.parent.name}"
    return "grape"


def prediction_frame(pred: ad.AnnData, genes: list[str], rows: list[str], *, where: str) -> pd.DataFrame:
    """A variant's predicted means (float64), indexed by row name (:func:`grape.data.dataset.row_names` of
    the obs ``condition`` and ``context`` columns; the obs names of a table without them), checked
    against the dataset's (kept) ``genes`` and the test ``rows`` (row names); ``where`` (the file) names
    it in errors."""
    if pred.var_names.astype(str).tolist() != genes:
        raise ValueError(f"{where}: genes differ from the dataset's ({pred.n_vars} genes, the dataset "
                         f"{len(genes)} after excluding non-gene features)")
    if {"condition", "context"} <= set(pred.obs.columns):
        index = row_names(pred.obs["condition"].astype(str).tolist(), pred.obs["context"].astype(str).tolist())
    else:
        index = pred.obs_names.astype(str).tolist()
    frame = pd.DataFrame(np.asarray(pred.X.toarray() if sp.issparse(pred.X) else pred.X, dtype=np.float64),
                         index=pd.Index(index), columns=genes)
    missing = [c for c in rows if c not in frame.index]
    if missing:
        raise ValueError(f"{where}: no prediction for test condition(s) {', '.join(missing[:5])}")
    return frame


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
    context: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-condition scores of every model on the test conditions, and their means per model and subgroup.

    All rows are of one context; ``context`` (when given) is written in a ``context`` column.
    """
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
        if context is not None:
            scores.insert(2, "context", context)
        scores.insert(3 if context is not None else 2, "subgroup", test["subgroup"].astype(str).to_numpy())
        frames.append(scores)
    per_condition = pd.concat(frames, ignore_index=True)
    return per_condition, summarize(per_condition)


def summarize(per_condition: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric over (context, condition) rows (NaN left out), in long form.

    ``context = all`` pools every row, overall (``subgroup = all``) and per subgroup; with
    several contexts (a ``context`` column of ``per_condition`` with more than one value)
    each context has the same rows of its own. ``n_conditions`` counts the rows averaged.
    """
    frame = per_condition if "context" in per_condition.columns else per_condition.assign(context=POOLED)
    long = frame.melt(id_vars=["model", "condition", "context", "subgroup"], var_name="metric")
    pooled = long.assign(context=POOLED)
    parts = [pooled.assign(subgroup="all"), pooled]
    if long["context"].nunique() > 1:
        parts += [long.assign(subgroup="all"), long]
    both = pd.concat(parts, ignore_index=True)
    summary = (both.groupby(["model", "context", "subgroup", "metric"], sort=False)["value"]
               .agg(value="mean", n_conditions="count").reset_index())
    summary["higher_is_better"] = summary["metric"].map(lambda k: METRICS[k].higher_is_better)
    summary["best"] = summary["metric"].map(lambda k: METRICS[k].best)
    return summary


# --------------------------------------------------------------------------- results


def _json_value(x: Any) -> Any:
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return round(float(x), 6) if isinstance(x, (float, np.floating)) else x


# --------------------------------------------------------------------------- contexts


def _context_parts(adata: ad.AnnData, *, options: DatasetOptions) -> dict[str, ad.AnnData]:
    """The dataset of each context (:func:`grape.data.dataset.context_parts`, copied); one context: the dataset itself.

    With several contexts in a column other than ``dataset.cell_type_key``, DE rankings
    in ``uns`` are not per context, so they are dropped and computed within each context.
    """
    parts = context_parts(adata, options=options)
    if len(parts) == 1:
        return parts
    drop_rankings = context_column(options) != options.cell_type_key and "condition_name" not in adata.obs.columns
    copies = {}
    for name, view in parts.items():
        part = view.copy()
        if drop_rankings:
            for key in UNS_KEYS:
                part.uns.pop(key, None)
        copies[name] = part
    return copies


def _merge_notes(notes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One baseline's notes over contexts: the one context's notes, or ``by_context`` with summed
    test-condition counts (rows) where every context has them."""
    if len(notes) == 1:
        return next(iter(notes.values()))
    merged: dict[str, Any] = {"by_context": notes}
    counts = [n.get("test_conditions") for n in notes.values()]
    if all(isinstance(c, dict) for c in counts):
        merged["test_conditions"] = {k: sum(int(c.get(k, 0)) for c in counts) for k in counts[0]}
    skipped = [f"{k}: {n['skipped']}" for k, n in notes.items() if "skipped" in n]
    if skipped:
        merged["skipped"] = "; ".join(skipped)
    return merged


def check_options(options: Options) -> None:
    """Refuse unknown baselines and baselines fitted on test conditions (before any file is read)."""
    unknown = [b for b in options.baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"evaluate.baselines: unknown baseline(s) {', '.join(unknown)} "
                         f"(known: {', '.join(BASELINES)})")
    check_fit_splits(options.baseline_splits)


@dataclass(frozen=True)
class EvaluationData:
    """The dataset prepared for scoring (:func:`prepare`)."""

    adata: ad.AnnData  # the dataset without the excluded (non-gene) features
    identity: GeneIdentity | None
    excluded: frozenset[str]  # measured features dropped as non-genes
    parts: dict[str, ad.AnnData]  # the dataset of each context (cell state)
    stats: dict[str, tuple[pd.DataFrame, pd.DataFrame]]  # each context's condition means and standard deviations
    control: str

    @property
    def genes(self) -> list[str]:
        """The kept genes (``var_names``), the columns every prediction must have."""
        return self.adata.var_names.astype(str).tolist()

    @property
    def conditions(self) -> list[str]:
        """The perturbed conditions of every context (sorted; the control left out): what the split covers."""
        return sorted({c for means, _ in self.stats.values() for c in means.index if c != self.control})

    def test_rows(self, split: pd.DataFrame) -> list[tuple[str, str]]:
        """The (context, condition) rows scored: each context's test conditions of ``split``."""
        test = split.loc[split["split"] == "test", "condition"].astype(str).tolist()
        if not test:
            raise ValueError("the split has no test condition")
        return [(k, c) for k in self.parts for c in test if c in self.stats[k][0].index]


def prepare(adata: ad.AnnData, *, options: Options, identity: GeneIdentity | None = None) -> EvaluationData:
    """Drop the features ``identity`` excludes as non-genes, split the contexts and take each one's
    condition means (:func:`condition_stats`)."""
    excluded = frozenset(identity.excluded) if identity is not None else frozenset()
    if excluded:
        keep = ~adata.var_names.astype(str).isin(list(excluded))
        log.info("%d measured features excluded as non-genes (no metric genes)", int((~keep).sum()))
        adata = adata[:, keep].copy()
    parts = _context_parts(adata, options=options)
    stats = {name: condition_stats(part, options=options) for name, part in parts.items()}
    return EvaluationData(adata=adata, identity=identity, excluded=excluded, parts=parts, stats=stats,
                          control=options.control)


@dataclass(frozen=True)
class Evaluation:
    """The scores of every model on the test rows, and the table of their predictions."""

    per_condition: pd.DataFrame  # model x (context, condition), every metric
    summary: pd.DataFrame  # model x context x subgroup x metric (:func:`summarize`)
    baselines: dict[str, dict[str, Any]]  # each baseline's notes
    table: ad.AnnData  # the test rows: observed means in X, each model's in layers (see the module doc)
    models: list[str]
    contexts: list[str]
    rows: list[tuple[str, str]]  # (context, condition)
    test: pd.DataFrame  # the split's test conditions


def evaluate_all(data: EvaluationData, split: pd.DataFrame, models: dict[str, pd.DataFrame], *,
                 options: Options) -> Evaluation:
    """Fit the baselines per context and score them and the ``models`` (predicted means by row name,
    :func:`prediction_frame`) on the test rows of every context."""
    contexts = list(data.parts)
    test = split.loc[split["split"] == "test"]
    rows = data.test_rows(split)
    genes = data.genes
    index = gene_index(data.adata, options=options, identity=data.identity)

    def genes_of(cond: str) -> tuple[str, ...]:
        return condition_genes(cond, options=options)

    frames, notes = [], {}
    table_x, table_layers, table_control, table_ranked, table_rows, model_names = [], {}, [], [], [], []
    n_keep = min(N_RANKED_KEPT, len(genes))
    for name in contexts:
        means, stds = data.stats[name]
        conds = [c for k, c in rows if k == name]
        if not conds:
            log.info("context %s has no test condition", name)
            continue
        split_k = split.loc[split["condition"].isin(means.index)]
        ranked, top = de_genes(data.parts[name], conds, options=options, excluded=data.excluded)
        targets = {c: np.array(sorted({index[g] for g in genes_of(c) if g in index}), dtype=np.int64) for c in conds}
        try:
            baselines = fit_predict(options.baselines, means, split_k, control=options.control, genes_of=genes_of,
                                    gene_index=index, pca_dim=options.linear_pca_dim, ridge=options.linear_ridge,
                                    fit_splits=options.baseline_splits)
        except ValueError as err:
            raise ValueError(f"context {name!r}: {err}") from err
        for base, fitted in baselines.items():
            notes.setdefault(base, {})[name] = fitted.notes
        ids = row_names(conds, [name] * len(conds)) if len(contexts) == 1 else [f"{c} | {name}" for c in conds]
        context_models = {m: frame.loc[ids].set_axis(conds) for m, frame in models.items()}
        context_models.update({b: f.predictions for b, f in baselines.items() if f.predictions is not None})
        log.info("evaluating %s on %d test conditions%s", ", ".join(context_models), len(conds),
                 f" of context {name}" if len(contexts) > 1 else "")
        control = means.loc[options.control].to_numpy()
        per_k, _ = evaluate(context_models, means, stds, control, split_k, ranked, top, targets=targets,
                            n_de=options.n_de, context=name)
        frames.append(per_k)
        model_names += [m for m in context_models if m not in model_names]
        table_x.append(means.loc[conds].to_numpy(dtype=np.float32))
        table_control.append(np.tile(control.astype(np.float32), (len(conds), 1)))
        for m in model_names:
            table_layers.setdefault(m, [np.full((n, len(genes)), np.nan, np.float32) for n in
                                        (len(c) for c in table_x[:-1])])
            pred = context_models.get(m)
            table_layers[m].append(pred.loc[conds].to_numpy(dtype=np.float32) if pred is not None
                                   else np.full((len(conds), len(genes)), np.nan, np.float32))
        block = np.full((len(conds), n_keep), -1, dtype=np.int64)
        for row, cond in enumerate(conds):
            block[row, : len(ranked[cond][:n_keep])] = ranked[cond][:n_keep]
        table_ranked.append(block)
        table_rows += [(name, c) for c in conds]
    per_condition = pd.concat(frames, ignore_index=True)

    # observed and predicted means of the test rows, for the report's plots
    subgroup_of = test.set_index("condition")["subgroup"].astype(str)
    var = pd.DataFrame({"gene_name": gene_symbols(data.adata, options=options)}, index=pd.Index(genes))
    if data.identity is not None:  # the resolved symbol and Ensembl id beside the dataset's own label
        var["symbol"] = [data.identity.symbol_of(str(g)) for g in var["gene_name"]]
        var["gene_id"] = [data.identity.gene_id_of(str(g)) for g in var["gene_name"]]
    if len(contexts) == 1:
        var["control_mean"] = table_control[0][0].astype(np.float64) if table_control else np.nan
    obs = pd.DataFrame({"condition": [c for _, c in table_rows], "context": [k for k, _ in table_rows],
                        "subgroup": subgroup_of.loc[[c for _, c in table_rows]].to_numpy()},
                       index=pd.Index(row_names([c for _, c in table_rows], [k for k, _ in table_rows])))
    if len(contexts) == 1:
        obs = obs[["subgroup", "condition", "context"]]
    layers = {m: np.concatenate(v) for m, v in table_layers.items()}
    if len(contexts) > 1:  # one context: var['control_mean']
        layers["control"] = np.concatenate(table_control)
    table = ad.AnnData(X=np.concatenate(table_x), obs=obs, var=var, layers=layers,
                       obsm={"de_ranked": np.concatenate(table_ranked)})
    table.uns["models"] = model_names
    table.uns["contexts"] = contexts
    return Evaluation(per_condition=per_condition, summary=summarize(per_condition),
                      baselines={base: _merge_notes(by_ctx) for base, by_ctx in notes.items()}, table=table,
                      models=model_names, contexts=contexts, rows=rows, test=test)


def summary_record(result: Evaluation, *, options: Options, excluded: frozenset[str] | set[str] = frozenset(),
                   config: Any = None, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``metrics.json`` (see the module doc); ``config`` is the run's configuration and
    ``provenance`` the paths and checksums of the inputs, both recorded as given."""
    by_group: dict[str, dict[str, dict[str, Any]]] = {}
    by_context: dict[str, dict[str, dict[str, Any]]] = {}
    for row in result.summary.itertuples(index=False):
        if row.context == POOLED:
            by_group.setdefault(row.model, {}).setdefault(row.subgroup, {})[row.metric] = _json_value(row.value)
        elif row.subgroup == "all":
            by_context.setdefault(row.model, {}).setdefault(row.context, {})[row.metric] = _json_value(row.value)
    registry = registry_table().set_index("metric")
    return {
        "grape_version": __version__,
        "n_test_conditions": len(result.test),
        "test_conditions": {str(k): int(v) for k, v in result.test.groupby("subgroup").size().items()},
        "contexts": result.contexts,
        "n_test_rows": {name: sum(1 for k, _ in result.rows if k == name) for name in result.contexts},
        "excluded_features": sorted(excluded),
        "models": result.models,
        "metrics": {m: groups["all"] for m, groups in by_group.items()},
        "by_subgroup": {m: {g: v for g, v in groups.items() if g != "all"} for m, groups in by_group.items()},
        "by_context": by_context,
        "registry": {name: {"best": r.best, "higher_is_better": bool(r.higher_is_better), "source": r.source,
                            "description": r.description} for name, r in registry.iterrows()},
        "baselines": result.baselines,
        "options": {k: getattr(options, k) for k in options.__dataclass_fields__},
        "config": config,
        "provenance": provenance,
    }


def cell_eval_tables(data: EvaluationData, result: Evaluation, *, options: Options
                     ) -> tuple[ad.AnnData, ad.AnnData] | None:
    """The full model's test predictions and the observed cells in the format of Arc's ``cell-eval run``
    (:func:`grape.evaluation.celleval.cell_eval_pair`): ``(pred, real)``. None for changes from control
    (``dataset.relative``), which cell-eval cannot read."""
    from grape.evaluation.celleval import cell_eval_pair, table_predictions

    if options.relative:
        log.info("no cell-eval files: dataset.relative holds changes from control, cell-eval needs expression")
        return None
    conditions = result.test["condition"].astype(str).tolist()
    return cell_eval_pair(data.adata, table_predictions(result.table, model="grape"), conditions=conditions,
                          options=options, model="grape",
                          context_key=context_column(options) if len(result.contexts) > 1 else None)
