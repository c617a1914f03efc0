"""train.calibrate: shrinkage toward the mean / additive baselines fitted on validation rows."""

import numpy as np
import pandas as pd
import pytest
import torch

from grape.model.calibrate import calibrate, gene_factors, shrink_factor
from grape.model.train import Options, Problem

# nodes 0..3 are genes A, B, C, D; rows: singles A, B, C, D and doubles A+B, A+C, C+D
CONDITIONS = ["A", "B", "C", "D", "A+B", "A+C", "C+D"]
PERTURBED = [[0, -1], [1, -1], [2, -1], [3, -1], [0, 1], [0, 2], [2, 3]]
SPLIT = {"A": "train", "B": "train", "C": "val", "D": "test", "A+B": "val", "A+C": "test", "C+D": "train"}


def problem(delta: np.ndarray) -> Problem:
    return Problem(CONDITIONS, torch.tensor(PERTURBED), torch.as_tensor(delta, dtype=torch.float32),
                   np.full((1, delta.shape[1]), 2.0, dtype=np.float32), torch.arange(delta.shape[1]),
                   [f"g{i}" for i in range(delta.shape[1])])


def split_table() -> pd.DataFrame:
    return pd.DataFrame({"condition": list(SPLIT), "split": list(SPLIT.values())})


@pytest.fixture
def observed() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(len(CONDITIONS), 6)).astype(np.float32)


def anchors(observed: np.ndarray) -> dict[str, np.ndarray]:
    """The baselines each non-training row is shrunk toward, written out by hand."""
    train = [0, 1, 6]  # A, B, C+D
    fit = [0, 1, 2, 4, 6]  # and the validation rows C, A+B
    return {"C": observed[train].mean(0), "D": observed[fit].mean(0),
            "A+B": observed[0] + observed[1], "A+C": observed[0] + observed[2]}


def test_the_factor_is_recovered_and_clipped():
    rng = np.random.default_rng(1)
    anchor, truth = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    assert shrink_factor(anchor + 2.0 * (truth - anchor), anchor, truth) == pytest.approx(0.5)
    assert shrink_factor(anchor - (truth - anchor), anchor, truth) == 0.0  # pointing away: the baseline
    assert shrink_factor(anchor + 0.5 * (truth - anchor), anchor, truth) == 1.0  # never beyond the model
    assert shrink_factor(anchor, anchor, truth) == 1.0  # no step: nothing to shrink


def test_calibration_fits_each_kind_on_validation_and_leaves_training_rows(observed):
    base = anchors(observed)
    row = {c: i for i, c in enumerate(CONDITIONS)}
    pred = observed.copy()  # training rows: exact; others: anchor + factor * (truth - anchor)
    for cond, factor in (("C", 2.0), ("D", 3.0), ("A+B", 4.0), ("A+C", 1.5)):
        pred[row[cond]] = base[cond] + factor * (observed[row[cond]] - base[cond])
    out, fitted = calibrate(problem(observed), split_table(), pred + 2.0)
    out -= 2.0
    assert fitted.lam == pytest.approx({"singles": 0.5, "doubles": 0.25})
    assert fitted.n_val_rows == {"singles": 1, "doubles": 1}
    np.testing.assert_allclose(out[[0, 1, 6]], pred[[0, 1, 6]], atol=1e-6)  # training rows untouched
    np.testing.assert_allclose(out[row["C"]], observed[row["C"]], atol=1e-5)  # its own fit: exact
    np.testing.assert_allclose(out[row["A+B"]], observed[row["A+B"]], atol=1e-5)
    # test rows: their own anchors (training and validation rows) with the validation factors
    np.testing.assert_allclose(out[row["D"]], base["D"] + 0.5 * 3.0 * (observed[row["D"]] - base["D"]), atol=1e-5)
    np.testing.assert_allclose(out[row["A+C"]], base["A+C"] + 0.25 * 1.5 * (observed[row["A+C"]] - base["A+C"]),
                               atol=1e-5)


def test_a_zero_factor_is_exactly_the_baselines(observed):
    base = anchors(observed)
    row = {c: i for i, c in enumerate(CONDITIONS)}
    pred = observed.copy()
    for cond in ("C", "A+B"):  # validation predictions that point away from the truth
        pred[row[cond]] = base[cond] - (observed[row[cond]] - base[cond])
    pred[row["D"]] += 5.0
    pred[row["A+C"]] -= 5.0
    out, fitted = calibrate(problem(observed), split_table(), pred + 2.0)
    out -= 2.0
    assert fitted.lam == {"singles": 0.0, "doubles": 0.0}
    np.testing.assert_allclose(out[row["D"]], base["D"], atol=1e-6)  # the mean of the fitting conditions
    np.testing.assert_allclose(out[row["A+C"]], base["A+C"], atol=1e-6)  # additive


