"""Test predictions in the input format of Arc Institute's cell-eval (``cell-eval run``).

``cell-eval run --adata-pred P --adata-real R`` compares two AnnData files: both have the
same ``var_names`` in the same order, a perturbation column in ``obs`` (``--pert-col``,
cell-eval's default ``target_gene``), the same set of perturbations, and control rows
(``--control-pert``, default ``non-targeting``) in both; ``X`` is log-normalised
expression (non-negative, below 15) or raw counts. cell-eval computes the pseudobulk of
each perturbation itself and tests differential expression (pdex, Wilcoxon) of each
perturbation against the control rows of the same file.

GRAPE predicts one mean expression per condition, not cells. The files written here:

- real (``out_real``): the observed cells of the test conditions and every control cell,
  ``X`` as the stages read it (:func:`grape.data.dataset.read_dataset`: normalised, log1p).
- pred (``out_pred``): the same rows in the same order; every row of a test condition holds
  the model's predicted mean of that condition, and the control rows are the observed
  control cells (the model predicts changes from that control, not the control).

This is the layout of cell-eval's own mean baseline (``cell-eval baseline``: each
perturbation's mean repeated once per cell, then the real control cells). cell-eval's
pseudobulk metrics (``pearson_delta``, ``mse``, discrimination) then see exactly the
model's mean (the mean of identical rows), and its DE tests get as many rows per condition
as the real file. The predicted rows have no spread from cell to cell, so the DE tests of
the pred file call most genes significant: a perfect mean on Papalexi 2021 (six knockouts of
~600 cells, 1,923 control cells, 299 genes) gets 280-292 significant genes per knockout against 0-15 in
the real cells. Read cell-eval's DE-count metrics (``de_nsig_counts_pred``,
``precision_at_N``, ``de_sig_genes_recall``) as those of a mean-only prediction, like
cell-eval's own baseline. Predicted values below zero (impossible on the log1p scale;
cell-eval refuses them) are set to zero and counted in the log.

Conditions keep the dataset's own labels; the control label becomes ``control_pert`` so
that ``cell-eval run`` works with its defaults. Contexts (cell states): with
``context_key`` the predictions are indexed by (context, condition) and the files carry
the context in ``obs['celltype']`` for ``--celltype-col celltype``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from grape.io.files import atomic_path
from grape.data.dataset import DatasetOptions

log = logging.getLogger(__name__)

PERT_COL = "target_gene"  # cell-eval run's default --pert-col
CONTROL_PERT = "non-targeting"  # cell-eval run's default --control-pert
CELLTYPE_COL = "celltype"  # cell-eval's name of the cell-type column (--celltype-col)
EXECUTABLE_ENV = "GRAPE_CELL_EVAL"  # path of a cell-eval executable, e.g. in its own virtual environment
MAX_LOG1P = 15.0  # cell-eval refuses log-normalised values at or above this


class CellEvalFormatError(ValueError):
    """The dataset or the predictions cannot be written in cell-eval's format."""


def _condition_keys(obs: pd.DataFrame, *, options: DatasetOptions, context_key: str | None) -> pd.Series:
    """Each row's condition, or (context, condition) tuple when ``context_key`` is given."""
    conditions = obs[options.condition_key].astype(str)
    if context_key is None:
        return conditions
    if context_key not in obs.columns:
        raise CellEvalFormatError(f"dataset obs has no context column {context_key!r} (dataset.context_key)")
    contexts = obs[context_key].astype(str)
    return pd.Series(list(zip(contexts, conditions)), index=obs.index)


