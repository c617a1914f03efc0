"""Assemble the gene graph the model reads: features, node types and sparse prior edges.

Nodes are the dataset's genes, typed by biotype group (default: ``coding`` for
protein_coding, ``noncoding`` for every other biotype, as in GRAPE). Node features
are the text embedding and DNA profile of each gene (``modalities``).

Prior edges are GRAPE's multimodal similarity graph, kept sparse. For each
modality, every gene's ``top_k`` most cosine-similar genes are found in row blocks
(memory ``chunk_size x N``, never an N x N matrix); in each modality a similarity
below ``min_similarity`` counts as no edge (GRAPE thresholds each modality's
similarity graph); the thresholded similarities are fused over modalities
(``fusion``: their mean, so an edge both modalities support weighs most, or their
max); each gene keeps its ``top_k`` heaviest incoming edges. The edges of one relation
(source group, target group) are listed together.

Prior sources (``graph.priors``, :mod:`grape.graph.priors`: directed edge tables such as
TF -> target, STRING-style undirected pairs, GMT gene-set co-membership by GEARS' Jaccard
rule) are fused with it: each source's weights are normalised to (0, 1] and scaled by its
``weight``, each source keeps its own ``top_k`` incoming edges per gene, and the parts are
summed on shared (source, target) pairs. ``graph.similarity: false`` leaves the similarity
prior out. Without sources (``priors: {}``) the graph is exactly the similarity graph.
What each source matched (genes ignored, edges kept) is in the graph's metadata
(:attr:`Graph.sources`).

Graph variants (:data:`grape.variants.GRAPH_VARIANTS`) change the graph for the model
variants that need their own: the similarity prior from one modality only (built from that
modality's column-z-scored features, the features the model reads; the prior sources stay),
one node type for every gene, the similarity prior alone (``no_prior_sources``) or the prior
sources alone (``priors_only``). The graph stage builds one file per variant.

The file (:func:`save_graph`) holds plain tensors in global node order, :class:`Graph`:
the features per modality, node types, the prior edges and their weights, with the gene
names, biotypes, node types, variant and options as JSON metadata (safetensors, no
pickle). :func:`to_heterodata` gives the same graph as a validated PyTorch Geometric
``HeteroData`` (one node store per type, one edge store per relation).

:func:`coexpression_edges` builds optional co-expression edges; training calls it
on the training conditions only, after the split.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from grape.graph import priors as prior_sources
from grape.io.files import atomic_path
from grape.options import options_class
from grape.variants import GRAPH_VARIANTS, MODALITIES, SINGLE_NODE_TYPE

log = logging.getLogger(__name__)

RELATION = "to"


@dataclass(frozen=True)
class Options(options_class("graph")):
    """Options of the graph stage (config section ``graph``)."""

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"graph.fusion must be one of {', '.join(FUSIONS)}, not {self.fusion!r}")
        prior_sources.prior_sources(self.priors)  # keys and kinds of graph.priors checked before any file is read


FUSIONS = ("mean", "max")


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Centre each column, then scale rows to unit length (for cosine similarity)."""
    x = x - x.mean(dim=0, keepdim=True)
    return torch.nn.functional.normalize(x, p=2, dim=1, eps=1e-12)


