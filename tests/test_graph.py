from __future__ import annotations

import json
import struct

import numpy as np
import pandas as pd
import pytest
import torch

from grape.features.store import save_features as _save
from grape.graph.build import (
    Options,
    build_graph,
    coexpression_edges,
    load_graph,
    merge_edges,
    prior_edges,
    save_graph,
    standardize,
    to_heterodata,
    topk_similar,
    zscore_columns,
)
from grape.stages import graph
from grape.variants import GRAPH_VARIANTS, model_graph_variant


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def features(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # low-rank structure so that many similarities pass min_similarity
    base = rng.normal(size=(n, 3))
    text = base @ rng.normal(size=(3, 12)) + 0.3 * rng.normal(size=(n, 12))
    dna = base @ rng.normal(size=(3, 8)) + 0.3 * rng.normal(size=(n, 8))
    return text.astype(np.float32), dna.astype(np.float32)


def nodes_table(n: int = 20) -> pd.DataFrame:
    cycle = ["protein_coding", "lncRNA", "protein_coding", "miRNA", "snRNA"]
    return pd.DataFrame({"gene": [f"G{i:02d}" for i in range(n)], "biotype": [cycle[i % 5] for i in range(n)]})


# --------------------------------------------------------------------------- topk


@pytest.mark.parametrize("chunk_size", [3, 7, 20, 4096])
def test_topk_chunked_equals_dense(chunk_size):
    x = unit_rows(20, 6, seed=1)
    k = 4
    idx, val = topk_similar(x, k, chunk_size=chunk_size)
    dense = x @ x.T
    dense.fill_diagonal_(float("-inf"))
    top = dense.topk(k, dim=1)
    torch.testing.assert_close(idx, top.indices, rtol=0, atol=0)
    torch.testing.assert_close(val, top.values)
    assert not (idx == torch.arange(20).unsqueeze(1)).any()


def test_topk_absolute_ranks_by_magnitude_and_keeps_sign():
    x = unit_rows(15, 4, seed=3)
    idx, val = topk_similar(x, 3, chunk_size=4, absolute=True)
    dense = x @ x.T
    dense.fill_diagonal_(0.0)
    top = dense.abs().topk(3, dim=1)
    torch.testing.assert_close(idx, top.indices, rtol=0, atol=0)
    torch.testing.assert_close(val, dense.gather(1, top.indices))
    assert (val < 0).any()


def test_topk_caps_k_at_n_minus_one():
    idx, _ = topk_similar(unit_rows(4, 3, seed=2), 10, chunk_size=2)
    assert idx.shape == (4, 3)
    for row in range(4):
        assert sorted(idx[row].tolist()) == sorted(set(range(4)) - {row})


# --------------------------------------------------------------------------- prior edges


def dense_fused(mods: list[torch.Tensor], min_sim: float, fusion: str = "mean") -> torch.Tensor:
    """Dense reference: per-modality cosine, thresholded at min_sim (below -> 0), fused."""
    sims = []
    for m in mods:
        x = m.double() - m.double().mean(0, keepdim=True)
        x = x / x.norm(dim=1, keepdim=True)
        s = x @ x.T
        sims.append(torch.where(s >= min_sim, s, torch.zeros_like(s)))
    stacked = torch.stack(sims)
    return stacked.mean(0) if fusion == "mean" else stacked.max(0).values  # symmetric


def test_prior_edges_properties_and_weights():
    text, dna = features()
    mods = [torch.from_numpy(text), torch.from_numpy(dna)]
    top_k, min_sim = 3, 0.9
    edge_index, weight = prior_edges(mods, top_k=top_k, min_similarity=min_sim, chunk_size=6)
    src, dst = edge_index
    assert 20 < edge_index.shape[1] < 20 * top_k  # the threshold binds for some targets
    assert not (src == dst).any()
    assert torch.bincount(dst, minlength=20).max() <= top_k
    # an edge needs at least one modality above the threshold: mean fusion gives >= min_sim / 2
    assert (weight >= min_sim / 2 - 1e-6).all()
    # no duplicate edges
    assert len({(int(s), int(d)) for s, d in zip(src, dst)}) == edge_index.shape[1]
    fused = dense_fused(mods, min_sim)
    torch.testing.assert_close(weight.double(), fused[src, dst], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_prior_edges_equal_dense_selection(fusion):
    text, dna = features(n=12, seed=3)
    mods = [torch.from_numpy(text), torch.from_numpy(dna)]
    top_k, min_sim = 3, 0.1
    edge_index, _ = prior_edges(mods, top_k=top_k, min_similarity=min_sim, chunk_size=5, fusion=fusion)
    got = {(int(s), int(d)) for s, d in edge_index.T}
    assert len(got) > 12
    # dense reference: candidates = union of each modality's top_k neighbours of every target
    fused = dense_fused(mods, min_sim, fusion)
    expected = set()
    for dst in range(12):
        cands = set()
        for m in mods:
            x = standardize(m).double()
            s = x @ x[dst]
            s[dst] = -np.inf
            cands.update(s.topk(top_k).indices.tolist())
        kept = sorted((c for c in cands if fused[c, dst] > 0), key=lambda c: -fused[c, dst])[:top_k]
        expected.update((c, dst) for c in kept)
    assert got == expected


def test_min_similarity_above_all_gives_no_edges():
    text, dna = features(n=10)
    edge_index, weight = prior_edges([torch.from_numpy(text), torch.from_numpy(dna)], top_k=3, min_similarity=1.01)
    assert edge_index.shape == (2, 0) and weight.shape == (0,)


def test_coexpression_edges_match_dense_correlation():
    g = torch.Generator().manual_seed(4)
    values = torch.randn(9, 12, generator=g)
    values[:, 3] = -values[:, 5] + 0.01 * torch.randn(9, generator=g)  # strongly anti-correlated pair
    nodes = torch.arange(12) + 100  # gene column -> node id
    edge_index, weight = coexpression_edges(values, nodes, top_k=2, min_similarity=0.3, chunk_size=5)
    corr = torch.corrcoef(values.T)
    corr.fill_diagonal_(0.0)
    top = corr.abs().topk(2, dim=1)
    expected = {(int(top.indices[t, j]) + 100, t + 100) for t in range(12) for j in range(2)
                if corr[t, top.indices[t, j]].abs() >= 0.3}
    got = {(int(s), int(d)) for s, d in edge_index.T}
    assert got == expected
    assert (105, 103) in got and (103, 105) in got
    for (s, d), w in zip(edge_index.T, weight):
        assert float(w) == pytest.approx(float(corr[int(d) - 100, int(s) - 100].abs()), abs=1e-5)


def test_coexpression_needs_three_conditions():
    edge_index, weight = coexpression_edges(torch.randn(2, 5), torch.arange(5), top_k=2, min_similarity=0.0)
    assert edge_index.shape == (2, 0) and weight.shape == (0,)


def test_merge_edges_keeps_largest_weight():
    a = (torch.tensor([[0, 1], [1, 2]]), torch.tensor([0.5, 0.2]))
    b = (torch.tensor([[0, 2], [1, 0]]), torch.tensor([0.7, 0.3]))
    index, weight = merge_edges([a, b], 3)
    got = {(int(s), int(d)): float(w) for (s, d), w in zip(index.T, weight)}
    assert got == pytest.approx({(0, 1): 0.7, (1, 2): 0.2, (2, 0): 0.3})


def test_unknown_fusion_is_refused():
    with pytest.raises(ValueError, match="graph.fusion"):
        Options(fusion="median")


# --------------------------------------------------------------------------- build


def test_build_graph_default_groups():
    nodes = nodes_table()
    text, dna = features()
    opts = Options(top_k=3, min_similarity=0.1, chunk_size=7)
    data = to_heterodata(build_graph(nodes, text, dna, options=opts))
    assert data.validate(raise_on_error=True)
    assert sorted(data.node_types) == ["coding", "noncoding"]
    coding = nodes.index[nodes["biotype"] == "protein_coding"].to_numpy()
    assert data["coding"].global_id.tolist() == coding.tolist()
    assert data["noncoding"].global_id.tolist() == sorted(set(range(20)) - set(coding.tolist()))
    assert data["coding"].num_nodes == len(coding)
    np.testing.assert_array_equal(data["coding"].x_text.numpy(), text[coding])
    np.testing.assert_array_equal(data["coding"].x_dna.numpy(), dna[coding])
    assert set(data.edge_types) == {(s, "to", d) for s in ("coding", "noncoding") for d in ("coding", "noncoding")}

    # the relations partition exactly the prior edges, mapped back to global ids
    ref_index, ref_weight = prior_edges([torch.from_numpy(text), torch.from_numpy(dna)], top_k=3,
                                        min_similarity=0.1, chunk_size=7)
    ref = {(int(s), int(d)): float(w) for (s, d), w in zip(ref_index.T, ref_weight)}
    got = {}
    for s_type, rel, d_type in data.edge_types:
        store = data[s_type, rel, d_type]
        assert store.edge_index.shape[1] == store.edge_weight.shape[0]
        for (s, d), w in zip(store.edge_index.T, store.edge_weight):
            key = (int(data[s_type].global_id[s]), int(data[d_type].global_id[d]))
            assert key not in got
            got[key] = float(w)
    assert sum(data[e].edge_index.shape[1] for e in data.edge_types) == ref_index.shape[1]
    assert got.keys() == ref.keys()
    for key, w in ref.items():
        assert got[key] == pytest.approx(w)


def test_build_graph_custom_mapping_three_types():
    nodes = nodes_table()
    text, dna = features()
    opts = Options(biotype_groups={"protein_coding": "coding", "lncRNA": "lnc"}, default_group="other",
                   top_k=3, min_similarity=0.1)
    data = to_heterodata(build_graph(nodes, text, dna, options=opts))
    assert data.validate(raise_on_error=True)
    assert sorted(data.node_types) == ["coding", "lnc", "other"]
    assert data["lnc"].global_id.tolist() == nodes.index[nodes["biotype"] == "lncRNA"].tolist()
    assert data["other"].global_id.tolist() == nodes.index[nodes["biotype"].isin(["miRNA", "snRNA"])].tolist()
    types = ("coding", "lnc", "other")
    assert set(data.edge_types) == {(s, "to", d) for s in types for d in types}


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip_is_safetensors(tmp_path):
    nodes = nodes_table()
    text, dna = features()
    built = build_graph(nodes, text, dna, options=Options(top_k=3, min_similarity=0.1))
    data = built.data
    path = tmp_path / "graph.safetensors"
    save_graph(path, built)

    raw = path.read_bytes()
    assert not raw.startswith(b"\x80")  # not a pickle
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert "__metadata__" in header
    assert json.loads(header["__metadata__"]["genes"]) == nodes["gene"].tolist()

    loaded = load_graph(path)
    assert loaded.options["top_k"] == 3 and loaded.options["fusion"] == "mean"
    assert loaded.genes == nodes["gene"].tolist()
    assert loaded.biotypes == nodes["biotype"].tolist()
    assert loaded.data.node_types == data.node_types
    assert loaded.data.edge_types == data.edge_types
    for t in data.node_types:
        for key in ("x_text", "x_dna", "global_id"):
            assert torch.equal(loaded.data[t][key], data[t][key])
        assert loaded.data[t].num_nodes == data[t].num_nodes
    for e in data.edge_types:
        assert torch.equal(loaded.data[e].edge_index, data[e].edge_index)
        assert torch.equal(loaded.data[e].edge_weight, data[e].edge_weight)
    assert loaded.data.validate(raise_on_error=True)
    # the file is the plain tensors, in global node order
    for key in ("node_type", "edge_index", "edge_weight"):
        assert torch.equal(getattr(loaded, key), getattr(built, key)), key
    for name in ("text", "dna"):
        assert torch.equal(loaded.modalities[name], built.modalities[name])
    assert loaded.node_types == built.node_types and loaded.variant == "full"


def test_loading_a_file_of_another_format_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"node/coding/x_text": torch.zeros(2, 3)}, str(tmp_path / "old.safetensors"), metadata={"genes": "[]"})
    with pytest.raises(ValueError, match="not a graph of this grape version"):
        load_graph(tmp_path / "old.safetensors")


