"""Prior sources of the gene graph (grape.graph.priors): edge tables, GMT Jaccard, fusion, the stage and config."""

from __future__ import annotations

import gzip
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from grape.config import ConfigError, validate_config
from grape.features.store import save_features
from grape.graph import priors
from grape.graph.build import Options, build_graph, by_relation, load_graph, prior_edges, save_graph
from grape.stages import graph as graph_stage

GENES = ["A", "B", "C", "D", "E"]


def edge_dict(edges: priors.PriorEdges) -> dict[tuple[str, str], float]:
    src, dst = edges.edge_index.tolist()
    return {(GENES[s], GENES[d]): round(float(w), 6) for s, d, w in zip(src, dst, edges.weight.tolist())}


def load(tmp_path, settings: dict, genes=GENES) -> priors.PriorEdges:
    (edges,) = priors.load_priors({"src": settings}, genes)
    return edges


@pytest.fixture()
def table(tmp_path):
    path = tmp_path / "edges.tsv.gz"
    rows = [("A", "B", 2.0, "db1"), ("B", "C", 4.0, "db1"), ("A", "X", 1.0, "db2"), ("A", "B", 1.0, "db2"),
            ("C", "C", 3.0, "db1"), ("Y", "Z", 1.0, "db1")]
    with gzip.open(path, "wt") as handle:
        handle.write("source\ttarget\tscore\tdatabase\n")
        handle.writelines("\t".join(map(str, r)) + "\n" for r in rows)
    return path


def test_directed_weighted_edges_keep_direction_and_use_the_weight_column(tmp_path, table):
    edges = load(tmp_path, {"path": str(table), "weight_column": "score", "weight": 2.0})
    # A->B listed twice: its largest weight (2); C->C dropped; normalised by the largest (4), times 2
    assert edge_dict(edges) == {("A", "B"): 1.0, ("B", "C"): 2.0}
    assert edges.record["genes"] == 6 and edges.record["genes_matched"] == 3 and edges.record["genes_ignored"] == 3


def test_unweighted_pairs_weigh_their_rows_and_undirected_doubles(tmp_path, table):
    directed = load(tmp_path, {"path": str(table)})
    assert edge_dict(directed) == {("A", "B"): 1.0, ("B", "C"): 0.5}  # A->B on two rows
    undirected = load(tmp_path, {"path": str(table), "directed": False})
    assert edge_dict(undirected) == {("A", "B"): 1.0, ("B", "A"): 1.0, ("B", "C"): 0.5, ("C", "B"): 0.5}


def test_each_target_keeps_its_top_k_incoming_edges(tmp_path):
    path = tmp_path / "edges.tsv"
    pd.DataFrame({"source": ["A", "B", "C", "D", "A"], "target": ["E", "E", "E", "E", "B"],
                  "w": [1.0, 3.0, 2.0, 0.5, 1.0]}).to_csv(path, sep="\t", index=False)
    edges = load(tmp_path, {"path": str(path), "weight_column": "w", "top_k": 2})
    assert edge_dict(edges) == {("B", "E"): 1.0, ("C", "E"): round(2 / 3, 6), ("A", "B"): round(1 / 3, 6)}
    every = load(tmp_path, {"path": str(path), "weight_column": "w", "top_k": 0})
    assert len(edge_dict(every)) == 5


@pytest.fixture()
def gmt(tmp_path):
    path = tmp_path / "sets.gmt"
    path.write_text("S1\tdesc\tA\tB\tC\nS2\t\tA\tB\nS3\tx\tC\tD\nS4\tx\tD\tE\nS5\tx\tA\tX\n")
    return path


