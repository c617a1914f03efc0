"""Tests of GEARS-style DE rankings (grape.evaluation.de)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from grape.data.dataset import DatasetOptions
from grape.evaluation.de import (
    NON_DROPOUT_IDX_KEY,
    NON_ZERO_IDX_KEY,
    RANK_KEY,
    TOP_NON_DROPOUT_KEY,
    TOP_NON_ZERO_KEY,
    UNS_KEYS,
    add_de_rankings,
    de_key,
)

OPTIONS = DatasetOptions()


def _adata(x: np.ndarray, conditions: list[str], cell_types: list[str] | None = None) -> ad.AnnData:
    obs = pd.DataFrame(
        {"condition": conditions, "cell_type": cell_types or ["K562"] * len(conditions)},
        index=[f"c{i}" for i in range(len(conditions))],
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(x.shape[1])])
    return ad.AnnData(X=x.astype(np.float32), obs=obs, var=var)


def _random_case(seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 1.0, size=(40, 12))
    conditions = ["ctrl"] * 20 + ["A+ctrl"] * 10 + ["A+B"] * 10
    x[20:30, 5] += 3.0  # g5 strongly up in A+ctrl
    x[30:40, 2] -= 1.5  # g2 down in A+B
    return _adata(x, conditions)


def test_de_key_is_gears_condition_name() -> None:
    assert de_key("K562", "A+ctrl") == "K562_A+ctrl_1+1"
    assert de_key("K562", "ctrl", dose="1") == "K562_ctrl_1"


def test_clearly_up_gene_ranks_first_and_matches_welch_t() -> None:
    adata = _random_case()
    add_de_rankings(adata, options=OPTIONS)
    key = de_key("K562", "A+ctrl")
    assert set(adata.uns[RANK_KEY]) == {key, de_key("K562", "A+B")}
    ranked = adata.uns[RANK_KEY][key]
    assert ranked[0] == "g5"
    assert adata.uns[RANK_KEY][de_key("K562", "A+B")][0] == "g2"
    assert sorted(ranked) == sorted(adata.var_names)
    x = adata.X
    t, _ = stats.ttest_ind(x[20:30].astype(np.float64), x[:20].astype(np.float64), equal_var=False)
    np.testing.assert_array_equal(ranked, adata.var_names[np.argsort(-np.abs(t), kind="stable")])
    assert list(adata.uns[TOP_NON_ZERO_KEY][key]) == list(ranked[:12])


def test_top_lists_respect_n_top_and_sparse_equals_dense() -> None:
    dense = _random_case(1)
    sparse = dense.copy()
    sparse.X = sp.csr_matrix(sparse.X)
    add_de_rankings(dense, options=OPTIONS, n_top=5)
    add_de_rankings(sparse, options=OPTIONS, n_top=5)
    for name in UNS_KEYS:
        for key, value in dense.uns[name].items():
            np.testing.assert_array_equal(value, sparse.uns[name][key])
    assert all(len(v) == 5 for v in dense.uns[TOP_NON_DROPOUT_KEY].values())


def test_zero_variance_genes_do_not_produce_nan_ranks() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(2.0, 1.0, size=(20, 5))
    x[:, 0] = 0.0  # zero everywhere
    x[:, 1] = 1.5  # constant everywhere
    x[10:, 4] += 4.0
    adata = _adata(x, ["ctrl"] * 10 + ["A+ctrl"] * 10)
    add_de_rankings(adata, options=OPTIONS)
    ranked = list(adata.uns[RANK_KEY][de_key("K562", "A+ctrl")])
    assert ranked[0] == "g4"
    assert sorted(ranked) == sorted(adata.var_names)
    assert set(ranked[-2:]) == {"g0", "g1"}  # t treated as 0, ranked last


def test_single_cell_condition_has_no_nan() -> None:
    x = np.arange(30, dtype=float).reshape(6, 5) % 7
    adata = _adata(x, ["ctrl"] * 5 + ["A+ctrl"])
    add_de_rankings(adata, options=OPTIONS)
    ranked = adata.uns[RANK_KEY][de_key("K562", "A+ctrl")]
    assert sorted(ranked) == sorted(adata.var_names)


def test_non_dropout_and_non_zero_semantics() -> None:
    # genes: g0 up in cond; g1 zero in cond but expressed in ctrl (drop-out);
    # g2 zero in both (true zero); g3 small change; g4 expressed in both.
    ctrl = np.array([[0, 2, 0, 1.0, 3], [0, 3, 0, 1.2, 3.1], [0, 2.5, 0, 0.9, 2.9], [0, 2.8, 0, 1.1, 3.0]])
    cond = np.array([[5, 0, 0, 1.3, 3], [6, 0, 0, 1.4, 3.2], [5.5, 0, 0, 1.2, 2.8], [5.2, 0, 0, 1.5, 3.1]])
    adata = _adata(np.vstack([ctrl, cond]), ["ctrl"] * 4 + ["A+ctrl"] * 4)
    add_de_rankings(adata, options=OPTIONS, n_top=3)
    key = de_key("K562", "A+ctrl")
    ranked = list(adata.uns[RANK_KEY][key])
    assert ranked[:2] == ["g1", "g0"] or ranked[:2] == ["g0", "g1"]
    np.testing.assert_array_equal(adata.uns[NON_ZERO_IDX_KEY][key], [0, 3, 4])
    np.testing.assert_array_equal(adata.uns[NON_DROPOUT_IDX_KEY][key], [0, 2, 3, 4])
    assert adata.uns[NON_ZERO_IDX_KEY][key].dtype.kind == "i"
    non_dropout_top = list(adata.uns[TOP_NON_DROPOUT_KEY][key])
    non_zero_top = list(adata.uns[TOP_NON_ZERO_KEY][key])
    assert "g1" not in non_dropout_top and "g1" not in non_zero_top
    assert non_zero_top == [g for g in ranked if g in {"g0", "g3", "g4"}][:3]
    assert non_dropout_top == [g for g in ranked if g in {"g0", "g2", "g3", "g4"}][:3]


def test_per_cell_type_keys_and_missing_control() -> None:
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 1.0, size=(24, 4))
    conditions = (["ctrl"] * 6 + ["A+ctrl"] * 6) * 2
    cell_types = ["K562"] * 12 + ["RPE1"] * 12
    x[18:24, 3] += 5.0  # only RPE1's A+ctrl moves g3
    adata = _adata(x, conditions, cell_types)
    add_de_rankings(adata, options=OPTIONS)
    assert set(adata.uns[RANK_KEY]) == {"K562_A+ctrl_1+1", "RPE1_A+ctrl_1+1"}
    assert adata.uns[RANK_KEY]["RPE1_A+ctrl_1+1"][0] == "g3"

    no_ctrl = _adata(x, ["ctrl"] * 6 + ["A+ctrl"] * 18, cell_types)
    with pytest.raises(ValueError, match="RPE1.*no control cells"):
        add_de_rankings(no_ctrl, options=OPTIONS)


def test_bad_arguments() -> None:
    adata = _random_case()
    with pytest.raises(ValueError, match="n_top"):
        add_de_rankings(adata, options=OPTIONS, n_top=0)
    with pytest.raises(ValueError, match="perturbation"):
        add_de_rankings(adata, options=DatasetOptions(condition_key="perturbation"))


def test_h5ad_round_trip_of_uns(tmp_path: Path) -> None:
    adata = _random_case()
    adata.X = sp.csr_matrix(adata.X)
    add_de_rankings(adata, options=OPTIONS)
    path = tmp_path / "de.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    for name in UNS_KEYS:
        assert set(back.uns[name]) == set(adata.uns[name])
        for key, value in adata.uns[name].items():
            np.testing.assert_array_equal(np.asarray(back.uns[name][key]), value)
    key = de_key("K562", "A+ctrl")
    assert np.asarray(back.uns[NON_ZERO_IDX_KEY][key]).dtype.kind == "i"
    assert str(np.asarray(back.uns[RANK_KEY][key])[0]) == "g5"
