from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from grape.data.dataset import (
    DatasetError,
    DatasetOptions,
    condition_genes,
    gene_symbols,
    perturbed_genes,
    pseudobulk,
    read_dataset,
)

OPTS = DatasetOptions()


@pytest.mark.parametrize(
    ("condition", "genes"),
    [("ctrl", ()), ("A+ctrl", ("A",)), ("ctrl+A", ("A",)), ("B+A", ("A", "B")), ("A+B", ("A", "B"))],
)
def test_condition_genes_forms(condition, genes):
    assert condition_genes(condition, options=OPTS) == genes


def test_condition_genes_custom_separator_and_control():
    opts = DatasetOptions(separator="_", control="NT")
    assert condition_genes("NT", options=opts) == ()
    assert condition_genes("KRAS_NT", options=opts) == ("KRAS",)
    assert condition_genes("TP53_KRAS", options=opts) == ("KRAS", "TP53")
    # the default separator is just a character of the name under this configuration
    assert condition_genes("A+B", options=opts) == ("A+B",)


def write(tmp_path, *, obs=None, var=None, x=None, name="d.h5ad"):
    n_obs = 6 if obs is None else len(obs)
    obs = obs if obs is not None else pd.DataFrame(
        {"condition": ["ctrl", "ctrl", "A+ctrl", "A+ctrl", "A+B", "A+B"]}, index=[f"c{i}" for i in range(n_obs)])
    var = var if var is not None else pd.DataFrame({"gene_name": ["A", "B", "C"]}, index=["e1", "e2", "e3"])
    x = x if x is not None else np.arange(n_obs * len(var), dtype=np.float32).reshape(n_obs, len(var))
    path = tmp_path / name
    ad.AnnData(X=x, obs=obs, var=var).write_h5ad(path)
    return path


def test_read_dataset_ok(tmp_path):
    adata = read_dataset(write(tmp_path), options=OPTS)
    assert adata.shape == (6, 3)
    assert gene_symbols(adata, options=OPTS).tolist() == ["A", "B", "C"]
    assert perturbed_genes(adata, options=OPTS) == ["A", "B"]


def test_gene_symbols_fall_back_to_var_names(tmp_path):
    path = write(tmp_path, var=pd.DataFrame(index=["A", "B", "C"]))
    adata = read_dataset(path, options=OPTS)
    assert gene_symbols(adata, options=OPTS).tolist() == ["A", "B", "C"]


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset file not found: .*nope\.h5ad"):
        read_dataset(tmp_path / "nope.h5ad", options=OPTS)


def test_missing_condition_column(tmp_path):
    path = write(tmp_path)
    with pytest.raises(DatasetError, match=r"no condition column 'perturbation'.*set dataset\.condition_key"):
        read_dataset(path, options=DatasetOptions(condition_key="perturbation"))


def test_no_control_cells(tmp_path):
    path = write(tmp_path)
    with pytest.raises(DatasetError, match=r"no control cells labelled 'non-targeting'.*set dataset\.control"):
        read_dataset(path, options=DatasetOptions(control="non-targeting"))


def test_duplicated_gene_names(tmp_path):
    var = pd.DataFrame({"gene_name": ["A", "B", "A"]}, index=["e1", "e2", "e3"])
    with pytest.raises(DatasetError, match=r"duplicated gene names in var: A$"):
        read_dataset(write(tmp_path, var=var), options=OPTS)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values(tmp_path, sparse, bad):
    x = np.ones((6, 3), dtype=np.float32)
    x[4, 1] = bad
    path = write(tmp_path, x=sp.csr_matrix(x) if sparse else x)
    with pytest.raises(DatasetError, match=r"X holds NaN or infinite values"):
        read_dataset(path, options=OPTS)


def test_error_names_the_file(tmp_path):
    path = write(tmp_path, name="mydata.h5ad")
    with pytest.raises(DatasetError, match=r"mydata\.h5ad"):
        read_dataset(path, options=DatasetOptions(control="NT"))


