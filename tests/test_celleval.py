"""Tests of grape.evaluation.celleval: test predictions in the format of Arc's `cell-eval run`.

The layout is checked always; `cell-eval run` itself is run on the files when it is
available: an executable named by $GRAPE_CELL_EVAL, `cell-eval` on PATH, or the
`cell_eval` package importable here (else the test is skipped, saying how to get it).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from grape.evaluation.celleval import (
    CELLTYPE_COL,
    EXECUTABLE_ENV,
    CellEvalFormatError,
    cell_eval_command,
    cell_eval_pair,
    find_cell_eval,
    table_predictions,
    write_cell_eval,
)
from grape.data.dataset import DatasetOptions

OPTIONS = DatasetOptions()
TEST = ["G1+ctrl", "G1+G2"]
TRAIN = ["G2+ctrl", "G3+ctrl"]
CELLS = {"ctrl": 12, "G1+ctrl": 6, "G2+ctrl": 5, "G3+ctrl": 4, "G1+G2": 7}


def tiny(seed: int = 0, *, sparse: bool = True, contexts: tuple[str, ...] = ()) -> ad.AnnData:
    """Log-normalised cells: each condition shifts its own genes; genes G1..G3 and background B1..B9."""
    rng = np.random.default_rng(seed)
    genes = ["G1", "G2", "G3", *[f"B{i}" for i in range(1, 10)]]
    labels = [c for c, n in CELLS.items() for _ in range(n)]
    counts = rng.poisson(5.0, size=(len(labels), len(genes))).astype(np.float64)
    for row, cond in enumerate(labels):
        for g in cond.split("+"):
            if g != "ctrl":
                counts[row, genes.index(g)] = rng.poisson(0.5)
                counts[row, 3 + genes.index(g)] += rng.poisson(15.0)  # a downstream gene
    x = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4).astype(np.float32)
    obs = pd.DataFrame({"condition": labels, "cell_type": "k562"}, index=[f"cell{i}" for i in range(len(labels))])
    if contexts:
        obs["cell_type"] = [contexts[i % len(contexts)] for i in range(len(labels))]
    return ad.AnnData(X=sp.csr_matrix(x) if sparse else x, obs=obs, var=pd.DataFrame(index=genes))


def means_of(adata: ad.AnnData, keys: list[str] | None = None) -> pd.DataFrame:
    """Observed mean per condition (or per (context, condition) with keys=[context, condition])."""
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    frame = pd.DataFrame(x.astype(np.float64), columns=adata.var_names, index=adata.obs_names)
    return frame.groupby([adata.obs[k] for k in (keys or ["condition"])]).mean()


def predicted_means(adata: ad.AnnData, shift: float = 0.3) -> pd.DataFrame:
    """A model's means: the observed ones of every condition, shifted; some values below zero."""
    pred = means_of(adata) - shift
    pred.loc["G1+ctrl", "G1"] = -0.8
    return pred


def test_layout_of_pred_and_real(tmp_path: Path) -> None:
    adata = tiny()
    pred_means = predicted_means(adata)
    write_cell_eval(adata, pred_means, conditions=TEST, options=OPTIONS, model="grape",
                    out_pred=tmp_path / "pred.h5ad", out_real=tmp_path / "real.h5ad")
    pred, real = ad.read_h5ad(tmp_path / "pred.h5ad"), ad.read_h5ad(tmp_path / "real.h5ad")
    # same rows and genes in the same order; controls relabelled to cell-eval's default
    assert pred.obs_names.tolist() == real.obs_names.tolist()
    assert pred.var_names.tolist() == real.var_names.tolist() == adata.var_names.tolist()
    assert real.obs["target_gene"].value_counts().to_dict() == {"non-targeting": 12, "G1+G2": 7, "G1+ctrl": 6}
    assert (pred.obs["target_gene"] == real.obs["target_gene"]).all()
    assert pred.uns["cell_eval"]["pert_col"] == "target_gene"
    assert pred.uns["cell_eval"]["control_pert"] == "non-targeting"
    assert pred.uns["cell_eval"]["model"] == "grape"
    # real: the dataset's own cells, X unchanged
    source = adata[real.obs_names]
    np.testing.assert_array_equal(real.X.toarray(), source.X.toarray())
    # pred: controls are the real control cells; each test cell row holds the predicted mean, clipped at 0
    pred_x = pred.X.toarray() if sp.issparse(pred.X) else np.asarray(pred.X)
    controls = (real.obs["target_gene"] == "non-targeting").to_numpy()
    np.testing.assert_array_equal(pred_x[controls], real.X.toarray()[controls])
    for cond in TEST:
        rows = pred_x[(pred.obs["target_gene"] == cond).to_numpy()]
        expected = np.clip(pred_means.loc[cond].to_numpy(), 0, None).astype(np.float32)
        np.testing.assert_array_equal(rows, np.tile(expected, (len(rows), 1)))
    assert pred_x.min() >= 0 and pred_x[(pred.obs["target_gene"] == "G1+ctrl").to_numpy(), 0].max() == 0