def test_without_validation_rows_of_a_kind_the_model_stays(observed):
    split = split_table().assign(split=lambda t: t["split"].replace({"val": "train"}))
    pred = observed + 3.0
    out, fitted = calibrate(problem(observed), split, pred)
    assert fitted.lam == {"singles": 1.0, "doubles": 1.0} and fitted.n_val_rows == {"singles": 0, "doubles": 0}
    np.testing.assert_allclose(out, pred, atol=1e-6)


def test_the_default_calibrates_on_validation_per_gene():
    assert Options().calibrate == "validation_gene" and Options().calibrate_scale == "doubles"
    assert Options().calibrate_anchor == "mean_target"


def test_per_gene_factors_keep_real_steps_and_drop_noise():
    rng = np.random.default_rng(2)
    n, g = 40, 60
    anchor, step = rng.normal(size=(n, g)), rng.normal(size=(n, g))
    truth = anchor + rng.normal(scale=0.1, size=(n, g))
    truth[:, :30] += step[:, :30]  # genes 0-29: the model's step is real; genes 30-59: it is noise
    lam, tau2 = gene_factors(anchor + step, anchor, truth)
    assert tau2 > 0.1
    assert lam[:30].min() > 0.9 and lam[30:].max() < 0.15
    single = shrink_factor(anchor + step, anchor, truth)
    assert 0.3 < single < 0.7  # one factor for all: half of every step, right for no gene


def test_per_gene_factors_pool_to_the_single_factor_when_genes_agree():
    rng = np.random.default_rng(3)
    n, g = 30, 50
    anchor, step = rng.normal(size=(n, g)), rng.normal(size=(n, g))
    truth = anchor + 0.6 * step + rng.normal(scale=0.5, size=(n, g))  # one factor, noise alike in every gene
    lam, tau2 = gene_factors(anchor + step, anchor, truth)
    single = shrink_factor(anchor + step, anchor, truth)
    assert tau2 == 0.0 and np.allclose(lam, single)
    one_row, _ = gene_factors(anchor[:1] + step[:1], anchor[:1], truth[:1])  # too few rows: the single factor
    assert np.allclose(one_row, shrink_factor(anchor[:1] + step[:1], anchor[:1], truth[:1]))


def test_per_gene_calibration_applies_each_genes_factor(observed):
    base = anchors(observed)
    row = {c: i for i, c in enumerate(CONDITIONS)}
    pred = observed.copy()
    for cond in ("C", "D", "A+B", "A+C"):
        pred[row[cond]] = base[cond] + 2.0 * (observed[row[cond]] - base[cond])
    out, fitted = calibrate(problem(observed), split_table(), pred + 2.0, per_gene=True)
    plain, _ = calibrate(problem(observed), split_table(), pred + 2.0)
    # one validation row of each kind: no between-gene variance can be estimated, so validation's factor
    np.testing.assert_allclose(out, plain, atol=1e-6)
    assert fitted.record()["per_gene"]["doubles"]["quantiles"]["0.5"] == pytest.approx(0.5)
    assert fitted.tau2 == {"singles": 0.0, "doubles": 0.0}


def test_the_doubles_are_scaled_to_the_observed_size_on_validation(observed):
    base = anchors(observed)
    row = {c: i for i, c in enumerate(CONDITIONS)}
    pred = observed.copy()
    for cond in ("C", "D", "A+B", "A+C"):  # predictions shrunk toward the centre: half the observed size
        pred[row[cond]] = base[cond] + 1.0 * (0.5 * observed[row[cond]] - base[cond])
    plain, _ = calibrate(problem(observed), split_table(), pred + 2.0)
    out, fitted = calibrate(problem(observed), split_table(), pred + 2.0, scale=("doubles",))
    plain, out = plain - 2.0, out - 2.0
    factor = np.abs(observed[row["A+B"]]).sum() / np.abs(plain[row["A+B"]]).sum()
    assert fitted.scale == pytest.approx({"doubles": factor}) and fitted.record()["scale"] == fitted.scale
    np.testing.assert_allclose(np.abs(out[row["A+B"]]).sum(), np.abs(observed[row["A+B"]]).sum(), rtol=1e-5)
    np.testing.assert_allclose(out[row["A+C"]], factor * plain[row["A+C"]], rtol=1e-5, atol=1e-5)  # test double: same factor
    singles_and_training = [row[c] for c in ("A", "B", "C", "D", "C+D")]
    np.testing.assert_allclose(out[singles_and_training], plain[singles_and_training], atol=1e-6)
    assert calibrate(problem(observed), split_table(), pred + 2.0)[1].record().get("scale") is None