# --------------------------------------------------------------------------- variants


def test_graph_variants_are_the_graphs_training_rebuilt():
    """Each graph variant is the graph that training made of the full graph before the variants were
    graph-level: the prior of one modality from its z-scored features, one node type for no_biotype."""
    nodes = nodes_table()
    text, dna = features()
    opts = Options(top_k=3, min_similarity=0.1, chunk_size=7)
    full = build_graph(nodes, text, dna, options=opts)
    assert full.prior_modalities == ("text", "dna") and full.biotype
    one_type = build_graph(nodes, text, dna, options=opts, variant="no_biotype")
    assert one_type.node_types == ("gene",) and not one_type.node_type.any()
    assert torch.equal(one_type.edge_index, full.edge_index) and torch.equal(one_type.edge_weight, full.edge_weight)
    for name, x in (("text_only", text), ("dna_only", dna)):
        graph_variant = build_graph(nodes, text, dna, options=opts, variant=name)
        expected = prior_edges([zscore_columns(torch.from_numpy(x))], top_k=3, min_similarity=0.1, chunk_size=7)
        assert torch.equal(graph_variant.edge_index, expected[0])
        assert torch.equal(graph_variant.edge_weight, expected[1])
        assert graph_variant.node_types == full.node_types and torch.equal(graph_variant.node_type, full.node_type)
        assert {tuple(e) for e in graph_variant.edge_index.T.tolist()} != {tuple(e) for e in full.edge_index.T.tolist()}
        for m in ("text", "dna"):  # the features stay: the variant changes the prior only
            assert torch.equal(graph_variant.modalities[m], full.modalities[m])
    with pytest.raises(ValueError, match="unknown graph variant 'no_dna'"):
        build_graph(nodes, text, dna, options=opts, variant="no_dna")