def test_gmt_jaccard_by_hand(tmp_path, gmt):
    # sets of each gene: A {S1,S2,S5}, B {S1,S2}, C {S1,S3}, D {S3,S4}, E {S4}
    # Jaccard: A-B 2/3, A-C 1/4, B-C 1/3, C-D 1/3, D-E 1/2, the rest 0
    every = load(tmp_path, {"kind": "gmt", "path": str(gmt), "top_k": 0})
    top = 2 / 3
    expected = {("B", "A"): 2 / 3, ("C", "A"): 1 / 4, ("A", "B"): 2 / 3, ("C", "B"): 1 / 3, ("A", "C"): 1 / 4,
                ("B", "C"): 1 / 3, ("D", "C"): 1 / 3, ("C", "D"): 1 / 3, ("E", "D"): 1 / 2, ("D", "E"): 1 / 2}
    assert edge_dict(every) == {k: round(v / top, 6) for k, v in expected.items()}
    # top 1 per gene; C's tie between B and D (1/3 each): the lower node, B
    one = load(tmp_path, {"kind": "gmt", "path": str(gmt), "top_k": 1})
    assert edge_dict(one) == {("B", "A"): 1.0, ("A", "B"): 1.0, ("B", "C"): 0.5, ("E", "D"): 0.75, ("D", "E"): 0.75}
    assert one.record["genes_ignored"] == 1 and one.record["genes_matched"] == 5 and one.record["sets"] == 5


def test_jaccard_blocks_equal_one_block():
    from scipy import sparse

    rng = np.random.default_rng(0)
    incidence = sparse.csr_matrix((rng.random((30, 12)) < 0.25).astype(float))
    whole = priors.jaccard_top_k(incidence, top_k=4, chunk_size=4096)
    blocks = priors.jaccard_top_k(incidence, top_k=4, chunk_size=7)
    key = lambda t: sorted(zip(t[1].tolist(), t[0].tolist(), np.round(t[2], 12).tolist()))  # noqa: E731
    assert key(whole) == key(blocks)
    dense = incidence.toarray()
    inter = dense @ dense.T
    union = dense.sum(1)[:, None] + dense.sum(1)[None, :] - inter
    src, dst, value = whole
    np.testing.assert_allclose(value, inter[dst, src] / union[dst, src])


def test_unknown_genes_are_ignored_with_a_count_logged(tmp_path, table, caplog):
    with caplog.at_level(logging.INFO, logger="grape.graph.priors"):
        load(tmp_path, {"path": str(table)})
    assert "3 of 6 genes are graph nodes (3 ignored)" in caplog.text


def test_a_source_matching_no_gene_is_an_error_naming_the_file(tmp_path, table, gmt):
    with pytest.raises(ValueError, match=r"edges\.tsv\.gz: prior source 'src' names no gene of the graph"):
        load(tmp_path, {"path": str(table)}, genes=["P", "Q"])
    with pytest.raises(ValueError, match=r"sets\.gmt: prior source 'src' names no gene of the graph"):
        load(tmp_path, {"kind": "gmt", "path": str(gmt)}, genes=["P", "Q"])
    with pytest.raises(ValueError, match=r"edges\.tsv\.gz: prior source 'src' has no edge between two genes"):
        load(tmp_path, {"path": str(table)}, genes=["A", "Q"])


def test_missing_columns_name_the_file(tmp_path, table):
    bad = tmp_path / "bad.tsv"
    bad.write_text("from\tto\nA\tB\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: prior source 'src' lacks column\(s\) source, target"):
        load(tmp_path, {"path": str(bad)})
    with pytest.raises(ValueError, match=r"edges\.tsv\.gz: prior source 'src' lacks column\(s\) weight"):
        load(tmp_path, {"path": str(table), "weight_column": "weight"})


def test_settings_are_checked_before_any_file_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"graph\.priors\.tf: unknown key\(s\) colour"):
        Options(priors={"tf": {"path": "x.tsv", "colour": "red"}})
    with pytest.raises(ValueError, match=r"graph\.priors\.tf\.kind must be one of edges, gmt"):
        Options(priors={"tf": {"path": "x.tsv", "kind": "bed"}})
    with pytest.raises(FileNotFoundError, match=r"graph\.priors\.tf\.path: file not found"):
        priors.load_priors({"tf": {"path": str(tmp_path / "none.tsv")}}, GENES)


def test_gene_ids_match_too():
    index = priors.gene_index(["A", "B", "C"], ["ENSG1", "", "ENSG1"])
    assert index == {"A": 0, "B": 1, "C": 2}  # an ID two nodes share names neither
    assert priors.gene_index(["A", "B"], ["ENSG1", "ENSG2"])["ENSG2"] == 1


