"""Markdown summary of the metrics and the figures of the Snakemake report.

Reads the evaluation's tables (``metrics.tsv``, ``per_condition.tsv``, ``metrics.json``,
``test_predictions.h5ad``), each variant's ``history.tsv`` and, when the run has them, the
learned networks and their recovery table, and with repeated splits (split.seeds) the aggregate's
``headline.tsv``; writes ``summary.md`` and the plots of
:data:`grape.evaluation.report.PLOTS` (see :mod:`grape.evaluation.report`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import pandas as pd

from grape.evaluation.report import PLOTS, Options, figures, network_degrees, summarize, variant_of
from grape.io.files import write_text_atomic
from grape.stages import PathArg

__all__ = ["FILES", "Options", "run"]

log = logging.getLogger(__name__)

FILES = {
    "metrics": PathArg("metrics.tsv from `grape evaluate`"),
    "per_condition": PathArg("per_condition.tsv from `grape evaluate`"),
    "summary": PathArg("metrics.json from `grape evaluate`"),
    "predictions": PathArg("test_predictions.h5ad from `grape evaluate`"),
    "history": PathArg("history.tsv of each model variant (.../train/<variant>/history.tsv)", many=True),
    "networks": PathArg("learned network.tsv of each variant (.../train/<variant>/network.tsv), when exported",
                        required=False, many=True),
    "recovery": PathArg("network recovery table (precision at k of learned vs prior graph), when measured",
                        required=False),
    "headline": PathArg("headline.tsv from `grape aggregate` (model minus best baseline over the repeated splits "
                        "of split.seeds), when the run has them: the top of summary.md", required=False),
    "out_dir": PathArg("output directory: summary.md and the plots"),
}


def _paths(paths: Path | list[Path] | None) -> list[Path]:
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths or []]


def run(
    *,
    options: Options,
    metrics: Path,
    per_condition: Path,
    summary: Path,
    predictions: Path,
    history: list[Path],
    out_dir: Path,
    networks: list[Path] | None = None,
    recovery: Path | None = None,
    headline: Path | None = None,
) -> None:
    """Write summary.md and the plots; log the summary."""
    from grape.evaluation import plots

    out_dir = Path(out_dir)
    metrics_table = pd.read_csv(metrics, sep="\t")
    per_condition_table = pd.read_csv(per_condition, sep="\t")
    evaluation = json.loads(Path(summary).read_text())
    table = ad.read_h5ad(predictions)
    histories = {variant_of(p): pd.read_csv(p, sep="\t") for p in _paths(history)}
    degrees = None
    network_paths = _paths(networks)
    if network_paths:
        tables = {}
        for path in network_paths:
            frame = pd.read_csv(path, sep="\t")
            plots.network_columns(frame, str(path))  # a clear error naming the file before any plotting
            tables[variant_of(path)] = frame
        degrees = network_degrees(tables)
    recovery_table = pd.read_csv(recovery, sep="\t") if recovery else None
    headline_table = pd.read_csv(headline, sep="\t") if headline else None

    drawn = figures(metrics_table, per_condition_table, table, histories, options=options, degrees=degrees)
    for key, fig in drawn.items():
        plots.save(fig, out_dir / PLOTS[key])
    text = summarize(metrics_table, histories, per_condition=per_condition_table, evaluation=evaluation,
                     degrees=degrees[0] if degrees is not None else None, recovery=recovery_table,
                     headline=headline_table, digits=options.digits)
    write_text_atomic(out_dir / "summary.md", text)
    log.info("summary:\n%s", text)
