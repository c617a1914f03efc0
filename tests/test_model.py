from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from grape.graph import Graph, Options, build_graph
from grape.model import GraphTensors, PerturbationHGNN, normalized_adjacency
from grape.train import graph_tensors

N, F, TYPES = 14, 6, ("a", "b")
RELATIONS = tuple((s, "to", d) for s in TYPES for d in TYPES)


def tiny_graph(seed: int = 0) -> GraphTensors:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(N, F, generator=g)
    node_type = torch.tensor([i % 2 for i in range(N)])
    adjacency = []
    for s_type, _, d_type in RELATIONS:
        src_nodes = torch.nonzero(node_type == TYPES.index(s_type)).flatten()
        dst_nodes = torch.nonzero(node_type == TYPES.index(d_type)).flatten()
        pairs = [(int(s), int(d)) for s in src_nodes for d in dst_nodes if s != d]
        pick = torch.randperm(len(pairs), generator=g)[:12]
        src = torch.tensor([pairs[i][0] for i in pick])
        dst = torch.tensor([pairs[i][1] for i in pick])
        weight = torch.rand(len(pick), generator=g) + 0.1
        adjacency.append(normalized_adjacency(src, dst, weight, N))
    return GraphTensors(features, node_type, TYPES, RELATIONS, tuple(adjacency))


def make_model(seed: int = 0, dropout: float = 0.0, layers: int = 2) -> PerturbationHGNN:
    torch.manual_seed(seed)
    return PerturbationHGNN(num_nodes=N, in_dim=F, node_types=TYPES, relations=RELATIONS,
                            hidden=8, layers=layers, dropout=dropout)


def test_output_shape():
    model = make_model().eval()
    out = model(tiny_graph(), torch.tensor([[0, -1], [1, 2], [-1, -1]]))
    assert out.shape == (3, N)
    assert torch.isfinite(out).all()