def test_the_mean_target_anchor_keeps_the_own_target_change_of_a_single(observed):
    base = anchors(observed)
    row = {c: i for i, c in enumerate(CONDITIONS)}
    own = {"C": base["C"].copy(), "D": base["D"].copy()}  # node i is column i: A..D are measured genes
    own["C"][2] = np.mean([observed[0, 0], observed[1, 1]])  # C on validation: the training singles A, B
    own["D"][3] = np.mean([observed[0, 0], observed[1, 1], observed[2, 2]])  # D on test: A, B and C
    pred = observed.copy()
    pred[row["C"]] = own["C"] - (observed[row["C"]] - own["C"])  # pointing away: factor 0
    pred[row["D"]] += 5.0
    out, fitted = calibrate(problem(observed), split_table(), pred + 2.0, anchor="mean_target")
    out -= 2.0
    assert fitted.lam["singles"] == 0.0
    np.testing.assert_allclose(out[row["D"]], own["D"], atol=1e-6)  # the mean, with D's own gene at the singles' own change
    np.testing.assert_allclose(out[row["C"]], own["C"], atol=1e-6)
    plain, _ = calibrate(problem(observed), split_table(), pred + 2.0)
    assert not np.allclose(plain[row["D"]] - 2.0, own["D"])  # the default anchor is the plain mean
    with pytest.raises(ValueError, match="calibrate_anchor"):
        calibrate(problem(observed), split_table(), pred + 2.0, anchor="median")


# doubles with one fitting single: B+C validates (C is a validation single, so not fitting for it),
# A+D is a test double (D is a test single)
SEEN1 = {"A": "train", "B": "train", "C": "val", "D": "test", "A+B": "train", "B+C": "val", "A+D": "test"}
SEEN1_PERTURBED = [[0, -1], [1, -1], [2, -1], [3, -1], [0, 1], [1, 2], [0, 3]]


def seen1_problem(delta: np.ndarray) -> tuple[Problem, pd.DataFrame]:
    problem = Problem(list(SEEN1), torch.tensor(SEEN1_PERTURBED), torch.as_tensor(delta, dtype=torch.float32),
                      np.full((1, delta.shape[1]), 2.0, dtype=np.float32), torch.arange(delta.shape[1]),
                      [f"g{i}" for i in range(delta.shape[1])])
    return problem, pd.DataFrame({"condition": list(SEEN1), "split": list(SEEN1.values())})


def assert_kind_fitted(problem: Problem, split: pd.DataFrame, pred: np.ndarray, observed: np.ndarray, kind: str,
                       rows: tuple[str, str, dict], test_anchor: np.ndarray, n_val: int, **option: str) -> None:
    """``kind``'s factor is 0.25 from its ``n_val`` validation rows: the validation double (``rows[0]``,
    predicted at four times its step) comes out exact, the test double (``rows[1]``, predicted at its
    anchor + 3) at its anchor + 0.75; without ``option`` both are left as predicted."""
    val, test, row = rows
    out, fitted = calibrate(problem, split, pred + 2.0, anchor="mean_target", **option)
    out -= 2.0
    assert fitted.lam[kind] == pytest.approx(0.25) and fitted.n_val_rows[kind] == n_val
    np.testing.assert_allclose(out[row[val]], observed[row[val]], atol=1e-5)
    np.testing.assert_allclose(out[row[test]], test_anchor + 0.75, atol=1e-5)  # the test double: the same factor
    plain, plain_fit = calibrate(problem, split, pred + 2.0, anchor="mean_target")
    np.testing.assert_allclose(plain[[row[val], row[test]]] - 2.0, pred[[row[val], row[test]]], atol=1e-6)
    assert kind not in plain_fit.lam  # without it, such doubles are left as predicted