def cell_eval_pair(
    adata: ad.AnnData,
    predicted: pd.DataFrame,
    *,
    conditions: Sequence[str],
    options: DatasetOptions,
    model: str = "grape",
    pert_col: str = PERT_COL,
    control_pert: str = CONTROL_PERT,
    context_key: str | None = None,
) -> tuple[ad.AnnData, ad.AnnData]:
    """The (pred, real) AnnData pair of the test ``conditions`` for ``cell-eval run``.

    ``adata`` is the dataset as the stages read it (normalised, log1p); ``predicted`` holds
    the model's mean expression, one row per condition (or per (context, condition) tuple
    when ``context_key`` names the obs column of the contexts), one column per gene; its
    columns choose the genes of both files (features left out of the predictions, such as
    guide counts, are left out of both). Raise :class:`CellEvalFormatError` naming the
    condition, gene, column or option that does not fit.
    """
    if options.relative:
        raise CellEvalFormatError(
            "dataset.relative: X holds changes from control, but cell-eval compares expression "
            "(log-normalised, non-negative) of perturbed and control cells"
        )
    if options.level != "cells":
        log.warning("dataset.level is %s: cell-eval gets one row per condition and its DE tests have n = 1",
                    options.level)
    conditions = [str(c) for c in conditions]
    if not conditions:
        raise CellEvalFormatError("no test condition to write for cell-eval")
    if options.control in conditions:
        raise CellEvalFormatError(f"the control {options.control!r} is listed among the test conditions")
    if control_pert in conditions:
        raise CellEvalFormatError(
            f"test condition {control_pert!r} equals cell-eval's control label; choose another control_pert"
        )
    genes = [str(g) for g in predicted.columns]
    var_index = pd.Index(adata.var_names.astype(str))
    missing_genes = [g for g in genes if g not in var_index]
    if missing_genes:
        raise CellEvalFormatError(
            f"predictions of model {model!r} name genes absent from the dataset's var_names: "
            f"{', '.join(missing_genes[:5])}"
        )
    keys = _condition_keys(adata.obs, options=options, context_key=context_key)
    condition_of = adata.obs[options.condition_key].astype(str).to_numpy()
    is_control = condition_of == options.control
    is_test = np.isin(condition_of, conditions)
    absent = sorted(set(conditions) - set(condition_of))
    if absent:
        raise CellEvalFormatError(f"test condition(s) not in obs[{options.condition_key!r}]: {', '.join(absent[:5])}")
    test_keys = keys.iloc[np.flatnonzero(is_test)].unique().tolist()
    no_prediction = [k for k in test_keys if k not in predicted.index]
    if no_prediction:
        raise CellEvalFormatError(
            f"model {model!r} has no prediction for test condition(s) {', '.join(map(str, no_prediction[:5]))}"
        )
    if context_key is not None:
        test_contexts = {k[0] for k in test_keys}
        control_contexts = set(adata.obs[context_key].astype(str).to_numpy()[is_control])
        lacking = sorted(test_contexts - control_contexts)
        if lacking:
            raise CellEvalFormatError(f"context(s) without control cells in obs[{context_key!r}]: {', '.join(lacking)}")
        # cell-eval scores each context on its own: a context without test rows has nothing to score
        is_control &= np.isin(adata.obs[context_key].astype(str).to_numpy(), sorted(test_contexts))

    rows = np.flatnonzero(is_control | is_test)
    columns = var_index.get_indexer(genes)
    real_x = adata.X[rows][:, columns]
    real_x = real_x.astype(np.float32) if sp.issparse(real_x) else np.asarray(real_x, dtype=np.float32)
    low = real_x.min() if real_x.size else 0.0
    high = real_x.max() if real_x.size else 0.0
    if low < 0 or high >= MAX_LOG1P:
        raise CellEvalFormatError(
            f"dataset X ranges over [{float(low):.3g}, {float(high):.3g}]; cell-eval needs log-normalised "
            f"expression in [0, {MAX_LOG1P:g}) (set dataset.normalize: auto for raw counts)"
        )

    means = predicted.loc[test_keys, genes].to_numpy(dtype=np.float64)
    negative = int((means < 0).sum())
    if negative:
        log.info("%s: %d predicted values below zero set to zero for cell-eval (log1p scale)", model, negative)
    means = np.clip(means, 0.0, None).astype(np.float32)
    row_keys = keys.iloc[rows].tolist()
    position = {k: i for i, k in enumerate(test_keys)}
    test_rows = np.flatnonzero(is_test[rows])
    pred_x = real_x.toarray() if sp.issparse(real_x) else real_x.copy()
    pred_x[test_rows] = means[[position[row_keys[i]] for i in test_rows]]
    if sp.issparse(real_x):
        pred_x = sp.csr_matrix(pred_x)

    obs = pd.DataFrame(index=pd.Index(adata.obs_names.astype(str)[rows], name=None))
    obs[pert_col] = pd.Categorical(np.where(is_control[rows], control_pert, condition_of[rows]))
    if context_key is not None:
        obs[CELLTYPE_COL] = pd.Categorical(adata.obs[context_key].astype(str).to_numpy()[rows])
    var = pd.DataFrame(index=pd.Index(genes))
    uns = {"cell_eval": {"pert_col": pert_col, "control_pert": control_pert, "model": model,
                         "celltype_col": CELLTYPE_COL if context_key is not None else "",
                         "dataset_control": options.control}}
    real = ad.AnnData(X=real_x, obs=obs.copy(), var=var.copy(), uns={**uns, "role": "real"})
    pred = ad.AnnData(X=pred_x, obs=obs.copy(), var=var.copy(), uns={**uns, "role": "pred"})
    return pred, real


