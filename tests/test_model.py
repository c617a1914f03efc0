from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from grape.graph.build import Graph, Options, build_graph, topk_similar
from grape.model.gnn import (
    GRAPE,
    KERNEL_SCALE,
    GraphTensors,
    ModelConfig,
    aggregate,
    aggregation_plan,
    canonical_sets,
    coalesce_edges,
    edge_dot,
    normalized_adjacency,
)
from grape.model.train import graph_tensors

N, TYPES = 14, ("a", "b")
DIMS = {"text": 6, "dna": 5}


def tiny_graph(seed: int = 0, n: int = N, types: tuple[str, ...] = TYPES, edges_per_relation: int = 12) -> GraphTensors:
    """A random graph where every (source type, target type) relation has edges."""
    g = torch.Generator().manual_seed(seed)
    node_type = torch.tensor([i % len(types) for i in range(n)])
    src, dst = [], []
    for s_t in range(len(types)):
        for d_t in range(len(types)):
            pairs = [(int(s), int(d)) for s in torch.nonzero(node_type == s_t).flatten()
                     for d in torch.nonzero(node_type == d_t).flatten() if s != d]
            for i in torch.randperm(len(pairs), generator=g)[:edges_per_relation].tolist():
                src.append(pairs[i][0])
                dst.append(pairs[i][1])
    return GraphTensors(
        modalities={m: torch.randn(n, d, generator=g) for m, d in DIMS.items()},
        context=torch.randn(n, 2, generator=g),
        node_type=node_type,
        node_types=types,
        edge_index=torch.tensor([src, dst]),
        edge_weight=torch.rand(len(src), generator=g) + 0.1,
    )


def make_model(seed: int = 0, graph: GraphTensors | None = None, **config) -> GRAPE:
    graph = graph or tiny_graph()
    torch.manual_seed(seed)
    cfg = ModelConfig(**{"hidden": 8, "layers": 2, "dropout": 0.0, "gsl_k": 3, "gsl_heads": 2, "gsl_chunk_size": 5,
                         "attention_hidden": 4, **config})
    return GRAPE(num_nodes=graph.num_nodes, modality_dims=DIMS, context_dim=2, node_types=graph.node_types, config=cfg)