def test_genes_follow_the_prediction_columns() -> None:
    adata = tiny(sparse=False)
    kept = ["B3", "G1", "B1"]  # e.g. guide features left out of the predictions: left out of both files
    pred, real = cell_eval_pair(adata, predicted_means(adata)[kept], conditions=TEST, options=OPTIONS)
    assert pred.var_names.tolist() == real.var_names.tolist() == kept
    np.testing.assert_array_equal(real.X, adata[real.obs_names, kept].X)


def test_contexts_get_their_own_means_and_a_celltype_column() -> None:
    adata = tiny(contexts=("rest", "stim"))
    adata.obs.loc[adata.obs_names[:2], "cell_type"] = "idle"  # a context with control cells only
    pred_means = means_of(adata, ["cell_type", "condition"])
    pred, real = cell_eval_pair(adata, pred_means, conditions=TEST, options=OPTIONS, context_key="cell_type")
    assert set(real.obs[CELLTYPE_COL]) == {"rest", "stim"}  # nothing to score in 'idle': left out
    assert real.n_obs == 12 - 2 + 6 + 7
    pred_x = pred.X.toarray()
    for (context, cond), row in pred_means.loc[[(c, t) for c in ("rest", "stim") for t in TEST]].iterrows():
        mask = ((pred.obs[CELLTYPE_COL] == context) & (pred.obs["target_gene"] == cond)).to_numpy()
        assert mask.sum() > 0
        np.testing.assert_allclose(pred_x[mask], np.tile(row.to_numpy(np.float32), (mask.sum(), 1)))


def evaluate_table(pred: pd.DataFrame, contexts: list[str]) -> ad.AnnData:
    """A table laid out as evaluate's test_predictions.h5ad: obs condition/context, layers per model."""
    conds = [c for c in TEST for _ in contexts]
    ctxs = [k for _ in TEST for k in contexts]
    names = conds if len(contexts) == 1 else [f"{c} | {k}" for c, k in zip(conds, ctxs)]
    rows = pred.loc[conds] if len(contexts) == 1 else pred.loc[list(zip(ctxs, conds))]
    obs = pd.DataFrame({"subgroup": "unseen_single", "condition": conds, "context": ctxs}, index=names)
    return ad.AnnData(X=rows.to_numpy(np.float32), obs=obs, var=pd.DataFrame(index=pred.columns),
                      layers={"grape": rows.to_numpy(np.float32) + 1, "mean": np.full(rows.shape, np.nan, np.float32)})


