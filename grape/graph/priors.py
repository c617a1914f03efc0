"""Prior gene networks from files, fused with GRAPE's feature-similarity prior (``graph.priors``).

A prior source is a named entry of ``graph.priors`` (keys and defaults in the configuration
schema, :func:`prior_sources`):

``kind: edges``
    a table (TSV, ``.gz`` read as gzip) with columns ``source`` and ``target`` (gene names)
    and, with ``weight_column``, a column of positive weights; other columns are ignored.
    ``directed: true`` keeps each pair's direction (a TF's message goes to its target),
    ``false`` adds both directions (STRING-style pairs). A pair listed on several rows
    (e.g. by several databases) weighs the number of its rows when the table has no weight
    column, its largest weight otherwise. Self-pairs are dropped.
``kind: gmt``
    gene sets (GMT: name, description, genes, tab-separated). GEARS' rule: two genes'
    similarity is the Jaccard index of their sets of gene sets; each gene keeps its ``top_k``
    most similar genes as incoming edges. Computed sparsely: the gene x set incidence of the
    graph's genes only (every set each of them is in, so each gene's set count is its full
    count) as a scipy sparse matrix, the intersections by sparse products in row blocks of
    ``chunk_size`` genes; never a dense genes x genes matrix.

Genes are matched on the graph's node keys (the ``gene`` column of the description table:
the dataset's labels, :mod:`grape.annotation.identity`), then on its Ensembl ``gene_id``
column where present. Genes of a source that are no graph node are ignored; their number is
logged and recorded in the graph's metadata (:attr:`PriorEdges.record`). A source none of
whose edges joins two graph genes is an error naming its file.

Fusion (:func:`fuse_edges`): each source's weights are divided by the source's largest,
so they lie in (0, 1], and scaled by its ``weight``; each source keeps its own ``top_k``
heaviest incoming edges per gene (ties: lower source node first; ``top_k: 0`` keeps all),
so a large table cannot crowd the other sources out; the similarity prior keeps its
``graph.top_k`` as without sources. The parts are summed on shared (source, target) pairs:
an edge several sources support weighs most. Without sources the graph is unchanged.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)

KINDS = ("edges", "gmt")


@dataclass(frozen=True)
class PriorSource:
    """One entry of ``graph.priors`` with the schema's defaults filled in."""

    name: str
    path: Path
    kind: str = "edges"
    directed: bool = True
    weight_column: str | None = None
    top_k: int = 20
    weight: float = 1.0


@dataclass(frozen=True)
class PriorEdges:
    """The edges of one source in graph node ids: ``edge_index [2, E]`` (source, target), ``weight [E]``
    (normalised to (0, 1], times the source's weight), and what was matched (``record``)."""

    name: str
    edge_index: torch.Tensor
    weight: torch.Tensor
    record: dict = field(default_factory=dict)


def _item_defaults() -> dict:
    from grape.options import key_schema

    items = key_schema("graph", "priors")["additionalProperties"]["properties"]
    return {key: sub["default"] for key, sub in items.items()}


def prior_sources(priors: Mapping[str, Mapping]) -> list[PriorSource]:
    """The sources of ``graph.priors`` (name -> settings), by name, defaults from the schema."""
    defaults = _item_defaults()
    sources = []
    for name in sorted(priors):
        settings = dict(priors[name] or {})
        unknown = sorted(set(settings) - set(defaults))
        if unknown:
            raise ValueError(f"graph.priors.{name}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(defaults)})")
        merged = {**defaults, **settings}
        if not merged["path"]:
            raise ValueError(f"graph.priors.{name}.path: no file given")
        if merged["kind"] not in KINDS:
            raise ValueError(f"graph.priors.{name}.kind must be one of {', '.join(KINDS)}, not {merged['kind']!r}")
        if int(merged["top_k"]) < 0 or not float(merged["weight"]) > 0:
            raise ValueError(f"graph.priors.{name}: top_k must be >= 0 and weight > 0")
        sources.append(PriorSource(name=str(name), path=Path(merged["path"]), kind=merged["kind"],
                                   directed=bool(merged["directed"]), weight_column=merged["weight_column"],
                                   top_k=int(merged["top_k"]), weight=float(merged["weight"])))
    return sources


def gene_index(genes: Sequence[str], gene_ids: Sequence[str] | None = None) -> dict[str, int]:
    """Node id of each name a source may use: the node keys, then gene IDs that are no node key."""
    index = {str(g): i for i, g in enumerate(genes)}
    if gene_ids is not None:
        ids = pd.Series([str(g) for g in gene_ids])
        unique = ids[(ids != "") & ~ids.duplicated(keep=False)]
        for i, gene_id in unique.items():
            index.setdefault(gene_id, int(i))
    return index


