from __future__ import annotations

import io
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from grape.evaluation import evaluate
from grape.data.dataset import DatasetOptions
from grape.evaluation.de import add_de_rankings
from grape.evaluation.evaluate import Options, condition_stats
from grape.evaluation.metrics import METRICS
from grape.stages import evaluate as evaluate_stage


def scored(models, truth, split, *, control=None):
    conds = truth.index.tolist()
    g = truth.shape[1]
    control = np.zeros(g) if control is None else control
    ranked = {c: np.arange(g) for c in conds}
    return evaluate.evaluate(models, truth, truth * 0 + 0.5, control, split, ranked, ranked, n_de=3)


def test_evaluate_scores_test_conditions_only():
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(8)]
    conds = ["A+ctrl", "B+ctrl", "C+ctrl", "D+ctrl", "A+B", "C+D"]
    truth = pd.DataFrame(rng.normal(size=(len(conds), 8)), index=conds, columns=genes)
    split = pd.DataFrame({
        "condition": conds,
        "split": ["train", "val", "test", "test", "test", "train"],
        "subgroup": ["seen_single", "unseen_single", "unseen_single", "unseen_single", "combo_seen1",
                     "combo_seen2"],
    })
    perfect = truth.copy()
    noisy = truth + rng.normal(scale=0.5, size=truth.shape)
    per_condition, summary = scored({"perfect": perfect, "noisy": noisy}, truth, split)

    assert set(per_condition["condition"]) == {"C+ctrl", "D+ctrl", "A+B"}
    assert len(per_condition) == 2 * 3
    assert set(per_condition.columns) == {"model", "condition", "subgroup", *METRICS}
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
    assert s.loc[("noisy", "all", "mse"), "best"] == 0.0


def test_summary_leaves_undefined_values_out_and_counts_the_rest():
    per_condition = pd.DataFrame({
        "model": ["m", "m", "m"], "condition": ["a", "b", "c"], "subgroup": ["x", "x", "y"],
        **{name: [1.0, 3.0, 5.0] for name in METRICS},
    })
    per_condition.loc[1, "frac_sigma_below_1_non_dropout"] = np.nan
    s = evaluate.summarize(per_condition).set_index(["model", "subgroup", "metric"])
    assert s.loc[("m", "all", "mse"), "value"] == 3.0 and s.loc[("m", "all", "mse"), "n_conditions"] == 3
    row = s.loc[("m", "all", "frac_sigma_below_1_non_dropout")]
    assert row["value"] == 3.0 and row["n_conditions"] == 2
    assert s.loc[("m", "x", "frac_sigma_below_1_non_dropout"), "n_conditions"] == 1


