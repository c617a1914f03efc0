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

:func:`recovery` (for the ``network`` stage) scores such networks, and the prior graph
(:func:`prior_network`, ranked by its similarity weight), against a ground-truth network
(the demo's ``truth_network.tsv``): precision at k, where each gene's top-k incoming edges
(by weight) are checked against the directed true edges (regulator -> target), pooled over
genes. ``random`` is the precision expected from edges drawn at random (the density of the
true network).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from grape.options import options_class
from grape.graph.build import Graph, top_incoming_index

log = logging.getLogger(__name__)

NETWORK_COLUMNS = ["source", "target", "source_biotype", "target_biotype", "source_type", "target_type",
                   "weight", "effect", "attention", "graph_weight", "origin"]


@dataclass(frozen=True)
class Options(options_class("network")):
    """Options of the network stage (config section ``network``)."""


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


def prior_network(graph: Graph) -> pd.DataFrame:
    """The prior edges of a graph (:func:`grape.graph.build.load_graph`) as a table of source,
    target, weight (gene names), in the graph's edge order."""
    src, dst = graph.edge_index.tolist()
    return pd.DataFrame({
        "source": pd.Series([graph.genes[i] for i in src], dtype=object),
        "target": pd.Series([graph.genes[i] for i in dst], dtype=object),
        "weight": graph.edge_weight.numpy().astype(np.float32),
    })


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