def test_gradients_reach_every_part():
    graph = tiny_graph()
    model = make_model(layers=2)
    model.train()
    # node 2 is type a, node 3 type b: both types perturbed
    perturbed = torch.tensor([[2, -1], [3, -1], [2, 5], [4, 7]])
    target = torch.randn(4, N, generator=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.mse_loss(model(graph, perturbed), target)
    loss.backward()

    def nonzero(param):
        return param.grad is not None and param.grad.abs().sum() > 0

    assert len(model.relation_weight) == 2
    for layer in model.relation_weight:
        assert len(layer) == len(RELATIONS)
        for lin in layer:
            assert nonzero(lin.weight)
    for p in model.perturbation.parameters():
        assert nonzero(p)
    for t in TYPES:
        for p in model.encoder[t].parameters():
            assert nonzero(p)
    for layer in model.self_weight:
        for t in TYPES:
            assert nonzero(layer[t].weight)
    assert nonzero(model.gene_weight) and nonzero(model.gene_bias) and nonzero(model.head.weight)


def test_no_leakage_across_conditions_in_eval():
    graph = tiny_graph()
    model = make_model(dropout=0.3).eval()
    batch = torch.tensor([[0, -1], [1, 6], [-1, -1], [9, 12], [3, -1]])
    together = model(graph, batch)
    for row in range(len(batch)):
        alone = model(graph, batch[row : row + 1])
        torch.testing.assert_close(alone[0], together[row], atol=1e-5, rtol=0)


def test_double_does_not_depend_on_gene_order():
    graph = tiny_graph()
    model = make_model().eval()
    out = model(graph, torch.tensor([[3, 8], [8, 3]]))
    torch.testing.assert_close(out[0], out[1], atol=1e-6, rtol=0)


def test_perturbation_changes_prediction():
    graph = tiny_graph()
    model = make_model().eval()
    out = model(graph, torch.tensor([[-1, -1], [0, -1], [5, -1], [0, 5]]))
    # node 0 perturbed must not look like padding (-1 is not node 0)
    assert (out[1] - out[0]).abs().max() > 1e-3
    assert (out[2] - out[0]).abs().max() > 1e-3
    assert (out[3] - out[1]).abs().max() > 1e-3
    assert (out[3] - out[2]).abs().max() > 1e-3


def test_same_seed_same_initial_predictions():
    graph = tiny_graph()
    batch = torch.tensor([[0, -1], [2, 7]])
    a = make_model(seed=5).eval()(graph, batch)
    b = make_model(seed=5).eval()(graph, batch)
    c = make_model(seed=6).eval()(graph, batch)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


# --------------------------------------------------------------------------- adjacency


def test_normalized_adjacency_matches_dense():
    src = torch.tensor([1, 2, 3, 0, 4, 2, 1])
    dst = torch.tensor([0, 0, 0, 2, 2, 4, 4])
    weight = torch.tensor([0.5, 1.0, 2.5, 0.3, 0.7, -0.4, 1.2])  # a negative weight counts as 0
    adj = normalized_adjacency(src, dst, weight, 6)
    assert adj.is_sparse and adj.shape == (6, 6)
    dense = torch.zeros(6, 6)
    dense[dst, src] = weight.clamp(min=0)
    total = dense.sum(1, keepdim=True)
    expected = torch.where(total > 0, dense / total.clamp(min=1e-12), torch.zeros_like(dense))
    torch.testing.assert_close(adj.to_dense(), expected)
    rows = adj.to_dense().sum(1)
    has_in = torch.zeros(6, dtype=torch.bool)
    has_in[dst] = True
    torch.testing.assert_close(rows[has_in], torch.ones(int(has_in.sum())))
    torch.testing.assert_close(rows[~has_in], torch.zeros(int((~has_in).sum())))
    # entry (target, source)
    assert adj.to_dense()[0, 3] == pytest.approx(2.5 / 4.0)


# --------------------------------------------------------------------------- graph_tensors


def test_graph_tensors_global_order():
    rng = np.random.default_rng(0)
    n = 10
    nodes = pd.DataFrame({"gene": [f"G{i}" for i in range(n)],
                          "biotype": ["protein_coding" if i % 3 else "lncRNA" for i in range(n)]})
    base = rng.normal(size=(n, 2))
    text = (base @ rng.normal(size=(2, 5)) + 0.2 * rng.normal(size=(n, 5))).astype(np.float32)
    dna = (base @ rng.normal(size=(2, 4)) + 0.2 * rng.normal(size=(n, 4))).astype(np.float32)
    data = build_graph(nodes, text, dna, options=Options(top_k=3, min_similarity=0.0))
    g = Graph(data=data, genes=nodes["gene"].tolist(), biotypes=nodes["biotype"].tolist())
    control = rng.normal(size=n).astype(np.float32)
    measured = (np.arange(n) % 2).astype(np.float32)
    tensors = graph_tensors(g, control, measured)

    assert tensors.features.shape == (n, 5 + 4 + 1 + 1)
    np.testing.assert_allclose(tensors.features[:, :5].numpy(), text)  # text in global order
    np.testing.assert_array_equal(tensors.features[:, -1].numpy(), measured)
    ctrl = tensors.features[:, 9].numpy()
    np.testing.assert_allclose(ctrl, (control - control.mean()) / control.std(ddof=1), atol=1e-5)
    expected_type = [tensors.node_types.index("coding" if i % 3 else "noncoding") for i in range(n)]
    assert tensors.node_type.tolist() == expected_type
    nonempty = [e for e in data.edge_types if data[e].edge_index.shape[1] > 0]
    assert list(tensors.relations) == nonempty
    for rel, adj in zip(tensors.relations, tensors.adjacency):
        s, _, d = rel
        dense = adj.to_dense()
        src = data[s].global_id[data[rel].edge_index[0]]
        dst = data[d].global_id[data[rel].edge_index[1]]
        assert (dense[dst, src] > 0).all()
        assert int((dense > 0).sum()) == len(src)
        # rows of targets of this relation sum to 1
        torch.testing.assert_close(dense[dst.unique()].sum(1), torch.ones(len(dst.unique())))