def test_predictions_read_from_evaluates_table() -> None:
    adata = tiny()
    one = table_predictions(evaluate_table(means_of(adata), ["k562"]), model="grape")
    assert one.index.tolist() == TEST
    np.testing.assert_allclose(one.to_numpy(), means_of(adata).loc[TEST].to_numpy() + 1, rtol=1e-6)
    two = means_of(tiny(contexts=("rest", "stim")), ["cell_type", "condition"])
    several = table_predictions(evaluate_table(two, ["rest", "stim"]), model="grape")
    assert several.index.tolist() == [(k, c) for c in TEST for k in ("rest", "stim")]
    with pytest.raises(CellEvalFormatError, match="no layer 'grape_no_gsl'"):
        table_predictions(evaluate_table(means_of(adata), ["k562"]), model="grape_no_gsl")
    with pytest.raises(CellEvalFormatError, match="model 'mean' has no prediction \\(NaN\\) for G1\\+ctrl"):
        table_predictions(evaluate_table(means_of(adata), ["k562"]), model="mean")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"predicted": "drop G1+G2"}, "no prediction for test condition.*G1\\+G2"),
        ({"options": DatasetOptions(level="pseudobulk", relative=True)}, "dataset.relative"),
        ({"scale": 100.0}, "log-normalised expression in \\[0, 15\\)"),
        ({"control_pert": "G1+ctrl"}, "equals cell-eval's control label"),
        ({"conditions": ["G1+ctrl", "G9+ctrl"]}, "not in obs\\['condition'\\]: G9\\+ctrl"),
        ({"conditions": ["ctrl"]}, "control 'ctrl' is listed"),
        ({"gene": "NOPE"}, "absent from the dataset's var_names: NOPE"),
    ],
)
def test_what_does_not_fit_is_named(change: dict, message: str) -> None:
    adata = tiny()
    if "scale" in change:
        adata.X = adata.X * change["scale"]
    pred_means = predicted_means(adata)
    if change.get("predicted") == "drop G1+G2":
        pred_means = pred_means.drop(index="G1+G2")
    if "gene" in change:
        pred_means[change["gene"]] = 1.0
    with pytest.raises(CellEvalFormatError, match=message):
        cell_eval_pair(adata, pred_means, conditions=change.get("conditions", TEST),
                       options=change.get("options", OPTIONS), control_pert=change.get("control_pert", "non-targeting"))


def test_a_wrong_executable_path_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(EXECUTABLE_ENV, str(tmp_path / "bin" / "cell-eval"))
    with pytest.raises(FileNotFoundError, match=f"\\${EXECUTABLE_ENV} is .*bin/cell-eval.*no executable file"):
        find_cell_eval()


def _cell_eval() -> list[str]:
    exe = find_cell_eval()
    if exe:
        return [exe]
    if importlib.util.find_spec("cell_eval") is not None:
        return [sys.executable, "-m", "cell_eval"]
    pytest.skip(f"cell-eval is not installed: set {EXECUTABLE_ENV} to a cell-eval executable (python -m venv "
                "/tmp/cell-eval && /tmp/cell-eval/bin/pip install cell-eval==0.8.2), or put cell-eval on PATH")


@pytest.mark.parametrize("contexts", [(), ("rest", "stim")], ids=["one_context", "two_contexts"])
def test_cell_eval_run_accepts_the_files_and_scores_a_perfect_model(tmp_path: Path, contexts: tuple[str, ...]) -> None:
    exe = _cell_eval()
    adata = tiny(contexts=contexts)
    context_key = "cell_type" if contexts else None
    truth = means_of(adata, ["cell_type", "condition"] if contexts else None)  # predicts the observed means exactly
    write_cell_eval(adata, truth, conditions=TEST, options=OPTIONS, out_pred=tmp_path / "pred.h5ad",
                    out_real=tmp_path / "real.h5ad", context_key=context_key)
    cmd = cell_eval_command(pred=tmp_path / "pred.h5ad", real=tmp_path / "real.h5ad", outdir=tmp_path / "out",
                            executable="cell-eval", celltype_col=CELLTYPE_COL if contexts else None)
    result = subprocess.run([*exe, *cmd[1:]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    prefixes = [f"{k}_" for k in contexts] or [""]
    for prefix in prefixes:  # cell-eval writes <celltype>_results.csv per context
        per_pert = pd.read_csv(tmp_path / "out" / f"{prefix}results.csv")
        assert sorted(per_pert["perturbation"]) == sorted(TEST)
        # cell-eval's own pseudobulk of the pred file is the predicted mean: exact for this model
        np.testing.assert_allclose(per_pert["pearson_delta"], 1.0, atol=1e-5)
        np.testing.assert_allclose(per_pert["mse"], 0.0, atol=1e-10)
        assert (tmp_path / "out" / f"{prefix}agg_results.csv").stat().st_size > 0
