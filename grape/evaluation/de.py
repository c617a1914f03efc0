"""Differentially expressed genes per condition, in the form GEARS' metrics read.

GEARS ranks, for every perturbation condition, all genes by a Welch t-test of the
condition's cells against the control cells of the same cell type (scanpy's
``rank_genes_groups`` with ``method='t-test'`` and ``rankby_abs=True``), then keeps
the top genes among those that are not drop-outs. :func:`add_de_rankings` computes
the same entries without scanpy, vectorised over genes:

``uns['rank_genes_groups_cov_all'][key]``
    all ``var_names`` ranked by ``|t|``, largest first;
``uns['top_non_dropout_de_20'][key]`` / ``uns['top_non_zero_de_20'][key]``
    the first ``n_top`` ranked genes among the non-drop-out / non-zero genes;
``uns['non_dropout_gene_idx'][key]`` / ``uns['non_zeros_gene_idx'][key]``
    sorted integer indices of those gene sets,

where ``key`` is :func:`de_key` of the cell type and the condition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import anndata as ad
import numpy as np
import scipy.sparse as sp

from grape.data.dataset import DatasetOptions

log = logging.getLogger(__name__)

RANK_KEY = "rank_genes_groups_cov_all"
TOP_NON_DROPOUT_KEY = "top_non_dropout_de_20"
TOP_NON_ZERO_KEY = "top_non_zero_de_20"
NON_DROPOUT_IDX_KEY = "non_dropout_gene_idx"
NON_ZERO_IDX_KEY = "non_zeros_gene_idx"
UNS_KEYS: tuple[str, ...] = (
    RANK_KEY,
    TOP_NON_DROPOUT_KEY,
    TOP_NON_ZERO_KEY,
    NON_DROPOUT_IDX_KEY,
    NON_ZERO_IDX_KEY,
)


def de_key(cell_type: str, condition: str, *, dose: str = "1+1") -> str:
    """GEARS' ``condition_name`` of a condition: ``f"{cell_type}_{condition}_{dose}"``.

    GEARS writes dose ``1+1`` for perturbations (the key of the DE entries) and
    ``1`` for control cells.
    """
    return f"{cell_type}_{condition}_{dose}"


def _rows(x: np.ndarray | sp.spmatrix | sp.sparray, index: np.ndarray) -> np.ndarray:
    """Dense float64 copy of the rows ``index`` of ``x``."""
    block = x[index]
    if sp.issparse(block):
        block = block.toarray()
    return np.asarray(block, dtype=np.float64)


def _mean_var(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and unbiased variance (NaN variance for fewer than 2 cells)."""
    n = block.shape[0]
    mean = block.mean(axis=0) if n else np.full(block.shape[1], np.nan)
    if n < 2:
        return mean, np.full(block.shape[1], np.nan)
    centred = block - mean
    var = np.einsum("ij,ij->j", centred, centred) / (n - 1)
    return mean, var


