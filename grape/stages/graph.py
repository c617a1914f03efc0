"""The graph stage: the gene graph of one graph variant, from the description table and the features.

Reads the node list (``descriptions.tsv``: gene, biotype) and the text and DNA features
(``.npz`` from ``grape embed``, in the same gene order), builds graph variant ``--variant``
(:func:`grape.graph.build.build_graph`, :data:`grape.variants.GRAPH_VARIANTS`) and writes it
atomically (:func:`grape.graph.build.save_graph`). Prior sources come with their paths in
``--priors`` (JSON: name -> {kind, path, ...}, config key ``graph.priors``), e.g.
``--priors '{"tf": {"kind": "edges", "path": "tf_targets.tsv.gz"}}'``; the workflow lists
their files as the rule's inputs, so a changed file rebuilds the graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from grape.features.store import load_features
from grape.graph import build
from grape.stages import PathArg
from grape.variants import GRAPH_VARIANTS

FILES = {
    "descriptions": PathArg("description table from `grape describe` (the node list, with biotypes)"),
    "text": PathArg("text embeddings (.npz from `grape embed`)"),
    "dna": PathArg("DNA features (.npz from `grape embed`)"),
    "out": PathArg("output graph (.safetensors: features, node types, prior edges; names in its metadata)"),
}

__all__ = ["FILES", "Options", "run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options(build.Options):
    """Options of the graph stage: config section ``graph`` and the graph variant to build."""

    # Not a config key: the workflow sets it per job from the {graph_variant} wildcard.
    variant: str = field(default="full", metadata={"help": f"graph variant: {', '.join(GRAPH_VARIANTS)}"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in GRAPH_VARIANTS:
            raise ValueError(f"unknown graph variant {self.variant!r} (known: {', '.join(GRAPH_VARIANTS)})")


def run(*, options: Options, descriptions: Path, text: Path, dna: Path, out: Path) -> None:
    """Assemble and save the graph."""
    nodes = pd.read_csv(descriptions, sep="\t", dtype=str).fillna("")
    genes = nodes["gene"].tolist()
    features = {}
    for name, path in (("text", text), ("dna", dna)):
        got_genes, vectors, _ = load_features(Path(path))
        if got_genes != genes:
            raise ValueError(f"{name} features do not list the genes of {descriptions} in order; rerun `grape embed`")
        features[name] = vectors
    graph = build.build_graph(nodes, features["text"], features["dna"], options=options, variant=options.variant)
    counts = {t: int((graph.node_type == i).sum()) for i, t in enumerate(graph.node_types)}
    parts = (["similarity of " + "+".join(graph.prior_modalities)] if options.similarity
             and build.GRAPH_VARIANTS[graph.variant].similarity else []) + list(graph.sources)
    log.info("graph %s: %s nodes, %d prior edges from %s", graph.variant, counts,
             graph.edge_index.shape[1], ", ".join(parts))
    build.save_graph(Path(out), graph)
