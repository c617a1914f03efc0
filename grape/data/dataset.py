"""The dataset contract: an AnnData in GEARS' form, read and checked.

``obs[condition_key]`` holds ``ctrl`` (the control label), ``A+ctrl`` for a single
perturbation and ``A+B`` for a double (the separator is configurable);
``var['gene_name']`` holds gene symbols (``var_names`` may be Ensembl ids).

Two input levels (``dataset.level``): ``cells`` (one row per cell, GEARS' h5ad) and
``pseudobulk`` (one row per condition, already averaged). With ``dataset.relative``
a pseudobulk ``X`` holds each condition's change from the control (so it may be
negative) and the control row may be absent: it is then taken as zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from grape.options import options_class

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """The dataset breaks the contract; the message names the file and the field."""


@dataclass(frozen=True)
class DatasetOptions(options_class("dataset")):
    """How to read conditions out of the dataset (config section ``dataset``; its keys that choose
    the input file, :data:`grape.config.WORKFLOW_KEYS`, are the workflow's)."""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"dataset.level must be one of {', '.join(LEVELS)}, not {self.level!r}")
        if self.relative and self.level != "pseudobulk":
            raise ValueError("dataset.relative requires dataset.level: pseudobulk")
        if self.normalize not in NORMALIZE:
            raise ValueError(f"dataset.normalize must be one of {', '.join(NORMALIZE)}, not {self.normalize!r}")


LEVELS = ("cells", "pseudobulk")
NORMALIZE = ("auto", "none")


def condition_genes(condition: str, *, options: DatasetOptions) -> tuple[str, ...]:
    """Perturbed genes of a condition, sorted, without the control placeholder.

    ``ctrl`` -> ``()``, ``A+ctrl`` -> ``("A",)``, ``B+A`` -> ``("A", "B")``.
    """
    if condition == options.control:
        return ()
    parts = [p for p in condition.split(options.separator) if p and p != options.control]
    return tuple(sorted(parts))


def gene_symbols(adata: ad.AnnData, *, options: DatasetOptions) -> np.ndarray:
    """Gene symbols of ``adata.var`` (``var[gene_name_key]`` or ``var_names``)."""
    if options.gene_name_key in adata.var.columns:
        return adata.var[options.gene_name_key].astype(str).to_numpy()
    return adata.var_names.astype(str).to_numpy()


def read_dataset(path: str | Path, *, options: DatasetOptions) -> ad.AnnData:
    """Read an h5ad, check the contract and apply ``dataset.normalize``; raise :class:`DatasetError`
    naming the problem.

    Raw counts in ``X`` (or a ``counts`` layer) come back normalised to 1e4 per row and
    log1p-transformed (:mod:`grape.data.normalize`), so every stage that reads the dataset sees the
    same ``X``; the decision reads a sample of rows, so the call costs little beyond the read.
    """
    from grape.data.normalize import normalize_dataset  # grape.data.normalize imports this module

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset file not found: {path}")
    adata = ad.read_h5ad(path)
    check_dataset(adata, options=options, source=str(path))
    normalize_dataset(adata, options=options, source=str(path))
    return adata


def check_dataset(adata: ad.AnnData, *, options: DatasetOptions, source: str = "dataset") -> None:
    """Validate the columns, control cells, gene names and values of ``adata``.

    A backed ``adata`` (``read_h5ad(..., backed='r')``) is checked on ``obs`` and ``var`` only.
    With ``dataset.level: pseudobulk`` each (context, condition) must have one row, the context
    being ``obs[context_key or cell_type_key]`` when that column exists.
    """
    if options.condition_key not in adata.obs.columns:
        raise DatasetError(
            f"{source}: obs has no condition column {options.condition_key!r} "
            f"(columns: {', '.join(map(str, adata.obs.columns))}); set dataset.condition_key"
        )
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise DatasetError(f"{source}: empty dataset ({adata.n_obs} rows x {adata.n_vars} genes)")
    conditions = adata.obs[options.condition_key].astype(str)
    if not options.relative and not (conditions == options.control).any():
        raise DatasetError(
            f"{source}: no control cells labelled {options.control!r} in obs[{options.condition_key!r}]; "
            "set dataset.control (or dataset.relative for changes from control)"
        )
    if options.level == "pseudobulk":
        context = context_column(options)
        keys = conditions if context not in adata.obs.columns else (
            adata.obs[context].astype(str) + " / " + conditions)
        repeated = keys[keys.duplicated()].unique()
        if len(repeated):
            raise DatasetError(
                f"{source}: dataset.level is pseudobulk but conditions have several rows: "
                f"{', '.join(map(str, repeated[:10]))} (one row per cell: set dataset.level: cells)"
            )
    symbols = pd.Series(gene_symbols(adata, options=options))
    dup = symbols[symbols.duplicated()].unique()
    if len(dup):
        raise DatasetError(f"{source}: duplicated gene names in var: {', '.join(map(str, dup[:10]))}")
    if adata.isbacked:
        return  # X is not in memory: grape.data.normalize checks a sample of its rows
    x = adata.X
    values = x.data if hasattr(x, "data") and not isinstance(x, np.ndarray) else np.asarray(x)
    finite = np.isfinite(values)
    if not finite.all():
        raise DatasetError(f"{source}: X holds NaN or infinite values ({int((~finite).sum())} entries)")


def perturbed_genes(adata: ad.AnnData, *, options: DatasetOptions) -> list[str]:
    """All genes named by any condition, sorted."""
    genes: set[str] = set()
    for cond in adata.obs[options.condition_key].astype(str).unique():
        genes.update(condition_genes(cond, options=options))
    return sorted(genes)


def pseudobulk(adata: ad.AnnData, *, options: DatasetOptions) -> pd.DataFrame:
    """Mean expression per condition (rows) and gene (columns, ``var_names``).

    For a pseudobulk input the rows are the conditions themselves. With
    ``options.relative`` the values are changes from control and the control row,
    when absent, is added as zeros; so ``means - means.loc[control]`` is always the
    change from control.
    """
    conditions = adata.obs[options.condition_key].astype(str).to_numpy()
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    frame = pd.DataFrame(x, columns=adata.var_names.astype(str))
    means = frame.groupby(conditions, sort=True).mean()
    if options.relative and options.control not in means.index:
        means.loc[options.control] = 0.0
        means = means.sort_index()
    means.index.name = "condition"
    return means


#: Name of the one context of a dataset without a context column.
ONE_CONTEXT = "cell"
#: Context label reserved for pooled rows of the metrics tables.
POOLED = "all"


def context_column(options: DatasetOptions) -> str:
    """The obs column of the cell state: ``dataset.context_key``, else ``dataset.cell_type_key``."""
    return options.context_key or options.cell_type_key


def context_labels(adata: ad.AnnData, *, options: DatasetOptions) -> np.ndarray:
    """Each row's context (cell state), as strings; :data:`ONE_CONTEXT` for every row when the
    dataset has no context column (one context, not an error)."""
    column = context_column(options)
    if column not in adata.obs.columns:
        return np.full(adata.n_obs, ONE_CONTEXT, dtype=object)
    labels = adata.obs[column].astype(str).to_numpy()
    if POOLED in set(labels):
        raise DatasetError(f"obs[{column!r}] uses the context label {POOLED!r}, which the metrics reserve for "
                           "pooled rows; rename that context in the dataset or set dataset.context_key")
    return labels


def context_parts(adata: ad.AnnData, *, options: DatasetOptions) -> dict[str, ad.AnnData]:
    """The rows of each context (sorted; views of ``adata``); one context: ``adata`` itself.

    Raises :class:`DatasetError` naming the context and column when a context has no control
    rows (unless ``dataset.relative``, where an absent control is zero): each context is
    compared with its own control.
    """
    labels = context_labels(adata, options=options)
    names = sorted(set(labels))
    if len(names) == 1:
        return {names[0]: adata}
    out: dict[str, ad.AnnData] = {}
    column = context_column(options)
    for name in names:
        part = adata[labels == name]
        conditions = part.obs[options.condition_key].astype(str)
        if not options.relative and not (conditions == options.control).any():
            raise DatasetError(
                f"context {name!r} of obs[{column!r}] has no control rows labelled {options.control!r}: each "
                "context is compared with its own control; add its control cells or set dataset.context_key")
        out[name] = part
    return out


def pseudobulk_by_context(adata: ad.AnnData, *, options: DatasetOptions) -> dict[str, pd.DataFrame]:
    """:func:`pseudobulk` of each context of :func:`context_parts`, each with that context's control row.

    One context gives exactly :func:`pseudobulk` of the whole dataset.
    """
    return {name: pseudobulk(part, options=options) for name, part in context_parts(adata, options=options).items()}


def row_names(conditions: list[str], contexts: list[str]) -> list[str]:
    """Unique names of (context, condition) rows: the condition itself when every row is in one
    context, else ``"condition | context"``."""
    if len(set(contexts)) <= 1:
        return list(conditions)
    return [f"{cond} | {ctx}" for cond, ctx in zip(conditions, contexts)]