# --------------------------------------------------------------------------- the graph


def graph_inputs(n: int = 20):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(n, 3))
    text = (base @ rng.normal(size=(3, 12)) + 0.3 * rng.normal(size=(n, 12))).astype(np.float32)
    dna = (base @ rng.normal(size=(3, 8)) + 0.3 * rng.normal(size=(n, 8))).astype(np.float32)
    cycle = ["protein_coding", "lncRNA", "protein_coding", "miRNA"]
    nodes = pd.DataFrame({"gene": [f"G{i:02d}" for i in range(n)], "biotype": [cycle[i % 4] for i in range(n)]})
    return nodes, text, dna


def write_source(tmp_path, pairs):
    path = tmp_path / "tf.tsv"
    pd.DataFrame(pairs, columns=["source", "target"]).to_csv(path, sep="\t", index=False)
    return path


def test_no_priors_gives_exactly_the_similarity_graph():
    nodes, text, dna = graph_inputs()
    options = Options(top_k=3, min_similarity=0.1)
    assert options.priors == {} and options.similarity
    built = build_graph(nodes, text, dna, options=options)
    edge_index, weight = prior_edges([torch.from_numpy(text), torch.from_numpy(dna)], top_k=3, min_similarity=0.1)
    types = torch.tensor([0 if b == "protein_coding" else 1 for b in nodes["biotype"]])
    edge_index, weight = by_relation(edge_index, weight, types, 2)
    assert torch.equal(built.edge_index, edge_index) and torch.equal(built.edge_weight, weight)
    assert built.sources == {}
    for variant in ("text_only", "no_prior_sources"):
        plain = build_graph(nodes, text, dna, options=options, variant=variant)
        reference = build_graph(nodes, text, dna, options=options, variant="full" if variant != "text_only" else variant)
        assert torch.equal(plain.edge_index, reference.edge_index)
    with pytest.raises(ValueError, match="would have no prior edges"):
        build_graph(nodes, text, dna, options=options, variant="priors_only")


def test_sources_are_fused_with_the_similarity_prior(tmp_path):
    nodes, text, dna = graph_inputs()
    plain = build_graph(nodes, text, dna, options=Options(top_k=3, min_similarity=0.1))
    similar = {(s, d): w for s, d, w in zip(*plain.edge_index.tolist(), plain.edge_weight.tolist())}
    shared = next(iter(similar))
    pairs = [(f"G{shared[0]:02d}", f"G{shared[1]:02d}"), ("G00", "G05"), ("G00", "TP53")]
    path = write_source(tmp_path, pairs)
    options = Options(top_k=3, min_similarity=0.1, priors={"tf": {"path": str(path), "weight": 0.5}})
    fused = build_graph(nodes, text, dna, options=options)
    got = {(s, d): w for s, d, w in zip(*fused.edge_index.tolist(), fused.edge_weight.tolist())}
    expected = dict(similar)
    expected[shared] = expected[shared] + 0.5
    expected[(0, 5)] = expected.get((0, 5), 0.0) + 0.5
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6)
    relation = fused.node_type[fused.edge_index[0]] * 2 + fused.node_type[fused.edge_index[1]]
    assert (relation.diff() >= 0).all()
    assert fused.sources["tf"]["genes_ignored"] == 1 and fused.sources["tf"]["edges"] == 2
    # the one-modality variant rebuilds the similarity part only, the sources stay
    text_only = build_graph(nodes, text, dna, options=options, variant="text_only")
    text_pairs = set(zip(*text_only.edge_index.tolist()))
    assert (0, 5) in text_pairs and text_only.sources == fused.sources
    # similarity off, or the priors_only variant: the sources alone
    alone = build_graph(nodes, text, dna, options=Options(top_k=3, priors=options.priors, similarity=False))
    only = build_graph(nodes, text, dna, options=options, variant="priors_only")
    for g in (alone, only):
        assert set(zip(*g.edge_index.tolist())) == {shared, (0, 5)}
        assert g.edge_weight.tolist() == [0.5, 0.5]
    without = build_graph(nodes, text, dna, options=options, variant="no_prior_sources")
    assert torch.equal(without.edge_index, plain.edge_index) and without.sources == {}
    save_graph(tmp_path / "g.safetensors", fused)
    assert load_graph(tmp_path / "g.safetensors").sources == fused.sources