@pytest.mark.parametrize("sparse", [False, True])
def test_pseudobulk_hand_computed(tmp_path, sparse):
    x = np.array([
        [1.0, 0.0, 2.0],   # ctrl
        [3.0, 2.0, 4.0],   # ctrl
        [10.0, 1.0, 0.0],  # A+ctrl
        [0.0, 5.0, 1.0],   # B+A
        [2.0, 7.0, 3.0],   # B+A
        [4.0, 0.0, 5.0],   # B+A
    ], dtype=np.float32)
    obs = pd.DataFrame({"condition": ["ctrl", "ctrl", "A+ctrl", "B+A", "B+A", "B+A"]},
                       index=[f"c{i}" for i in range(6)])
    raw = DatasetOptions(normalize="none")  # whole numbers would otherwise be read as raw counts
    adata = read_dataset(write(tmp_path, obs=obs, x=sp.csr_matrix(x) if sparse else x), options=raw)
    means = pseudobulk(adata, options=OPTS)
    assert means.index.tolist() == ["A+ctrl", "B+A", "ctrl"]
    assert means.columns.tolist() == ["e1", "e2", "e3"]
    expected = pd.DataFrame(
        [[10.0, 1.0, 0.0], [2.0, 4.0, 3.0], [2.0, 1.0, 3.0]],
        index=["A+ctrl", "B+A", "ctrl"], columns=["e1", "e2", "e3"],
    )
    np.testing.assert_allclose(means.to_numpy(), expected.to_numpy())


# --------------------------------------------------------------------------- pseudobulk input


def bulk(tmp_path, *, conditions, x, name="bulk.h5ad"):
    obs = pd.DataFrame({"condition": conditions}, index=[f"r{i}" for i in range(len(conditions))])
    return write(tmp_path, obs=obs, x=np.asarray(x, dtype=np.float32), name=name)


def test_pseudobulk_relative_without_control_adds_a_zero_row(tmp_path):
    opts = DatasetOptions(level="pseudobulk", relative=True)
    path = bulk(tmp_path, conditions=["A+ctrl", "A+B"], x=[[-1.0, 0.5, 0.0], [-2.0, 1.0, -0.5]])
    means = pseudobulk(read_dataset(path, options=opts), options=opts)
    assert means.index.tolist() == ["A+B", "A+ctrl", "ctrl"]
    np.testing.assert_array_equal(means.loc["ctrl"].to_numpy(), 0.0)
    np.testing.assert_allclose((means - means.loc["ctrl"]).loc["A+B"].to_numpy(), [-2.0, 1.0, -0.5])


def test_pseudobulk_absolute_needs_control(tmp_path):
    path = bulk(tmp_path, conditions=["A+ctrl", "A+B"], x=np.ones((2, 3)))
    with pytest.raises(DatasetError, match="no control cells labelled 'ctrl'"):
        read_dataset(path, options=DatasetOptions(level="pseudobulk"))


def test_pseudobulk_one_row_per_condition(tmp_path):
    path = bulk(tmp_path, conditions=["ctrl", "A+ctrl", "A+ctrl"], x=np.ones((3, 3)))
    with pytest.raises(DatasetError, match=r"pseudobulk but conditions have several rows: A\+ctrl"):
        read_dataset(path, options=DatasetOptions(level="pseudobulk"))


def test_relative_needs_pseudobulk_and_known_level():
    with pytest.raises(ValueError, match="dataset.relative requires dataset.level: pseudobulk"):
        DatasetOptions(relative=True)
    with pytest.raises(ValueError, match="dataset.level must be one of cells, pseudobulk"):
        DatasetOptions(level="bulk")


def test_empty_dataset(tmp_path):
    obs = pd.DataFrame({"condition": pd.Series([], dtype=str)}, index=pd.Index([], dtype=str))
    path = write(tmp_path, obs=obs, x=np.zeros((0, 3), dtype=np.float32))
    with pytest.raises(DatasetError, match="empty dataset"):
        read_dataset(path, options=OPTS)
