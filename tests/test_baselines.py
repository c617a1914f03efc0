"""Baselines: exact on data built to their assumptions, and blind to test conditions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from grape.evaluation.baselines import BASELINES, additive, fit_predict, linear, mean_baseline, no_change
from grape.data.dataset import DatasetOptions, condition_genes

OPTIONS = DatasetOptions()


def genes_of(cond: str) -> tuple[str, ...]:
    return condition_genes(cond, options=OPTIONS)


def additive_dataset(n_genes: int = 12, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Condition means where every double is exactly control + the two single effects."""
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(n_genes)]
    ctrl = rng.uniform(1, 3, size=n_genes)
    effect = {p: rng.normal(size=n_genes) for p in "ABCDE"}
    rows = {"ctrl": ctrl}
    rows.update({f"{p}+ctrl": ctrl + effect[p] for p in "ABCDE"})
    rows.update({"A+B": ctrl + effect["A"] + effect["B"], "A+C": ctrl + effect["A"] + effect["C"],
                 "B+D": ctrl + effect["B"] + effect["D"], "D+E": ctrl + effect["D"] + effect["E"]})
    means = pd.DataFrame(rows, index=genes).T
    split = pd.DataFrame({
        "condition": ["A+ctrl", "B+ctrl", "C+ctrl", "D+ctrl", "E+ctrl", "A+B", "A+C", "B+D", "D+E"],
        "split": ["train", "train", "val", "test", "test", "test", "test", "test", "test"],
        "subgroup": ["seen_single", "seen_single", "unseen_single", "unseen_single", "unseen_single",
                     "combo_seen2", "combo_seen2", "combo_seen1", "combo_seen0"],
    })
    return means, split


def test_additive_is_exact_on_an_additive_dataset():
    means, split = additive_dataset()
    result = additive(means, split, control="ctrl", genes_of=genes_of)
    pred = result.predictions
    # both singles fitted (C is a validation condition: fitted by default)
    for double in ("A+B", "A+C"):
        np.testing.assert_allclose(pred.loc[double], means.loc[double], rtol=0, atol=1e-12)
    # one single seen: control + that single's effect; none seen: the control
    np.testing.assert_allclose(pred.loc["B+D"], means.loc["B+ctrl"], atol=1e-12)
    np.testing.assert_allclose(pred.loc["D+E"], means.loc["ctrl"], atol=1e-12)
    np.testing.assert_allclose(pred.loc["D+ctrl"], means.loc["ctrl"], atol=1e-12)
    assert result.notes["test_conditions"] == {"all_singles_seen": 2, "some_singles_seen": 1, "no_single_seen": 3}
    assert result.notes["test_conditions_fully_additive"] == ["A+B", "A+C"]


def test_additive_fitted_on_train_only_loses_the_validation_single():
    means, split = additive_dataset()
    result = additive(means, split, control="ctrl", genes_of=genes_of, fit_splits=["train"])
    np.testing.assert_allclose(result.predictions.loc["A+B"], means.loc["A+B"], atol=1e-12)
    np.testing.assert_allclose(result.predictions.loc["A+C"], means.loc["A+ctrl"], atol=1e-12)  # C unseen now
    assert result.notes["test_conditions"]["all_singles_seen"] == 1


def planted_linear(n_genes: int = 80, rank: int = 3, n_perturbed: int = 40, seed: int = 0):
    """Changes Y[:, g] = A M a_g (a_g = row g of A), plus a per-gene baseline; a low-rank linear effect."""
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(n_genes)]
    perturbed = rng.choice(n_genes, n_perturbed, replace=False)
    train, test = perturbed[:30], perturbed[30:]
    a = rng.normal(size=(n_genes, rank))
    # Each column of A sums to 0 over all genes (the PCA scores G are centred over genes, so G W Pᵀ can
    # only make such changes) and over the fitted perturbations (so the row means b of Y are 0).
    basis, _ = np.linalg.qr(np.column_stack([np.ones(n_genes), np.isin(np.arange(n_genes), train)]))
    a -= basis @ (basis.T @ a)
    m = rng.normal(size=(rank, rank))
    baseline = rng.uniform(1, 4, size=n_genes)
    rows = {"ctrl": baseline}
    rows.update({f"{genes[g]}+ctrl": baseline + a @ m @ a[g] for g in perturbed})
    means = pd.DataFrame(rows, index=genes).T
    split = pd.DataFrame({
        "condition": [f"{genes[g]}+ctrl" for g in perturbed],
        "split": ["train"] * len(train) + ["test"] * len(test),
        "subgroup": ["seen_single"] * len(train) + ["unseen_single"] * len(test),
    })
    return means, split, {g: i for i, g in enumerate(genes)}, [f"{genes[g]}+ctrl" for g in test]