def table_predictions(table: ad.AnnData, *, model: str) -> pd.DataFrame:
    """One model's predicted means from evaluate's ``test_predictions.h5ad`` (``layers[model]``).

    Indexed by condition when the table has one context, by (context, condition) when it has
    several (obs ``condition`` and ``context``); pass ``context_key`` to :func:`cell_eval_pair`
    in the second case.
    """
    if model not in table.layers:
        raise CellEvalFormatError(f"test predictions have no layer {model!r} (models: {', '.join(table.layers)})")
    values = np.asarray(table.layers[model], dtype=np.float64)
    conditions = table.obs["condition"].astype(str) if "condition" in table.obs else table.obs_names.to_series()
    contexts = table.obs["context"].astype(str) if "context" in table.obs else pd.Series("", index=table.obs_names)
    if contexts.nunique() > 1:
        index = pd.MultiIndex.from_arrays([contexts.to_numpy(), conditions.to_numpy()], names=["context", "condition"])
    else:
        index = pd.Index(conditions.to_numpy(), name="condition")
    frame = pd.DataFrame(values, index=index, columns=table.var_names.astype(str))
    unpredicted = frame.index[frame.isna().any(axis=1)].tolist()
    if unpredicted:
        raise CellEvalFormatError(f"model {model!r} has no prediction (NaN) for {', '.join(map(str, unpredicted[:5]))}")
    return frame


def write_cell_eval(
    adata: ad.AnnData,
    predicted: pd.DataFrame,
    *,
    conditions: Sequence[str],
    options: DatasetOptions,
    out_pred: Path,
    out_real: Path,
    model: str = "grape",
    pert_col: str = PERT_COL,
    control_pert: str = CONTROL_PERT,
    context_key: str | None = None,
) -> None:
    """Write the pair of :func:`cell_eval_pair` to ``out_pred`` and ``out_real`` (h5ad, atomically)."""
    pred, real = cell_eval_pair(adata, predicted, conditions=conditions, options=options, model=model,
                                pert_col=pert_col, control_pert=control_pert, context_key=context_key)
    for table, path in ((pred, out_pred), (real, out_real)):
        with atomic_path(Path(path)) as tmp:
            table.write_h5ad(tmp)
    log.info("cell-eval files of %s: %s and %s (%d rows, %d conditions, %d genes; pert column %r, control %r)",
             model, out_pred, out_real, real.n_obs, len(set(conditions)), real.n_vars, pert_col, control_pert)


def find_cell_eval() -> str | None:
    """The cell-eval executable: ``$GRAPE_CELL_EVAL`` when set, else ``cell-eval`` on PATH, else None.

    Raise ``FileNotFoundError`` when ``$GRAPE_CELL_EVAL`` names no executable file.
    """
    named = os.environ.get(EXECUTABLE_ENV)
    if named:
        if not (Path(named).is_file() and os.access(named, os.X_OK)):
            raise FileNotFoundError(f"${EXECUTABLE_ENV} is {named!r}, which is no executable file; point it at "
                                    "the cell-eval of its virtual environment (<venv>/bin/cell-eval) or unset it")
        return named
    return shutil.which("cell-eval")


def cell_eval_command(
    *,
    pred: Path,
    real: Path,
    outdir: Path,
    executable: str = "cell-eval",
    pert_col: str = PERT_COL,
    control_pert: str = CONTROL_PERT,
    celltype_col: str | None = None,
    profile: str = "full",
    threads: int = 1,
) -> list[str]:
    """The ``cell-eval run`` command line that scores the files written by :func:`write_cell_eval`."""
    cmd = [executable, "run", "--adata-pred", str(pred), "--adata-real", str(real), "--outdir", str(outdir),
           "--pert-col", pert_col, "--control-pert", control_pert, "--profile", profile,
           "--num-threads", str(threads)]
    if celltype_col:
        cmd += ["--celltype-col", celltype_col]
    return cmd
