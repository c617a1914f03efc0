"""The learned gene network: export from a trained model, and recovery of a known network.

:func:`export_network` (called by ``grape train``) lists, for every gene, its ``k``
strongest incoming edges among the edges of the model's message-passing graph (the
prior mixed with the structure learner's edges). An edge's ``effect`` is the model's
in-silico effect of the source on the target: the target's predicted change when the
source alone is perturbed, minus the prediction with nothing perturbed; ``weight`` is
its magnitude and ranks the edges. ``attention`` is the edge's attention averaged over
the message-passing layers (normalised over the target's incoming edges), and
``graph_weight`` its weight in the mixed graph before attention; ``origin`` says whether
the prior, the structure learner or both proposed it. Both genes' biotypes and node
types are given.

``grape network`` scores such networks, and the prior graph (ranked by its similarity
weight), against a ground-truth network (the demo's ``truth_network.tsv``): precision at
k, where each gene's top-k incoming edges (by weight) are checked against the directed
true edges (regulator -> target), pooled over genes. ``random`` is the precision
expected from edges drawn at random (the density of the true network).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from grape.io.files import atomic_path
from grape.stages import PathArg
from grape.graph.build import load_graph, top_incoming_index

log = logging.getLogger(__name__)

CLI_PATHS = {
    "graph": PathArg("graph from `grape graph` (.safetensors): the prior network"),
    "networks": PathArg("network.tsv of each model variant (.../train/<variant>/network.tsv)", many=True),
    "truth": PathArg("true network TSV (source_name, target_name, ...)"),
    "out": PathArg("output TSV: graph, k, precision, hits, n_edges, n_true, recall"),
}

NETWORK_COLUMNS = ["source", "target", "source_biotype", "target_biotype", "source_type", "target_type",
                   "weight", "effect", "attention", "graph_weight", "origin"]


@dataclass(frozen=True)
class Options:
    """Options of the network stage (config section ``network``)."""

    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10], metadata={"help": "k of precision at k"})
    source_column: str = field(default="source_name", metadata={"help": "column of the truth with the regulator"})
    target_column: str = field(default="target_name", metadata={"help": "column of the truth with the target"})


@torch.no_grad()
def edge_effects(model, graph, src: torch.Tensor, dst: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """The model's in-silico effect of each edge's source on its target.

    For every source gene, the predicted change of the target when the source alone is
    perturbed, minus the prediction with nothing perturbed (which carries what every
    perturbation shares). Sources are predicted in batches of ``batch_size`` (one forward
    pass each), keeping only the entries of the edges: memory ``batch_size x N``.
    """
    model.eval()
    device = graph.node_type.device
    sources = src.unique()
    none = model(graph, torch.full((1, 2), -1, device=device))[0].cpu()
    effect = torch.zeros(len(src))
    order = torch.argsort(src)
    position = torch.searchsorted(src[order], sources)  # first edge of each source in sorted order
    counts = torch.bincount(src, minlength=graph.num_nodes)[sources]
    for start in range(0, len(sources), batch_size):
        batch = sources[start : start + batch_size]
        pert = torch.full((len(batch), 2), -1, dtype=torch.long)
        pert[:, 0] = batch
        pred = model(graph, pert.to(device)).cpu() - none  # [b, N]
        for row, (first, count) in enumerate(zip(position[start : start + batch_size].tolist(),
                                                 counts[start : start + batch_size].tolist())):
            edges = order[first : first + count]
            effect[edges] = pred[row, dst[edges]]
    return effect


def export_network(model, graph, *, genes: list[str], biotypes: list[str], k: int) -> pd.DataFrame:
    """Top-``k`` incoming edges of every gene in the trained model's graph (see the module doc)."""
    net = model.network(graph)
    src, dst = net["src"].cpu(), net["dst"].cpu()
    attention, graph_weight = net["attention"].cpu(), net["weight"].cpu()
    effect = edge_effects(model, graph, src, dst)
    n = graph.num_nodes
    prior_keys = graph.edge_index[1].cpu() * n + graph.edge_index[0].cpu()
    in_prior = torch.isin(dst * n + src, prior_keys)
    learned = net["learned"].cpu()
    kept = top_incoming_index(dst, effect.abs(), k)
    node_type = graph.node_type.cpu()
    names = graph.node_types
    origin = np.where(in_prior[kept] & learned[kept], "both", np.where(learned[kept], "learned", "prior"))
    table = pd.DataFrame({
        "source": [genes[i] for i in src[kept].tolist()],
        "target": [genes[i] for i in dst[kept].tolist()],
        "source_biotype": [biotypes[i] for i in src[kept].tolist()],
        "target_biotype": [biotypes[i] for i in dst[kept].tolist()],
        "source_type": [names[t] for t in node_type[src[kept]].tolist()],
        "target_type": [names[t] for t in node_type[dst[kept]].tolist()],
        "weight": effect[kept].abs().numpy(),
        "effect": effect[kept].numpy(),
        "attention": attention[kept].numpy(),
        "graph_weight": graph_weight[kept].numpy(),
        "origin": origin,
    })
    return table.sort_values(["target", "weight", "source"], ascending=[True, False, True], kind="stable",
                             ignore_index=True)