def test_the_stage_takes_priors_as_json_on_the_command_line(tmp_path):
    from grape.cli import main

    nodes, text, dna = graph_inputs(10)
    desc = tmp_path / "descriptions.tsv"
    nodes.assign(gene_id="", description="x", source="fallback").to_csv(desc, sep="\t", index=False)
    save_features(tmp_path / "text.npz", nodes["gene"].tolist(), text, {})
    save_features(tmp_path / "dna.npz", nodes["gene"].tolist(), dna, {})
    path = write_source(tmp_path, [("G00", "G01"), ("G02", "G03")])
    out = tmp_path / "graph.safetensors"
    argv = ["graph", "--descriptions", str(desc), "--text", str(tmp_path / "text.npz"), "--dna",
            str(tmp_path / "dna.npz"), "--out", str(out), "--top-k", "3", "--no-similarity",
            "--priors", json.dumps({"tf": {"kind": "edges", "path": str(path)}})]
    assert main(argv) == 0
    loaded = load_graph(out)
    assert set(zip(*loaded.edge_index.tolist())) == {(0, 1), (2, 3)}
    assert loaded.options["priors"]["tf"]["path"] == str(path) and loaded.sources["tf"]["edges"] == 2
    assert isinstance(graph_stage.Options(priors={}).priors, dict)


def test_config_refuses_a_missing_prior_file_naming_the_key(repo, tmp_path):
    config = yaml.safe_load((repo / "config.yaml").read_text())
    assert config["graph"]["priors"] == {}
    present = tmp_path / "tf.tsv"
    present.write_text("source\ttarget\n")
    config["graph"]["priors"] = {"tf": {"path": str(present)}, "go": {"kind": "gmt", "path": "missing.gmt"}}
    with pytest.raises(ConfigError, match=r"config key graph\.priors\.go\.path: file not found: missing\.gmt"):
        validate_config(config, repo / "workflow" / "schemas" / "config.schema.yaml", base_dir=tmp_path)
    config["graph"]["priors"] = {"tf": {"path": str(present), "kind": "bed"}}
    with pytest.raises(ConfigError, match=r"graph\.priors\.tf\.kind"):
        validate_config(config, repo / "workflow" / "schemas" / "config.schema.yaml", base_dir=tmp_path)


# --------------------------------------------------------------------------- real files


def test_real_priors_for_carpool_genes(shared_data):
    import anndata

    genes = anndata.read_h5ad(shared_data / "carpool_thp1_pseudobulk.h5ad", backed="r").var_names.astype(str).tolist()
    sources = priors.load_priors({"tf": {"path": str(shared_data / "tf_targets_human.tsv.gz")},
                                  "go_bp": {"kind": "gmt", "path": str(shared_data / "go_bp_gene_sets.gmt.gz")}},
                                 genes)
    by_name = {s.name: s for s in sources}
    for source in sources:
        logging.getLogger(__name__).warning("%s: %s", source.name, source.record)
        assert source.edge_index.shape[1] > 0 and source.edge_index.max() < len(genes)
        assert 0 < float(source.weight.min()) and float(source.weight.max()) == 1.0
        targets = torch.bincount(source.edge_index[1], minlength=len(genes))
        assert int(targets.max()) <= 20
    assert by_name["go_bp"].record["genes_matched"] > 0.5 * len(genes)  # its seconds: bench/preflight_bench.py


def test_prior_source_ablations_train_on_their_named_graphs():
    """The prior-source ablation rows: the model variant trains on the graph variant of the same name."""
    from grape.variants import ABLATIONS, GRAPH_VARIANTS, model_graph_variant

    for name in ("no_prior_sources", "priors_only"):
        assert name in ABLATIONS and name in GRAPH_VARIANTS
        assert model_graph_variant(name, {}) == name
    assert model_graph_variant("no_gsl", {}) == "full"
    assert not GRAPH_VARIANTS["no_prior_sources"].sources and not GRAPH_VARIANTS["priors_only"].similarity