def perturb_decoder(model: GRAPE, seed: int = 1) -> GRAPE:
    """Give the zero-initialised decoder and interaction head random values (to test them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.gene_weight.copy_(torch.randn(model.gene_weight.shape, generator=g))
        if hasattr(model, "interaction"):
            last = model.interaction[-1]
            last.weight.copy_(torch.randn(last.weight.shape, generator=g))
    return model


BATCH = torch.tensor([[0, -1], [1, 2], [-1, -1], [7, 4], [3, -1]])


@pytest.mark.parametrize("doubles", ["additive", "joint"])
@pytest.mark.parametrize("gsl", [True, False])
def test_output_shape(doubles, gsl):
    model = make_model(doubles=doubles, gsl=gsl).eval()
    out = model(tiny_graph(), BATCH)
    assert out.shape == (len(BATCH), N)
    assert torch.isfinite(out).all()


def test_gradients_reach_every_relation_and_part():
    graph = tiny_graph()
    model = perturb_decoder(make_model(layers=2))
    model.train()
    # both node types perturbed alone and together; several doubles
    perturbed = torch.tensor([[2, -1], [3, -1], [2, 5], [4, 7], [6, 9]])
    target = torch.randn(len(perturbed), N, generator=torch.Generator().manual_seed(1))
    # observed singles (not these conditions' genes 4..9): the kernel of singles has its gradients too
    model.set_observed_singles(torch.tensor([2, 3, 11, 12]), torch.randn(4, N, generator=torch.Generator().manual_seed(2)),
                               torch.ones(N, dtype=torch.bool))
    pred, graph_loss = model(graph, perturbed, with_graph_loss=True)
    (torch.nn.functional.mse_loss(pred, target) + graph_loss).backward()

    def nonzero(grad: torch.Tensor | None) -> bool:
        return grad is not None and bool(grad.abs().sum() > 0)

    assert len(graph.relations) == 4
    for layer in model.layers:
        for r in range(len(graph.relations)):  # each relation's own attention and message weights
            assert nonzero(layer.message.grad[r]), r
            assert nonzero(layer.att_src.grad[r]) and nonzero(layer.att_dst.grad[r]), r
            assert nonzero(layer.att_vec.grad[r]), r
        for lin in layer.root:
            assert nonzero(lin.weight.grad)
    for name, param in model.named_parameters():
        assert nonzero(param.grad), name


def test_doubles_do_not_depend_on_gene_order():
    graph = tiny_graph()
    for doubles in ("additive", "joint"):
        model = perturb_decoder(make_model(doubles=doubles)).eval()
        out = model(graph, torch.tensor([[3, 8], [8, 3], [-1, 5], [5, -1]]))
        torch.testing.assert_close(out[0], out[1], atol=1e-6, rtol=0)
        torch.testing.assert_close(out[2], out[3], atol=1e-6, rtol=0)


def test_never_seen_pair_has_a_prediction_beyond_the_sum():
    graph = tiny_graph()
    model = perturb_decoder(make_model()).eval()
    out = model(graph, torch.tensor([[10, 13], [10, -1], [13, -1]]))
    assert torch.isfinite(out[0]).all()
    # a trained interaction head makes the double differ from the sum of its singles
    assert (out[0] - out[1] - out[2]).abs().max() > 1e-4


def test_additive_mode_starts_as_the_sum_of_singles():
    graph = tiny_graph()
    model = make_model(doubles="additive").eval()  # interaction output layer is zero at init; nothing observed
    out = model(graph, torch.tensor([[3, 8], [3, -1], [8, -1]]))
    torch.testing.assert_close(out[0], out[1] + out[2], atol=1e-6, rtol=0)


def test_observed_singles_make_the_additive_baseline_a_special_case():
    graph = tiny_graph()
    model = perturb_decoder(make_model(doubles="additive")).eval()
    with torch.no_grad():
        model.interaction[-1].weight.zero_()  # no interaction: the model is the additive baseline
    observed = torch.randn(2, N, generator=torch.Generator().manual_seed(3))
    measured = torch.arange(N) < 10  # nodes 10.. are not measured
    model.set_observed_singles(torch.tensor([3, 8]), observed, measured)
    out = model(graph, torch.tensor([[3, 8], [3, 11], [3, -1], [8, -1], [11, -1]]))
    torch.testing.assert_close(out[0, :10], observed[0, :10] + observed[1, :10])
    # unmeasured nodes and genes without a training single use the network's prediction
    torch.testing.assert_close(out[0, 10:], out[2, 10:] + out[3, 10:])
    torch.testing.assert_close(out[1, :10], observed[0, :10] + out[4, :10])
    # singles themselves are always predicted by the network
    assert not torch.allclose(out[2, :10], observed[0, :10])
    # a model without the option ignores the observed effects
    plain = perturb_decoder(make_model(doubles="additive", observed_singles=False)).eval()
    with torch.no_grad():
        plain.interaction[-1].weight.zero_()
    plain.set_observed_singles(torch.tensor([3, 8]), observed, measured)
    out = plain(graph, torch.tensor([[3, 8], [3, -1], [8, -1]]))
    torch.testing.assert_close(out[0], out[1] + out[2])


def test_auxiliary_doubles_use_the_networks_own_singles():
    graph = tiny_graph()
    model = perturb_decoder(make_model(doubles="additive", singles="network")).eval()
    batch = torch.tensor([[3, 8], [5, -1], [2, 11], [6, 9]])
    plain = model(graph, batch)  # nothing observed yet: singles are the network's
    model.set_observed_singles(torch.tensor([3, 11]), torch.randn(2, N), torch.ones(N, dtype=torch.bool))
    out, (rows, aux) = model(graph, batch, with_auxiliary=True)
    assert rows.tolist() == [0, 2]  # the doubles with an observed single; 6+9 has none
    torch.testing.assert_close(aux, plain[[0, 2]])
    torch.testing.assert_close(out[[1, 3]], plain[[1, 3]])
    assert not torch.allclose(out[0], plain[0])


def test_joint_mode_is_not_additive():
    graph = tiny_graph()
    model = perturb_decoder(make_model(doubles="joint")).eval()
    out = model(graph, torch.tensor([[3, 8], [3, -1], [8, -1]]))
    assert (out[0] - out[1] - out[2]).abs().max() > 1e-4


def test_no_leakage_across_conditions_in_eval():
    graph = tiny_graph()
    for doubles in ("additive", "joint"):
        model = perturb_decoder(make_model(doubles=doubles, dropout=0.3)).eval()
        together = model(graph, BATCH)
        for row in range(len(BATCH)):
            alone = model(graph, BATCH[row : row + 1])
            torch.testing.assert_close(alone[0], together[row], atol=1e-5, rtol=0)


def test_perturbation_changes_prediction():
    graph = tiny_graph()
    model = perturb_decoder(make_model()).eval()
    out = model(graph, torch.tensor([[-1, -1], [0, -1], [5, -1], [0, 5]]))
    # node 0 perturbed must not look like padding (-1 is not node 0)
    for a, b in ((1, 0), (2, 0), (3, 1), (3, 2)):
        assert (out[a] - out[b]).abs().max() > 1e-3


def test_same_seed_same_predictions():
    graph = tiny_graph()
    a = perturb_decoder(make_model(seed=5)).eval()(graph, BATCH)
    b = perturb_decoder(make_model(seed=5)).eval()(graph, BATCH)
    c = perturb_decoder(make_model(seed=6)).eval()(graph, BATCH)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_canonical_sets_sort_and_pad_last():
    rows = torch.tensor([[5, 2], [-1, 3], [4, -1], [-1, -1]])
    assert canonical_sets(rows).tolist() == [[2, 5], [3, -1], [4, -1], [-1, -1]]


# --------------------------------------------------------------------------- structure learning


def dense_fused_similarity(model: GRAPE, graph: GraphTensors) -> torch.Tensor:
    """The GSL similarity computed densely: sum over views of alpha_l * mean over heads of cosines."""
    learner = model.structure_learner
    h0 = model.encode(graph)
    n = graph.num_nodes
    loops = torch.arange(n)
    adj = normalized_adjacency(torch.cat([graph.edge_index[0], loops]), torch.cat([graph.edge_index[1], loops]),
                               torch.cat([graph.edge_weight, torch.ones(n)]), n).to_dense()
    x, sims, squeeze = h0, [], []
    for layer, lin in enumerate(learner.gcn):
        x = torch.nn.functional.gelu(adj @ lin(x))
        per_head = []
        for k in range(learner.heads):
            v = torch.nn.functional.normalize(x * learner.head_weight[layer, k], dim=-1)
            per_head.append(v @ v.T)
        sims.append(torch.stack(per_head).mean(0))
        squeeze.append(sims[-1].mean())  # channel descriptor: mean of the view's similarity matrix
    alpha = torch.softmax(learner.channel(torch.stack(squeeze)), 0)
    return sum(a * s for a, s in zip(alpha, sims))


def test_gsl_chunked_topk_equals_dense():
    graph = tiny_graph(n=23)
    model = make_model(graph=graph, gsl_k=4).eval()
    with torch.no_grad():
        model.structure_learner.channel.weight.normal_()  # non-uniform channel attention
        dense = dense_fused_similarity(model, graph)
        src, dst, sim, _ = model.structure_learner(model.encode(graph), graph)
    dense.fill_diagonal_(float("-inf"))
    top = dense.topk(4, dim=1)
    assert dst.tolist() == torch.arange(23).repeat_interleave(4).tolist()
    assert src.reshape(23, 4).tolist() == top.indices.tolist()
    torch.testing.assert_close(sim, top.values.reshape(-1).clamp(min=0), atol=1e-5, rtol=0)


def test_topk_similar_chunked_equals_dense_for_random_rows():
    x = torch.nn.functional.normalize(torch.randn(31, 7, generator=torch.Generator().manual_seed(2)), dim=1)
    idx, val = topk_similar(x, 5, chunk_size=4)
    dense = x @ x.T
    dense.fill_diagonal_(float("-inf"))
    top = dense.topk(5, dim=1)
    assert torch.equal(idx, top.indices)
    torch.testing.assert_close(val, top.values)


def test_structure_mixes_prior_and_learned_rows_sum_to_one():
    graph = tiny_graph()
    model = make_model(gsl_prior_weight=0.3).eval()
    structure = model.structure(graph, model.encode(graph))
    totals = torch.zeros(N).index_add(0, structure.dst, structure.weight)
    torch.testing.assert_close(totals, torch.ones(N))  # every node has prior and learned in-edges here
    keys = structure.dst * N + structure.src
    assert len(keys.unique()) == len(keys)  # coalesced
    assert structure.learned.any() and (~structure.learned).any()
    expected_relation = graph.node_type[structure.src] * 2 + graph.node_type[structure.dst]
    assert torch.equal(structure.relation, expected_relation)


def test_without_gsl_the_graph_is_the_prior():
    graph = tiny_graph()
    model = make_model(gsl=False).eval()
    assert model.structure_learner is None
    structure = model.structure(graph, model.encode(graph))
    assert torch.equal(structure.src, graph.edge_index[0]) and torch.equal(structure.dst, graph.edge_index[1])
    assert not structure.learned.any()


def test_graph_regulariser_is_positive_in_training_only():
    graph = tiny_graph()
    model = make_model().train()
    _, loss = model(graph, BATCH, with_graph_loss=True)
    assert float(loss.detach()) > 0
    _, loss = model.eval()(graph, BATCH, with_graph_loss=True)
    assert float(loss) == 0.0


def reference_attention(layer, h0: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, relation: torch.Tensor,
                        weight: torch.Tensor) -> torch.Tensor:
    """GATv2-style attention of one layer, edge by edge with its relation's own parameters, then a
    softmax over each target's incoming edges (of every relation), with ``log w`` as a prior."""
    score = torch.empty(len(src))
    for e in range(len(src)):
        r, s, d = int(relation[e]), int(src[e]), int(dst[e])
        hidden = torch.nn.functional.leaky_relu(h0[s] @ layer.att_src[r] + h0[d] @ layer.att_dst[r], 0.2)
        score[e] = hidden @ layer.att_vec[r] + torch.log(weight[e].clamp(min=1e-8))
    out = torch.empty(len(src))
    for d in dst.unique():
        incoming = dst == d
        out[incoming] = torch.softmax(score[incoming], dim=0)
    return out