def test_full_graph_lists_edges_relation_by_relation():
    nodes = nodes_table()
    text, dna = features()
    g = build_graph(nodes, text, dna, options=Options(top_k=3, min_similarity=0.1))
    relation = g.node_type[g.edge_index[0]] * len(g.node_types) + g.node_type[g.edge_index[1]]
    assert (relation.diff() >= 0).all()


@pytest.mark.parametrize(("model_variant", "train", "expected"), [
    ("full", {}, "full"), ("no_gsl", {}, "full"), ("joint_doubles", {}, "full"), ("no_pretraining", {}, "full"),
    ("no_biotype", {}, "no_biotype"), ("text_only", {}, "text_only"), ("dna_only", {}, "dna_only"),
    ("full", {"modalities": ["dna", "text"], "biotype": True}, "full"),
    ("full", {"modalities": ["text"]}, "text_only"), ("no_gsl", {"biotype": False}, "no_biotype"),
])
def test_model_variants_train_on_the_graph_variant_their_options_need(model_variant, train, expected):
    assert model_graph_variant(model_variant, train) == expected
    assert expected in GRAPH_VARIANTS


def test_a_graph_no_variant_builds_is_refused():
    with pytest.raises(ValueError, match="no graph variant builds a prior from text with one node type"):
        model_graph_variant("text_only", {"biotype": False})
    with pytest.raises(ValueError, match="unknown model variant 'no_model'"):
        model_graph_variant("no_model")


