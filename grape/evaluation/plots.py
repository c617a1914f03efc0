"""The report's figures (matplotlib, Agg backend: no display needed).

Each function takes plain tables and returns a ``matplotlib.figure.Figure``;
:func:`save` writes it as PNG atomically. The report stage (:mod:`grape.evaluation.report`)
decides what to draw.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from grape.io.files import atomic_path  # noqa: E402
from grape.evaluation.metrics import METRICS  # noqa: E402

log = logging.getLogger(__name__)

# Stable colours: the model first, then the baselines, then variants.
BASELINE_COLOURS = {"no_change": "#9e9e9e", "mean": "#8c6d31", "mean_target": "#bf812d", "mean_doubles": "#dfc27d",
                    "additive": "#e6550d", "linear": "#31a354"}
MODEL_COLOUR = "#3182bd"
VARIANT_COLOURS = ["#6baed6", "#756bb1", "#9e9ac8", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def model_colours(models: Sequence[str]) -> dict[str, str]:
    """A colour per model name: grape blue, each baseline its own, variants from a palette."""
    colours, variants = {}, iter(VARIANT_COLOURS * 4)
    for model in models:
        if model == "grape":
            colours[model] = MODEL_COLOUR
        elif model in BASELINE_COLOURS:
            colours[model] = BASELINE_COLOURS[model]
        else:
            colours[model] = next(variants)
    return colours


def save(fig: Figure, path: str | Path, *, dpi: int = 110) -> None:
    """Write ``fig`` as PNG to ``path`` atomically, then close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _grid(n: int, ncols: int, width: float, height: float, **kwargs) -> tuple[Figure, np.ndarray]:
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained", **kwargs)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def predicted_vs_observed(
    observed: pd.DataFrame,
    predicted: Mapping[str, pd.DataFrame],
    *,
    subgroups: Mapping[str, str] | None = None,
    scores: Mapping[str, Mapping[str, float]] | None = None,
) -> Figure:
    """One panel per condition: predicted against observed change from control on its top DE genes.

    ``observed``: conditions x genes (the top DE genes of each condition, NaN elsewhere);
    ``predicted``: model -> a frame of the same shape; ``scores``: optional model ->
    condition -> a value shown in the legend (pearson_delta_de).
    """
    conds = observed.index.tolist()
    colours = model_colours(list(predicted))
    fig, axes = _grid(len(conds), 2 if len(conds) in (2, 4) else 3, 4.3, 4.6)
    for ax, cond in zip(axes.flat, conds):
        obs = observed.loc[cond].dropna()
        lo, hi = min(obs.min(), 0.0), max(obs.max(), 0.0)
        for model, frame in predicted.items():
            pred = frame.loc[cond, obs.index]
            lo, hi = min(lo, pred.min()), max(hi, pred.max())
            ax.scatter(obs, pred, s=18, alpha=0.8, color=colours[model], label=model,
                       marker="o" if model.startswith("grape") else "s", edgecolors="none")
        pad = 0.06 * (hi - lo or 1.0)
        lo, hi = lo - pad, hi + pad
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", zorder=0)
        ax.axhline(0, color="#cccccc", lw=0.6, zorder=0)
        ax.axvline(0, color="#cccccc", lw=0.6, zorder=0)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal", adjustable="box")
        title = cond if not subgroups else f"{cond}  ({subgroups.get(cond, '?')})"
        if scores:
            rs = [f"{m} {scores[m][cond]:.2f}" for m in predicted if m in scores and cond in scores[m]]
            lines = [" · ".join(rs[k:k + 3]) for k in range(0, len(rs), 3)]
            title += "\n" + "\n".join(f"r: {line}" if k == 0 else line for k, line in enumerate(lines))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"observed change ({len(obs)} top DE genes)", fontsize=9)
        ax.set_ylabel("predicted change", fontsize=9)
    fig.suptitle("Predicted vs observed change from control on the top DE genes of test conditions\n"
                 "(dashed: perfect prediction; r: pearson_delta_de of the condition)", fontsize=11)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), frameon=False)
    return fig


