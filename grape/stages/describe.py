"""The describe stage: one description text per gene, with its source (see :mod:`grape.annotation.describe`).

Reads ``grape annotate``'s gene and missing-gene tables and the optional description table,
asks NCBI when ``--ncbi-cache`` is given, writes the description table atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from grape.annotation.describe import Options, describe, gene_nodes, ncbi_summaries, read_table
from grape.io.files import atomic_path
from grape.stages import PathArg

log = logging.getLogger(__name__)

FILES = {
    "genes": PathArg("gene table from `grape annotate` (TSV)"),
    "missing": PathArg("dataset genes missing from the annotation (TSV from `grape annotate`)"),
    "table": PathArg("description table: TSV keyed by Ensembl id, Entrez id or symbol, with a description column",
                     required=False),
    "ncbi_cache": PathArg("turns on NCBI retrieval: directory of the answered E-utilities requests (resume)",
                          required=False),
    "out": PathArg("output TSV: gene, gene_id, biotype, description, source, entrez_id"),
}

__all__ = ["FILES", "Options", "run"]


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def run(
    *, options: Options, genes: Path, missing: Path, out: Path, table: Path | None = None,
    ncbi_cache: Path | None = None,
) -> None:
    """Write the description table of the stage.

    With neither ``table`` nor ``ncbi_cache`` (``describe.table: null`` and no NCBI), every gene gets
    the annotation's own description (sources 3 and 4 of :mod:`grape.annotation.describe`).
    """
    for name, path in (("genes", genes), ("missing", missing), ("table", table)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"describe --{name}: file not found: {path}")
    if ncbi_cache is not None and (not options.email or "@" not in options.email):
        raise ValueError("describe.email: NCBI requires a contact email address for E-utilities (set describe.email)")
    nodes = gene_nodes(_read_tsv(Path(genes)), _read_tsv(Path(missing)), genes=str(genes), missing=str(missing))
    lookups = read_table(Path(table), description_column=options.description_column) if table is not None else None
    found = ncbi_summaries(nodes, options=options, cache_dir=Path(ncbi_cache)) if ncbi_cache is not None else None
    if table is None and ncbi_cache is None:
        log.info("describe: no --table and no --ncbi-cache: each gene gets the annotation's description, else the "
                 "fallback text (describe.table null)")
    result = describe(nodes, table=lookups, ncbi=found)
    counts = result["source"].value_counts()
    log.info("%d genes described: %s", len(result), ", ".join(f"{n} from {s}" for s, n in counts.items()))
    with atomic_path(out) as tmp:
        result.to_csv(tmp, sep="\t", index=False)