def prior_network(graph_path: Path) -> pd.DataFrame:
    """The prior graph's edges as a table of source, target, weight (gene names)."""
    graph = load_graph(Path(graph_path))
    data = graph.data
    rows = []
    for edge_type in data.edge_types:
        s, _, d = edge_type
        ei = data[edge_type].edge_index
        rows.append(pd.DataFrame({
            "source": [graph.genes[i] for i in data[s].global_id[ei[0]].tolist()],
            "target": [graph.genes[i] for i in data[d].global_id[ei[1]].tolist()],
            "weight": data[edge_type].edge_weight.numpy(),
        }))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["source", "target", "weight"])


def precision_at_k(network: pd.DataFrame, truth: set[tuple[str, str]], ks: list[int]) -> pd.DataFrame:
    """Precision of each target's top-k incoming edges against ``truth`` (pooled over targets)."""
    ranked = network.sort_values(["target", "weight", "source"], ascending=[True, False, True], kind="stable")
    rank = ranked.groupby("target", sort=False).cumcount()
    hit = np.array([(s, t) in truth for s, t in zip(ranked["source"], ranked["target"])], dtype=bool)
    rows = []
    for k in ks:
        take = (rank < k).to_numpy()
        n_edges, hits = int(take.sum()), int(hit[take].sum())
        rows.append({"k": k, "precision": hits / n_edges if n_edges else float("nan"), "hits": hits,
                     "n_edges": n_edges, "n_true": len(truth), "recall": hits / len(truth) if truth else float("nan")})
    return pd.DataFrame(rows)


def graph_name(path: Path) -> str:
    """``learned`` for the full model's network, ``learned_<variant>`` for another variant's."""
    variant = Path(path).parent.name
    return "learned" if variant == "full" else f"learned_{variant}"


def recovery(
    prior: pd.DataFrame, networks: dict[str, pd.DataFrame], truth: pd.DataFrame, *, options: Options,
    genes: list[str],
) -> pd.DataFrame:
    """Precision at k of the prior and of each learned network, plus the random expectation."""
    for col in (options.source_column, options.target_column):
        if col not in truth.columns:
            raise ValueError(f"truth network: no column {col!r} (columns: {', '.join(truth.columns)})")
    known = set(genes)
    pairs = {(s, t) for s, t in zip(truth[options.source_column].astype(str), truth[options.target_column].astype(str))
             if s in known and t in known and s != t}
    tables = [precision_at_k(prior, pairs, options.ks).assign(graph="prior")]
    for name, table in networks.items():
        tables.append(precision_at_k(table, pairs, options.ks).assign(graph=name))
    n = len(genes)
    density = len(pairs) / (n * (n - 1)) if n > 1 else float("nan")
    tables.append(pd.DataFrame({"graph": "random", "k": options.ks, "precision": density, "hits": np.nan,
                                "n_edges": np.nan, "n_true": len(pairs), "recall": np.nan}))
    out = pd.concat(tables, ignore_index=True)
    return out[["graph", "k", "precision", "hits", "n_edges", "n_true", "recall"]]


def run(*, options: Options, graph: Path, networks: list[Path], truth: Path, out: Path) -> None:
    """Score the prior graph and every learned network against the truth."""
    loaded = load_graph(Path(graph))
    prior = prior_network(Path(graph))
    tables = {}
    for path in [networks] if isinstance(networks, (str, Path)) else networks:
        table = pd.read_csv(path, sep="\t")
        missing = [c for c in ("source", "target", "weight") if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {', '.join(missing)}")
        tables[graph_name(Path(path))] = table
    truth_table = pd.read_csv(truth, sep="\t", dtype={options.source_column: str, options.target_column: str})
    result = recovery(prior, tables, truth_table, options=options, genes=loaded.genes)
    log.info("network recovery:\n%s", result.to_string(index=False))
    with atomic_path(out) as tmp:
        result.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