# --------------------------------------------------------------------------- stage


def write_stage_inputs(tmp_path, text_genes, dna_genes):
    nodes = nodes_table(10)
    desc = tmp_path / "descriptions.tsv"
    nodes.assign(gene_id="", description="x", source="fallback").to_csv(desc, sep="\t", index=False)
    text, dna = features(10)
    order = {g: i for i, g in enumerate(nodes["gene"])}
    _save(tmp_path / "text.npz", text_genes, text[[order[g] for g in text_genes]], {})
    _save(tmp_path / "dna.npz", dna_genes, dna[[order[g] for g in dna_genes]], {})
    return nodes, desc


def test_run_writes_graph(tmp_path):
    genes = [f"G{i:02d}" for i in range(10)]
    nodes, desc = write_stage_inputs(tmp_path, genes, genes)
    out = tmp_path / "graph.safetensors"
    graph.run(options=graph.Options(top_k=3, min_similarity=0.1), descriptions=desc,
              text=tmp_path / "text.npz", dna=tmp_path / "dna.npz", out=out)
    loaded = load_graph(out)
    assert loaded.genes == genes
    assert sorted(loaded.data.node_types) == ["coding", "noncoding"]
    assert loaded.variant == "full"
    graph.run(options=graph.Options(top_k=3, min_similarity=0.1, variant="no_biotype"), descriptions=desc,
              text=tmp_path / "text.npz", dna=tmp_path / "dna.npz", out=tmp_path / "one_type.safetensors")
    one_type = load_graph(tmp_path / "one_type.safetensors")
    assert one_type.variant == "no_biotype" and one_type.node_types == ("gene",)
    assert one_type.options["variant"] == "no_biotype" and one_type.options["top_k"] == 3
    with pytest.raises(ValueError, match="unknown graph variant 'x'"):
        graph.Options(variant="x")


@pytest.mark.parametrize("which", ["text", "dna"])
def test_run_refuses_features_in_another_order(tmp_path, which):
    genes = [f"G{i:02d}" for i in range(10)]
    swapped = genes[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    _, desc = write_stage_inputs(tmp_path, swapped if which == "text" else genes,
                                 swapped if which == "dna" else genes)
    out = tmp_path / "graph.safetensors"
    with pytest.raises(ValueError, match=rf"{which} features do not list the genes"):
        graph.run(options=graph.Options(top_k=3), descriptions=desc,
                  text=tmp_path / "text.npz", dna=tmp_path / "dna.npz", out=out)
    assert not out.exists()