@pytest.mark.parametrize("gsl", [True, False])
def test_attention_of_each_layer_and_relation(gsl):
    graph = tiny_graph()
    model = make_model(gsl=gsl).eval()
    net = model.network(graph)
    assert net["layer_attention"].shape == (len(model.layers), len(net["src"]))
    h0 = model.encode(graph)
    has_in = torch.zeros(N, dtype=torch.bool)
    has_in[net["dst"]] = True
    assert set(net["relation"].tolist()) == set(range(len(graph.relations)))  # every relation has edges
    for i, layer in enumerate(model.layers):
        alpha = net["layer_attention"][i]
        # each layer's attention is its own relations' parameters applied to the graph's edges ...
        expected = reference_attention(layer, h0, net["src"], net["dst"], net["relation"], net["weight"])
        torch.testing.assert_close(alpha, expected, rtol=1e-5, atol=1e-6)
        # ... normalised over every gene's incoming edges
        totals = torch.zeros(N).index_add(0, net["dst"], alpha)
        torch.testing.assert_close(totals[has_in], torch.ones(int(has_in.sum())))
    # the layers differ, and the exported attention is their mean
    assert not torch.allclose(net["layer_attention"][0], net["layer_attention"][1])
    torch.testing.assert_close(net["attention"], net["layer_attention"].mean(0))
    # a relation's parameters act on its own edges only
    layer = model.layers[0]
    edges = net["relation"] == 1
    with torch.no_grad():
        layer.att_vec[1].mul_(3.0)
    changed = reference_attention(layer, h0, net["src"], net["dst"], net["relation"], net["weight"])
    moved = (changed - net["layer_attention"][0]).abs() > 1e-6
    assert moved[edges].any()
    targets_of_relation = net["dst"][edges].unique()
    assert not moved[~torch.isin(net["dst"], targets_of_relation)].any()
    torch.testing.assert_close(model.network(graph)["layer_attention"][0], changed, rtol=1e-5, atol=1e-6)


