"""One gene identity for every stage: the dataset's labels resolved once, in ``annotate``.

``annotate`` writes ``mapping.tsv``, one row per gene label of the dataset (every measured
feature in ``var`` order, then every perturbation-only label), with the columns of
:data:`grape.annotation.annotate.MAPPING_COLUMNS`. Two of them carry the identity that later stages
use:

``node``
    the key of the gene's node in ``describe``, ``embed``, ``graph`` and ``train`` (the
    dataset's label of the first dataset gene resolved to that annotation gene). A
    perturbed label that names a measured gene under another symbol (``C19orf26`` for the
    measured ``CBARP``) gets the measured gene's node. Empty for excluded features.
``status``
    ``mapped``, ``unmapped``, ``ambiguous``, ``duplicate`` (kept as nodes of biotype
    ``unknown``) or ``excluded``: a measured feature that no annotation knows and that
    looks like a guide, guide pair, Cas protein or vector element
    (:func:`is_non_gene`); it is no node, no training target and no metric gene.

Outputs keep the user's labels; ``symbol`` and ``gene_id`` of the mapping say what each
label resolved to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from grape.options import default

#: Default pattern of measured features that are not genes (matched case-insensitively, whole
#: name, only for features that no annotation knows): guides (``EGR1_g1``, ``sg-EGR1``), guide
#: pairs (``DOT1L_g1:EP300_g2``), Cas proteins (``Cas9``, ``dCas9-KRAB``, ``Cas13d``),
#: non-targeting controls and vector elements (fluorescent proteins, resistance genes, WPRE).
NON_GENE_PATTERN: str = default("dataset", "non_gene_pattern")  # the schema's default

EXCLUDED = "excluded"
KEPT_AS_UNKNOWN = ("unmapped", "ambiguous", "duplicate")


def non_gene_matcher(pattern: str | None, names: Sequence[str] = ()) -> re.Pattern[str] | None:
    """Compile ``dataset.non_gene_pattern`` (``None`` or ``""``: none); errors name the key."""
    if not pattern:
        return None
    try:
        return re.compile(pattern, flags=re.IGNORECASE)
    except re.error as err:
        raise ValueError(f"dataset.non_gene_pattern is not a regular expression: {err}") from err


def is_non_gene(name: str, *, pattern: re.Pattern[str] | None, listed: Iterable[str] = ()) -> bool:
    """Whether a feature name is a non-gene feature: in ``listed`` (``dataset.non_gene_features``),
    or matching the whole ``pattern``. Callers apply it only to names that no annotation knows."""
    if name in (listed if isinstance(listed, (set, frozenset)) else set(listed)):
        return True
    return bool(pattern is not None and pattern.fullmatch(name))


@dataclass(frozen=True)
class GeneIdentity:
    """The resolution of every gene label of a dataset (read from ``mapping.tsv``)."""

    table: pd.DataFrame

    @classmethod
    def read(cls, path: str | Path) -> GeneIdentity:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        missing = [c for c in ("dataset_name", "var_name", "role", "status", "node") if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: not a mapping table of `grape annotate` (no column {', '.join(missing)}); "
                             "rerun the annotate stage")
        return cls(table)

    def node_of(self, label: str) -> str | None:
        """Node key of a dataset label (measured symbol or perturbed label), or None if it has none."""
        return self._nodes.get(label)

    @cached_property
    def _nodes(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for label, node in zip(self.table["dataset_name"], self.table["node"]):
            if node and label not in found:
                found[label] = node
        return found

    @cached_property
    def _rows(self) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for row in self.table.to_dict("records"):
            found.setdefault(row["dataset_name"], row)
        return found

    def symbol_of(self, label: str) -> str:
        """The gene's symbol in the chosen annotation (empty when unresolved or excluded)."""
        return str(self._rows.get(label, {}).get("symbol", ""))

    def gene_id_of(self, label: str) -> str:
        """The gene's Ensembl id (empty when unresolved or excluded)."""
        return str(self._rows.get(label, {}).get("gene_id", ""))

    def nodes(self) -> dict[str, str]:
        """Label -> node key of every label that has a node."""
        return dict(self._nodes)

    @property
    def excluded(self) -> list[str]:
        """``var_names`` of the measured features left out as non-genes."""
        rows = self.table.loc[self.table["status"] == EXCLUDED]
        return [v or d for v, d in zip(rows["var_name"], rows["dataset_name"])]
