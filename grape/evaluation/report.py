"""The report: a Markdown summary of the test results and the figures of the Snakemake report.

:func:`summarize` writes the Markdown and :func:`figures` draws the plots from the
evaluation's tables; the report stage writes into ``--out-dir``:

``summary.md``
    the headline metrics of every model (the model variants and the baselines) on
    all test conditions, with the best value of each column in bold; the main
    metrics per test subgroup; where the model does best and worst; the
    baselines' coverage; training per variant; the learned network (when the run
    exports one) and its recovery of the true network (when the run measures it).
    With several cell states (contexts), the headline metrics per context as well, and
    test rows are named ``condition | context``. It is also logged.
``pred_vs_obs.png``
    predicted against observed change from control on the top DE genes of chosen
    test conditions (``report.plot_conditions``; by default, in each test subgroup,
    the condition with the largest observed change, up to four), for the model and
    the baselines.
``metric_bars.png``
    the headline metrics per model, overall and per test subgroup.
``training_curves.png``
    training and validation loss per epoch of each model variant.
``network_degree.png`` (only with ``--networks``)
    incoming learned edges per target gene by biotype pair, per variant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from grape.evaluation.aggregate import headline_markdown
from grape.evaluation.metrics import HEADLINE, METRICS
from grape.options import options_class

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PLOTS = {
    "pred_vs_obs": "pred_vs_obs.png",
    "metric_bars": "metric_bars.png",
    "training": "training_curves.png",
    "network": "network_degree.png",
}
SUBGROUP_METRICS = ["pearson_delta", "mse_de"]
MAX_DEFAULT_CONDITIONS = 4


@dataclass(frozen=True)
class Options(options_class("report")):
    """Options of the report stage (config section ``report``)."""


# --------------------------------------------------------------------------- Markdown


def pooled(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows of metrics.tsv that pool every context (all rows of a table without ``context``)."""
    if "context" not in metrics.columns:
        return metrics
    return metrics.loc[metrics["context"].astype(str) == "all"]


def contexts_of(metrics: pd.DataFrame) -> list[str]:
    """The contexts with rows of their own in metrics.tsv (none with one context)."""
    if "context" not in metrics.columns:
        return []
    return sorted(set(metrics["context"].astype(str)) - {"all"})


def row_keys(per_condition: pd.DataFrame) -> pd.Series:
    """Name of each (context, condition) row: the condition, or ``condition | context`` with several contexts."""
    if "context" in per_condition.columns and per_condition["context"].nunique() > 1:
        return per_condition["condition"].astype(str) + " | " + per_condition["context"].astype(str)
    return per_condition["condition"].astype(str)


def _cell(value: object, digits: int) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if np.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, digits: int = 4, *, bold: dict[str, object] | None = None) -> str:
    """A GitHub Markdown table; ``bold`` maps a column to the value to print in bold."""
    cols = list(frame.columns)
    whole = set()  # float columns holding counts (integers, perhaps with NaN): printed without decimals
    for col in cols:
        values = pd.to_numeric(frame[col], errors="coerce") if frame[col].dtype.kind == "f" else None
        if values is not None and values.notna().any() and (values.dropna() % 1 == 0).all():
            whole.add(col)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        cells = []
        for col, value in zip(cols, row):
            text = _cell(value, 0 if col in whole else digits)
            if bold and col in bold and _cell(bold[col], digits) == text and text != "nan":
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best(values: pd.Series, metric: str) -> object:
    values = values.dropna()
    if values.empty:
        return None
    return values.max() if METRICS[metric].higher_is_better else values.min()


def _arrow(metric: str) -> str:
    return "↑" if METRICS[metric].higher_is_better else "↓"


def headline_table(metrics: pd.DataFrame, digits: int) -> str:
    overall = pooled(metrics).loc[lambda m: m["subgroup"] == "all"]
    models = list(dict.fromkeys(overall["model"]))
    wide = overall.pivot(index="model", columns="metric", values="value").reindex(models)
    names = [m for m in HEADLINE if m in wide.columns]
    wide = wide[names]
    bold = {f"{m} {_arrow(m)}": _best(wide[m], m) for m in names}
    wide.columns = [f"{m} {_arrow(m)}" for m in names]
    return markdown_table(wide.reset_index(), digits, bold=bold)


