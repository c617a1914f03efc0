from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from grape import evaluate
from grape.data import DatasetOptions, pseudobulk
from grape.de import add_de_rankings
from grape.evaluate import Options, baseline_predictions


def means_table() -> pd.DataFrame:
    return pd.DataFrame(
        {"g1": [1.0, 2.0, 4.0, 100.0, 1000.0], "g2": [0.0, 6.0, 2.0, -50.0, 500.0]},
        index=pd.Index(["ctrl", "A+ctrl", "B+ctrl", "C+ctrl", "A+B"], name="condition"),
    )


def split_table() -> pd.DataFrame:
    return pd.DataFrame({
        "condition": ["A+ctrl", "B+ctrl", "C+ctrl", "A+B"],
        "split": ["train", "train", "val", "test"],
        "subgroup": ["seen_single", "seen_single", "unseen_single", "combo_seen2"],
    })


def test_no_change_baseline_is_control_mean():
    preds = baseline_predictions(means_table(), split_table(), control="ctrl")
    nc = preds["no_change"]
    assert nc.index.tolist() == ["A+ctrl", "B+ctrl", "C+ctrl", "A+B"]
    assert nc.columns.tolist() == ["g1", "g2"]
    np.testing.assert_array_equal(nc.to_numpy(), np.tile([1.0, 0.0], (4, 1)))


def test_mean_baseline_uses_train_conditions_only():
    preds = baseline_predictions(means_table(), split_table(), control="ctrl")
    # train: A+ctrl (2, 6) and B+ctrl (4, 2); val C+ctrl and test A+B must not leak in
    np.testing.assert_array_equal(preds["mean"].to_numpy(), np.tile([3.0, 4.0], (4, 1)))


def test_evaluate_scores_test_conditions_only():
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(8)]
    conds = ["A+ctrl", "B+ctrl", "C+ctrl", "D+ctrl", "A+B", "C+D"]
    truth = pd.DataFrame(rng.normal(size=(len(conds), 8)), index=conds, columns=genes)
    control = rng.normal(size=8)
    split = pd.DataFrame({
        "condition": conds,
        "split": ["train", "val", "test", "test", "test", "train"],
        "subgroup": ["seen_single", "unseen_single", "unseen_single", "unseen_single", "combo_seen1",
                     "combo_seen2"],
    })
    perfect = truth.copy()
    noisy = truth + rng.normal(scale=0.5, size=truth.shape)
    de = {c: np.array([0, 1, 2]) for c in conds}
    per_condition, summary = evaluate.evaluate({"perfect": perfect, "noisy": noisy}, truth, control, split, de)

    assert set(per_condition["condition"]) == {"C+ctrl", "D+ctrl", "A+B"}
    assert len(per_condition) == 2 * 3
    assert (per_condition.loc[per_condition["model"] == "perfect", "mse"] == 0).all()

    s = summary.set_index(["model", "subgroup", "metric"])
    assert s.loc[("perfect", "all", "mse"), "value"] == 0
    assert s.loc[("perfect", "all", "pearson_delta"), "value"] == pytest.approx(1.0)
    assert s.loc[("noisy", "all", "mse"), "n_conditions"] == 3
    assert s.loc[("noisy", "unseen_single", "mse"), "n_conditions"] == 2
    assert s.loc[("noisy", "combo_seen1", "mse"), "n_conditions"] == 1
    assert set(summary["subgroup"]) == {"all", "unseen_single", "combo_seen1"}  # no train/val subgroups
    noisy_rows = per_condition[per_condition["model"] == "noisy"].set_index("condition")
    assert s.loc[("noisy", "all", "mse"), "value"] == pytest.approx(noisy_rows["mse"].mean())
    assert s.loc[("noisy", "unseen_single", "mse"), "value"] == pytest.approx(
        noisy_rows.loc[["C+ctrl", "D+ctrl"], "mse"].mean())
    expected = np.mean((noisy.loc["A+B"].to_numpy() - truth.loc["A+B"].to_numpy()) ** 2)
    assert noisy_rows.loc["A+B", "mse"] == pytest.approx(expected)
    assert s.loc[("noisy", "all", "mse"), "higher_is_better"] == False  # noqa: E712
    assert s.loc[("noisy", "all", "pearson"), "higher_is_better"] == True  # noqa: E712


# --------------------------------------------------------------------------- stage


