"""One description text per gene, with its source.

This stage reads descriptions from a table (the demo's own, or one a user gives),
keyed by Ensembl gene id or symbol. A gene with no description gets the documented
fallback ``"<name> is a <biotype words> gene."`` with source ``fallback``, so every
node of the graph has a text and the table says where each text came from.
Retrieval from NCBI (Bio.Entrez) plugs in here as another source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from grape._io import atomic_path
from grape.cli import PathArg

log = logging.getLogger(__name__)

CLI_PATHS = {
    "genes": PathArg("gene table from `grape annotate` (TSV)"),
    "missing": PathArg("dataset genes missing from the annotation (TSV from `grape annotate`)"),
    "table": PathArg("description table: TSV with a gene_id or gene_name column and a description column"),
    "out": PathArg("output TSV: gene, gene_id, biotype, description, source"),
}

ID_COLUMNS = ("gene_id", "ensembl_id")
NAME_COLUMNS = ("gene_name", "symbol", "gene")


@dataclass(frozen=True)
class Options:
    """Options of the describe stage (config section ``describe``)."""

    description_column: str = field(default="description", metadata={"help": "column of the table with the text"})


def fallback_text(name: str, biotype: str) -> str:
    """The text used when a gene has no description."""
    words = biotype.replace("_", " ") if biotype and biotype != "unknown" else "uncharacterised"
    return f"{name} is a {words} gene."


def read_table(path: Path, *, description_column: str) -> tuple[dict[str, str], dict[str, str]]:
    """Read a description table into (by gene id, by symbol) lookups."""
    table = pd.read_csv(path, sep="\t", dtype=str).fillna("")
    if description_column not in table.columns:
        raise ValueError(f"{path}: no column {description_column!r} (columns: {', '.join(table.columns)})")
    id_col = next((c for c in ID_COLUMNS if c in table.columns), None)
    name_col = next((c for c in NAME_COLUMNS if c in table.columns), None)
    if id_col is None and name_col is None:
        raise ValueError(f"{path}: needs a gene id column ({', '.join(ID_COLUMNS)}) or a symbol column ({', '.join(NAME_COLUMNS)})")
    texts = table[description_column].str.strip()
    by_id = dict(zip(table[id_col].str.split(".").str[0], texts)) if id_col else {}
    by_name = dict(zip(table[name_col], texts)) if name_col else {}
    return by_id, by_name


def describe(genes: pd.DataFrame, missing: pd.DataFrame, *, by_id: dict[str, str], by_name: dict[str, str]) -> pd.DataFrame:
    """Description of every dataset gene: annotated ones, then those missing from the annotation."""
    rows = []
    for rec in genes.itertuples(index=False):
        text = by_id.get(str(rec.gene_id).split(".")[0]) or by_name.get(str(rec.gene_name)) or by_name.get(str(rec.dataset_name))
        source = "table" if text else "fallback"
        rows.append((rec.dataset_name, rec.gene_id, rec.biotype, text or fallback_text(rec.gene_name, rec.biotype), source))
    for rec in missing.itertuples(index=False):
        text = by_name.get(str(rec.gene))
        rows.append((rec.gene, "", "unknown", text or fallback_text(rec.gene, "unknown"), "table" if text else "fallback"))
    return pd.DataFrame(rows, columns=["gene", "gene_id", "biotype", "description", "source"])


def run(*, options: Options, genes: Path, missing: Path, table: Path, out: Path) -> None:
    """Write the description table of the stage."""
    for name, path in (("genes", genes), ("missing", missing), ("table", table)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"describe --{name}: file not found: {path}")
    gene_table = pd.read_csv(genes, sep="\t", dtype={"gene_id": str, "gene_name": str, "dataset_name": str})
    missing_table = pd.read_csv(missing, sep="\t", dtype=str)
    by_id, by_name = read_table(Path(table), description_column=options.description_column)
    result = describe(gene_table, missing_table, by_id=by_id, by_name=by_name)
    n_fallback = int((result["source"] == "fallback").sum())
    log.info("%d genes described, %d with the fallback text", len(result), n_fallback)
    with atomic_path(out) as tmp:
        result.to_csv(tmp, sep="\t", index=False)
