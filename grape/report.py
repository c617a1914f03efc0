"""A short Markdown summary of the test metrics: models side by side, then per subgroup."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from grape._io import write_text_atomic
from grape.cli import PathArg
from grape.metrics import METRICS

log = logging.getLogger(__name__)

CLI_PATHS = {
    "metrics": PathArg("metrics.tsv from `grape evaluate`"),
    "history": PathArg("history.tsv from `grape train`"),
    "out": PathArg("output Markdown summary"),
}


@dataclass(frozen=True)
class Options:
    """Options of the report stage (config section ``report``)."""

    digits: int = field(default=4, metadata={"help": "decimal places in the tables"})


def _table(frame: pd.DataFrame, digits: int) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(metrics: pd.DataFrame, history: pd.DataFrame, *, digits: int = 4) -> str:
    """The Markdown text of the summary."""
    overall = metrics.loc[metrics["subgroup"] == "all"]
    wide = overall.pivot(index="model", columns="metric", values="value")
    wide = wide[[m for m in METRICS if m in wide.columns]]
    n = int(overall["n_conditions"].max())
    arrows = {m: ("↑" if METRICS[m].higher_is_better else "↓") for m in wide.columns}
    wide.columns = [f"{m} {arrows[m]}" for m in wide.columns]
    groups = metrics.loc[(metrics["subgroup"] != "all") & (metrics["metric"] == "pearson_delta")]
    by_group = groups.pivot(index="model", columns="subgroup", values="value")
    counts = groups.groupby("subgroup")["n_conditions"].max()
    by_group.columns = [f"{c} (n={counts[c]})" for c in by_group.columns]
    best = history.loc[history["val_mse"].idxmin()]
    return "\n\n".join([
        "# GRAPE run summary",
        f"Test conditions: {n} (held out from training and model selection). "
        "Metrics are computed per condition on mean expression and averaged (GEARS).",
        _table(wide.reset_index(), digits),
        "## pearson_delta by test subgroup",
        _table(by_group.reset_index(), digits),
        f"Training: best validation MSE {best['val_mse']:.{digits}g} at epoch {int(best['epoch'])} "
        f"of {int(history['epoch'].max())}.",
    ]) + "\n"


def run(*, options: Options, metrics: Path, history: Path, out: Path) -> None:
    """Write the summary and log it."""
    text = summarize(pd.read_csv(metrics, sep="\t"), pd.read_csv(history, sep="\t"), digits=options.digits)
    write_text_atomic(out, text)
    log.info("summary:\n%s", text)