def subgroup_table(metrics: pd.DataFrame, metric: str, digits: int) -> str:
    rows = pooled(metrics).loc[lambda m: m["metric"] == metric]
    models = list(dict.fromkeys(rows["model"]))
    groups = ["all", *sorted(g for g in rows["subgroup"].unique() if g != "all")]
    wide = rows.pivot(index="model", columns="subgroup", values="value").reindex(index=models, columns=groups)
    counts = rows.groupby("subgroup")["n_conditions"].max()
    bold = {f"{g} (n={counts[g]})": _best(wide[g], metric) for g in groups}
    wide.columns = [f"{g} (n={counts[g]})" for g in groups]
    return markdown_table(wide.reset_index(), digits, bold=bold)


def context_table(metrics: pd.DataFrame, metric: str, digits: int) -> str:
    """``metric`` per model (rows) and context (columns, with the number of rows), overall rows only."""
    rows = metrics.loc[(metrics["metric"] == metric) & (metrics["subgroup"] == "all")]
    models = list(dict.fromkeys(rows["model"]))
    contexts = ["all", *contexts_of(metrics)]
    wide = rows.pivot(index="model", columns="context", values="value").reindex(index=models, columns=contexts)
    counts = rows.groupby("context")["n_conditions"].max()
    names = [f"{c} (n={int(counts.get(c, 0))})" for c in contexts]
    bold = {name: _best(wide[c], metric) for name, c in zip(names, contexts)}
    wide.columns = names
    return markdown_table(wide.reset_index(), digits, bold=bold)


def where_right_and_wrong(per_condition: pd.DataFrame, metric: str, digits: int, *, n: int = 3) -> str | None:
    """The model's best and worst test conditions on ``metric``, beside the best baseline there."""
    if "grape" not in set(per_condition["model"]):
        return None
    per_condition = per_condition.assign(condition=row_keys(per_condition))
    wide = per_condition.pivot(index="condition", columns="model", values=metric)
    baselines = [m for m in wide.columns if not m.startswith("grape")]
    if not baselines:
        return None
    higher = METRICS[metric].higher_is_better
    best_base = wide[baselines].max(axis=1) if higher else wide[baselines].min(axis=1)
    which = wide[baselines].idxmax(axis=1) if higher else wide[baselines].idxmin(axis=1)
    subgroup = per_condition.drop_duplicates("condition").set_index("condition")["subgroup"]
    table = pd.DataFrame({"condition": wide.index, "subgroup": subgroup.reindex(wide.index).to_numpy(),
                          "grape": wide["grape"].to_numpy(), "best baseline": which.to_numpy(),
                          "its value": best_base.to_numpy()})
    table = table.sort_values("grape", ascending=not higher, kind="stable")
    picked = pd.concat([table.head(n), table.tail(n)]).drop_duplicates("condition")
    return markdown_table(picked, digits)


def repeated_splits_section(headline: pd.DataFrame, digits: int) -> str:
    """The headline over repeated splits (:func:`grape.evaluation.aggregate.headline_markdown`), then a
    heading for the single split that the rest of the summary describes."""
    return (headline_markdown(headline, digits=digits, heading="##").rstrip("\n") + "\n\n"
            "Every model against every baseline is in `aggregate/comparison.tsv`, the means over splits in "
            "`aggregate/summary.tsv`, each split's tables in `splits/seed<k>/`.\n\n"
            "## The run's own split\n\nWhat follows is the split of split.seed (split.fold) alone.")