def top_per_target(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, k: int) -> np.ndarray:
    """Positions of each target's ``k`` heaviest incoming edges (ties: lower source first; k=0: all)."""
    if k <= 0 or len(dst) == 0:
        return np.arange(len(dst))
    order = np.lexsort((src, -weight, dst))
    sorted_dst = dst[order]
    first = np.searchsorted(sorted_dst, sorted_dst, side="left")
    rank = np.arange(len(order)) - first
    return np.sort(order[rank < k])


def _open_text(path: Path):
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8")


def _finish(source: PriorSource, src: np.ndarray, dst: np.ndarray, weight: np.ndarray, record: dict) -> PriorEdges:
    """Drop self-pairs, keep each target's top_k, normalise to (0, 1] and scale; error when nothing is left."""
    keep = src != dst
    src, dst, weight = src[keep], dst[keep], weight[keep]
    if len(src) == 0:
        raise ValueError(f"{source.path}: prior source {source.name!r} has no edge between two genes of the graph "
                         f"({record['genes_matched']} of {record['genes']} genes matched the graph's nodes)")
    chosen = top_per_target(src, dst, weight, source.top_k)
    src, dst, weight = src[chosen], dst[chosen], weight[chosen]
    weight = weight / weight.max() * source.weight
    record["edges"] = int(len(src))
    log.info("prior source %s (%s, %s): %d of %d genes are graph nodes (%d ignored), %d edges kept",
             source.name, source.kind, source.path, record["genes_matched"], record["genes"],
             record["genes_ignored"], record["edges"])
    return PriorEdges(name=source.name, edge_index=torch.from_numpy(np.stack([src, dst]).astype(np.int64)),
                      weight=torch.from_numpy(weight.astype(np.float32)), record=record)


def edge_table_edges(source: PriorSource, index: Mapping[str, int]) -> PriorEdges:
    """The edges of a ``kind: edges`` source (see the module docstring)."""
    path = source.path
    header = pd.read_csv(path, sep="\t", nrows=0).columns.tolist()
    wanted = ["source", "target"] + ([source.weight_column] if source.weight_column else [])
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(f"{path}: prior source {source.name!r} lacks column(s) {', '.join(missing)} "
                         f"(columns: {', '.join(map(str, header))})")
    table = pd.read_csv(path, sep="\t", usecols=wanted, dtype={"source": str, "target": str})
    table = table.dropna(subset=["source", "target"])
    names = pd.unique(pd.concat([table["source"], table["target"]], ignore_index=True))
    matched = int(sum(1 for n in names if n in index))
    record = {"kind": "edges", "path": str(path), "rows": int(len(table)), "genes": int(len(names)),
              "genes_matched": matched, "genes_ignored": int(len(names) - matched)}
    if matched == 0:
        raise ValueError(f"{path}: prior source {source.name!r} names no gene of the graph "
                         f"({len(names)} genes, none a graph node)")
    src = table["source"].map(index)
    dst = table["target"].map(index)
    if source.weight_column:
        weight = pd.to_numeric(table[source.weight_column], errors="coerce")
        bad = ~np.isfinite(weight.to_numpy(dtype=float)) | (weight.to_numpy(dtype=float) <= 0)
        if bad.any():
            log.warning("%s: %d rows without a positive weight in column %s are dropped", path, int(bad.sum()),
                        source.weight_column)
    else:
        weight = pd.Series(1.0, index=table.index)
        bad = np.zeros(len(table), dtype=bool)
    ok = src.notna().to_numpy() & dst.notna().to_numpy() & ~bad
    src = src[ok].to_numpy(dtype=np.int64)
    dst = dst[ok].to_numpy(dtype=np.int64)
    weight = weight[ok].to_numpy(dtype=np.float64)
    record["rows_in_graph"] = int(len(src))
    if not source.directed:
        src, dst = np.minimum(src, dst), np.maximum(src, dst)
    pairs = pd.DataFrame({"src": src, "dst": dst, "weight": weight})
    reduce = "max" if source.weight_column else "sum"  # unweighted: a pair weighs the number of its rows
    pairs = pairs.groupby(["src", "dst"], sort=True)["weight"].agg(reduce).reset_index()
    src, dst, weight = (pairs[c].to_numpy() for c in ("src", "dst", "weight"))
    if not source.directed:
        self_pair = src == dst
        src, dst = np.concatenate([src, dst[~self_pair]]), np.concatenate([dst, src[~self_pair]])
        weight = np.concatenate([weight, weight[~self_pair]])
    return _finish(source, src, dst, weight, record)