def tiny_dataset(seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(25)]
    conds = ["ctrl", "G0+ctrl", "G1+ctrl", "G2+ctrl", "G3+ctrl", "G0+G1", "G2+G3"]
    labels = np.repeat(conds, 6)
    x = rng.uniform(1.0, 3.0, size=25) + 0.2 * rng.normal(size=(len(labels), 25))
    for row, cond in enumerate(labels):
        for g in cond.split("+"):
            if g in genes:
                x[row, genes.index(g)] -= 1.0
    return ad.AnnData(
        X=x.astype(np.float32),
        obs=pd.DataFrame({"condition": labels, "cell_type": "k562"}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame({"gene_name": genes}, index=[f"ENSG{i}" for i in range(25)]),
    )


def test_run_perfect_predictions(tmp_path):
    opts = Options()
    adata = tiny_dataset()
    add_de_rankings(adata, options=DatasetOptions())
    adata.write_h5ad(tmp_path / "data.h5ad")
    means = pseudobulk(adata, options=opts)
    conds = [c for c in means.index if c != "ctrl"]
    split = pd.DataFrame({
        "condition": conds,
        "split": ["test", "train", "val", "train", "test", "test"],
        "subgroup": ["combo_seen1", "seen_single", "unseen_single", "seen_single", "unseen_single", "unseen_single"],
    })
    assert conds == ["G0+G1", "G0+ctrl", "G1+ctrl", "G2+G3", "G2+ctrl", "G3+ctrl"]
    split.to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    pred = ad.AnnData(X=means.loc[conds].to_numpy(dtype=np.float32), obs=pd.DataFrame(index=conds),
                      var=pd.DataFrame(index=adata.var_names))
    pred.write_h5ad(tmp_path / "pred.h5ad")

    evaluate.run(options=opts, dataset=tmp_path / "data.h5ad", predictions=[tmp_path / "pred.h5ad"],
                 split=tmp_path / "split.tsv", out_dir=tmp_path / "eval")

    metrics = pd.read_csv(tmp_path / "eval" / "metrics.tsv", sep="\t").set_index(["model", "subgroup", "metric"])
    assert metrics.loc[("grape", "all", "mse"), "value"] == pytest.approx(0.0, abs=1e-10)
    assert metrics.loc[("grape", "all", "mse_de"), "value"] == pytest.approx(0.0, abs=1e-10)
    assert metrics.loc[("grape", "all", "pearson_delta"), "value"] == pytest.approx(1.0, abs=1e-5)
    assert metrics.loc[("grape", "all", "mse"), "n_conditions"] == 3
    assert metrics.loc[("grape", "unseen_single", "mse"), "n_conditions"] == 2
    assert metrics.loc[("no_change", "all", "mse"), "value"] > 0.01
    assert set(metrics.index.get_level_values("model")) == {"grape", "no_change", "mean"}

    per = pd.read_csv(tmp_path / "eval" / "per_condition.tsv", sep="\t")
    assert set(per["condition"]) == {"G0+G1", "G2+ctrl", "G3+ctrl"}

    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["n_test_conditions"] == 3
    assert summary["metrics"]["grape"]["mse"] == 0
    assert summary["metrics"]["grape"]["pearson_delta"] == 1.0


def test_run_refuses_predictions_of_other_genes(tmp_path):
    adata = tiny_dataset()
    adata.write_h5ad(tmp_path / "data.h5ad")
    conds = [c for c in adata.obs["condition"].unique() if c != "ctrl"]
    pd.DataFrame({"condition": conds, "split": "test", "subgroup": "unseen_single"}).to_csv(
        tmp_path / "split.tsv", sep="\t", index=False)
    ad.AnnData(X=np.zeros((len(conds), 24), dtype=np.float32), obs=pd.DataFrame(index=conds),
               var=pd.DataFrame(index=adata.var_names[:24])).write_h5ad(tmp_path / "pred.h5ad")
    with pytest.raises(ValueError, match=r"genes differ from"):
        evaluate.run(options=Options(), dataset=tmp_path / "data.h5ad", predictions=[tmp_path / "pred.h5ad"],
                     split=tmp_path / "split.tsv", out_dir=tmp_path / "eval")


def test_run_refuses_a_split_of_other_conditions(tmp_path):
    adata = tiny_dataset()
    adata.write_h5ad(tmp_path / "data.h5ad")
    pd.DataFrame({"condition": ["G0+ctrl"], "split": ["test"], "subgroup": ["unseen_single"]}).to_csv(
        tmp_path / "split.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match=r"conditions differ from the dataset's"):
        evaluate.run(options=Options(), dataset=tmp_path / "data.h5ad", predictions=[tmp_path / "pred.h5ad"],
                     split=tmp_path / "split.tsv", out_dir=tmp_path / "eval")