def topk_similar(
    x: torch.Tensor, k: int, *, chunk_size: int = 4096, absolute: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and dot products of each row's ``k`` most similar other rows.

    With unit-length rows this is cosine similarity; ``absolute`` ranks by its
    absolute value (for correlations of either sign) and returns the signed value.
    Works in blocks of ``chunk_size`` rows, so memory is ``chunk_size x N``, not
    ``N x N``. Returns ``(index [N, k], similarity [N, k])`` on ``x``'s device.
    """
    n = x.shape[0]
    k = max(0, min(k, n - 1))
    index = torch.empty((n, k), dtype=torch.long, device=x.device)
    value = torch.empty((n, k), dtype=x.dtype, device=x.device)
    if k == 0:
        return index, value
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sims = x[start:stop] @ x.T
        rows = torch.arange(stop - start, device=x.device)
        score = sims.abs() if absolute else sims
        score[rows, rows + start] = float("-inf")
        top = score.topk(k, dim=1)
        index[start:stop] = top.indices
        value[start:stop] = sims.gather(1, top.indices) if absolute else top.values
    return index, value


def top_incoming_index(dst: torch.Tensor, weight: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` heaviest incoming edges of every target (ties: first listed)."""
    order = torch.argsort(weight, descending=True, stable=True)
    order = order[torch.argsort(dst[order], stable=True)]
    sorted_dst = dst[order]
    first = torch.searchsorted(sorted_dst, sorted_dst, right=False)
    rank = torch.arange(len(dst), device=dst.device) - first
    return order[rank < k]


def keep_top_incoming(
    src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` heaviest incoming edges of every target (ties: first listed)."""
    keep = top_incoming_index(dst, weight, k)
    return src[keep], dst[keep], weight[keep]


def prior_edges(
    modalities: list[torch.Tensor], *, top_k: int, min_similarity: float, chunk_size: int = 4096,
    fusion: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused sparse similarity graph: ``edge_index [2, E]`` (source, target) and weights.

    Candidates are the per-modality top-k neighbours; each modality's cosine
    similarity is thresholded at ``min_similarity`` (below counts 0), then fused
    by ``fusion`` (mean or max); edges of fused weight 0 are dropped and each target
    keeps its ``top_k`` heaviest incoming edges.
    """
    unit = [standardize(m) for m in modalities]
    n = unit[0].shape[0]
    candidates = []
    for u in unit:
        idx, _ = topk_similar(u, top_k, chunk_size=chunk_size)
        dst = torch.arange(n, device=u.device).repeat_interleave(idx.shape[1])
        candidates.append(torch.stack([idx.reshape(-1), dst]))
    pairs = torch.unique(torch.cat(candidates, dim=1), dim=1)
    src, dst = pairs
    sims = torch.stack([(u[src] * u[dst]).sum(1) for u in unit])
    sims = torch.where(sims >= min_similarity, sims, torch.zeros_like(sims))
    weight = sims.mean(0) if fusion == "mean" else sims.max(0).values
    keep = weight > 0
    src, dst, weight = keep_top_incoming(src[keep], dst[keep], weight[keep], top_k)
    return torch.stack([src, dst]), weight.float()


def coexpression_edges(
    values: torch.Tensor, nodes: torch.Tensor, *, top_k: int, min_similarity: float, chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Co-expression edges between genes from ``values [conditions, genes]``.

    Pearson correlation over the rows (callers pass training conditions only), the
    ``top_k`` strongest (by absolute value) per gene, kept when ``|r| >= min_similarity``;
    weight ``|r|``. ``nodes`` maps gene columns to node ids. Returns (edge_index, weight).
    """
    if values.shape[0] < 3 or top_k <= 0:
        return torch.empty((2, 0), dtype=torch.long), torch.empty(0)
    centred = values - values.mean(0, keepdim=True)
    unit = torch.nn.functional.normalize(centred.T.float(), p=2, dim=1, eps=1e-12)
    idx, sim = topk_similar(unit, top_k, chunk_size=chunk_size, absolute=True)
    dst = torch.arange(unit.shape[0]).repeat_interleave(idx.shape[1])
    src, weight = idx.reshape(-1), sim.reshape(-1).abs()
    keep = weight >= min_similarity
    return torch.stack([nodes[src[keep]], nodes[dst[keep]]]), weight[keep].float()


def merge_edges(
    parts: list[tuple[torch.Tensor, torch.Tensor]], num_nodes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Union of edge sets; an edge in several keeps its largest weight."""
    index = torch.cat([p[0] for p in parts], dim=1)
    weight = torch.cat([p[1] for p in parts])
    key = index[1] * num_nodes + index[0]
    unique, inverse = torch.unique(key, return_inverse=True)
    merged = torch.full((len(unique),), float("-inf")).scatter_reduce(0, inverse, weight, reduce="amax")
    return torch.stack([unique % num_nodes, unique // num_nodes]), merged


def zscore_columns(x: torch.Tensor) -> torch.Tensor:
    """Each column centred and scaled to unit (sample) standard deviation (at least 1e-6)."""
    return (x - x.mean(0, keepdim=True)) / x.std(0, keepdim=True).clamp(min=1e-6)


def biotype_groups(biotypes: list[str], *, options: Options) -> list[str]:
    """The node type (biotype group) of each biotype: ``graph.biotype_groups``, else ``graph.default_group``."""
    return [options.biotype_groups.get(b, options.default_group) for b in biotypes]


def by_relation(edge_index: torch.Tensor, weight: torch.Tensor, node_type: torch.Tensor,
                num_types: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The edges listed relation by relation (source type, then target type), each in its given order."""
    relation = node_type[edge_index[0]] * num_types + node_type[edge_index[1]]
    order = torch.argsort(relation, stable=True)
    return edge_index[:, order], weight[order]


@dataclass(frozen=True)
class Graph:
    """The gene graph in global node order: what the graph stage writes and the model reads.

    Node ``i`` is gene ``genes[i]`` (biotype ``biotypes[i]``) of node type
    ``node_types[node_type[i]]``; ``modalities`` maps each feature modality to its
    ``[N, D]`` float32 features (as embedded); ``edge_index [2, E]`` (source, target) and
    ``edge_weight [E]`` are the prior edges. ``variant`` is the graph variant
    (:data:`grape.variants.GRAPH_VARIANTS`), ``options`` the graph stage's options.
    """

    genes: list[str]
    biotypes: list[str]
    modalities: dict[str, torch.Tensor]
    node_type: torch.Tensor
    node_types: tuple[str, ...]
    edge_index: torch.Tensor
    edge_weight: torch.Tensor
    variant: str = "full"
    options: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)  # prior source name -> what it matched (grape.graph.priors)

    @property
    def num_nodes(self) -> int:
        return len(self.genes)

    @property
    def prior_modalities(self) -> tuple[str, ...]:
        """The modalities the prior edges were built from."""
        return GRAPH_VARIANTS[self.variant].modalities

    @property
    def biotype(self) -> bool:
        """Whether node types are biotype groups (False: one node type for every gene)."""
        return GRAPH_VARIANTS[self.variant].biotype

    @property
    def data(self) -> HeteroData:
        """The graph as a validated ``HeteroData`` (:func:`to_heterodata`)."""
        return to_heterodata(self)


def build_graph(
    nodes: pd.DataFrame, text: np.ndarray, dna: np.ndarray, *, options: Options, variant: str = "full"
) -> Graph:
    """Build graph variant ``variant``; ``nodes`` has columns gene and biotype (optionally gene_id, which
    prior sources may also name genes by), rows aligned with the features.

    The prior of a variant with both modalities is built from the features as given, its edges
    listed by biotype relation; that of a one-modality variant from the column-z-scored
    features of that modality (what the model reads), its edges in the order the search finds
    them. (These are the priors, and the edge orders, that training used when it rebuilt
    the prior itself, so the models' predictions are unchanged to the last bit.) With prior
    sources (``options.priors``) the parts are fused (:func:`grape.graph.priors.fuse_edges`)
    and listed by biotype relation.
    """
    if variant not in GRAPH_VARIANTS:
        raise ValueError(f"unknown graph variant {variant!r} (known: {', '.join(GRAPH_VARIANTS)})")
    spec = GRAPH_VARIANTS[variant]
    genes, biotypes = nodes["gene"].astype(str).tolist(), nodes["biotype"].astype(str).tolist()
    for name, x in (("text", text), ("dna", dna)):
        if len(x) != len(genes):
            raise ValueError(f"{name} features have {len(x)} rows for {len(genes)} genes")
    features = {"text": torch.from_numpy(np.asarray(text, dtype=np.float32)),
                "dna": torch.from_numpy(np.asarray(dna, dtype=np.float32))}
    groups = biotype_groups(biotypes, options=options)
    group_types = sorted(set(groups))
    index = {t: i for i, t in enumerate(group_types)}
    group_id = torch.tensor([index[g] for g in groups], dtype=torch.long)
    both = set(spec.modalities) == set(MODALITIES)
    sources = (prior_sources.load_priors(options.priors, genes,
                                         nodes["gene_id"].astype(str).tolist() if "gene_id" in nodes else None,
                                         chunk_size=options.chunk_size)
               if spec.sources and options.priors else [])
    similarity = spec.similarity and options.similarity
    if not similarity and not sources:
        raise ValueError(f"graph variant {variant!r} with graph.similarity {str(options.similarity).lower()} "
                         "and no graph.priors: the graph would have no prior edges")
    if similarity:
        prior_input = ([features[m] for m in MODALITIES] if both
                       else [zscore_columns(features[m]) for m in spec.modalities])
        edge_index, weight = prior_edges(prior_input, top_k=options.top_k, min_similarity=options.min_similarity,
                                         chunk_size=options.chunk_size, fusion=options.fusion)
    else:
        edge_index, weight = torch.empty((2, 0), dtype=torch.long), torch.empty(0)
    if sources:
        edge_index, weight = prior_sources.fuse_edges(
            [(edge_index, weight), *((s.edge_index, s.weight) for s in sources)], len(genes))
    if both or sources:
        edge_index, weight = by_relation(edge_index, weight, group_id, len(group_types))
    if spec.biotype:
        node_type, node_types = group_id, tuple(group_types)
    else:
        node_type, node_types = torch.zeros(len(genes), dtype=torch.long), (SINGLE_NODE_TYPE,)
    return Graph(genes=genes, biotypes=biotypes, modalities=features, node_type=node_type, node_types=node_types,
                 edge_index=edge_index, edge_weight=weight.float(), variant=variant,
                 options={**dataclasses.asdict(options), "variant": variant},
                 sources={s.name: s.record for s in sources})


def to_heterodata(graph: Graph) -> HeteroData:
    """The graph as a PyTorch Geometric ``HeteroData``, validated.

    One node store per node type (``x_<modality>``, ``global_id``: the node's index in
    :class:`Graph`), one edge store per (source type, ``to``, target type) relation, with
    local ``edge_index`` and ``edge_weight``.
    """
    data = HeteroData()
    local = torch.empty(graph.num_nodes, dtype=torch.long)
    for i, node_type in enumerate(graph.node_types):
        members = torch.nonzero(graph.node_type == i).flatten()
        local[members] = torch.arange(len(members))
        store = data[node_type]
        for name, x in graph.modalities.items():
            store[f"x_{name}"] = x[members]
        store.global_id = members
        store.num_nodes = len(members)
    src, dst = graph.edge_index
    for i, s_type in enumerate(graph.node_types):
        for j, d_type in enumerate(graph.node_types):
            mask = (graph.node_type[src] == i) & (graph.node_type[dst] == j)
            rel = data[s_type, RELATION, d_type]
            rel.edge_index = torch.stack([local[src[mask]], local[dst[mask]]])
            rel.edge_weight = graph.edge_weight[mask]
    data.validate(raise_on_error=True)
    return data


FORMAT = "grape-graph-2"


def save_graph(path: Path, graph: Graph) -> None:
    """Write the graph's tensors with safetensors and its names and settings as JSON metadata (no pickle)."""
    from safetensors.torch import save_file

    tensors = {f"modality/{name}": x.contiguous() for name, x in graph.modalities.items()}
    tensors.update(node_type=graph.node_type.contiguous(), edge_index=graph.edge_index.contiguous(),
                   edge_weight=graph.edge_weight.contiguous())
    meta = {"format": FORMAT, "genes": json.dumps(graph.genes), "biotypes": json.dumps(graph.biotypes),
            "node_types": json.dumps(list(graph.node_types)), "modalities": json.dumps(list(graph.modalities)),
            "variant": graph.variant, "options": json.dumps(graph.options),
            "sources": json.dumps(graph.sources)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_graph(path: Path) -> Graph:
    """Read a graph written by :func:`save_graph`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a graph of this grape version (format {meta.get('format')!r}, "
                             f"expected {FORMAT!r}); rerun `grape graph`")
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    return Graph(genes=json.loads(meta["genes"]), biotypes=json.loads(meta["biotypes"]),
                 modalities={m: tensors[f"modality/{m}"] for m in json.loads(meta["modalities"])},
                 node_type=tensors["node_type"], node_types=tuple(json.loads(meta["node_types"])),
                 edge_index=tensors["edge_index"], edge_weight=tensors["edge_weight"], variant=meta["variant"],
                 options=json.loads(meta["options"]), sources=json.loads(meta.get("sources", "{}")))
