"""Metrics: hand-computed small cases for each one, the registry, and agreement with GEARS / cell-eval."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from grape.evaluation.metrics import HEADLINE, METRICS, Panel, pearson, registry_table, score

DATA = Path(__file__).parent / "data"


def panel(pred, truth, control, *, std=None, ranked=None, non_dropout=None, targets=(), n_de=20) -> Panel:
    pred, truth = np.atleast_2d(np.asarray(pred, float)), np.atleast_2d(np.asarray(truth, float))
    c, g = truth.shape
    return Panel(
        conditions=tuple(f"c{i}" for i in range(c)),
        pred=pred, truth=truth,
        truth_std=np.zeros_like(truth) if std is None else np.atleast_2d(np.asarray(std, float)),
        control=np.asarray(control, float),
        de_ranked=tuple(np.asarray(r) for r in (ranked or [np.arange(g)] * c)),
        de_non_dropout=tuple(np.asarray(r) for r in (non_dropout or [np.arange(g)] * c)),
        targets=tuple(np.asarray(t, dtype=np.int64) for t in targets),
        n_de=n_de,
    )


# A condition of 6 genes: control c, observed change td, predicted change pd.
CONTROL = np.array([1.0, 2.0, 1.0, 0.0, 1.0, 1.0])
TD = np.array([2.0, -1.0, 0.0, 1.0, 0.0, 0.0])
PD = np.array([1.0, 0.0, 0.0, 0.0, 0.0, -1.0])
RANKED = [np.array([0, 1, 3, 5, 2, 4])]


def six_gene_scores(n_de: int = 3):
    return score(panel(CONTROL + PD, CONTROL + TD, CONTROL, ranked=RANKED, n_de=n_de)).iloc[0]


def test_expression_metrics_by_hand():
    got = six_gene_scores()
    # pred - truth = (-1, 1, 0, -1, 0, -1)
    assert got["mse"] == pytest.approx(4 / 6)
    assert got["rmse"] == pytest.approx(math.sqrt(4 / 6))
    # truth (3,1,1,1,1,1), pred (2,2,1,0,1,0): cov 2, |t|^2 10/3, |p|^2 4
    assert got["pearson"] == pytest.approx(math.sqrt(0.3))
    # deltas: centred td (5,-4,-1,2,-1,-1)/3, pd (1,0,0,0,0,-1): cov 2, 16/3, 2
    assert got["pearson_delta"] == pytest.approx(math.sqrt(3 / 8))


def test_de_metrics_use_the_first_ranked_genes():
    got = six_gene_scores(n_de=3)  # genes 0, 1, 3
    assert got["mse_de"] == pytest.approx(1.0)  # (1 + 1 + 1) / 3
    assert got["pearson_de"] == pytest.approx(0.5)  # pred (2,2,0) vs truth (3,1,1)
    assert got["pearson_delta_de"] == pytest.approx(2 / math.sqrt(7))  # (1,0,0) vs (2,-1,1)


def test_direction_on_all_genes_counts_both_unchanged_as_correct():
    got = six_gene_scores()
    # signs: truth (+,-,0,+,0,0), pred (+,0,0,0,0,-): genes 0, 2, 4 agree
    assert got["frac_correct_direction_all"] == pytest.approx(0.5)
    assert got["direction_acc"] == pytest.approx(0.5)


def test_direction_on_top_ranked_genes():
    g = 25
    control = np.zeros(g)
    truth = np.ones(g)
    pred = np.ones(g)
    wrong = np.array([3, 7, 11, 15, 19])
    pred[wrong] = -1.0
    ranked = [np.concatenate([np.setdiff1d(np.arange(g), wrong), wrong])]  # the 5 wrong genes rank last
    got = score(panel(pred, truth, control, ranked=ranked)).iloc[0]
    assert got["frac_correct_direction_20"] == 1.0
    assert got["direction_acc_de20"] == 1.0
    assert got["frac_correct_direction_all"] == pytest.approx(20 / 25)
    # fewer genes than N: the fraction is over the genes there are (GEARS would divide by N)
    for name in ("frac_correct_direction_50", "frac_correct_direction_100", "frac_correct_direction_200",
                 "direction_acc_de40"):
        assert got[name] == pytest.approx(20 / 25), name


def test_opposite_direction_and_mse_on_non_dropout_de_genes():
    truth, pred = [1.0, -1.0, 2.0, 0.0, 9.0], [-1.0, -1.0, 0.0, 3.0, -9.0]
    got = score(panel(pred, truth, np.zeros(5), non_dropout=[np.array([0, 1, 2, 3])], n_de=20)).iloc[0]
    # signs truth (+,-,+,0), pred (-,-,0,+): |difference| (2,0,1,1); gene 4 is not a non-dropout DE gene
    assert got["frac_opposite_direction_top20_non_dropout"] == pytest.approx(0.25)
    assert got["mse_top20_de_non_dropout"] == pytest.approx((4 + 0 + 4 + 9) / 4)


def test_frac_sigma_below_1():
    mean, std = [1.0, 2.0, 0.0, 3.0], [0.5, 1.0, 0.0, 0.5]
    pred = [1.4, 4.0, 5.0, 3.6]  # 0.8 sigma, 2 sigma, (gene without variation: left out), 1.2 sigma
    got = score(panel(pred, mean, np.zeros(4), std=std)).iloc[0]
    assert got["frac_sigma_below_1_non_dropout"] == pytest.approx(1 / 3)


def test_frac_sigma_below_1_is_undefined_without_variation():
    all_zero = score(panel([1.0, 2.0], [0.0, 0.0], np.ones(2), std=[0.0, 0.0])).iloc[0]
    assert np.isnan(all_zero["frac_sigma_below_1_non_dropout"])
    constant = score(panel([1.0, 2.0], [1.0, 0.0], np.ones(2), std=[0.0, 0.0])).iloc[0]
    assert np.isnan(constant["frac_sigma_below_1_non_dropout"])


def test_undefined_correlation_counts_as_zero_as_in_gears():
    control = np.array([1.0, 2.0, 3.0])
    got = score(panel(control.copy(), [1.5, 2.0, 2.0], control)).iloc[0]  # the no-change prediction
    assert got["pearson_delta"] == 0.0
    assert got["pearson_delta_de"] == 0.0
    assert got["frac_correct_direction_all"] == pytest.approx(1 / 3)  # only the unchanged gene "agrees"
    assert pearson(np.ones(4), np.arange(4.0)) == 0.0


def test_discrimination_score_by_hand():
    truth = np.eye(3)  # observed effects of three conditions (control 0)
    pred = np.array([[0.9, 0.0, 0.0],   # closest to its own effect: rank 0 -> 1
                     [1.0, 0.6, 0.0],   # L1 0.6 to condition 0, 1.4 to its own: rank 1 -> 2/3
                     [0.0, 0.0, 0.0]])  # L1 1 to every one: ties keep the order, rank 2 -> 1/3
    got = score(panel(pred, truth, np.zeros(3)), ["discrimination_score_l1"])["discrimination_score_l1"]
    np.testing.assert_allclose(got.to_numpy(), [1.0, 2 / 3, 1 / 3])
    # leaving out condition 1's perturbed gene (gene 0): L1 0.6 to condition 0, 0.4 to its own -> rank 0
    targeted = score(panel(pred, truth, np.zeros(3), targets=[[], [0], []]), ["discrimination_score_l1"])
    np.testing.assert_allclose(targeted["discrimination_score_l1"].to_numpy(), [1.0, 1.0, 1 / 3])


def test_perfect_prediction_scores_best_everywhere():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(4, 30)) + 2
    std = rng.uniform(0.1, 1.0, size=truth.shape)
    ranked = [rng.permutation(30) for _ in range(4)]
    got = score(panel(truth.copy(), truth, np.full(30, 2.0), std=std, ranked=ranked, non_dropout=ranked))
    for name, metric in METRICS.items():
        assert got[name].to_numpy() == pytest.approx(metric.best), name


def test_registry_lists_the_issue_metrics_with_best_and_direction():
    expected = {
        "mse", "pearson", "mse_de", "pearson_de", "pearson_delta", "pearson_delta_de",
        "frac_correct_direction_all", "frac_correct_direction_20", "frac_correct_direction_50",
        "frac_correct_direction_100", "frac_correct_direction_200", "frac_opposite_direction_top20_non_dropout",
        "frac_sigma_below_1_non_dropout", "mse_top20_de_non_dropout", "rmse", "direction_acc",
        "direction_acc_de20", "direction_acc_de40", "discrimination_score_l1",
    }
    assert set(METRICS) == expected
    assert METRICS["mse"].best == 0.0 and not METRICS["mse"].higher_is_better
    assert METRICS["pearson_delta"].best == 1.0 and METRICS["pearson_delta"].higher_is_better
    assert not METRICS["frac_opposite_direction_top20_non_dropout"].higher_is_better
    assert METRICS["discrimination_score_l1"].higher_is_better
    table = registry_table()
    assert set(table["metric"]) == expected and table["source"].str.len().min() > 0
    assert set(HEADLINE) <= expected


def test_grape_aliases_equal_gears_metrics():
    rng = np.random.default_rng(1)
    truth, pred = rng.normal(size=(5, 60)), rng.normal(size=(5, 60))
    ranked = [rng.permutation(60) for _ in range(5)]
    got = score(panel(pred, truth, rng.normal(size=60), ranked=ranked))
    np.testing.assert_array_equal(got["direction_acc"], got["frac_correct_direction_all"])
    np.testing.assert_array_equal(got["direction_acc_de20"], got["frac_correct_direction_20"])


def test_panel_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"Panel.control"):
        panel([[1.0, 2.0]], [[1.0, 2.0]], np.zeros(3))
    with pytest.raises(KeyError, match=r"unknown metric"):
        score(panel([1.0, 2.0], [1.0, 2.0], np.zeros(2)), ["nope"])


# --------------------------------------------------------------------------- GEARS and cell-eval


def reference() -> dict:
    return json.loads((DATA / "gears_reference.json").read_text())


def reference_panel(ref: dict, targets_by: dict[str, int] | None = None) -> Panel:
    """Our Panel for the reference case: means over its cells, its uns DE entries."""
    case, cell_type = ref["case"], ref["cell_type"]
    x, labels = np.asarray(case["x"]), np.asarray(case["labels"])
    genes = {g: i for i, g in enumerate(case["genes"])}
    conds = list(case["pred"])
    keys = [f"{cell_type}_{c}_1+1" for c in conds]
    return Panel(
        conditions=tuple(conds),
        pred=np.vstack([np.asarray(case["pred"][c]).mean(axis=0) for c in conds]),
        truth=np.vstack([x[labels == c].mean(axis=0) for c in conds]),
        truth_std=np.vstack([x[labels == c].std(axis=0) for c in conds]),
        control=x[labels == "ctrl"].mean(axis=0),
        de_ranked=tuple(np.array([genes[g] for g in ref["uns"]["rank_genes_groups_cov_all"][k][:200]]) for k in keys),
        de_non_dropout=tuple(np.array([genes[g] for g in ref["uns"]["top_non_dropout_de_20"][k]]) for k in keys),
        targets=tuple(np.array([targets_by[c]] if targets_by and c in targets_by else [], dtype=np.int64)
                      for c in conds),
    )


def assert_matches(ours, theirs: dict) -> None:
    for cond, values in theirs.items():
        for name, value in values.items():
            got = ours.loc[cond, name]
            if value is None:
                assert np.isnan(got), (cond, name)
            else:
                assert got == pytest.approx(value, rel=1e-9, abs=1e-12), (cond, name, got, value)


def test_matches_gears_reference_values():
    """Our metrics equal GEARS' own functions (cell-gears 0.1.2) on the checked-in case.

    The expected values were computed by GEARS itself (tests/data/make_gears_reference.py,
    run in a separate environment with cell-gears installed); this test needs no GEARS.
    """
    ref = reference()
    assert ref["versions"]["cell-gears"] == "0.1.2"
    ours = score(reference_panel(ref))
    assert len(ref["gears"]) == 4 and len(next(iter(ref["gears"].values()))) == 14
    assert_matches(ours, ref["gears"])


def test_matches_cell_eval_discrimination_reference():
    ref = reference()
    if ref["cell_eval"] is None:
        pytest.skip("the reference file holds no cell-eval values")
    labels = ref["cell_eval"]["labels"]
    genes = {g: i for i, g in enumerate(ref["case"]["genes"])}
    targets = {c: genes[label] for c, label in labels.items() if label in genes}  # cell-eval drops these
    ours = score(reference_panel(ref, targets), ["discrimination_score_l1"])["discrimination_score_l1"]
    theirs = ref["cell_eval"]["discrimination_score_l1"]
    for cond in ours.index:
        assert ours[cond] == pytest.approx(theirs[labels[cond]]), cond


def test_matches_gears_live():
    """The same comparison against GEARS imported here, when cell-gears is installed (it is not a dependency)."""
    pytest.importorskip("gears.inference", reason="cell-gears is not installed (optional: it pulls scanpy and "
                                                  "torch-geometric); the checked-in reference values are compared above")
    spec = importlib.util.spec_from_file_location("make_gears_reference", DATA / "make_gears_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ref = reference()
    uns = {k: {kk: np.asarray(vv) for kk, vv in v.items()} for k, v in ref["uns"].items()}
    assert_matches(score(reference_panel(ref)), module.gears_values(ref["case"], uns))