@pytest.mark.parametrize("seen1", ["additive", "additive_mean"])
def test_doubles_with_one_fitting_single_shrink_toward_it(observed, seen1):
    problem, split = seen1_problem(observed)
    row = {c: i for i, c in enumerate(SEEN1)}
    anchor = {"B+C": observed[row["B"]].copy(), "A+D": observed[row["A"]].copy()}  # the seen single's change
    if seen1 == "additive_mean":  # plus the mean of the fitting singles, the unseen gene's own column at their own change
        anchor["B+C"] += observed[[0, 1]].mean(0)
        anchor["B+C"][2] = observed[1, 2] + np.mean([observed[0, 0], observed[1, 1]])
        anchor["A+D"] += observed[[0, 1, 2]].mean(0)
        anchor["A+D"][3] = observed[0, 3] + np.mean([observed[0, 0], observed[1, 1], observed[2, 2]])
    pred = observed.copy()
    pred[row["B+C"]] = anchor["B+C"] + 4.0 * (observed[row["B+C"]] - anchor["B+C"])  # factor 0.25 on validation
    pred[row["A+D"]] = anchor["A+D"] + 3.0
    assert_kind_fitted(problem, split, pred, observed, "seen1", ("B+C", "A+D", row), anchor["A+D"], 1, seen1=seen1)
    with pytest.raises(ValueError, match="calibrate_seen1"):
        calibrate(problem, split, pred + 2.0, seen1="mean")


def test_the_default_calibrates_doubles_with_one_seen_single_toward_it_plus_the_mean():
    assert Options().calibrate_seen1 == "additive_mean"


# doubles with no fitting single: C+D validates (C and D are validation singles), E+F is a test double
SEEN0 = {"A": "train", "B": "train", "C": "val", "D": "val", "E": "test", "F": "test",
         "A+B": "train", "C+D": "val", "E+F": "test"}
SEEN0_PERTURBED = [[0, -1], [1, -1], [2, -1], [3, -1], [4, -1], [5, -1], [0, 1], [2, 3], [4, 5]]


@pytest.mark.parametrize("seen0", ["mean", "mean_doubles", "additive_mean"])
def test_doubles_with_no_fitting_single_shrink_toward_their_baseline(seen0):
    observed = np.random.default_rng(3).normal(size=(len(SEEN0), 7)).astype(np.float32)
    problem = Problem(list(SEEN0), torch.tensor(SEEN0_PERTURBED), torch.as_tensor(observed),
                      np.full((1, 7), 2.0, dtype=np.float32), torch.arange(7), [f"g{i}" for i in range(7)])
    split = pd.DataFrame({"condition": list(SEEN0), "split": list(SEEN0.values())})
    row = {c: i for i, c in enumerate(SEEN0)}

    def baseline(fit: list[str], pair: tuple[int, int]) -> np.ndarray:  # written out by hand
        singles = [c for c in fit if "+" not in c]
        own = np.mean([observed[row[c], row[c]] for c in singles])
        mean_singles = observed[[row[c] for c in singles]].mean(0)
        out = {"mean": observed[[row[c] for c in fit]].mean(0),
               "mean_doubles": observed[[row[c] for c in fit if "+" in c]].mean(0),
               "additive_mean": 2.0 * mean_singles}[seen0]
        for g in pair:  # the own measured targets: the fitting singles' mean own change
            out[g] = own + (mean_singles[g] if seen0 == "additive_mean" else 0.0)
        return out

    anchor = {"C+D": baseline(["A", "B", "A+B"], (2, 3)),
              "E+F": baseline(["A", "B", "C", "D", "A+B", "C+D"], (4, 5))}
    for single in "CD":  # the validation singles' anchor: the mean of the training rows, the own target moved
        anchor[single] = observed[[row["A"], row["B"], row["A+B"]]].mean(0)
        anchor[single][row[single]] = np.mean([observed[row["A"], 0], observed[row["B"], 1]])
    pred = observed.copy()
    for cond in ("C+D", "C", "D"):  # factor 0.25 on validation, which the seen0 factor pools with the singles
        pred[row[cond]] = anchor[cond] + 4.0 * (observed[row[cond]] - anchor[cond])
    pred[row["E+F"]] = anchor["E+F"] + 3.0
    assert_kind_fitted(problem, split, pred, observed, "seen0", ("C+D", "E+F", row), anchor["E+F"], 3, seen0=seen0)
    pred[row["C+D"]] = observed[row["C+D"]]  # the double alone would say: keep the model (factor 1)
    _, pooled = calibrate(problem, split, pred + 2.0, anchor="mean_target", seen0=seen0)
    alone = shrink_factor(pred[[row["C+D"]]], anchor["C+D"][None], observed[[row["C+D"]]])
    assert alone == 1.0 and 0.25 < pooled.lam["seen0"] < 1.0  # the singles pull it toward theirs
    with pytest.raises(ValueError, match="calibrate_seen0"):
        calibrate(problem, split, pred + 2.0, seen0="additive")


def test_the_default_calibrates_doubles_with_no_seen_single_toward_twice_the_singles_mean():
    assert Options().calibrate_seen0 == "additive_mean"
