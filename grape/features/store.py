"""The gene feature file (``.npz``): gene names, one float32 vector per gene, and a JSON ``meta``.

Written by the embed stage (``text.npz``, ``dna.npz``) and read by the graph stage; this
module needs only numpy, so reading features imports neither torch nor a language model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from grape.io.files import atomic_path


class Features(NamedTuple):
    """Genes, their vectors ``[n, dim]`` (float32, in gene order) and the featuriser's meta."""

    genes: list[str]
    vectors: np.ndarray
    meta: dict[str, Any]


def save_features(path: Path, genes: Sequence[str], vectors: np.ndarray, meta: dict[str, Any]) -> None:
    """Write a feature file atomically (``allow_pickle`` is never needed to read it)."""
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, genes=np.asarray(list(genes), dtype=str), vectors=np.asarray(vectors, dtype=np.float32),
                     meta=np.asarray(json.dumps(meta)))


def load_features(path: Path) -> Features:
    """Read a feature file written by :func:`save_features`: genes, vectors [n, dim] float32, meta."""
    with np.load(path, allow_pickle=False) as data:
        return Features(data["genes"].tolist(), data["vectors"], json.loads(str(data["meta"])))