def test_linear_recovers_a_planted_low_rank_effect():
    means, split, index, test = planted_linear()
    # K = rank + 1: the PCA of the expression also spans the (centred) per-gene baseline
    result = linear(means, split, control="ctrl", genes_of=genes_of, gene_index=index, pca_dim=4, ridge=1e-9)
    change = means.loc[test] - means.loc["ctrl"]
    err = (result.predictions.loc[test] - means.loc[test]).abs().to_numpy().max()
    assert err < 1e-5 * change.abs().to_numpy().max()
    # the paper's default ridge still recovers it closely
    default = linear(means, split, control="ctrl", genes_of=genes_of, gene_index=index, pca_dim=10, ridge=0.1)
    pred_change = default.predictions.loc[test] - means.loc["ctrl"]
    for cond in test:
        assert np.corrcoef(pred_change.loc[cond], change.loc[cond])[0, 1] > 0.999
    # and the mean baseline, which ignores the perturbation, does not
    mean_change = mean_baseline(means, split).predictions.loc[test] - means.loc["ctrl"]
    assert min(np.corrcoef(mean_change.loc[c], change.loc[c])[0, 1] for c in test) < 0.9


def test_linear_reports_what_it_could_not_embed():
    means, split, index, _ = planted_linear()
    del index[genes_of(split["condition"].iloc[0])[0]]  # a fitted gene that is "not measured"
    del index[genes_of(split["condition"].iloc[-1])[0]]  # a test gene that is "not measured"
    result = linear(means, split, control="ctrl", genes_of=genes_of, gene_index=index, pca_dim=4)
    assert result.notes["n_fit_conditions_left_out"] == 1
    assert result.notes["test_conditions_with_unmeasured_genes"] == {"some": 0, "all": 1}
    assert np.isfinite(result.predictions.to_numpy()).all()


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_never_read_test_conditions(name):
    means, split, index, test = planted_linear()
    if name == "mean_doubles":  # the planted data are singles: one fitting and one test double
        fit_pair, test_pair = split["condition"].iloc[:2].tolist(), test[:2]
        for pair, part in ((fit_pair, "train"), (test_pair, "test")):
            label = "+".join(c.split("+")[0] for c in pair)
            means.loc[label] = means.loc[pair].mean()
            split.loc[len(split)] = {"condition": label, "split": part, "subgroup": "combo_seen2"}
            if part == "test":
                test = [*test, label]
    before = fit_predict([name], means, split, control="ctrl", genes_of=genes_of, gene_index=index)[name]
    changed = means.copy()
    changed.loc[test] += 100.0
    after = fit_predict([name], changed, split, control="ctrl", genes_of=genes_of, gene_index=index)[name]
    pd.testing.assert_frame_equal(before.predictions, after.predictions)


def test_no_change_and_mean():
    means, split = additive_dataset()
    nc = no_change(means, split, control="ctrl").predictions
    assert nc.index.tolist() == split["condition"].tolist()
    np.testing.assert_array_equal(nc.to_numpy(), np.tile(means.loc["ctrl"], (len(split), 1)))
    mean = mean_baseline(means, split, fit_splits=["train"]).predictions
    np.testing.assert_allclose(mean.iloc[0], means.loc[["A+ctrl", "B+ctrl"]].mean())


