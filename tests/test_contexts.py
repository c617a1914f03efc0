"""Cell states (contexts) and the gene identity (mapping.tsv) in train and evaluate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from grape.evaluation import evaluate
from grape.stages import evaluate as evaluate_stage

from grape.model import train
from grape.stages import train as train_stage
from grape.graph.build import load_graph
from grape.data.dataset import DatasetError, pseudobulk, pseudobulk_by_context
from grape.annotation.identity import GeneIdentity
from grape.model.gnn import GRAPE, GraphTensors, ModelConfig
from test_train import make_graph

REPO = Path(__file__).resolve().parents[1]
GENES = [f"G{i:02d}" for i in range(16)]
SINGLES = GENES[:6]
CONDS = ["ctrl", *[f"{g}+ctrl" for g in SINGLES], "G00+G01", "G02+G03", "G04+G05"]
SPLIT = pd.DataFrame({
    "condition": [c for c in CONDS if c != "ctrl"],
    "split": ["train", "train", "train", "train", "test", "val", "val", "test", "test"],
    "subgroup": ["seen_single"] * 4 + ["unseen_single", "unseen_single", "combo_seen2", "combo_seen2",
                                        "combo_seen1"],
})
FAST = dataclasses.replace(train.Options(), epochs=3, patience=3, hidden=8, batch_size=4, layers=1, device="cpu",
                           seed=0, pretrain_epochs=1, gsl_k=3, gsl_heads=1, network_k=2, context_key="stimulation")
SHIFT = {"rest": 0.0, "stim": 2.0}  # stimulated cells express every gene 2 higher


def two_context_dataset(path: Path, *, cells: int = 4, genes: list[str] = GENES, extra_var: list[str] = (),
                        conds: list[str] = CONDS, seed: int = 0) -> ad.AnnData:
    """Every condition in both states; a perturbed gene drops by 1 at rest and by 2 when stimulated."""
    rng = np.random.default_rng(seed)
    names = [*genes, *extra_var]
    base = rng.uniform(2.0, 4.0, size=len(names))
    rows, labels, states = [], [], []
    for state, shift in SHIFT.items():
        for cond in conds:
            for _ in range(cells):
                x = base + shift + 0.05 * rng.normal(size=len(names))
                for g in cond.split("+"):
                    if g in genes:
                        x[names.index(g)] -= 1.0 + shift / 2
                rows.append(x)
                labels.append(cond)
                states.append(state)
    adata = ad.AnnData(
        X=np.clip(np.array(rows), 0, None).astype(np.float32),
        obs=pd.DataFrame({"condition": labels, "stimulation": states, "cell_type": "jurkat"},
                         index=[f"c{i}" for i in range(len(rows))]),
        var=pd.DataFrame({"gene_name": names}, index=names),
    )
    adata.write_h5ad(path)
    return adata


def write_split(path: Path, table: pd.DataFrame = SPLIT) -> Path:
    table.to_csv(path, sep="\t", index=False)
    return path


def write_mapping(path: Path, measured: list[str], *, aliases: dict[str, str] | None = None, excluded: list[str] = (),
                  perturbed_only: list[str] = ()) -> Path:
    """A mapping.tsv as `grape annotate` writes it (the columns GeneIdentity reads, and the rest empty)."""
    rows = []
    for name in measured:
        gone = name in excluded
        rows.append({"dataset_name": name, "var_name": name, "role": "measured",
                     "status": "excluded" if gone else "mapped", "node": "" if gone else name})
    for label, node in (aliases or {}).items():
        rows.append({"dataset_name": label, "var_name": "", "role": "perturbed", "status": "mapped", "node": node})
    for label in perturbed_only:
        rows.append({"dataset_name": label, "var_name": "", "role": "perturbed", "status": "mapped", "node": label})
    table = pd.DataFrame(rows)
    for col in ("gene_id", "matched_by", "evidence", "symbol", "release"):
        table[col] = ""
    table.to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture(scope="module")
def two_contexts(tmp_path_factory):
    root = tmp_path_factory.mktemp("contexts")
    adata = two_context_dataset(root / "data.h5ad")
    make_graph(root / "graph.safetensors", GENES)
    write_split(root / "split.tsv")
    train_stage.run(options=FAST, dataset=root / "data.h5ad", graph=root / "graph.safetensors", split=root / "split.tsv",
              out_dir=root / "train" / "full")
    return root, adata


# --------------------------------------------------------------------------- data and problem


def test_each_context_has_its_own_pseudobulk_and_control(two_contexts):
    _, adata = two_contexts
    by_context = pseudobulk_by_context(adata, options=FAST)
    assert list(by_context) == ["rest", "stim"]
    for state, means in by_context.items():
        cells = adata[(adata.obs["stimulation"] == state) & (adata.obs["condition"] == "ctrl")]
        np.testing.assert_allclose(means.loc["ctrl"].to_numpy(), np.asarray(cells.X).mean(0), rtol=1e-6)
    gap = by_context["stim"].loc["ctrl"] - by_context["rest"].loc["ctrl"]
    assert gap.mean() == pytest.approx(SHIFT["stim"], abs=0.05)

    loaded = load_graph(two_contexts[0] / "graph.safetensors")
    problem = train.build_problem(adata, loaded, options=FAST)
    assert problem.contexts == ["rest", "stim"]
    assert len(problem.conditions) == 2 * (len(CONDS) - 1)
    for row, (cond, state) in enumerate(zip(problem.conditions, problem.row_contexts)):
        means = by_context[state]
        expected = means.loc[cond].to_numpy(np.float32) - means.loc["ctrl"].to_numpy(np.float32)
        np.testing.assert_array_equal(problem.delta[row].numpy(), expected)
    # the perturbed gene's own change is that of its context (-1 at rest, -2 stimulated)
    row = {(c, k): i for i, (c, k) in enumerate(zip(problem.conditions, problem.row_contexts))}
    assert float(problem.delta[row[("G00+ctrl", "rest")], 0]) == pytest.approx(-1.0, abs=0.1)
    assert float(problem.delta[row[("G00+ctrl", "stim")], 0]) == pytest.approx(-2.0, abs=0.1)
    with pytest.raises(ValueError, match="2 contexts"):
        problem.control


def test_a_context_without_control_is_refused(tmp_path):
    adata = two_context_dataset(tmp_path / "data.h5ad")
    bad = adata[~((adata.obs["stimulation"] == "stim") & (adata.obs["condition"] == "ctrl"))].copy()
    with pytest.raises(DatasetError, match=r"context 'stim' of obs\['stimulation'\] has no control rows"):
        pseudobulk_by_context(bad, options=FAST)


def test_dataset_without_the_context_column_is_one_context(tmp_path):
    adata = two_context_dataset(tmp_path / "data.h5ad")
    by_context = pseudobulk_by_context(adata, options=dataclasses.replace(FAST, context_key="donor"))
    assert list(by_context) == ["cell"]
    pd.testing.assert_frame_equal(by_context["cell"], pseudobulk(adata, options=FAST))


def test_graph_tensors_carry_one_context_per_state(tmp_path):
    make_graph(tmp_path / "g.safetensors", GENES[:8])
    loaded = load_graph(tmp_path / "g.safetensors")
    n = len(loaded.genes)
    control = np.stack([np.linspace(0, 1, n), np.linspace(0, 1, n) + 2]).astype(np.float32)
    flag = np.ones(n, np.float32)
    several = train.graph_tensors(loaded, control, flag)
    one = train.graph_tensors(loaded, control[0], flag)
    assert several.context.shape == (2, n, 2) and one.context.shape == (n, 2)
    assert several.num_contexts == 2 and one.num_contexts == 1
    # levels are z-scored over both states together: the stimulated state stays higher
    assert (several.context_of(1)[:, 0] > several.context_of(0)[:, 0]).all()
    pooled = torch.as_tensor(control).reshape(-1)
    expected = (pooled - pooled.mean()) / pooled.std()
    torch.testing.assert_close(several.context[..., 0].reshape(-1), expected)
    assert torch.equal(several.context[..., 1], torch.ones(2, n))


# --------------------------------------------------------------------------- model


def test_doubles_use_the_observed_singles_of_their_own_context():
    n = 6
    graph = GraphTensors(modalities={"text": torch.randn(n, 4), "dna": torch.randn(n, 3)},
                         context=torch.randn(2, n, 2), node_type=torch.zeros(n, dtype=torch.long), node_types=("gene",),
                         edge_index=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]), edge_weight=torch.ones(4))
    torch.manual_seed(0)
    model = GRAPE(num_nodes=n, modality_dims={"text": 4, "dna": 3}, context_dim=2, node_types=("gene",),
                  config=ModelConfig(hidden=8, layers=1, gsl=False)).eval()
    observed = torch.arange(4 * n, dtype=torch.float32).reshape(4, n)  # A, B at rest; A, B stimulated
    model.set_observed_singles(torch.tensor([0, 1, 0, 1]), observed, torch.ones(n, dtype=torch.bool),
                               contexts=torch.tensor([0, 0, 1, 1]), num_contexts=2)
    assert model.observed_row.shape == (2, n)
    pair = torch.tensor([[0, 1]])
    # the interaction correction starts at zero: a double is the sum of its context's observed singles
    torch.testing.assert_close(model(graph, pair, context=0)[0], observed[0] + observed[1])
    torch.testing.assert_close(model(graph, pair, context=1)[0], observed[2] + observed[3])
    # the single itself is predicted by the network, from its context's expression context
    single = torch.tensor([[2, -1]])
    assert not torch.allclose(model(graph, single, context=0), model(graph, single, context=1))


# --------------------------------------------------------------------------- train


def test_train_writes_one_row_per_context_and_condition(two_contexts):
    root, adata = two_contexts
    pred = ad.read_h5ad(root / "train" / "full" / "predictions.h5ad")
    assert list(pred.obs.columns) == ["condition", "context", "split", "subgroup"]
    assert pred.obs_names.is_unique and pred.n_obs == 2 * (len(CONDS) - 1)
    assert "G03+ctrl | stim" in pred.obs_names
    pairs = set(zip(pred.obs["condition"], pred.obs["context"]))
    assert pairs == {(c, k) for c in CONDS if c != "ctrl" for k in SHIFT}
    # the split is per condition label: a held-out perturbation is test in both contexts
    for cond in SPLIT.loc[SPLIT["split"] == "test", "condition"]:
        assert set(pred.obs.loc[pred.obs["condition"] == cond, "split"]) == {"test"}
        assert set(pred.obs.loc[pred.obs["condition"] == cond, "context"]) == set(SHIFT)
    # each row is its own context's control plus a change: stimulated rows sit ~2 higher
    x = np.asarray(pred.X)
    stim, rest = x[(pred.obs["context"] == "stim").to_numpy()], x[(pred.obs["context"] == "rest").to_numpy()]
    assert (stim.mean(1) - rest.mean(1)).mean() == pytest.approx(SHIFT["stim"], abs=0.3)
    meta = train.yaml.safe_load((root / "train" / "full" / "model.yaml").read_text())
    assert meta["contexts"] == ["rest", "stim"]
    model = train.load_model(root / "train" / "full" / "model.yaml", root / "train" / "full" / "model.safetensors")
    assert model.observed_row.shape[0] == 2


def test_training_is_deterministic_with_contexts(two_contexts, tmp_path):
    root, _ = two_contexts
    train_stage.run(options=FAST, dataset=root / "data.h5ad", graph=root / "graph.safetensors", split=root / "split.tsv",
              out_dir=tmp_path)
    a = ad.read_h5ad(root / "train" / "full" / "predictions.h5ad")
    b = ad.read_h5ad(tmp_path / "predictions.h5ad")
    assert np.array_equal(np.asarray(a.X), np.asarray(b.X))


REFERENCE_SPLIT = """condition	split	subgroup
G00+G03	test	combo_seen1
G00+ctrl	val	unseen_single
G01+G08	val	combo_seen1
G01+ctrl	val	unseen_single
G02+G01	val	combo_seen1
G02+ctrl	train	seen_single
G03+G06	test	combo_seen0
G03+ctrl	test	unseen_single
G04+G11	test	combo_seen2
G04+ctrl	train	seen_single
G05+G04	train	combo_seen2
G05+ctrl	train	seen_single
G06+ctrl	test	unseen_single
G07+ctrl	train	seen_single
G08+ctrl	train	seen_single
G09+ctrl	train	seen_single
G10+ctrl	test	unseen_single
G11+ctrl	train	seen_single
"""


@pytest.mark.parametrize("drop_context_column", [False, True])
def test_one_context_predictions_equal_those_before_contexts(tmp_path, drop_context_column):
    """tests/data/one_context_predictions.tsv was written by the code before contexts existed
    (commit c1d8a99) with these data, split and options; one context must give the same numbers.
    That code searched the learned graph on every step: ``gsl_refresh 1`` is that model (the
    default refreshes every 10 steps, measured neutral in BENCHMARKS.md), and ``singles network``
    (no kernel over observed singles then)."""
    import test_train as tt

    adata = tt.make_dataset(tmp_path / "data.h5ad", cells=4)
    if drop_context_column:  # no cell_type column at all: one context, the same numbers
        del adata.obs["cell_type"]
        adata.write_h5ad(tmp_path / "data.h5ad")
    tt.make_graph(tmp_path / "graph.safetensors", [*tt.GENES, "X1"])
    (tmp_path / "split.tsv").write_text(REFERENCE_SPLIT)
    opts = dataclasses.replace(tt.OPTIONS, epochs=4, pretrain_epochs=1, hidden=8, gsl_refresh=1,
                               singles="network")
    train_stage.run(options=opts, dataset=tmp_path / "data.h5ad", graph=tmp_path / "graph.safetensors",
              split=tmp_path / "split.tsv", out_dir=tmp_path / "out")
    pred = ad.read_h5ad(tmp_path / "out" / "predictions.h5ad")
    reference = pd.read_csv(REPO / "tests" / "data" / "one_context_predictions.tsv", sep="\t", index_col=0)
    assert pred.obs_names.tolist() == reference.index.tolist()
    # exact on the machine that wrote the reference; a few float32 ulps elsewhere
    np.testing.assert_allclose(np.asarray(pred.X), reference.to_numpy(np.float32), rtol=0, atol=2e-5)
    assert set(pred.obs["context"]) == {"cell" if drop_context_column else "demo"}


# --------------------------------------------------------------------------- gene identity


def test_alias_perturbation_trains_through_the_mapping(tmp_path):
    genes = [g if g != "G05" else "CBARP" for g in GENES]
    conds = ["ctrl", *[f"{g}+ctrl" for g in genes[:5]], "C19orf26+ctrl", "C19orf26+G00", "G01+G02"]
    opts = dataclasses.replace(FAST, context_key=None)
    two_context_dataset(tmp_path / "data.h5ad", genes=genes, conds=conds)
    make_graph(tmp_path / "graph.safetensors", genes)  # the graph knows CBARP only
    split = pd.DataFrame({"condition": sorted(c for c in conds if c != "ctrl")})
    split["split"] = ["test" if c.startswith("C19orf26") else "train" if i % 3 else "val"
                      for i, c in enumerate(split["condition"])]
    split["subgroup"] = "unseen_single"
    write_split(tmp_path / "split.tsv", split)
    with pytest.raises(DatasetError, match="names genes absent from the annotation/graph: C19orf26"):
        train_stage.run(options=opts, dataset=tmp_path / "data.h5ad", graph=tmp_path / "graph.safetensors",
                  split=tmp_path / "split.tsv", out_dir=tmp_path / "plain")
    mapping = write_mapping(tmp_path / "mapping.tsv", genes, aliases={"C19orf26": "CBARP"})
    train_stage.run(options=opts, dataset=tmp_path / "data.h5ad", graph=tmp_path / "graph.safetensors",
              split=tmp_path / "split.tsv", out_dir=tmp_path / "train" / "full", mapping=mapping)
    pred = ad.read_h5ad(tmp_path / "train" / "full" / "predictions.h5ad")
    assert {"C19orf26+ctrl", "C19orf26+G00"} <= set(pred.obs["condition"])  # the user's labels
    adata = ad.read_h5ad(tmp_path / "data.h5ad")
    loaded = load_graph(tmp_path / "graph.safetensors")
    problem = train.build_problem(adata, loaded, options=opts, identity=GeneIdentity.read(mapping))
    row = problem.conditions.index("C19orf26+ctrl")
    assert problem.perturbed[row].tolist() == [loaded.genes.index("CBARP"), -1]

    evaluate_stage.run(options=evaluate.Options(context_key=None, baselines=["no_change", "additive"]),
                       dataset=tmp_path / "data.h5ad", predictions=[tmp_path / "train" / "full" / "predictions.h5ad"],
                       split=tmp_path / "split.tsv", out_dir=tmp_path / "eval", mapping=mapping)
    per = pd.read_csv(tmp_path / "eval" / "per_condition.tsv", sep="\t")
    assert {"C19orf26+ctrl", "C19orf26+G00"} <= set(per["condition"])
    assert set(per["context"]) == {"jurkat"}  # one context (the cell type): no per-context rows
    assert set(pd.read_csv(tmp_path / "eval" / "metrics.tsv", sep="\t")["context"]) == {"all"}
    index = evaluate.gene_index(adata, options=opts, identity=GeneIdentity.read(mapping))
    assert index["C19orf26"] == index["CBARP"] == genes.index("CBARP")


def test_excluded_features_are_no_targets_and_no_metric_genes(tmp_path):
    extra = ["DOT1L_g1:EP300_g2", "Cas13d"]
    opts = dataclasses.replace(FAST, context_key=None)
    two_context_dataset(tmp_path / "data.h5ad", extra_var=extra)
    make_graph(tmp_path / "graph.safetensors", GENES)  # excluded features are no nodes
    write_split(tmp_path / "split.tsv")
    mapping = write_mapping(tmp_path / "mapping.tsv", [*GENES, *extra], excluded=extra)
    assert GeneIdentity.read(mapping).excluded == extra
    with pytest.raises(DatasetError, match="measured genes without a graph node: DOT1L_g1:EP300_g2, Cas13d"):
        train_stage.run(options=opts, dataset=tmp_path / "data.h5ad", graph=tmp_path / "graph.safetensors",
                  split=tmp_path / "split.tsv", out_dir=tmp_path / "plain")
    train_stage.run(options=opts, dataset=tmp_path / "data.h5ad", graph=tmp_path / "graph.safetensors",
              split=tmp_path / "split.tsv", out_dir=tmp_path / "train" / "full", mapping=mapping)
    pred = ad.read_h5ad(tmp_path / "train" / "full" / "predictions.h5ad")
    assert pred.var_names.tolist() == GENES

    evaluate_stage.run(options=evaluate.Options(context_key=None), dataset=tmp_path / "data.h5ad",
                       predictions=[tmp_path / "train" / "full" / "predictions.h5ad"], split=tmp_path / "split.tsv",
                       out_dir=tmp_path / "eval", mapping=mapping)
    table = ad.read_h5ad(tmp_path / "eval" / "test_predictions.h5ad")
    assert table.var_names.tolist() == GENES
    assert (table.obsm["de_ranked"] < len(GENES)).all()
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["excluded_features"] == sorted(extra)
    # the metrics are those of the kept genes: a perfect prediction of them scores mse 0
    perfect = pred.copy()
    means = pseudobulk(ad.read_h5ad(tmp_path / "data.h5ad"), options=opts)[GENES]
    perfect.X = means.loc[perfect.obs["condition"]].to_numpy(np.float32)
    (tmp_path / "perfect" / "train" / "full").mkdir(parents=True)
    perfect.write_h5ad(tmp_path / "perfect" / "train" / "full" / "predictions.h5ad")
    evaluate_stage.run(options=evaluate.Options(context_key=None, baselines=["no_change"]),
                       dataset=tmp_path / "data.h5ad",
                       predictions=[tmp_path / "perfect" / "train" / "full" / "predictions.h5ad"],
                       split=tmp_path / "split.tsv", out_dir=tmp_path / "eval2", mapping=mapping)
    m = pd.read_csv(tmp_path / "eval2" / "metrics.tsv", sep="\t").set_index(["model", "context", "subgroup", "metric"])
    assert m.loc[("grape", "all", "all", "mse"), "value"] == pytest.approx(0, abs=1e-10)


# --------------------------------------------------------------------------- evaluate


def test_evaluate_scores_each_context_against_its_own_control(two_contexts, tmp_path):
    root, adata = two_contexts
    evaluate_stage.run(options=evaluate.Options(context_key="stimulation", baselines=["no_change", "additive"]),
                       dataset=root / "data.h5ad", predictions=[root / "train" / "full" / "predictions.h5ad"],
                       split=root / "split.tsv", out_dir=tmp_path)
    per = pd.read_csv(tmp_path / "per_condition.tsv", sep="\t")
    assert list(per.columns[:4]) == ["model", "condition", "context", "subgroup"]
    test = SPLIT.loc[SPLIT["split"] == "test", "condition"].tolist()
    assert set(zip(per["condition"], per["context"])) == {(c, k) for c in test for k in SHIFT}

    metrics = pd.read_csv(tmp_path / "metrics.tsv", sep="\t")
    assert {"context", "subgroup", "metric", "value", "n_conditions"} <= set(metrics.columns)
    m = metrics.set_index(["model", "context", "subgroup", "metric"])
    assert m.loc[("grape", "all", "all", "mse"), "n_conditions"] == 2 * len(test)
    for state in SHIFT:
        assert m.loc[("grape", state, "all", "mse"), "n_conditions"] == len(test)
        assert m.loc[("grape", state, "combo_seen1", "mse"), "n_conditions"] == 1
    pooled = per.loc[per["model"] == "grape", "mse"].mean()
    assert m.loc[("grape", "all", "all", "mse"), "value"] == pytest.approx(pooled, rel=1e-5)  # %.6g

    # additive baseline per context = that context's control + its own singles' effects
    table = ad.read_h5ad(tmp_path / "test_predictions.h5ad")
    assert list(table.obs["context"]) == ["rest"] * 3 + ["stim"] * 3
    by_context = pseudobulk_by_context(adata, options=FAST)
    for state, means in by_context.items():
        ctrl = means.loc["ctrl"].to_numpy(np.float64)
        seen2 = ctrl + (means.loc["G02+ctrl"] - ctrl) + (means.loc["G03+ctrl"] - ctrl)  # G02+G03: both singles fit
        seen1 = ctrl + (means.loc["G05+ctrl"] - ctrl)  # G04+G05: G04+ctrl is a test condition (adds zero)
        row = table.obs_names.get_loc(f"G02+G03 | {state}")
        np.testing.assert_allclose(table.layers["additive"][row], seen2, rtol=1e-5)
        np.testing.assert_allclose(table.layers["control"][row], ctrl, rtol=1e-6)
        np.testing.assert_allclose(table.layers["no_change"][row], ctrl, rtol=1e-6)
        row = table.obs_names.get_loc(f"G04+G05 | {state}")
        np.testing.assert_allclose(table.layers["additive"][row], seen1, rtol=1e-5)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["contexts"] == ["rest", "stim"]
    assert set(summary["by_context"]["grape"]) == {"rest", "stim"}
    assert summary["baselines"]["additive"]["test_conditions"] == {
        "all_singles_seen": 2, "some_singles_seen": 2, "no_single_seen": 2}

    # the report shows the per-context table
    from grape.stages import report

    history = root / "train" / "full" / "history.tsv"
    report.run(options=report.Options(), metrics=tmp_path / "metrics.tsv", per_condition=tmp_path / "per_condition.tsv",
               summary=tmp_path / "metrics.json", predictions=tmp_path / "test_predictions.h5ad", history=[history],
               out_dir=tmp_path / "report")
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "## pearson_delta ↑ by context" in text and "stim (n=3)" in text and "rest (n=3)" in text
    assert "G02+G03 | stim" in text
    assert (tmp_path / "report" / "metric_bars.png").stat().st_size > 0

