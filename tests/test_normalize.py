from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from grape.data.dataset import DatasetError, DatasetOptions, read_dataset
from grape.data.normalize import normalize_counts, normalize_dataset, plan_normalization

CONDITIONS = ["ctrl"] * 4 + ["A+ctrl"] * 3 + ["A+B"] * 3


def scanpy_formula(counts: np.ndarray) -> np.ndarray:
    """scanpy.pp.normalize_total(target_sum=1e4) then scanpy.pp.log1p, written out (rows of 0 stay 0)."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.log1p(np.divide(counts * 1e4, totals, out=np.zeros_like(counts), where=totals > 0))


def counts_matrix(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.gamma(1.0, 3.0, size=8), size=(len(CONDITIONS), 8)).astype(np.float64)
    x[5] = 0.0  # a cell with no counts
    return x


def write(tmp_path, x, *, name="screen.h5ad", conditions=CONDITIONS, layers=None):
    obs = pd.DataFrame({"condition": conditions}, index=[f"c{i}" for i in range(len(conditions))])
    adata = ad.AnnData(X=x, obs=obs,
                       var=pd.DataFrame(index=[f"G{j}" for j in range(x.shape[1])]), layers=layers)
    path = tmp_path / name
    adata.write_h5ad(path)
    return path


@pytest.mark.parametrize("sparse", [False, True])
def test_raw_counts_are_normalised_like_scanpy(tmp_path, sparse, caplog):
    counts = counts_matrix()
    stored = sp.csr_matrix(counts.astype(np.float32)) if sparse else counts.astype(np.float32)
    path = write(tmp_path, stored)
    with caplog.at_level(logging.INFO, logger="grape.data.normalize"):
        adata = read_dataset(path, options=DatasetOptions())
    assert sp.issparse(adata.X) == sparse
    assert adata.X.dtype == np.float32
    x = adata.X.toarray() if sparse else adata.X
    np.testing.assert_allclose(x, scanpy_formula(counts), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(x[5], 0.0)
    if sparse:  # the same stored entries: never densified
        assert adata.X.nnz == stored.nnz
    assert "screen.h5ad: X holds raw counts" in caplog.text
    assert "normalised each row to 10000 in total and log1p-transformed" in caplog.text
    assert adata.uns["grape_normalize"]["action"] == "normalize"


def test_normalising_twice_changes_nothing(tmp_path):
    adata = read_dataset(write(tmp_path, counts_matrix()), options=DatasetOptions())
    first = np.array(adata.X, copy=True)
    plan = normalize_dataset(adata, options=DatasetOptions(), source="again")
    assert plan.action == "normalize"  # what was done when read
    np.testing.assert_array_equal(adata.X, first)


def test_log_data_is_untouched(tmp_path):
    logx = scanpy_formula(counts_matrix())  # float64, as perturbench's file
    adata = read_dataset(write(tmp_path, logx), options=DatasetOptions())
    assert adata.X.dtype == np.float64
    np.testing.assert_array_equal(adata.X, logx)
    assert adata.uns["grape_normalize"]["action"] == "none"


def test_pseudobulk_on_absolute_log_scale_is_untouched(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(0.0, 5.4, size=(3, 6)).astype(np.float32)
    path = write(tmp_path, x, conditions=["ctrl", "A+ctrl", "A+B"])
    adata = read_dataset(path, options=DatasetOptions(level="pseudobulk"))
    np.testing.assert_array_equal(adata.X, x)


def test_relative_changes_may_be_negative(tmp_path):
    x = np.array([[-1.5, 0.25, 0.0], [2.0, -0.75, 0.5]], dtype=np.float32)
    path = write(tmp_path, x, conditions=["A+ctrl", "A+B"])
    adata = read_dataset(path, options=DatasetOptions(level="pseudobulk", relative=True))
    np.testing.assert_array_equal(adata.X, x)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda c: (c - c.mean(axis=0)) / (c.std(axis=0) + 1), r"negative values \(min -.*dataset\.relative is false"),
        (lambda c: np.divide(c * 1e4, c.sum(axis=1, keepdims=True) + 1e-9),
         r"values up to .*, far above any log scale"),
    ],
    ids=["scaled", "normalised-not-logged"],
)
def test_neither_counts_nor_log_is_refused_naming_the_file(tmp_path, make, message):
    path = write(tmp_path, make(counts_matrix()).astype(np.float32), name="odd.h5ad")
    with pytest.raises(DatasetError, match=r"odd\.h5ad: X is neither raw counts nor log-like: " + message) as err:
        read_dataset(path, options=DatasetOptions())
    assert "dataset.normalize: none" in str(err.value)


def test_normalize_none_trusts_x(tmp_path):
    scaled = np.array([[-1.0, 2.5], [0.5, -0.5], [1.0, 1.0]], dtype=np.float32)
    path = write(tmp_path, scaled, conditions=["ctrl", "A+ctrl", "A+ctrl"])
    adata = read_dataset(path, options=DatasetOptions(normalize="none"))
    np.testing.assert_array_equal(adata.X, scaled)
    counts = counts_matrix().astype(np.float32)
    adata = read_dataset(write(tmp_path, counts, name="c.h5ad"), options=DatasetOptions(normalize="none"))
    np.testing.assert_array_equal(adata.X, counts)


def test_counts_layer_is_used_when_x_is_neither(tmp_path):
    counts = counts_matrix()
    scaled = ((counts - counts.mean(axis=0)) / (counts.std(axis=0) + 1)).astype(np.float32)
    path = write(tmp_path, scaled, layers={"counts": sp.csr_matrix(counts.astype(np.float32))})
    adata = read_dataset(path, options=DatasetOptions())
    np.testing.assert_allclose(adata.X.toarray(), scanpy_formula(counts), rtol=1e-6, atol=1e-6)
    assert adata.uns["grape_normalize"]["source"] == "layers['counts']"


def test_backed_plan_reads_a_sample_and_agrees(tmp_path):
    counts = np.zeros((5000, 4), dtype=np.float32)
    counts[::7, 1] = 3.0
    path = write(tmp_path, sp.csr_matrix(counts), conditions=["ctrl"] * 5000)
    backed = ad.read_h5ad(path, backed="r")
    plan = plan_normalization(backed, options=DatasetOptions(), source=str(path))
    backed.file.close()
    assert plan.action == "normalize" and plan.scale.kind == "counts"
    assert plan.scale.rows_sampled == 2000 and plan.scale.min == 0.0 and plan.scale.max == 3.0


def test_normalize_counts_keeps_sparse_format_and_values():
    counts = counts_matrix()
    out = normalize_counts(sp.csc_matrix(counts))
    assert sp.isspmatrix_csr(out) and out.dtype == np.float32
    np.testing.assert_allclose(out.toarray(), scanpy_formula(counts), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- real data


def test_real_raw_count_sets_are_normalised(shared_data):
    papalexi = DatasetOptions(condition_key="target", control="non-targeting")
    for name, opts in [("papalexi2021_thp1_cells.h5ad", papalexi),
                       ("jurkat_tcr_ko_cells.h5ad", DatasetOptions(condition_key="target", control="control",
                                                                   context_key="stimulation"))]:
        adata = read_dataset(shared_data / name, options=opts)
        totals = np.asarray(np.expm1(adata.X).sum(axis=1)).ravel()
        assert np.allclose(totals[totals > 0], 1e4, rtol=1e-3), name
        assert adata.uns["grape_normalize"]["kind"] == "counts"


def test_real_log_sets_are_untouched(shared_data):
    for name, opts in [("carpool_thp1_pseudobulk.h5ad", DatasetOptions(level="pseudobulk")),
                       ("perturbench_devel.h5ad", DatasetOptions(control="control"))]:
        raw = ad.read_h5ad(shared_data / name)
        adata = read_dataset(shared_data / name, options=opts)
        a = adata.X.toarray() if sp.issparse(adata.X) else adata.X
        b = raw.X.toarray() if sp.issparse(raw.X) else raw.X
        np.testing.assert_array_equal(a, b)
        assert adata.uns["grape_normalize"]["action"] == "none"