def test_one_node_type_has_one_relation():
    graph = dataclasses.replace(tiny_graph(), node_type=torch.zeros(N, dtype=torch.long), node_types=("gene",))
    model = make_model(graph=graph)
    assert model.layers[0].message.shape[0] == 1
    assert model(graph, BATCH).shape == (len(BATCH), N)


@pytest.mark.parametrize("modalities", [("text",), ("dna",)])
def test_single_modality_models_ignore_the_other(modalities):
    graph = tiny_graph()
    model = make_model(modalities=modalities).eval()
    other = "dna" if modalities == ("text",) else "text"
    assert set(model.encoders) == set(modalities)
    changed = dataclasses.replace(graph, modalities={**graph.modalities, other: torch.randn(N, DIMS[other])})
    torch.testing.assert_close(model(graph, BATCH), model(changed, BATCH))


def test_alignment_loss_trains_both_encoders():
    graph = tiny_graph()
    model = make_model()
    loss = model.alignment_loss(graph, torch.arange(N))
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    for m in ("text", "dna"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders[m].parameters())


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="doubles"):
        ModelConfig(doubles="both")
    with pytest.raises(ValueError, match="modalities"):
        ModelConfig(modalities=("rna",))


# --------------------------------------------------------------------------- sparse helpers


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
    assert adj.to_dense()[0, 3] == pytest.approx(2.5 / 4.0)