def summarize(
    metrics: pd.DataFrame,
    histories: dict[str, pd.DataFrame],
    *,
    per_condition: pd.DataFrame | None = None,
    evaluation: dict | None = None,
    degrees: pd.DataFrame | None = None,
    recovery: pd.DataFrame | None = None,
    headline: pd.DataFrame | None = None,
    digits: int = 4,
) -> str:
    """The Markdown text of the summary; with ``headline`` (the aggregate's ``headline.tsv``, runs with
    split.seeds) it opens with the model minus the best baseline over the repeated splits."""
    contexts = contexts_of(metrics)
    metrics_all = metrics
    metrics = pooled(metrics)
    overall = metrics.loc[metrics["subgroup"] == "all"]
    n = int(overall.loc[overall["metric"] == "mse", "n_conditions"].max())
    groups = metrics.loc[(metrics["subgroup"] != "all") & (metrics["metric"] == "mse")]
    group_counts = ", ".join(f"{g} {int(c)}" for g, c in groups.groupby("subgroup")["n_conditions"].max().items())
    parts = [
        "# GRAPE run summary",
        *([] if headline is None else [repeated_splits_section(headline, digits)]),
        f"Test conditions: {n} ({group_counts}), held out from training and model selection. Each metric is "
        "computed per condition on mean expression and then averaged (GEARS); ↑ higher is better, ↓ lower is "
        "better; the best value of each column is in bold. Every metric of every model is in "
        "`evaluate/metrics.tsv`, every condition in `evaluate/per_condition.tsv`.",
        headline_table(metrics, digits),
        "`no_change` predicts no direction at all, so it scores 0 on the direction fractions (including "
        "frac_opposite_direction, where 0 is best) and on the delta correlations (GEARS counts an undefined "
        "correlation as 0).",
    ]
    if contexts:
        parts[1] += (f" The {n} test rows are (context, condition) pairs of {len(contexts)} cell states "
                     f"({', '.join(contexts)}), each scored against its own context's control; `all` pools them.")
    for metric in SUBGROUP_METRICS:
        parts += [f"## {metric} {_arrow(metric)} by test subgroup", subgroup_table(metrics, metric, digits)]
    if contexts:
        for metric in SUBGROUP_METRICS:
            parts += [f"## {metric} {_arrow(metric)} by context", context_table(metrics_all, metric, digits)]
    if per_condition is not None:
        table = where_right_and_wrong(per_condition, "pearson_delta", digits)
        if table:
            parts += ["## Where the model is right and where it is not",
                      "The model's three best and three worst test conditions by pearson_delta, beside the best "
                      "baseline on each.", table]
    if evaluation:
        notes = []
        add = evaluation.get("baselines", {}).get("additive")
        if add and "test_conditions" in add:
            c = add["test_conditions"]
            notes.append(f"additive: {c['all_singles_seen']} test conditions with every single seen in fitting, "
                         f"{c['some_singles_seen']} with some, {c['no_single_seen']} with none (an unseen gene "
                         "adds zero, so those are predicted as the control)")
        lin = evaluation.get("baselines", {}).get("linear")
        if lin and "skipped" in lin:
            notes.append(f"linear: skipped ({lin['skipped']})")
        elif lin and "by_context" in lin:
            notes.append("linear: fitted per context, " + "; ".join(
                f"{k}: K={v['pca_dim']}, ridge {v['ridge']}, {v['n_fit_conditions']} conditions"
                for k, v in lin["by_context"].items() if "pca_dim" in v))
        elif lin:
            notes.append(f"linear: K={lin['pca_dim']} principal components, ridge {lin['ridge']}, fitted on "
                         f"{lin['n_fit_conditions']} conditions (control included)")
        fit = evaluation.get("options", {}).get("baseline_splits")
        if notes:
            parts += ["## Baselines",
                      f"Fitted on the {' and '.join(fit or ['train'])} conditions of the same split, never on test"
                      + (" (per context, on that context's rows)." if contexts else ".")
                      + "".join(f"\n- {x}" for x in notes)]
    rows = []
    runs = [(variant if "member" not in history.columns or history["member"].nunique() == 1
             else f"{variant} (member {member})", part)
            for variant, history in histories.items()
            for member, part in ([(0, history)] if "member" not in history.columns else history.groupby("member"))]
    for variant, history in runs:
        if "val_mse" in history.columns and history["val_mse"].notna().any():
            best = history.loc[history["val_mse"].idxmin()]
            rows.append({"variant": variant, "epochs run": int(history["epoch"].max()),
                         "epoch of lowest val_mse": int(best["epoch"]), "lowest val_mse": float(best["val_mse"])})
        else:
            rows.append({"variant": variant, "epochs run": int(history["epoch"].max()),
                         "epoch of lowest val_mse": "-", "lowest val_mse": float("nan")})
    parts += ["## Training", markdown_table(pd.DataFrame(rows), digits)]
    if degrees is not None:
        parts += ["## Learned network",
                  "Incoming learned edges per target gene, by node-type pair (source → target):",
                  markdown_table(degrees.pivot(index="pair", columns="variant", values="edges_per_target")
                                 .reset_index(), digits)]
    else:
        parts += ["## Learned network", "This run exports no learned network."]
    if recovery is not None:
        parts += ["### Recovery of the true network", markdown_table(recovery, digits)]
    if evaluation:
        prov = evaluation.get("provenance", {})
        sha = (prov.get("dataset") or {}).get("sha256") or "?"
        parts += ["## Provenance",
                  f"grape {evaluation.get('grape_version', '?')}; dataset `{(prov.get('dataset') or {}).get('path')}` "
                  f"(sha256 {sha[:12]}…); models, checksums and the run's configuration in `evaluate/metrics.json`."]
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------- plots


def variant_of(path: Path) -> str:
    """``full`` for ``.../train/full/history.tsv``."""
    return Path(path).parent.name


