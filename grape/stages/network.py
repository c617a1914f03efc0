"""Precision at k of the learned and prior networks against a true network (the demo's).

Reads the graph (its prior edges and gene order), each variant's ``network.tsv`` and the
true network; scores them with :func:`grape.graph.network.recovery`; writes the table.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from grape.graph.build import load_graph
from grape.graph.network import Options, graph_name, prior_network, recovery
from grape.io.files import atomic_path
from grape.stages import PathArg

__all__ = ["FILES", "Options", "run"]

log = logging.getLogger(__name__)

FILES = {
    "graph": PathArg("graph from `grape graph` (.safetensors): the prior network"),
    "networks": PathArg("network.tsv of each model variant (.../train/<variant>/network.tsv)", many=True),
    "truth": PathArg("true network TSV (source_name, target_name, ...)"),
    "out": PathArg("output TSV: graph, k, precision, hits, n_edges, n_true, recall"),
}


def read_network(path: Path) -> pd.DataFrame:
    """A learned network table, checked for the columns the scoring reads (source, target, weight)."""
    table = pd.read_csv(path, sep="\t")
    missing = [c for c in ("source", "target", "weight") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {', '.join(missing)}")
    return table


def run(*, options: Options, graph: Path, networks: list[Path], truth: Path, out: Path) -> None:
    """Score the prior graph and every learned network against the truth."""
    loaded = load_graph(Path(graph))
    paths = [networks] if isinstance(networks, (str, Path)) else networks
    tables = {graph_name(Path(path)): read_network(Path(path)) for path in paths}
    truth_table = pd.read_csv(truth, sep="\t", dtype={options.source_column: str, options.target_column: str})
    result = recovery(prior_network(loaded), tables, truth_table, options=options, genes=loaded.genes)
    log.info("network recovery:\n%s", result.to_string(index=False))
    with atomic_path(Path(out)) as tmp:
        result.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