def metric_bars(summary: pd.DataFrame, metrics: Sequence[str], *, models: Sequence[str] | None = None) -> Figure:
    """Bars of each metric's mean per model, for all test conditions and each test subgroup.

    ``summary``: metrics.tsv of the evaluate stage (model, [context,] subgroup, metric, value,
    n_conditions). With several contexts each context's rows (all its subgroups) are bars
    of their own after the pooled subgroups.
    """
    models = list(models or dict.fromkeys(summary["model"]))
    context_groups: list[str] = []
    if "context" in summary.columns:
        pooled = summary.loc[summary["context"].astype(str) == "all"]
        per_context = summary.loc[(summary["context"].astype(str) != "all") & (summary["subgroup"] == "all")]
        per_context = per_context.assign(subgroup="context " + per_context["context"].astype(str))
        context_groups = list(dict.fromkeys(per_context["subgroup"]))
        summary = pd.concat([pooled, per_context], ignore_index=True)
    subgroups = ["all", *sorted(s for s in summary["subgroup"].unique() if s != "all" and s not in context_groups),
                 *context_groups]
    counts = summary.groupby("subgroup")["n_conditions"].max()
    colours = model_colours(models)
    fig, axes = _grid(len(metrics), 2, max(6.5, 0.11 * len(models) * len(subgroups) + 1.5), 2.8)
    width = 0.8 / max(1, len(models))
    x = np.arange(len(subgroups))
    for ax, metric in zip(axes.flat, metrics):
        table = summary.loc[summary["metric"] == metric].pivot(index="subgroup", columns="model", values="value")
        for k, model in enumerate(models):
            values = table.reindex(index=subgroups)[model] if model in table.columns else pd.Series(np.nan, subgroups)
            ax.bar(x + (k - (len(models) - 1) / 2) * width, values.to_numpy(dtype=float), width,
                   color=colours[model], label=model)
        spec = METRICS.get(metric)
        arrow = "" if spec is None else (" (higher is better)" if spec.higher_is_better else " (lower is better)")
        ax.set_title(f"{metric}{arrow}", fontsize=10)
        ax.set_xticks(x, [f"{s}\n(n={int(counts.get(s, 0))})" for s in subgroups], fontsize=8)
        ax.axhline(0, color="black", lw=0.6)
        ax.grid(axis="y", color="#eeeeee")
        ax.set_axisbelow(True)
    fig.suptitle("Test metrics per model and test subgroup" + (" and context" if context_groups else "")
                 + " (mean over conditions)", fontsize=11)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(models), 6), frameon=False)
    return fig