def read_gmt(path: Path) -> list[tuple[str, list[str]]]:
    """The gene sets of a GMT file: (name, genes) per line (the description column is skipped)."""
    sets = []
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            fields = line.rstrip("\n\r").split("\t")
            if not fields[0].strip():
                continue
            if len(fields) < 2:
                raise ValueError(f"{path}:{number}: not a GMT line (name, description, genes, tab-separated)")
            sets.append((fields[0], [g for g in fields[2:] if g]))
    return sets


def jaccard_top_k(incidence, *, top_k: int, chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each gene's ``top_k`` most similar other genes by Jaccard index of their sets.

    ``incidence`` is a binary scipy sparse ``[genes, sets]`` matrix. The intersections come from
    sparse products of ``chunk_size`` rows at a time; only gene pairs that share a set are formed.
    Returns ``(src, dst, jaccard)``: the neighbour, the gene, their Jaccard index (> 0).
    """
    from scipy import sparse

    matrix = sparse.csr_matrix(incidence, dtype=np.float64)
    sizes = np.asarray(matrix.sum(axis=1)).ravel()
    transposed = matrix.T.tocsr()
    srcs, dsts, values = [], [], []
    for start in range(0, matrix.shape[0], chunk_size):
        block = (matrix[start:start + chunk_size] @ transposed).tocoo()
        rows = block.row.astype(np.int64) + start
        cols = block.col.astype(np.int64)
        inter = block.data
        keep = (rows != cols) & (inter > 0)
        rows, cols, inter = rows[keep], cols[keep], inter[keep]
        jaccard = inter / (sizes[rows] + sizes[cols] - inter)
        chosen = top_per_target(cols, rows, jaccard, top_k)
        srcs.append(cols[chosen])
        dsts.append(rows[chosen])
        values.append(jaccard[chosen])
    if not srcs:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    return np.concatenate(srcs), np.concatenate(dsts), np.concatenate(values)


def gmt_edges(source: PriorSource, index: Mapping[str, int], num_nodes: int, *, chunk_size: int = 4096) -> PriorEdges:
    """The edges of a ``kind: gmt`` source (see the module docstring)."""
    from scipy import sparse

    sets = read_gmt(source.path)
    rows, cols, universe = [], [], set()
    for j, (_, genes) in enumerate(sets):
        for gene in set(genes):
            universe.add(gene)
            node = index.get(gene)
            if node is not None:
                rows.append(node)
                cols.append(j)
    matched = len({index[g] for g in universe if g in index})
    record = {"kind": "gmt", "path": str(source.path), "sets": len(sets), "genes": len(universe),
              "genes_matched": matched, "genes_ignored": len([g for g in universe if g not in index])}
    if matched == 0:
        raise ValueError(f"{source.path}: prior source {source.name!r} names no gene of the graph "
                         f"({len(universe)} genes in {len(sets)} sets, none a graph node)")
    incidence = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(num_nodes, max(len(sets), 1)))
    incidence.sum_duplicates()
    incidence.data[:] = 1.0  # two labels of one node in a set count once
    src, dst, jaccard = jaccard_top_k(incidence, top_k=source.top_k, chunk_size=chunk_size)
    return _finish(source, src, dst, jaccard, record)


def source_edges(source: PriorSource, index: Mapping[str, int], num_nodes: int, *,
                 chunk_size: int = 4096) -> PriorEdges:
    """The edges of one prior source; ``FileNotFoundError`` naming the key when its file is missing."""
    if not source.path.is_file():
        raise FileNotFoundError(f"graph.priors.{source.name}.path: file not found: {source.path}")
    if source.kind == "gmt":
        return gmt_edges(source, index, num_nodes, chunk_size=chunk_size)
    return edge_table_edges(source, index)


def load_priors(priors: Mapping[str, Mapping], genes: Sequence[str], gene_ids: Sequence[str] | None = None, *,
                chunk_size: int = 4096) -> list[PriorEdges]:
    """The edges of every source of ``graph.priors`` (by name) for a graph of nodes ``genes``."""
    index = gene_index(genes, gene_ids)
    return [source_edges(s, index, len(genes), chunk_size=chunk_size) for s in prior_sources(priors)]


def fuse_edges(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], num_nodes: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of edge sets: an edge in several parts weighs the sum of its weights.

    Returns ``(edge_index [2, E], weight [E])`` ordered by target, then source.
    """
    parts = [p for p in parts if p[0].shape[1]]
    if not parts:
        return torch.empty((2, 0), dtype=torch.long), torch.empty(0)
    index = torch.cat([p[0].long() for p in parts], dim=1)
    weight = torch.cat([p[1].double() for p in parts])
    key = index[1] * num_nodes + index[0]
    unique, inverse = torch.unique(key, return_inverse=True)
    summed = torch.zeros(len(unique), dtype=torch.float64).scatter_add_(0, inverse, weight)
    return torch.stack([unique % num_nodes, unique // num_nodes]), summed.float()
