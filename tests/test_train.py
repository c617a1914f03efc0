from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from grape import split, train
from grape.data import DatasetError
from grape.graph import Options as GraphOptions
from grape.graph import build_graph, save_graph

N_GENES = 30
GENES = [f"G{i:02d}" for i in range(N_GENES)]
SINGLES = GENES[:12]
DOUBLES = [(SINGLES[i], SINGLES[(i * 5 + 3) % 12]) for i in range(6)]
OPTIONS = train.Options(epochs=15, patience=10, hidden=16, batch_size=8, layers=2, device="cpu", seed=0)


def conditions(extra: tuple[str, ...] = ()) -> list[str]:
    return ["ctrl", *[f"{g}+ctrl" for g in SINGLES], *[f"{a}+{b}" for a, b in DOUBLES], *extra]


def make_dataset(path: Path, *, extra_conditions: tuple[str, ...] = (), cells: int = 8, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    conds = conditions(extra_conditions)
    labels = np.repeat(conds, cells)
    base = rng.uniform(2.0, 5.0, size=N_GENES)
    x = base + 0.1 * rng.normal(size=(len(labels), N_GENES))
    index = {g: i for i, g in enumerate(GENES)}
    for row, cond in enumerate(labels):
        for gene in cond.split("+"):
            if gene in index:
                x[row, index[gene]] -= 1.0  # planted effect: the perturbed gene goes down
    adata = ad.AnnData(
        X=x.astype(np.float32),
        obs=pd.DataFrame({"condition": labels, "cell_type": "demo"}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame({"gene_name": GENES}, index=[f"ENSG{i:05d}" for i in range(N_GENES)]),
    )
    adata.write_h5ad(path)
    return adata


def make_graph(path: Path, genes: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = len(genes)
    biotypes = ["protein_coding" if i % 4 else "lncRNA" for i in range(n)]
    base = rng.normal(size=(n, 3))
    text = (base @ rng.normal(size=(3, 10)) + 0.3 * rng.normal(size=(n, 10))).astype(np.float32)
    dna = (base @ rng.normal(size=(3, 6)) + 0.3 * rng.normal(size=(n, 6))).astype(np.float32)
    nodes = pd.DataFrame({"gene": genes, "biotype": biotypes})
    data = build_graph(nodes, text, dna, options=GraphOptions(top_k=4, min_similarity=0.0))
    save_graph(path, data, genes=genes, biotypes=biotypes)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path, ad.AnnData]:
    root = tmp_path_factory.mktemp("train_inputs")
    adata = make_dataset(root / "data.h5ad")
    # the graph has two genes that are not measured
    make_graph(root / "graph.safetensors", [*GENES, "X1", "X2"])
    split.run(options=split.Options(seed=1), dataset=root / "data.h5ad", out=root / "split.tsv")
    return root / "data.h5ad", root / "graph.safetensors", adata


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory) -> Path:
    dataset, graph, _ = inputs
    out = tmp_path_factory.mktemp("run1")
    train.run(options=OPTIONS, dataset=dataset, graph=graph, split=dataset.parent / "split.tsv", out_dir=out)
    return out


def test_run_writes_all_outputs(trained, inputs):
    _, _, adata = inputs
    for name in ("model.safetensors", "model.yaml", "history.tsv", "predictions.h5ad"):
        assert (trained / name).is_file(), name

    split = pd.read_csv(inputs[0].parent / "split.tsv", sep="\t")
    assert list(split.columns) == ["condition", "split", "subgroup"]
    assert set(split["condition"]) == set(conditions()) - {"ctrl"}
    assert set(split["split"]) == {"train", "val", "test"}

    meta = yaml.safe_load((trained / "model.yaml").read_text())
    assert meta["model"] == "PerturbationHGNN"
    assert meta["options"]["hidden"] == 16 and meta["options"]["epochs"] == 15
    assert meta["num_nodes"] == N_GENES + 2
    assert 1 <= meta["best_epoch"] <= 15

    from safetensors.torch import load_file

    state = load_file(str(trained / "model.safetensors"))
    assert state["gene_weight"].shape == (N_GENES + 2, 16)

    history = pd.read_csv(trained / "history.tsv", sep="\t")
    assert list(history.columns) == ["epoch", "train_mse", "val_mse", "seconds"]
    assert history["epoch"].tolist() == list(range(1, len(history) + 1))

    pred = ad.read_h5ad(trained / "predictions.h5ad")
    assert pred.var_names.tolist() == adata.var_names.tolist()
    assert pred.shape == (len(conditions()) - 1, N_GENES)
    assert set(pred.obs_names) == set(split["condition"])
    merged = split.set_index("condition").loc[pred.obs_names]
    assert pred.obs["split"].tolist() == merged["split"].tolist()
    assert pred.obs["subgroup"].tolist() == merged["subgroup"].tolist()
    assert np.isfinite(pred.X).all()


def test_predictions_are_control_plus_change(trained, inputs):
    _, _, adata = inputs
    pred = ad.read_h5ad(trained / "predictions.h5ad")
    control = np.asarray(adata.X[adata.obs["condition"] == "ctrl"]).mean(0)
    # the model predicts small changes; absolute levels come from the control mean
    assert np.abs(np.asarray(pred.X) - control).mean() < 1.0
    assert np.corrcoef(np.asarray(pred.X).mean(0), control)[0, 1] > 0.95


def test_same_seed_is_deterministic(trained, inputs, tmp_path):
    dataset, graph, _ = inputs
    train.run(options=OPTIONS, dataset=dataset, graph=graph, split=dataset.parent / "split.tsv", out_dir=tmp_path)
    a = ad.read_h5ad(trained / "predictions.h5ad")
    b = ad.read_h5ad(tmp_path / "predictions.h5ad")
    assert np.array_equal(np.asarray(a.X), np.asarray(b.X))
    ha = pd.read_csv(trained / "history.tsv", sep="\t")
    hb = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    assert ha["train_mse"].tolist() == hb["train_mse"].tolist()


def test_training_lowers_the_loss(trained):
    history = pd.read_csv(trained / "history.tsv", sep="\t")
    assert len(history) >= 5
    assert history["train_mse"].min() < 0.8 * history["train_mse"].iloc[0]
    assert history["val_mse"].min() < history["val_mse"].iloc[0]


def _no_training(*args, **kwargs):
    raise AssertionError("training started before the dataset was checked")


def test_condition_gene_absent_from_graph(inputs, tmp_path, monkeypatch):
    _, graph, _ = inputs
    make_dataset(tmp_path / "data.h5ad", extra_conditions=("GHOST+ctrl",))
    monkeypatch.setattr(train, "fit", _no_training)
    with pytest.raises(DatasetError, match=r"GHOST"):
        train.run(options=OPTIONS, dataset=tmp_path / "data.h5ad", graph=graph, split=tmp_path / "split.tsv",
                  out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_measured_gene_absent_from_graph(tmp_path, monkeypatch):
    make_dataset(tmp_path / "data.h5ad")
    make_graph(tmp_path / "graph.safetensors", [g for g in GENES if g != "G27"])
    monkeypatch.setattr(train, "fit", _no_training)
    with pytest.raises(DatasetError, match=r"measured genes without a graph node: G27"):
        train.run(options=OPTIONS, dataset=tmp_path / "data.h5ad", graph=tmp_path / "graph.safetensors",
                  split=tmp_path / "split.tsv", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