def test_condition_stats_match_dense_numpy():
    adata = tiny_dataset()
    adata.X = sp.csr_matrix(adata.X)
    means, stds = condition_stats(adata, options=DatasetOptions())
    x = adata.X.toarray().astype(np.float64)
    labels = adata.obs["condition"].to_numpy()
    for cond in ["ctrl", "G0+G1"]:
        np.testing.assert_allclose(means.loc[cond], x[labels == cond].mean(axis=0))
        np.testing.assert_allclose(stds.loc[cond], x[labels == cond].std(axis=0))


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
    x = np.clip(x, 0.0, None)  # log-normalised expression is non-negative (read_dataset refuses negative X)
    return ad.AnnData(
        X=x.astype(np.float32),
        obs=pd.DataFrame({"condition": labels, "cell_type": "k562"}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame({"gene_name": genes}, index=[f"ENSG{i}" for i in range(25)]),
    )


def stage_inputs(tmp_path, *, de_in_uns: bool = True):
    adata = tiny_dataset()
    if de_in_uns:
        add_de_rankings(adata, options=DatasetOptions())
    adata.write_h5ad(tmp_path / "data.h5ad")
    means, _ = condition_stats(adata, options=DatasetOptions())
    conds = [c for c in means.index if c != "ctrl"]
    assert conds == ["G0+G1", "G0+ctrl", "G1+ctrl", "G2+G3", "G2+ctrl", "G3+ctrl"]
    split = pd.DataFrame({
        "condition": conds,
        "split": ["test", "train", "val", "train", "test", "test"],
        "subgroup": ["combo_seen2", "seen_single", "unseen_single", "seen_single", "unseen_single", "unseen_single"],
    })
    split.to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    variant = tmp_path / "train" / "full"
    variant.mkdir(parents=True)
    pred = ad.AnnData(X=means.loc[conds].to_numpy(dtype=np.float32), obs=pd.DataFrame(index=conds),
                      var=pd.DataFrame(index=adata.var_names))
    pred.write_h5ad(variant / "predictions.h5ad")
    (variant / "model.yaml").write_text("model: PerturbationHGNN\nbest_epoch: 3\n")
    (variant / "model.safetensors").write_bytes(b"weights")
    return adata, means, variant / "predictions.h5ad"


@pytest.mark.parametrize("de_in_uns", [True, False])
def test_run_perfect_predictions(tmp_path, monkeypatch, de_in_uns):
    adata, means, pred_path = stage_inputs(tmp_path, de_in_uns=de_in_uns)
    monkeypatch.setattr("sys.stdin", io.StringIO('{"run": "tiny", "train": {"epochs": 3}}'))
    evaluate_stage.run(options=Options(), dataset=tmp_path / "data.h5ad", predictions=[pred_path],
                       split=tmp_path / "split.tsv", out_dir=tmp_path / "eval", run_config="-")

    metrics = pd.read_csv(tmp_path / "eval" / "metrics.tsv", sep="\t").set_index(["model", "subgroup", "metric"])
    assert metrics.loc[("grape", "all", "mse"), "value"] == pytest.approx(0.0, abs=1e-10)
    assert metrics.loc[("grape", "all", "mse_de"), "value"] == pytest.approx(0.0, abs=1e-10)
    assert metrics.loc[("grape", "all", "pearson_delta"), "value"] == pytest.approx(1.0, abs=1e-5)
    assert metrics.loc[("grape", "all", "mse"), "n_conditions"] == 3
    assert metrics.loc[("grape", "unseen_single", "mse"), "n_conditions"] == 2
    assert metrics.loc[("no_change", "all", "mse"), "value"] > 0.01
    assert set(metrics.index.get_level_values("model")) == {"grape", "no_change", "mean", "mean_target", "additive", "linear"}
    assert set(metrics.index.get_level_values("metric")) == set(METRICS)
    # G0+G1: both singles were fitted (G0 train, G1 val), and the data are nearly additive
    per = pd.read_csv(tmp_path / "eval" / "per_condition.tsv", sep="\t")
    assert set(per["condition"]) == {"G0+G1", "G2+ctrl", "G3+ctrl"}
    add = per[(per["model"] == "additive")].set_index("condition")
    nc = per[(per["model"] == "no_change")].set_index("condition")
    assert add.loc["G0+G1", "mse"] < nc.loc["G0+G1", "mse"]
    assert add.loc["G2+ctrl", "mse"] == pytest.approx(nc.loc["G2+ctrl", "mse"])  # unseen single: the control

    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["n_test_conditions"] == 3
    assert summary["test_conditions"] == {"combo_seen2": 1, "unseen_single": 2}
    assert summary["metrics"]["grape"]["mse"] == 0
    assert summary["metrics"]["grape"]["pearson_delta"] == 1.0
    assert summary["by_subgroup"]["grape"]["unseen_single"]["mse"] == 0
    assert summary["registry"]["mse"] == {"best": 0.0, "higher_is_better": False,
                                          "source": METRICS["mse"].source, "description": METRICS["mse"].description}
    assert summary["baselines"]["additive"]["test_conditions"] == {
        "all_singles_seen": 1, "some_singles_seen": 0, "no_single_seen": 2}
    assert summary["config"] == {"run": "tiny", "train": {"epochs": 3}}
    prov = summary["provenance"]
    assert len(prov["dataset"]["sha256"]) == 64 and len(prov["split"]["sha256"]) == 64
    assert prov["models"]["grape"]["model_yaml"] == {"model": "PerturbationHGNN", "best_epoch": 3}
    assert prov["models"]["grape"]["weights"]["sha256"] is not None

    table = ad.read_h5ad(tmp_path / "eval" / "test_predictions.h5ad")
    assert table.obs_names.tolist() == ["G0+G1", "G2+ctrl", "G3+ctrl"]
    assert set(table.layers) == {"grape", "no_change", "mean", "mean_target", "additive", "linear"}
    np.testing.assert_allclose(table.layers["grape"], table.X, atol=1e-5)
    np.testing.assert_allclose(table.var["control_mean"], means.loc["ctrl"])
    assert table.obsm["de_ranked"].shape == (3, 25)


def test_run_with_a_chosen_set_of_baselines(tmp_path):
    _, _, pred_path = stage_inputs(tmp_path)
    evaluate_stage.run(options=Options(baselines=["additive"], baseline_splits=["train"]),
                       dataset=tmp_path / "data.h5ad", predictions=[pred_path], split=tmp_path / "split.tsv",
                       out_dir=tmp_path / "eval")
    metrics = pd.read_csv(tmp_path / "eval" / "metrics.tsv", sep="\t")
    assert set(metrics["model"]) == {"grape", "additive"}
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["config"] is None
    assert summary["baselines"]["additive"]["test_conditions"]["all_singles_seen"] == 0  # G1 is a val single


def test_model_names_of_variants(tmp_path):
    assert evaluate.model_name(tmp_path / "train" / "full" / "predictions.h5ad") == "grape"
    assert evaluate.model_name(tmp_path / "train" / "no_gsl" / "predictions.h5ad") == "grape_no_gsl"


def test_run_refuses_predictions_of_other_genes(tmp_path):
    adata = tiny_dataset()
    adata.write_h5ad(tmp_path / "data.h5ad")
    conds = [c for c in adata.obs["condition"].unique() if c != "ctrl"]
    pd.DataFrame({"condition": conds, "split": "test", "subgroup": "unseen_single"}).to_csv(
        tmp_path / "split.tsv", sep="\t", index=False)
    ad.AnnData(X=np.zeros((len(conds), 24), dtype=np.float32), obs=pd.DataFrame(index=conds),
               var=pd.DataFrame(index=adata.var_names[:24])).write_h5ad(tmp_path / "pred.h5ad")
    with pytest.raises(ValueError, match=r"genes differ from"):
        evaluate_stage.run(options=Options(), dataset=tmp_path / "data.h5ad", predictions=[tmp_path / "pred.h5ad"],
                           split=tmp_path / "split.tsv", out_dir=tmp_path / "eval")


def test_run_refuses_predictions_missing_a_test_condition(tmp_path):
    _, means, pred_path = stage_inputs(tmp_path)
    pred = ad.read_h5ad(pred_path)
    pred[pred.obs_names != "G3+ctrl"].copy().write_h5ad(pred_path)
    with pytest.raises(ValueError, match=r"no prediction for test condition\(s\) G3\+ctrl"):
        evaluate_stage.run(options=Options(), dataset=tmp_path / "data.h5ad", predictions=[pred_path],
                           split=tmp_path / "split.tsv", out_dir=tmp_path / "eval")


def test_run_refuses_a_split_of_other_conditions(tmp_path):
    adata = tiny_dataset()
    adata.write_h5ad(tmp_path / "data.h5ad")
    pd.DataFrame({"condition": ["G0+ctrl"], "split": ["test"], "subgroup": ["unseen_single"]}).to_csv(
        tmp_path / "split.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match=r"conditions differ from the dataset's"):
        evaluate_stage.run(options=Options(), dataset=tmp_path / "data.h5ad", predictions=[tmp_path / "pred.h5ad"],
                           split=tmp_path / "split.tsv", out_dir=tmp_path / "eval")


def test_run_refuses_baselines_fitted_on_test(tmp_path):
    with pytest.raises(ValueError, match=r"baseline_splits: 'test' not allowed"):
        evaluate_stage.run(options=Options(baseline_splits=["test"]), dataset=tmp_path / "missing.h5ad",
                           predictions=[tmp_path / "pred.h5ad"], split=tmp_path / "split.tsv",
                           out_dir=tmp_path / "eval")


def test_run_on_relative_pseudobulk_without_a_control_row(tmp_path):
    adata = tiny_dataset()
    means, _ = condition_stats(adata, options=DatasetOptions())
    conds = [c for c in means.index if c != "ctrl"]
    change = means.loc[conds] - means.loc["ctrl"]
    bulk = ad.AnnData(X=change.to_numpy(dtype=np.float32), obs=pd.DataFrame({"condition": conds}, index=conds),
                      var=adata.var.copy())
    bulk.write_h5ad(tmp_path / "bulk.h5ad")
    pd.DataFrame({"condition": conds, "split": ["test", "train", "val", "train", "test", "test"],
                  "subgroup": ["combo_seen2", "seen_single", "unseen_single", "seen_single", "unseen_single",
                               "unseen_single"]}).to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    folder = tmp_path / "train" / "full"
    folder.mkdir(parents=True)
    ad.AnnData(X=change.to_numpy(dtype=np.float32), obs=pd.DataFrame(index=conds),
               var=pd.DataFrame(index=adata.var_names)).write_h5ad(folder / "predictions.h5ad")
    options = Options(level="pseudobulk", relative=True)
    evaluate_stage.run(options=options, dataset=tmp_path / "bulk.h5ad", predictions=[folder / "predictions.h5ad"],
                       split=tmp_path / "split.tsv", out_dir=tmp_path / "eval")
    m = pd.read_csv(tmp_path / "eval" / "metrics.tsv", sep="\t").set_index(["model", "subgroup", "metric"])
    assert m.loc[("grape", "all", "mse"), "value"] == pytest.approx(0.0, abs=1e-10)
    assert m.loc[("grape", "all", "pearson_delta_de"), "value"] == pytest.approx(1.0)
    assert m.loc[("grape", "all", "frac_sigma_below_1_non_dropout"), "n_conditions"] == 0  # no cells
    assert m.loc[("no_change", "all", "mse"), "value"] > 0.01
    table = ad.read_h5ad(tmp_path / "eval" / "test_predictions.h5ad")
    np.testing.assert_array_equal(table.var["control_mean"], 0.0)
    # ranked by |change|: the perturbed gene of a single comes first
    assert table.obsm["de_ranked"][table.obs_names.get_loc("G2+ctrl"), 0] == 2