def test_coalesce_edges_sums_repeats():
    src, dst, w = coalesce_edges(torch.tensor([1, 2, 1]), torch.tensor([0, 0, 0]), torch.tensor([0.2, 0.3, 0.4]), 3)
    got = {(int(s), int(d)): float(x) for s, d, x in zip(src, dst, w)}
    assert got == pytest.approx({(1, 0): 0.6, (2, 0): 0.3})


# --------------------------------------------------------------------------- graph_tensors


def loaded_graph(n: int = 10, variant: str = "full") -> tuple[Graph, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    nodes = pd.DataFrame({"gene": [f"G{i}" for i in range(n)],
                          "biotype": ["protein_coding" if i % 3 else "lncRNA" for i in range(n)]})
    base = rng.normal(size=(n, 2))
    text = (base @ rng.normal(size=(2, 5)) + 0.2 * rng.normal(size=(n, 5))).astype(np.float32)
    dna = (base @ rng.normal(size=(2, 4)) + 0.2 * rng.normal(size=(n, 4))).astype(np.float32)
    return build_graph(nodes, text, dna, options=Options(top_k=3, min_similarity=0.0), variant=variant), text, dna


def test_graph_tensors_global_order():
    g, text, dna = loaded_graph()
    n = 10
    control = np.random.default_rng(1).normal(size=n).astype(np.float32)
    measured = (np.arange(n) % 2).astype(np.float32)
    tensors = graph_tensors(g, control, measured)
    zscore = (text - text.mean(0)) / text.std(0, ddof=1)
    np.testing.assert_allclose(tensors.modalities["text"].numpy(), zscore, atol=1e-5)  # global order, z-scored
    assert tensors.modalities["dna"].shape == (n, 4)
    np.testing.assert_array_equal(tensors.context[:, 1].numpy(), measured)
    np.testing.assert_allclose(tensors.context[:, 0].numpy(), (control - control.mean()) / control.std(ddof=1),
                               atol=1e-5)
    expected_type = [tensors.node_types.index("coding" if i % 3 else "noncoding") for i in range(n)]
    assert tensors.node_type.tolist() == expected_type
    # the prior edges, in global ids, are exactly the graph's relations
    got = {(int(s), int(d)) for s, d in tensors.edge_index.T}
    expected = set()
    for rel in g.data.edge_types:
        s, _, d = rel
        ei = g.data[rel].edge_index
        expected |= set(zip(g.data[s].global_id[ei[0]].tolist(), g.data[d].global_id[ei[1]].tolist()))
    assert got == expected and tensors.edge_index.shape[1] == len(expected)


def test_graph_tensors_of_the_graph_variants():
    control, measured = np.zeros(10, np.float32), np.ones(10, np.float32)
    one_type = graph_tensors(loaded_graph(variant="no_biotype")[0], control, measured)
    assert one_type.node_types == ("gene",) and not one_type.node_type.any()
    text_only = graph_tensors(loaded_graph(variant="text_only")[0], control, measured)
    full = graph_tensors(loaded_graph()[0], control, measured)
    # the prior is rebuilt from the text alone, so it differs from the two-modality prior
    assert {tuple(e) for e in text_only.edge_index.T.tolist()} != {tuple(e) for e in full.edge_index.T.tolist()}


# --------------------------------------------------------------------------- sparse kernels and refresh


def test_aggregation_equals_index_add_and_has_exact_gradients():
    g = torch.Generator().manual_seed(3)
    n, relations = 9, 4
    key = torch.randint(n * n, (40,), generator=g).unique()
    src, dst = key % n, key // n
    node_type = torch.randint(2, (n,), generator=g)
    relation = node_type[src] * 2 + node_type[dst]
    plan = aggregation_plan(src, dst, relation, n, relations, node_type, 2)
    # a block per relation, a row for each node of its target type (in type order)
    counts = torch.bincount(node_type, minlength=2).tolist()
    assert plan.block_sizes == (counts[0], counts[1], counts[0], counts[1]) and plan.num_rows == 2 * n
    rank = torch.stack([(node_type[:i] == node_type[i]).sum() for i in range(n)])
    offset = torch.tensor([0, counts[0], n, n + counts[0]])
    torch.testing.assert_close(plan.rows(relation, dst), offset[relation] + rank[dst])
    values = torch.rand(len(key), generator=g, dtype=torch.double).requires_grad_()
    x = torch.randn(n, 5, generator=g, dtype=torch.double).requires_grad_()
    dense = torch.zeros(2 * n, 5, dtype=torch.double).index_add(0, offset[relation] + rank[dst],
                                                                values[:, None] * x[src])
    torch.testing.assert_close(aggregate(values, x, plan), dense)
    assert torch.autograd.gradcheck(lambda v, y: aggregate(v, y, plan), (values, x))


def test_edge_dot_equals_gathered_dot_and_has_exact_gradients():
    g = torch.Generator().manual_seed(4)
    u = torch.randn(8, 6, generator=g, dtype=torch.double).requires_grad_()
    src, dst = torch.randint(8, (30,), generator=g), torch.randint(8, (30,), generator=g)  # repeats, self pairs
    torch.testing.assert_close(edge_dot(u, src, dst), (u[src] * u[dst]).sum(-1))
    assert torch.autograd.gradcheck(lambda v: edge_dot(v, src, dst), (u,))


def test_learned_graph_is_refreshed_every_gsl_refresh_steps_with_gradients_between():
    graph = tiny_graph(n=23)
    model = make_model(graph=graph, gsl_refresh=3).train()
    calls = []
    learner = model.structure_learner
    original = learner.select

    def counting(u, key=(), version=None):
        before = dict(learner._train_index)
        index = original(u, key, version)
        calls.append(before.get(key) is None or before[key][0] is not index)
        return index

    learner.select = counting
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(7):
        optimizer.zero_grad()
        pred, graph_loss = model(graph, BATCH, with_graph_loss=True)
        (pred.pow(2).mean() + graph_loss).backward()
        assert learner.head_weight.grad is not None and learner.head_weight.grad.abs().sum() > 0
        optimizer.step()
    assert calls == [True, False, False, True, False, False, True]  # a search on steps 1, 4, 7


def test_evaluation_reuses_the_search_until_the_parameters_change():
    graph = tiny_graph(n=23)
    model = make_model(graph=graph).eval()
    first = model.network(graph)
    index = model.structure_learner._eval_index
    again = model.network(graph)
    assert model.structure_learner._eval_index is index  # no new search
    assert torch.equal(first["src"], again["src"])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.structure_learner.head_weight.normal_()
    changed = model.network(graph)  # parameters changed in place: a new search
    model.load_state_dict(state)
    restored = model.network(graph)
    assert torch.equal(restored["src"], first["src"]) and torch.equal(restored["weight"], first["weight"])
    assert model.structure_learner._eval_index is not index
    # a search of its own: as many learned edges (k per gene), not necessarily the same union with the prior
    assert int(changed["learned"].sum()) == int(first["learned"].sum())



def test_validation_in_the_training_graph_reuses_the_training_search():
    graph = tiny_graph(n=23)
    for refresh in (3, 1):
        model = make_model(graph=graph, gsl_refresh=refresh).train()
        learner = model.structure_learner
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        optimizer.zero_grad()
        model(graph, BATCH).pow(2).mean().backward()
        optimizer.step()  # the parameters moved since the training search
        (trained_index, _), = learner._train_index.values()
        model.eval()
        with model.training_graph():
            inside = model.network(graph)
        assert not learner.reuse_training_search
        learned = inside["learned"]
        if refresh > 1:  # the training's edges, weights from the current parameters; no search of its own
            assert learner._eval_index == {}
            pairs = set(zip(inside["src"][learned].tolist(), inside["dst"][learned].tolist()))
            dst = torch.arange(graph.num_nodes).repeat_interleave(trained_index.shape[1])
            assert pairs == set(zip(trained_index.reshape(-1).tolist(), dst.tolist()))
        else:  # training searches every step: evaluation searches for the current parameters
            assert len(learner._eval_index) == 1
        outside = model.network(graph)  # predictions: a search of the current parameters
        (_, searched), = learner._eval_index.values()
        dst = torch.arange(graph.num_nodes).repeat_interleave(searched.shape[1])
        pairs = set(zip(outside["src"][outside["learned"]].tolist(), outside["dst"][outside["learned"]].tolist()))
        assert pairs == set(zip(searched.reshape(-1).tolist(), dst.tolist()))


def test_loading_a_model_imports_neither_the_embedding_stage_nor_the_command_line():
    import subprocess
    import sys

    code = ("import sys, grape.model.gnn, grape.model.train; "
            "print(' '.join(m for m in sys.modules if m.startswith(('grape.features', 'grape.cli', 'grape.stages'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == []


def _singles_problem(seed: int = 4):
    """Observed changes of fitting singles on genes 2, 3, 8, 11 (nodes 10.. unmeasured) and a control."""
    g = torch.Generator().manual_seed(seed)
    genes = torch.tensor([2, 3, 8, 11])
    observed = torch.randn(len(genes), N, generator=g)
    measured = torch.arange(N) < 10
    return genes, observed, measured


def test_kernel_singles_with_zero_corrections_are_the_mean_baseline():
    from grape.evaluation.baselines import mean_baseline

    graph = tiny_graph()
    model = make_model(singles="kernel").eval()  # decoder output, kernel query and coefficients start at zero
    genes, observed, measured = _singles_problem()
    model.set_observed_singles(genes, observed, measured)
    out = model(graph, torch.tensor([[5, -1], [3, -1], [5, 7], [3, 8]]))
    with torch.no_grad():
        model.kernel_self.fill_(1 / KERNEL_SCALE)  # the own-gene gate fully open
    own = model(graph, torch.tensor([[5, -1], [3, -1]]))
    # the perturbed gene's own change is then the mean of the fitting singles' own changes
    torch.testing.assert_close(own[0, 5], observed[[0, 1, 2], [2, 3, 8]].mean())  # own gene measured (11 is not)
    torch.testing.assert_close(own[1, 3], observed[[0, 2], [2, 8]].mean())  # the others
    other = torch.arange(N) != 5
    torch.testing.assert_close(own[0, other], out[0, other])
    m = measured
    # an unseen gene: the mean of all fitting singles; unmeasured nodes: no change
    torch.testing.assert_close(out[0, m], observed[:, m].mean(0))
    assert torch.equal(out[0, ~m], torch.zeros(int((~m).sum())))
    # a fitting single never reads itself: the mean of the others
    torch.testing.assert_close(out[1, m], observed[[0, 2, 3]][:, m].mean(0))
    # doubles with a zero interaction: the sum of their singles (observed where fitted)
    torch.testing.assert_close(out[2, m], 2 * observed[:, m].mean(0))
    torch.testing.assert_close(out[3, m], observed[1, m] + observed[2, m])
    # and that is grape.evaluation's mean baseline of the same fitting singles (control + mean change)
    control = np.linspace(1.0, 2.0, int(m.sum()))
    names = [f"g{i}+ctrl" for i in genes.tolist()]
    means = pd.DataFrame(np.vstack([control, control + observed[:, m].numpy()]), index=["ctrl", *names])
    split = pd.DataFrame({"condition": [*names, "g5+ctrl"], "split": ["train", "train", "val", "train", "test"]})
    means.loc["g5+ctrl"] = np.nan
    baseline = mean_baseline(means, split).predictions.loc["g5+ctrl"].to_numpy()
    np.testing.assert_allclose(control + out[0, m].detach().double().numpy(), baseline, atol=1e-6)


def test_kernel_weights_follow_features_and_prior_edges():
    graph = tiny_graph()
    genes, observed, measured = _singles_problem()
    model = make_model(singles="kernel").eval()
    model.set_observed_singles(genes, observed, measured)
    text = torch.nn.functional.normalize(graph.modalities["text"], dim=-1)
    nearest = int((text[5] @ text[genes].T).argmax())
    with torch.no_grad():
        model.kernel_similarity[0] = 10.0  # text cosine dominates: the nearest fitting single alone
    out = model(graph, torch.tensor([[5, -1]]))
    torch.testing.assert_close(out[0, measured], observed[nearest, measured], atol=1e-4, rtol=0)
    # a prior edge between gene 5 and one fitting single, nothing to the others: that single alone
    only = dataclasses.replace(tiny_graph(), edge_index=torch.tensor([[8, 0], [5, 1]]), edge_weight=torch.ones(2))
    model = make_model(singles="kernel", graph=only, gsl=False).eval()
    model.set_observed_singles(genes, observed, measured)
    with torch.no_grad():
        model.kernel_prior.fill_(10.0)
    out = model(only, torch.tensor([[5, -1]]))
    torch.testing.assert_close(out[0, measured], observed[2, measured], atol=1e-4, rtol=0)


def test_network_singles_ignore_the_observed_singles():
    graph = tiny_graph()
    genes, observed, measured = _singles_problem()
    model = perturb_decoder(make_model(singles="network")).eval()
    before = model(graph, torch.tensor([[5, -1], [3, -1]]))
    model.set_observed_singles(genes, observed, measured)
    torch.testing.assert_close(model(graph, torch.tensor([[5, -1], [3, -1]])), before)


def test_shared_dropout_masks_every_injection_set_alike():
    from grape.model.gnn import StateDropout

    torch.manual_seed(0)
    x = torch.randn(50, 6, 8) + 3.0  # no zeros of its own
    shared, per_set = StateDropout(0.5, shared=True), StateDropout(0.5)
    y = shared(x)
    kept = y != 0
    assert torch.equal(kept, kept[:, :1].expand_as(kept))  # one mask per node and channel, every set alike
    assert 0.3 < kept[:, 0].float().mean() < 0.7
    torch.testing.assert_close(y[kept], 2.0 * x[kept])  # survivors scaled by 1 / (1 - p)
    z = per_set(x) != 0
    assert not torch.equal(z, z[:, :1].expand_as(z))  # nn.Dropout's mask differs between sets
    torch.manual_seed(1)
    a = per_set(x)
    torch.manual_seed(1)
    assert torch.equal(a, torch.nn.functional.dropout(x, 0.5, True))  # per set: exactly nn.Dropout's draws
    shared.eval()
    assert torch.equal(shared(x), x)
    assert torch.equal(StateDropout(0.0, shared=True)(x), x)