def training_curves(histories: Mapping[str, pd.DataFrame]) -> Figure:
    """Per variant: each training and validation loss column of history.tsv per epoch (log scale)."""
    fig, axes = _grid(len(histories), 3, 4.5, 3.2)
    for ax, (variant, history) in zip(axes.flat, histories.items()):
        if "epoch" not in history.columns:
            raise ValueError(f"history of variant {variant!r} has no 'epoch' column (columns: "
                             f"{', '.join(map(str, history.columns))})")
        numeric = [c for c in history.columns if c not in ("epoch", "member")
                   and pd.api.types.is_numeric_dtype(history[c])]
        curves = [c for c in numeric if c.startswith(("train", "val"))] or [c for c in numeric if c != "seconds"]
        members = [history] if "member" not in history.columns else [g for _, g in history.groupby("member")]
        for k, member in enumerate(members):  # an ensemble (train.ensemble): the first member labelled, the rest faint
            for i, col in enumerate(curves):
                style = "-" if col.startswith("val") else "--"
                ax.plot(member["epoch"], member[col], style, lw=1.2 if k == 0 else 0.6, color=f"C{i}",
                        alpha=1.0 if k == 0 else 0.4, label=col if k == 0 else None)
        history = members[0]
        if "val_mse" in history.columns and history["val_mse"].notna().any():
            best = history.loc[history["val_mse"].idxmin()]
            ax.axvline(best["epoch"], color="#999999", lw=0.8, ls=":")
            ax.annotate(f"lowest val_mse, epoch {int(best['epoch'])}", (best["epoch"], best["val_mse"]), fontsize=7,
                        xytext=(4, 8), textcoords="offset points")
        positive = history[curves].to_numpy(dtype=float)
        if curves and np.nanmin(positive) > 0:
            ax.set_yscale("log")
        ax.set_title(variant, fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Training curves per model variant (dashed: training, solid: validation)", fontsize=11)
    return fig


NETWORK_SOURCE = ("source", "source_id", "source_gene", "source_name", "src")
NETWORK_TARGET = ("target", "target_id", "target_gene", "target_name", "dst")


def _side_column(columns: Sequence[str], side: str, exact: Sequence[str], loose: Sequence[str]) -> str | None:
    for suffix in exact:
        if f"{side}_{suffix}" in columns:
            return f"{side}_{suffix}"
    matches = [c for c in columns if c.startswith(side) and any(k in c for k in loose)]
    return matches[0] if matches else None


def network_columns(frame: pd.DataFrame, source: str = "network.tsv") -> dict[str, str]:
    """Columns of a learned-network table: source and target genes, both biotypes, and (when there)
    both node types (``group``; the model's biotype groups). A clear error when a required one is absent."""
    columns = [str(c) for c in frame.columns]
    found = {
        "source": next((c for c in NETWORK_SOURCE if c in columns), None),
        "target": next((c for c in NETWORK_TARGET if c in columns), None),
        "source_biotype": _side_column(columns, "source", ["biotype"], ["biotype"]),
        "target_biotype": _side_column(columns, "target", ["biotype"], ["biotype"]),
        "source_group": _side_column(columns, "source", ["type", "node_type", "group"], ["node_type", "group"]),
        "target_group": _side_column(columns, "target", ["type", "node_type", "group"], ["node_type", "group"]),
    }
    for side in ("source", "target"):  # a table with node types only: use them as the biotypes
        if found[f"{side}_biotype"] is None:
            found[f"{side}_biotype"] = found[f"{side}_group"]
    missing = [k for k in ("source", "target", "source_biotype", "target_biotype") if found[k] is None]
    if missing:
        raise ValueError(f"{source}: no {', '.join(missing)} column (columns: {', '.join(columns)}); "
                         "a learned network needs source, target and both biotypes")
    return {k: v for k, v in found.items() if v is not None}


def degree_by_pair(networks: Mapping[str, pd.DataFrame], *, level: str = "biotype") -> pd.DataFrame:
    """Per variant and (source -> target) pair of ``level`` (``biotype`` or ``group``, the node type):
    learned edges, target genes of that kind, and incoming edges per target gene."""
    rows = []
    for variant, frame in networks.items():
        cols = network_columns(frame, f"network of variant {variant!r}")
        src_col = cols.get(f"source_{level}", cols["source_biotype"])
        tgt_col = cols.get(f"target_{level}", cols["target_biotype"])
        targets_per_kind = frame.groupby(tgt_col)[cols["target"]].nunique()
        for (src, tgt), n in frame.groupby([src_col, tgt_col]).size().items():
            rows.append({"variant": variant, "pair": f"{src} → {tgt}", "source": src, "target": tgt,
                         "edges": int(n), "target_genes": int(targets_per_kind[tgt]),
                         "edges_per_target": n / targets_per_kind[tgt]})
    return pd.DataFrame(rows, columns=["variant", "pair", "source", "target", "edges", "target_genes",
                                       "edges_per_target"])


def network_degree(by_group: pd.DataFrame, by_biotype: pd.DataFrame) -> Figure:
    """Left: incoming learned edges per target gene by node-type pair, one bar per variant;
    right: the same by biotype pair for the first variant, as a heat map."""
    pairs = sorted(by_group["pair"].unique())
    variants = list(dict.fromkeys(by_group["variant"]))
    colours = dict(zip(variants, [MODEL_COLOUR, *VARIANT_COLOURS * 4]))
    first = variants[0]
    heat = by_biotype.loc[by_biotype["variant"] == first].pivot(index="source", columns="target",
                                                                values="edges_per_target")
    fig, (ax, hx) = plt.subplots(1, 2, figsize=(max(5.0, 1.3 * len(pairs) + 2) + 1.0 * heat.shape[1] + 2, 4.2),
                                 layout="constrained",
                                 gridspec_kw={"width_ratios": [max(2.0, 1.3 * len(pairs)), 1.0 * heat.shape[1] + 1]})
    width = 0.8 / max(1, len(variants))
    x = np.arange(len(pairs))
    table = by_group.pivot(index="pair", columns="variant", values="edges_per_target").reindex(pairs)
    for k, variant in enumerate(variants):
        ax.bar(x + (k - (len(variants) - 1) / 2) * width, table[variant].to_numpy(dtype=float), width,
               color=colours[variant], label=variant)
    ax.set_xticks(x, pairs, fontsize=9, rotation=20, ha="right")
    ax.set_ylabel("incoming edges per target gene")
    ax.set_title("by node-type pair (source → target)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", color="#eeeeee")
    ax.set_axisbelow(True)
    values = heat.to_numpy(dtype=float)
    image = hx.imshow(values, cmap="Blues", aspect="auto")
    hx.set_xticks(np.arange(heat.shape[1]), heat.columns, rotation=45, ha="right", fontsize=8)
    hx.set_yticks(np.arange(heat.shape[0]), heat.index, fontsize=8)
    hx.set_xlabel("target biotype")
    hx.set_ylabel("source biotype")
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            hx.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value > np.nanmax(values) * 0.6 else "black")
    hx.set_title(f"by biotype pair ({first})", fontsize=10)
    fig.colorbar(image, ax=hx, shrink=0.8, label="edges per target gene")
    fig.suptitle("Learned network: incoming edges per target gene", fontsize=11)
    return fig
