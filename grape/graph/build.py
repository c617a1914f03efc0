"""Assemble the biotype heterograph as a PyTorch Geometric ``HeteroData``.

Nodes are the dataset's genes, typed by biotype group (default: ``coding`` for
protein_coding, ``noncoding`` for every other biotype, as in GRAPE). Node features
are the text embedding (``x_text``) and DNA profile (``x_dna``) of each gene.

Prior edges are GRAPE's multimodal similarity graph, kept sparse. For each
modality, every gene's ``top_k`` most cosine-similar genes are found in row blocks
(memory ``chunk_size x N``, never an N x N matrix); in each modality a similarity
below ``min_similarity`` counts as no edge (GRAPE thresholds each modality's
similarity graph); the thresholded similarities are fused over modalities
(``fusion``: their mean, so an edge both modalities support weighs most, or their
max); each gene keeps its ``top_k`` heaviest incoming edges. Edges are split into
one relation per (source group, target group) pair. The options are stored with
the graph so that training can rebuild the prior from one modality (ablations).

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

from grape.io.files import atomic_path
from grape.stages import PathArg
from grape.features.embed import load_features

log = logging.getLogger(__name__)

RELATION = "to"

CLI_PATHS = {
    "descriptions": PathArg("description table from `grape describe` (the node list, with biotypes)"),
    "text": PathArg("text embeddings (.npz from `grape embed`)"),
    "dna": PathArg("DNA features (.npz from `grape embed`)"),
    "out": PathArg("output graph (.safetensors with the node lists in its metadata)"),
}


@dataclass(frozen=True)
class Options:
    """Options of the graph stage (config section ``graph``)."""

    biotype_groups: dict[str, str] = field(
        default_factory=lambda: {"protein_coding": "coding"},
        metadata={"help": "Ensembl biotype -> node type; biotypes not listed go to default_group"},
    )
    default_group: str = field(default="noncoding", metadata={"help": "node type of biotypes not in biotype_groups"})
    top_k: int = field(default=10, metadata={"help": "prior edges kept per gene (incoming)"})
    min_similarity: float = field(default=0.2, metadata={"help": "drop prior edges whose fused similarity is below this"})
    chunk_size: int = field(default=4096, metadata={"help": "rows per block in the similarity search"})
    fusion: str = field(default="mean", metadata={"help": "fuse per-modality thresholded similarities: mean or max"})

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"graph.fusion must be one of {', '.join(FUSIONS)}, not {self.fusion!r}")


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


def build_graph(
    nodes: pd.DataFrame, text: np.ndarray, dna: np.ndarray, *, options: Options
) -> HeteroData:
    """Build the heterograph; ``nodes`` has columns gene and biotype, rows aligned with the features."""
    groups = nodes["biotype"].map(lambda b: options.biotype_groups.get(b, options.default_group)).to_numpy()
    x_text = torch.from_numpy(np.asarray(text, dtype=np.float32))
    x_dna = torch.from_numpy(np.asarray(dna, dtype=np.float32))
    edge_index, weight = prior_edges(
        [x_text, x_dna], top_k=options.top_k, min_similarity=options.min_similarity, chunk_size=options.chunk_size,
        fusion=options.fusion,
    )
    data = HeteroData()
    node_types = sorted(set(groups))
    local = torch.empty(len(nodes), dtype=torch.long)
    for node_type in node_types:
        members = torch.from_numpy(np.flatnonzero(groups == node_type))
        local[members] = torch.arange(len(members))
        store = data[node_type]
        store.x_text = x_text[members]
        store.x_dna = x_dna[members]
        store.global_id = members
        store.num_nodes = len(members)
    group_index = {t: i for i, t in enumerate(node_types)}
    gid = torch.tensor([group_index[g] for g in groups])
    src, dst = edge_index
    for s_type in node_types:
        for d_type in node_types:
            mask = (gid[src] == group_index[s_type]) & (gid[dst] == group_index[d_type])
            rel = data[s_type, RELATION, d_type]
            rel.edge_index = torch.stack([local[src[mask]], local[dst[mask]]])
            rel.edge_weight = weight[mask]
    data.validate(raise_on_error=True)
    return data


def save_graph(
    path: Path, data: HeteroData, *, genes: list[str], biotypes: list[str], options: Options | None = None
) -> None:
    """Write tensors with safetensors and the gene lists as JSON metadata (no pickle)."""
    from safetensors.torch import save_file

    tensors = {}
    for node_type in data.node_types:
        for key in ("x_text", "x_dna", "global_id"):
            tensors[f"node/{node_type}/{key}"] = data[node_type][key].contiguous()
    for edge_type in data.edge_types:
        name = "__".join(edge_type)
        tensors[f"edge/{name}/edge_index"] = data[edge_type].edge_index.contiguous()
        tensors[f"edge/{name}/edge_weight"] = data[edge_type].edge_weight.contiguous()
    meta = {"genes": json.dumps(genes), "biotypes": json.dumps(biotypes),
            "node_types": json.dumps(data.node_types), "edge_types": json.dumps([list(e) for e in data.edge_types]),
            "options": json.dumps(dataclasses.asdict(options) if options is not None else {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


@dataclass(frozen=True)
class Graph:
    """A loaded heterograph and the gene order behind its ``global_id``s."""

    data: HeteroData
    genes: list[str]
    biotypes: list[str]
    options: dict = field(default_factory=dict)  # the graph stage's options (empty for older files)


def load_graph(path: Path) -> Graph:
    """Read a graph written by :func:`save_graph`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    data = HeteroData()
    for node_type in json.loads(meta["node_types"]):
        for key in ("x_text", "x_dna", "global_id"):
            data[node_type][key] = tensors[f"node/{node_type}/{key}"]
        data[node_type].num_nodes = len(data[node_type].global_id)
    for edge_type in json.loads(meta["edge_types"]):
        name = "__".join(edge_type)
        data[tuple(edge_type)].edge_index = tensors[f"edge/{name}/edge_index"]
        data[tuple(edge_type)].edge_weight = tensors[f"edge/{name}/edge_weight"]
    return Graph(data=data, genes=json.loads(meta["genes"]), biotypes=json.loads(meta["biotypes"]),
                 options=json.loads(meta.get("options", "{}")))


def run(*, options: Options, descriptions: Path, text: Path, dna: Path, out: Path) -> None:
    """Assemble and save the graph."""
    nodes = pd.read_csv(descriptions, sep="\t", dtype=str).fillna("")
    text_genes, text_x, _ = load_features(Path(text))
    dna_genes, dna_x, _ = load_features(Path(dna))
    genes = nodes["gene"].tolist()
    for name, got in (("text", text_genes), ("dna", dna_genes)):
        if got != genes:
            raise ValueError(f"{name} features do not list the genes of {descriptions} in order; rerun `grape embed`")
    data = build_graph(nodes, text_x, dna_x, options=options)
    n_edges = sum(data[e].edge_index.shape[1] for e in data.edge_types)
    log.info("graph: %s nodes, %d prior edges over %d relations",
             {t: data[t].num_nodes for t in data.node_types}, n_edges, len(data.edge_types))
    save_graph(Path(out), data, genes=genes, biotypes=nodes["biotype"].tolist(), options=options)
