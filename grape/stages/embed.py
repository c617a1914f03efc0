"""Text (language model) and DNA (k-mer profile or DNA model) features per gene, cached by content.

The stage runs in one of three modes, chosen by its file arguments:

* embed (``--sequences``, ``--cache-dir``, ``--text-out``, ``--dna-out``): every gene of
  the description table, or with ``--genes`` only those of one shard's gene list;
* plan (``--plan-out FILE...``): split the genes into one gene list per file, balanced by
  the work they need (the workflow's ``embed.shards``);
* merge (``--text-parts`` / ``--dna-parts``): join the shards' outputs in the table's order.

The features and the cache are computed by :mod:`grape.features.embed`; the ``.npz``
files are those of :mod:`grape.features.store`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from grape.features.embed import (
    KMER,
    Options,
    embed_features,
    format_gene_list,
    merge_features,
    plan_genes,
    read_descriptions,
    read_fasta,
    read_gene_list,
)
from grape.features.store import load_features, save_features
from grape.io.files import write_text_atomic
from grape.stages import PathArg

__all__ = ["FILES", "Options", "run"]

log = logging.getLogger(__name__)

FILES = {
    "descriptions": PathArg("description table from `grape describe` (TSV)"),
    "sequences": PathArg("gene sequence FASTA from `grape annotate` (embed and plan modes)", required=False),
    "cache_dir": PathArg("embedding cache directory (under resources/; embed mode)", required=False),
    "genes": PathArg("gene list of one shard, from --plan-out (embed only these genes)", required=False),
    "text_out": PathArg("output .npz of text embeddings (genes, vectors, meta)", required=False),
    "dna_out": PathArg("output .npz of DNA features (genes, vectors, meta)", required=False),
    "plan_out": PathArg("plan mode: write one shard gene list per file given", required=False, many=True),
    "text_parts": PathArg("merge mode: the shards' text .npz files", required=False, many=True),
    "dna_parts": PathArg("merge mode: the shards' DNA .npz files", required=False, many=True),
}


def _plan(options: Options, table: pd.DataFrame, sequences: Path | None, plan_out: list[Path]) -> None:
    fasta = read_fasta(sequences) if sequences is not None and options.dna_model != KMER else None
    shards = plan_genes(table, len(plan_out), options=options, sequences=fasta)
    for index, (path, genes) in enumerate(zip(plan_out, shards)):
        write_text_atomic(path, format_gene_list(genes, index, len(plan_out)))


def _merge(table: pd.DataFrame, text_parts: list[Path], dna_parts: list[Path], text_out: Path, dna_out: Path) -> None:
    text = merge_features(table, [load_features(p) for p in text_parts], what="text", names=text_parts)
    dna = merge_features(table, [load_features(p) for p in dna_parts], what="dna", names=dna_parts)
    save_features(text_out, *text)
    save_features(dna_out, *dna)


def run(
    *,
    options: Options,
    descriptions: Path,
    sequences: Path | None = None,
    cache_dir: Path | None = None,
    genes: Path | None = None,
    text_out: Path | None = None,
    dna_out: Path | None = None,
    plan_out: list[Path] | None = None,
    text_parts: list[Path] | None = None,
    dna_parts: list[Path] | None = None,
) -> None:
    """Embed every gene's description and sequence (or plan shards, or merge them; see the module doc)."""
    descriptions = Path(descriptions)
    table = read_descriptions(descriptions)
    if plan_out:
        if text_parts or dna_parts or genes:
            raise ValueError("--plan-out cannot be combined with --genes, --text-parts or --dna-parts")
        _plan(options, table, Path(sequences) if sequences is not None else None, [Path(p) for p in plan_out])
        return
    if text_out is None or dna_out is None:
        raise ValueError("--text-out and --dna-out are required (embed and merge modes)")
    if text_parts or dna_parts:
        if not text_parts or not dna_parts or len(text_parts) != len(dna_parts):
            raise ValueError("merge mode needs as many --text-parts as --dna-parts")
        _merge(table, [Path(p) for p in text_parts], [Path(p) for p in dna_parts], Path(text_out),
               Path(dna_out))
        return
    if sequences is None or cache_dir is None:
        raise ValueError("embed mode needs --sequences and --cache-dir")
    shard = None
    if genes is not None:
        wanted, index, total = read_gene_list(Path(genes))
        unknown = sorted(set(wanted) - set(table["gene"]))
        if unknown:
            raise ValueError(f"{genes}: gene {unknown[0]!r} is not in {descriptions}")
        table = table[table["gene"].isin(set(wanted))].reset_index(drop=True)
        shard = (index, total)
        log.info("shard %d of %d: %d genes", index, total, len(table))
    text, dna = embed_features(table, read_fasta(Path(sequences)), options=options, cache_dir=Path(cache_dir),
                               shard=shard)
    save_features(Path(text_out), *text)
    save_features(Path(dna_out), *dna)