def welch_t(
    mean_a: np.ndarray, var_a: np.ndarray, n_a: int, mean_b: np.ndarray, var_b: np.ndarray, n_b: int
) -> np.ndarray:
    """Welch's t statistic of group ``a`` against group ``b``, per gene.

    Like scanpy, a NaN statistic (e.g. a gene constant at the same value in both
    groups: 0/0) becomes 0, so it ranks last and never produces a NaN rank.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mean_a - mean_b) / np.sqrt(var_a / n_a + var_b / n_b)
    t[np.isnan(t)] = 0.0
    return t


def rank_by_abs(t: np.ndarray) -> np.ndarray:
    """Gene indices ordered by ``|t|`` descending (ties keep the gene order)."""
    return np.argsort(-np.abs(t), kind="stable")


def _top_in(ranked: np.ndarray, allowed: np.ndarray, n_top: int) -> np.ndarray:
    """The first ``n_top`` entries of ``ranked`` whose gene index is in ``allowed``."""
    return ranked[np.isin(ranked, allowed)][:n_top]


def gears_gene_sets(
    condition_mean: np.ndarray, control_mean: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """GEARS' ``(non_zero, non_dropout)`` gene indices of one condition, sorted.

    ``non_zero``: genes with a non-zero mean over the condition's cells;
    ``non_dropout``: ``non_zero`` plus the genes zero in both the condition and
    the control mean ("true zeros").
    """
    non_zero = np.flatnonzero(condition_mean != 0)
    true_zeros = np.flatnonzero((condition_mean == 0) & (control_mean == 0))
    non_dropout = np.sort(np.concatenate([non_zero, true_zeros]))
    return non_zero.astype(np.int64), non_dropout.astype(np.int64)


def _groups(values: Iterable[str]) -> dict[str, np.ndarray]:
    """Row indices of each distinct value, in order of first appearance."""
    arr = np.asarray(list(values), dtype=object)
    out: dict[str, np.ndarray] = {}
    for value in dict.fromkeys(arr.tolist()):
        out[str(value)] = np.flatnonzero(arr == value)
    return out


def add_de_rankings(adata: ad.AnnData, *, options: DatasetOptions, n_top: int = 20) -> None:
    """Add GEARS' DE-gene rankings of every condition to ``adata.uns`` (in place).

    For each cell type (``obs[options.cell_type_key]``; one implicit cell type when
    the column is absent) and each non-control condition of it, genes are ranked by
    ``|t|`` of a Welch t-test of the condition's cells against that cell type's
    control cells on ``adata.X`` (log-normalised). The five dictionaries named in
    :data:`UNS_KEYS` map :func:`de_key` to numpy arrays of ``var_names`` (str) or
    sorted gene indices (int64), which anndata writes to h5ad as they are.

    Raises ``ValueError`` when a cell type with perturbed cells has no control
    cells, when the condition column is missing, or when ``n_top`` < 1.
    """
    if n_top < 1:
        raise ValueError(f"n_top must be >= 1, got {n_top}")
    if options.condition_key not in adata.obs.columns:
        raise ValueError(f"obs has no condition column {options.condition_key!r}")
    conditions = adata.obs[options.condition_key].astype(str).to_numpy()
    if options.cell_type_key in adata.obs.columns:
        cell_types = adata.obs[options.cell_type_key].astype(str).to_numpy()
    else:
        cell_types = np.full(adata.n_obs, "cell", dtype=object)
    x = adata.X
    if not sp.issparse(x):
        x = np.asarray(x)
    elif not isinstance(x, (sp.csr_matrix, sp.csr_array)):
        x = sp.csr_matrix(x)
    genes = adata.var_names.astype(str).to_numpy()

    result: dict[str, dict[str, np.ndarray]] = {key: {} for key in UNS_KEYS}
    for cell_type, ct_rows in _groups(cell_types).items():
        by_condition = _groups(conditions[ct_rows])
        perturbed = [c for c in by_condition if c != options.control]
        if not perturbed:
            continue
        if options.control not in by_condition:
            raise ValueError(
                f"cell type {cell_type!r} has no control cells labelled {options.control!r} "
                f"in obs[{options.condition_key!r}]"
            )
        ctrl_rows = ct_rows[by_condition[options.control]]
        ctrl_mean, ctrl_var = _mean_var(_rows(x, ctrl_rows))
        for condition in perturbed:
            rows = ct_rows[by_condition[condition]]
            mean, var = _mean_var(_rows(x, rows))
            t = welch_t(mean, var, len(rows), ctrl_mean, ctrl_var, len(ctrl_rows))
            ranked = rank_by_abs(t)
            non_zero, non_dropout = gears_gene_sets(mean, ctrl_mean)
            key = de_key(cell_type, condition)
            result[RANK_KEY][key] = genes[ranked].astype(str)
            result[TOP_NON_DROPOUT_KEY][key] = genes[_top_in(ranked, non_dropout, n_top)].astype(str)
            result[TOP_NON_ZERO_KEY][key] = genes[_top_in(ranked, non_zero, n_top)].astype(str)
            result[NON_DROPOUT_IDX_KEY][key] = non_dropout
            result[NON_ZERO_IDX_KEY][key] = non_zero
    for key, value in result.items():
        adata.uns[key] = value
    log.info("DE rankings of %d conditions added to uns", len(result[RANK_KEY]))
