from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from grape.graph import network
from grape.graph.build import Options as GraphOptions
from grape.graph.build import build_graph, load_graph, save_graph
from grape.model.gnn import GRAPE, ModelConfig
from grape.graph.network import export_network, graph_name, precision_at_k, prior_network, recovery
from grape.stages import network as network_stage

from test_model import DIMS, tiny_graph


def test_precision_at_k_hand_computed():
    net = pd.DataFrame({
        "source": ["a", "b", "c", "a", "c", "d"],
        "target": ["x", "x", "x", "y", "y", "y"],
        "weight": [0.9, 0.5, 0.1, 0.2, 0.8, 0.4],
    })
    truth = {("b", "x"), ("c", "x"), ("a", "y"), ("q", "z")}
    table = precision_at_k(net, truth, [1, 2, 3]).set_index("k")
    # k=1: x <- a (miss), y <- c (miss); k=2: + x <- b (hit), y <- d (miss); k=3: + x <- c, y <- a (hits)
    assert table.loc[1, "precision"] == 0.0 and table.loc[1, "n_edges"] == 2
    assert table.loc[2, "precision"] == pytest.approx(1 / 4)
    assert table.loc[3, "precision"] == pytest.approx(3 / 6) and table.loc[3, "hits"] == 3
    assert table.loc[3, "recall"] == pytest.approx(3 / 4) and table.loc[3, "n_true"] == 4


def test_recovery_is_directed_and_has_random_row():
    prior = pd.DataFrame({"source": ["b"], "target": ["a"], "weight": [1.0]})
    learned = pd.DataFrame({"source": ["a"], "target": ["b"], "weight": [1.0]})
    truth = pd.DataFrame({"source_name": ["a", "a", "zz"], "target_name": ["b", "c", "a"]})
    out = recovery(prior, {"learned": learned}, truth, options=network.Options(ks=[1]), genes=["a", "b", "c"])
    by = out.set_index("graph")["precision"]
    assert by["prior"] == 0.0  # b -> a is the reverse of a true edge
    assert by["learned"] == 1.0
    assert by["random"] == pytest.approx(2 / 6)  # zz is not a gene of the graph
    assert set(out["n_true"]) == {2}


def test_recovery_names_a_missing_truth_column():
    with pytest.raises(ValueError, match="no column 'source_name'"):
        recovery(pd.DataFrame(columns=["source", "target", "weight"]), {}, pd.DataFrame({"from": ["a"]}),
                 options=network.Options(), genes=["a"])


def test_graph_name_of_variants():
    assert graph_name("results/x/train/full/network.tsv") == "learned"
    assert graph_name("results/x/train/no_gsl/network.tsv") == "learned_no_gsl"


def test_export_network_top_k_and_columns():
    graph = tiny_graph()
    torch.manual_seed(0)
    model = GRAPE(num_nodes=graph.num_nodes, modality_dims=DIMS, context_dim=2, node_types=graph.node_types,
                  config=ModelConfig(hidden=8, gsl_k=3, gsl_heads=2, attention_hidden=4, dropout=0.0)).eval()
    genes = [f"G{i}" for i in range(graph.num_nodes)]
    biotypes = ["protein_coding" if i % 2 == 0 else "lncRNA" for i in range(graph.num_nodes)]
    table = export_network(model, graph, genes=genes, biotypes=biotypes, k=2)
    assert list(table.columns) == network.NETWORK_COLUMNS
    assert table.groupby("target").size().max() == 2
    assert set(table["origin"]) <= {"prior", "learned", "both"}
    # biotypes and types follow the genes
    for row in table.itertuples():
        i = genes.index(row.source)
        assert row.source_biotype == biotypes[i] and row.source_type == graph.node_types[i % 2]
    # each target's listed edges are its strongest by in-silico effect: the target's change when the
    # source alone is perturbed, minus the unperturbed prediction
    none = model(graph, torch.tensor([[-1, -1]]))[0]
    for row in table.itertuples():
        s, t = genes.index(row.source), genes.index(row.target)
        alone = model(graph, torch.tensor([[s, -1]]))[0]
        assert row.effect == pytest.approx(float(alone[t] - none[t]), abs=1e-5)
    net = model.network(graph)
    effects = network.edge_effects(model, graph, net["src"], net["dst"], batch_size=3)
    for target in ("G0", "G5"):
        t = genes.index(target)
        strongest = effects[net["dst"] == t].abs().sort(descending=True).values[:2]
        np.testing.assert_allclose(table.loc[table["target"] == target, "weight"].to_numpy(), strongest.numpy(),
                                   rtol=1e-5)


def test_run_scores_prior_and_learned(tmp_path):
    rng = np.random.default_rng(0)
    n = 12
    genes = [f"G{i}" for i in range(n)]
    nodes = pd.DataFrame({"gene": genes, "biotype": ["protein_coding"] * n})
    text = rng.normal(size=(n, 5)).astype(np.float32)
    dna = rng.normal(size=(n, 4)).astype(np.float32)
    built = build_graph(nodes, text, dna, options=GraphOptions(top_k=3, min_similarity=0.0))
    save_graph(tmp_path / "graph.safetensors", built)
    data = built.data
    prior = prior_network(load_graph(tmp_path / "graph.safetensors"))
    assert len(prior) == data["coding", "to", "coding"].edge_index.shape[1]
    # the truth is the prior's edges: the prior has precision 1 at k=1; a learned net of reversed edges 0
    prior.rename(columns={"source": "source_name", "target": "target_name"}).to_csv(
        tmp_path / "truth.tsv", sep="\t", index=False)
    (tmp_path / "train" / "full").mkdir(parents=True)
    reverse = prior.rename(columns={"source": "target", "target": "source"})
    reverse = reverse[~reverse.apply(lambda r: (r["source"], r["target"]) in
                                     set(zip(prior["source"], prior["target"])), axis=1)]
    reverse.to_csv(tmp_path / "train" / "full" / "network.tsv", sep="\t", index=False)
    out = tmp_path / "recovery.tsv"
    network_stage.run(options=network.Options(ks=[1, 3]), graph=tmp_path / "graph.safetensors",
                      networks=[tmp_path / "train" / "full" / "network.tsv"], truth=tmp_path / "truth.tsv", out=out)
    result = pd.read_csv(out, sep="\t")
    assert list(result.columns) == ["graph", "k", "precision", "hits", "n_edges", "n_true", "recall"]
    got = result.set_index(["graph", "k"])["precision"]
    assert got[("prior", 1)] == 1.0 and got[("prior", 3)] == 1.0
    assert got[("learned", 1)] == 0.0
    assert set(result["graph"]) == {"prior", "learned", "random"}