def test_mean_of_doubles():
    means, split = additive_dataset()
    doubles = [c for c in split["condition"] if len(genes_of(c)) == 2]
    fitted = [c for c in doubles if split.set_index("condition").loc[c, "split"] in ("train", "val")]
    if not fitted:  # make one double a fitting condition
        split = split.copy()
        split.loc[split["condition"] == doubles[0], "split"] = "train"
        fitted = [doubles[0]]
    result = fit_predict(["mean_doubles"], means, split, control="ctrl", genes_of=genes_of, gene_index={})["mean_doubles"]
    np.testing.assert_allclose(result.predictions.iloc[0], means.loc[fitted].mean())
    assert result.notes["n_fit_conditions"] == len(fitted)
    singles_only = split[split["condition"].map(lambda c: len(genes_of(c)) < 2)]
    skipped = fit_predict(["mean_doubles"], means, singles_only, control="ctrl", genes_of=genes_of, gene_index={})
    assert skipped["mean_doubles"].predictions is None and "no double" in skipped["mean_doubles"].notes["skipped"]


def test_fit_predict_refuses_unknown_names_and_test_data():
    means, split = additive_dataset()
    with pytest.raises(ValueError, match=r"unknown baseline\(s\) nope"):
        fit_predict(["nope"], means, split, control="ctrl", genes_of=genes_of, gene_index={})
    with pytest.raises(ValueError, match=r"baseline_splits: 'test' not allowed"):
        fit_predict(["mean"], means, split, control="ctrl", genes_of=genes_of, gene_index={},
                    fit_splits=["train", "test"])


def test_linear_is_skipped_when_no_perturbed_gene_is_measured():
    means, split = additive_dataset()  # perturbed genes A..E are not among the measured g0..g11
    result = fit_predict(["linear", "mean"], means, split, control="ctrl", genes_of=genes_of, gene_index={})
    assert result["linear"].predictions is None
    assert "no perturbation embedding" in result["linear"].notes["skipped"]
    assert result["mean"].predictions is not None


def test_mean_target_moves_only_the_perturbed_gene_by_the_fitting_singles_own_change():
    genes = ["A", "B", "C", "D", "x1", "x2"]
    rng = np.random.default_rng(3)
    ctrl = rng.uniform(1, 3, size=len(genes))
    rows = {"ctrl": ctrl}
    own_change = {"A": -1.0, "B": -2.0, "C": -0.5, "D": -4.0}
    for g, change in own_change.items():
        row = ctrl + rng.normal(scale=0.3, size=len(genes))
        row[genes.index(g)] = ctrl[genes.index(g)] + change
        rows[f"{g}+ctrl"] = row
    rows["Z+ctrl"] = ctrl + 0.1  # a perturbed gene that is not measured
    means = pd.DataFrame(rows, index=genes).T
    split = pd.DataFrame({"condition": ["A+ctrl", "B+ctrl", "C+ctrl", "D+ctrl", "Z+ctrl"],
                          "split": ["train", "train", "val", "test", "test"],
                          "subgroup": ["seen_single", "seen_single", "seen_single", "unseen_single", "unseen_single"]})
    index = {g: i for i, g in enumerate(genes)}
    result = fit_predict(["mean_target", "mean"], means, split, control="ctrl", genes_of=genes_of, gene_index=index)
    target, mean = result["mean_target"].predictions, result["mean"].predictions
    fitted_own = np.mean([-1.0, -2.0, -0.5])  # train and val singles; the test single's -4 is never read
    assert result["mean_target"].notes["own_target_change"] == pytest.approx(fitted_own)
    assert result["mean_target"].notes["n_fit_singles_with_measured_target"] == 3
    assert target.loc["D+ctrl", "D"] == pytest.approx(ctrl[3] + fitted_own)
    others = [g for g in genes if g != "D"]
    np.testing.assert_allclose(target.loc["D+ctrl", others], mean.loc["D+ctrl", others])
    np.testing.assert_allclose(target.loc["Z+ctrl"], mean.loc["Z+ctrl"])  # its gene is not measured: the mean
    unmeasured = fit_predict(["mean_target"], means, split, control="ctrl", genes_of=genes_of, gene_index={})
    np.testing.assert_allclose(unmeasured["mean_target"].predictions, mean)


def test_every_baseline_has_its_own_colour_in_the_figures():
    from grape.evaluation.plots import BASELINE_COLOURS, model_colours

    assert set(BASELINES) <= set(BASELINE_COLOURS)
    colours = model_colours(["grape", "grape_no_gsl", *BASELINES])
    assert len(set(colours.values())) == len(colours)