def control_rows(table: ad.AnnData) -> np.ndarray:
    """The control mean of each row of test_predictions.h5ad: ``layers['control']`` (several
    contexts) or ``var['control_mean']``."""
    if "control" in table.layers:
        return np.asarray(table.layers["control"], dtype=np.float64)
    return np.tile(table.var["control_mean"].to_numpy(dtype=np.float64), (table.n_obs, 1))


def choose_conditions(table: ad.AnnData, wanted: list[str], *, limit: int = MAX_DEFAULT_CONDITIONS) -> list[str]:
    """The rows to draw: ``wanted`` (test rows, or condition labels: every context's row of each),
    else the largest change per subgroup."""
    test = table.obs_names.astype(str).tolist()
    if wanted:
        labels = table.obs["condition"].astype(str).tolist() if "condition" in table.obs else test
        missing = [c for c in wanted if c not in test and c not in labels]
        if missing:
            raise ValueError(f"report.plot_conditions: {', '.join(missing)} not among the test conditions "
                             f"({', '.join(test[:8])}{', ...' if len(test) > 8 else ''})")
        picked = [c if c in test else None for c in wanted]
        return list(dict.fromkeys(x for c, p in zip(wanted, picked)
                                  for x in ([p] if p else [r for r, lab in zip(test, labels) if lab == c])))
    change = np.linalg.norm(np.asarray(table.X) - control_rows(table), axis=1)
    frame = pd.DataFrame({"condition": test, "subgroup": table.obs["subgroup"].astype(str).to_numpy(), "change": change})
    picked = (frame.sort_values(["subgroup", "change"], ascending=[True, False], kind="stable")
              .groupby("subgroup", sort=True).head(1)["condition"].tolist())
    return picked[:limit]


def delta_frames(table: ad.AnnData, conditions: list[str], models: list[str], n_genes: int
                 ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Observed and predicted changes on each condition's top ``n_genes`` ranked DE genes (NaN elsewhere)."""
    rows = [table.obs_names.get_loc(c) for c in conditions]
    control = control_rows(table)[rows]
    names = table.var["gene_name"].astype(str).to_numpy() if "gene_name" in table.var else table.var_names.to_numpy()
    mask = np.zeros((len(rows), table.n_vars), dtype=bool)
    for k, row in enumerate(rows):
        idx = table.obsm["de_ranked"][row]
        mask[k, idx[idx >= 0][:n_genes]] = True

    def frame(values: np.ndarray) -> pd.DataFrame:
        out = np.where(mask, values[rows] - control, np.nan)
        return pd.DataFrame(out, index=conditions, columns=names)

    return frame(np.asarray(table.X)), {m: frame(np.asarray(table.layers[m])) for m in models}


# --------------------------------------------------------------------------- figures


def network_degrees(networks: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Incoming learned edges per target gene of each variant's network, by node-type pair and by
    biotype pair (:func:`grape.evaluation.plots.degree_by_pair`)."""
    from grape.evaluation import plots

    return plots.degree_by_pair(networks, level="group"), plots.degree_by_pair(networks, level="biotype")


def figures(
    metrics: pd.DataFrame,
    per_condition: pd.DataFrame,
    table: ad.AnnData,
    histories: dict[str, pd.DataFrame],
    *,
    options: Options,
    degrees: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> dict[str, Figure]:
    """The report's figures, keyed as :data:`PLOTS`: predicted vs observed changes of the chosen test
    rows of ``table`` (test_predictions.h5ad), the headline metrics, the training curves, and with
    ``degrees`` (:func:`network_degrees`) the learned network's degrees."""
    from grape.evaluation import plots

    conditions = choose_conditions(table, list(options.plot_conditions))
    models = [m for m in table.uns.get("models", list(table.layers)) if m == "grape" or not m.startswith("grape_")]
    observed, predicted = delta_frames(table, conditions, models, options.plot_genes)
    keyed = per_condition.assign(condition=row_keys(per_condition))
    scores = (keyed.loc[keyed["condition"].isin(conditions)]
              .pivot(index="model", columns="condition", values="pearson_delta_de"))
    subgroups = dict(zip(table.obs_names.astype(str), table.obs["subgroup"].astype(str)))
    out = {
        "pred_vs_obs": plots.predicted_vs_observed(
            observed, predicted, subgroups=subgroups,
            scores={m: scores.loc[m].to_dict() for m in models if m in scores.index}),
        "metric_bars": plots.metric_bars(metrics, [m for m in HEADLINE if m in set(metrics["metric"])]),
        "training": plots.training_curves(histories),
    }
    if degrees is not None:
        out["network"] = plots.network_degree(*degrees)
    return out
