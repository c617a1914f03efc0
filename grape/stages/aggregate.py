"""The aggregate stage: results over repeated splits, the mean per model and the model minus each baseline.

Reads the ``per_condition.tsv`` of each split's evaluation (``.../splits/seed<k>/evaluate/``), names
each split by the directory above ``evaluate/`` (``seed<k>``) in a new ``split`` column, and writes
the tables of :func:`grape.evaluation.aggregate.aggregate`: ``summary.tsv`` (mean over splits per
model, subgroup and metric), ``comparison.tsv`` (every model against every baseline, paired
bootstrap), ``headline.tsv`` (each model minus its best baseline), ``ablations.tsv`` (each ablation
variant minus the full model, the same columns; header only without variants) and ``headline.md``
(the headline as a table).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from grape.evaluation.aggregate import Options, aggregate, headline_markdown
from grape.io.files import atomic_path, write_text_atomic
from grape.stages import PathArg

__all__ = ["FILES", "Options", "run", "split_label"]

log = logging.getLogger(__name__)

FILES = {
    "per_condition": PathArg("per_condition.tsv of each split's evaluation (.../seed<k>/evaluate/per_condition.tsv)",
                             many=True),
    "out_dir": PathArg("output directory: summary.tsv, comparison.tsv, headline.tsv, ablations.tsv, headline.md"),
}

TABLES = ("summary", "comparison", "headline", "ablations")


def split_label(path: Path) -> str:
    """The split a per-condition table belongs to: the directory above ``evaluate/`` (``seed<k>``),
    else the table's own directory."""
    path = Path(path)
    return path.parent.parent.name if path.parent.name == "evaluate" else path.parent.name


def read_splits(paths: list[Path]) -> pd.DataFrame:
    """The per-condition tables of the splits, one after another, each with its ``split`` column."""
    labels = [split_label(p) for p in paths]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"two per-condition tables name the same split {', '.join(repeated)} (the split is the "
                         f"directory above evaluate/): {', '.join(map(str, paths))}")
    frames = []
    for path, label in zip(paths, labels):
        frame = pd.read_csv(path, sep="\t")
        if "split" in frame.columns:
            raise ValueError(f"{path} already has a split column")
        frames.append(frame.assign(split=label))
    return pd.concat(frames, ignore_index=True)


def run(*, options: Options, per_condition: list[Path], out_dir: Path) -> None:
    """Aggregate the splits' per-condition tables and write the tables and headline.md."""
    paths = [Path(per_condition)] if isinstance(per_condition, (str, Path)) else [Path(p) for p in per_condition]
    table = read_splits(paths)
    log.info("%d splits (%s), %d rows", table["split"].nunique(), ", ".join(pd.unique(table["split"])), len(table))
    tables = aggregate(table, options=options)
    out_dir = Path(out_dir)
    for name in TABLES:
        with atomic_path(out_dir / f"{name}.tsv") as tmp:
            tables[name].to_csv(tmp, sep="\t", index=False)
    text = headline_markdown(tables["headline"])
    write_text_atomic(out_dir / "headline.md", text)
    log.info("headline:\n%s", text)
