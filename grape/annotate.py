"""Gene table and gene sequences of a dataset from an Ensembl GTF + cDNA/ncRNA FASTA.

The annotation is read with pyensembl from local files, through the same code path
an installed Ensembl release uses (``pyensembl.Genome`` with a GTF and transcript
FASTAs, then ``index()``); its SQLite database and sequence pickles go to
``--cache-dir``. Nothing is downloaded.

Which genes
    The measured genes of the dataset (``var``, in dataset order), then the genes
    named by the conditions that are not measured (sorted). A measured gene that is
    also perturbed has role ``both``.

Matching
    A gene is matched by its Ensembl gene id when its name in the dataset
    (``var_names``, for a measured gene) is an id of the annotation -- exactly, or
    after dropping a ``.N`` version suffix on either side -- and otherwise by its
    symbol (``var[gene_name_key]``; the condition's name for a perturbed gene)
    against the GTF ``gene_name``. A symbol naming several annotation genes is
    ambiguous and is not guessed. Every gene that is not matched is written to the
    missing table with its reason (``not in annotation``, ``ambiguous symbol (ids)``
    or ``same annotation gene as X (id)``); none is dropped silently.

Canonical transcript
    Among the transcripts of a gene, the first by this order is chosen:

    1. transcripts that have a sequence in the cDNA/ncRNA FASTA before those that
       have none;
    2. the transcript tagged ``Ensembl_canonical`` in the GTF (``tag`` attribute;
       pyensembl's database does not keep tags, so they are read by a streaming scan
       of the GTF's transcript lines);
    3. transcripts whose ``transcript_biotype`` equals the gene's ``gene_biotype``;
    4. the longer sequence;
    5. the smaller transcript id.

    So the Ensembl canonical transcript is taken whenever the GTF tags one and its
    sequence is in the FASTA; otherwise rules 3-5 decide. A gene none of whose
    transcripts has a sequence keeps its row with ``sequence_length`` 0 and no
    FASTA record (logged as a warning).

Outputs
    ``genes_out`` (TSV): one row per matched gene, columns :data:`GENE_COLUMNS`
    (``gene_name`` is the annotation's, or the dataset's name when the GTF has
    none; ``dataset_name`` is the dataset's symbol; ``biotype`` is ``gene_biotype``);
    ``fasta_out``: one record per gene with a sequence, header
    ``>gene_id gene_name transcript_id``, 60 bases a line; ``missing_out`` (TSV):
    columns :data:`MISSING_COLUMNS`. All are written atomically.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pandas as pd

from grape._io import atomic_path, write_text_atomic
from grape.cli import PathArg
from grape.data import DatasetOptions, gene_symbols, perturbed_genes, read_dataset

if TYPE_CHECKING:
    import anndata as ad
    import pyensembl

log = logging.getLogger(__name__)

CLI_PATHS: dict[str, PathArg] = {
    "gtf": PathArg("Ensembl-format GTF annotation (plain or gzip)"),
    "cdna": PathArg("Ensembl cDNA FASTA (transcript sequences)"),
    "ncrna": PathArg("Ensembl ncRNA FASTA (non-coding transcript sequences)"),
    "dataset": PathArg("Perturb-seq dataset (h5ad)"),
    "cache_dir": PathArg("pyensembl cache directory for the annotation database and sequence index"),
    "genes_out": PathArg("output: gene table (TSV)"),
    "fasta_out": PathArg("output: canonical transcript sequence per gene (FASTA)"),
    "missing_out": PathArg("output: dataset genes not found in the annotation, with reasons (TSV)"),
}

GENE_COLUMNS: tuple[str, ...] = (
    "gene_id",
    "gene_name",
    "dataset_name",
    "role",
    "biotype",
    "contig",
    "start",
    "end",
    "strand",
    "canonical_transcript",
    "sequence_length",
)
"""Columns of the gene table, in order."""

MISSING_COLUMNS: tuple[str, ...] = ("gene", "role", "reason")
"""Columns of the missing-genes table, in order."""

CANONICAL_TAG = "Ensembl_canonical"
FASTA_LINE_WIDTH = 60

_VERSION_SUFFIX = re.compile(r"^(.+)\.(\d+)$")
_GENE_ID_ATTR = re.compile(rb'(?:^|;)\s*gene_id "([^"]*)"')
_TRANSCRIPT_ID_ATTR = re.compile(rb'(?:^|;)\s*transcript_id "([^"]*)"')
_CANONICAL_BYTES = f'tag "{CANONICAL_TAG}"'.encode()
_ANY_TAG_BYTES = b' tag "'


@dataclass(frozen=True)
class Options(DatasetOptions):
    """Options of the ``annotate`` stage (config section ``annotate`` plus ``dataset``)."""

    reference_name: str = field(
        default="DEMO1", metadata={"help": "genome assembly name the GTF is aligned to (pyensembl reference_name)"}
    )
    annotation_name: str = field(
        default="demo", metadata={"help": "annotation source name (pyensembl annotation_name)"}
    )
    annotation_version: int | None = field(
        default=None, metadata={"help": "annotation release number, e.g. an Ensembl release (optional)"}
    )


@dataclass(frozen=True)
class GeneRequest:
    """A gene of the dataset to look up in the annotation."""

    dataset_name: str
    """The gene's symbol in the dataset (``var[gene_name_key]`` or the condition's name)."""
    var_name: str | None
    """``var_names`` entry of a measured gene; ``None`` for a perturbation-only gene."""
    role: str
    """``measured``, ``perturbed`` or ``both``."""


@dataclass(frozen=True)
class TranscriptCandidate:
    """A transcript of a gene, as the canonical-transcript rule sees it."""

    transcript_id: str
    biotype: str
    sequence: str
    tagged_canonical: bool


@dataclass(frozen=True)
class CanonicalTags:
    """Result of scanning a GTF for ``tag "Ensembl_canonical"`` on transcript lines."""

    by_gene: dict[str, str]
    """gene_id -> transcript_id of its tagged canonical transcript."""
    has_tags: bool
    """Whether the GTF carries ``tag`` attributes at all."""


# --------------------------------------------------------------------------- inputs


@contextmanager
def _open_binary(path: Path) -> Iterator[IO[bytes]]:
    """Open a plain or gzip-compressed file for reading bytes (compression by magic)."""
    with open(path, "rb") as raw:
        magic = raw.read(2)
    handle: IO[bytes] = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    try:
        yield handle
    finally:
        handle.close()


def check_inputs(*, gtf: Path, cdna: Path, ncrna: Path, dataset: Path) -> None:
    """Fail fast on missing or empty inputs, before any indexing.

    Raises :class:`FileNotFoundError` naming the file and its argument, and
    :class:`ValueError` naming the file when a GTF has no feature or no gene
    feature, or a FASTA is empty or does not start with a ``>`` header.
    """
    for argument, path in (("gtf", gtf), ("cdna", cdna), ("ncrna", ncrna), ("dataset", dataset)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"annotate: --{argument} file not found: {path}")
    check_gtf(gtf)
    for argument, path in (("cdna", cdna), ("ncrna", ncrna)):
        check_fasta(path, argument=argument)


def check_gtf(path: Path) -> None:
    """Check that ``path`` is a GTF with at least one ``gene`` feature.

    Reads only up to the first gene line (the first few lines of an Ensembl GTF),
    so a valid file costs nothing; lines before it must have 9 tab-separated fields.
    """
    n_features = 0
    with _open_binary(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip() or line.startswith(b"#"):
                continue
            fields = line.rstrip(b"\r\n").split(b"\t")
            if len(fields) != 9:
                raise ValueError(
                    f"GTF {path}: line {number} has {len(fields)} tab-separated fields, expected 9"
                )
            n_features += 1
            if fields[2] == b"gene":
                return
    if n_features == 0:
        raise ValueError(f"GTF {path} is empty: it has no feature lines")
    raise ValueError(
        f"GTF {path} has no 'gene' features ({n_features} feature lines); an Ensembl-format GTF is required"
    )


def check_fasta(path: Path, *, argument: str) -> None:
    """Check that a FASTA file is non-empty and starts with a ``>`` header line."""
    with _open_binary(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            if line.startswith(b">"):
                return
            raise ValueError(f"--{argument} file {path} is not a FASTA file: it does not start with '>'")
    raise ValueError(f"--{argument} FASTA file {path} is empty")


def read_canonical_tags(gtf: Path) -> CanonicalTags:
    """Ensembl canonical transcript per gene from the GTF's ``tag`` attributes.

    Streams the file once as bytes; only lines containing
    ``tag "Ensembl_canonical"`` are split and parsed, so a 1.5 GB Ensembl GTF is
    scanned at I/O speed without loading any column into memory.
    """
    by_gene: dict[str, str] = {}
    has_tags = False
    with _open_binary(gtf) as handle:
        for line in handle:
            if not has_tags and _ANY_TAG_BYTES in line:
                has_tags = True
            if _CANONICAL_BYTES not in line or line.startswith(b"#"):
                continue
            fields = line.split(b"\t", 8)
            if len(fields) < 9 or fields[2] != b"transcript":
                continue
            gene_match = _GENE_ID_ATTR.search(fields[8])
            transcript_match = _TRANSCRIPT_ID_ATTR.search(fields[8])
            if gene_match is None or transcript_match is None:
                continue
            gene_id = gene_match.group(1).decode()
            transcript_id = transcript_match.group(1).decode()
            previous = by_gene.get(gene_id)
            if previous is not None and previous != transcript_id:
                log.warning(
                    "%s: gene %s has several %s transcripts (%s, %s); keeping the smaller id",
                    gtf, gene_id, CANONICAL_TAG, previous, transcript_id,
                )
                transcript_id = min(previous, transcript_id)
            by_gene[gene_id] = transcript_id
    log.info(
        "%s: %d genes with an %s transcript (GTF %s tags)",
        gtf, len(by_gene), CANONICAL_TAG, "has" if has_tags else "has no",
    )
    return CanonicalTags(by_gene=by_gene, has_tags=has_tags)


def load_genome(
    *, gtf: Path, cdna: Path, ncrna: Path, cache_dir: Path, options: Options
) -> pyensembl.Genome:
    """Build (or reuse) the pyensembl index of local annotation files and return the genome."""
    import pyensembl

    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    genome = pyensembl.Genome(
        reference_name=options.reference_name,
        annotation_name=options.annotation_name,
        annotation_version=options.annotation_version,
        gtf_path_or_url=str(Path(gtf).resolve()),
        transcript_fasta_paths_or_urls=[str(Path(cdna).resolve()), str(Path(ncrna).resolve())],
        cache_directory_path=str(cache_dir),
    )
    log.info("indexing %s with pyensembl into %s", gtf, cache_dir)
    genome.index()
    return genome


# --------------------------------------------------------------------------- matching


def strip_version(identifier: str) -> str:
    """``ENSG00000141510.16`` -> ``ENSG00000141510``; other strings unchanged."""
    match = _VERSION_SUFFIX.match(identifier)
    return match.group(1) if match else identifier


@dataclass(frozen=True)
class AnnotationIndex:
    """Gene ids and symbols of an annotation, for matching dataset genes."""

    ids: frozenset[str]
    by_bare_id: dict[str, tuple[str, ...]]
    by_symbol: dict[str, tuple[str, ...]]

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, str | None]]) -> AnnotationIndex:
        """Index ``(gene_id, gene_name)`` pairs; empty names are not indexed."""
        bare: dict[str, list[str]] = {}
        symbols: dict[str, list[str]] = {}
        for gene_id, name in pairs:
            bare.setdefault(strip_version(gene_id), []).append(gene_id)
            if name:
                symbols.setdefault(name, []).append(gene_id)
        return cls(
            ids=frozenset(gene_id for gene_id, _ in pairs),
            by_bare_id={k: tuple(sorted(v)) for k, v in bare.items()},
            by_symbol={k: tuple(sorted(set(v))) for k, v in symbols.items()},
        )

    @classmethod
    def from_genome(cls, genome: pyensembl.Genome) -> AnnotationIndex:
        """Read every gene's id and name from the genome's database in one query."""
        name_column = "gene_name" if genome.db.column_exists("gene", "gene_name") else "NULL"
        rows = genome.db.run_sql_query(f"SELECT gene_id, {name_column} FROM gene")
        return cls.from_pairs([(str(gene_id), None if name is None else str(name)) for gene_id, name in rows])

    def match_id(self, identifier: str) -> str | None:
        """Annotation gene id for ``identifier`` (exact, else version-insensitive), or None."""
        if identifier in self.ids:
            return identifier
        found = self.by_bare_id.get(strip_version(identifier), ())
        return found[0] if len(found) == 1 else None

    def match(self, request: GeneRequest) -> tuple[str | None, str]:
        """``(gene_id, how)`` for a matched gene, or ``(None, reason)``.

        ``how`` is ``id`` or ``symbol``. The dataset's id (``var_name``) is tried
        first, then the dataset name as an id, then the dataset name as a symbol.
        """
        for identifier in (request.var_name, request.dataset_name):
            if identifier:
                gene_id = self.match_id(identifier)
                if gene_id is not None:
                    return gene_id, "id"
        found = self.by_symbol.get(request.dataset_name, ())
        if len(found) == 1:
            return found[0], "symbol"
        if len(found) > 1:
            return None, f"ambiguous symbol ({', '.join(found)})"
        return None, "not in annotation"


def dataset_genes(adata: ad.AnnData, *, options: DatasetOptions) -> list[GeneRequest]:
    """Measured genes in ``var`` order, then perturbation-only genes (sorted), with roles."""
    symbols = [str(s) for s in gene_symbols(adata, options=options)]
    var_names = [str(v) for v in adata.var_names]
    perturbed = perturbed_genes(adata, options=options)
    perturbed_set = set(perturbed)
    measured_set = set(symbols)
    requests = [
        GeneRequest(dataset_name=symbol, var_name=var_name, role="both" if symbol in perturbed_set else "measured")
        for symbol, var_name in zip(symbols, var_names)
    ]
    requests += [
        GeneRequest(dataset_name=gene, var_name=None, role="perturbed")
        for gene in perturbed
        if gene not in measured_set
    ]
    return requests


# --------------------------------------------------------------------------- transcripts


def choose_transcript(
    candidates: Sequence[TranscriptCandidate], *, gene_biotype: str
) -> TranscriptCandidate | None:
    """The canonical transcript by the rule of the module docstring, or None if no candidates."""
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda c: (
            not c.sequence,
            not c.tagged_canonical,
            c.biotype != gene_biotype,
            -len(c.sequence),
            c.transcript_id,
        ),
    )


def gene_transcripts(gene: pyensembl.Gene, *, canonical: CanonicalTags) -> list[TranscriptCandidate]:
    """Candidates for the canonical transcript of ``gene``, with their FASTA sequences."""
    tagged = canonical.by_gene.get(gene.gene_id)
    return [
        TranscriptCandidate(
            transcript_id=transcript.transcript_id,
            biotype=transcript.biotype or "",
            sequence=transcript.sequence or "",
            tagged_canonical=transcript.transcript_id == tagged,
        )
        for transcript in gene.transcripts
    ]


# --------------------------------------------------------------------------- assembly


@dataclass
class Annotation:
    """What the stage writes: the gene table, the missing table and the sequences."""

    genes: pd.DataFrame
    missing: pd.DataFrame
    sequences: list[tuple[str, str, str, str]]
    """``(gene_id, gene_name, transcript_id, sequence)`` per gene with a sequence, in table order."""


def annotate_genes(
    genome: pyensembl.Genome,
    requests: Sequence[GeneRequest],
    *,
    canonical: CanonicalTags,
    index: AnnotationIndex | None = None,
) -> Annotation:
    """Match ``requests`` to ``genome`` and pick each gene's canonical transcript."""
    index = index if index is not None else AnnotationIndex.from_genome(genome)
    rows: list[dict[str, object]] = []
    row_of_gene: dict[str, int] = {}
    missing: list[dict[str, str]] = []
    sequences: list[tuple[str, str, str, str]] = []
    how_counts = {"id": 0, "symbol": 0}
    for request in requests:
        gene_id, how = index.match(request)
        if gene_id is None:
            missing.append({"gene": request.dataset_name, "role": request.role, "reason": how})
            continue
        if gene_id in row_of_gene:
            previous = rows[row_of_gene[gene_id]]
            if request.var_name is None and previous["role"] == "measured":
                log.info(
                    "perturbed gene %s is measured gene %s (%s); role set to both",
                    request.dataset_name, previous["dataset_name"], gene_id,
                )
                previous["role"] = "both"
                continue
            missing.append({
                "gene": request.dataset_name,
                "role": request.role,
                "reason": f"same annotation gene as {previous['dataset_name']} ({gene_id})",
            })
            continue
        how_counts[how] += 1
        gene = genome.gene_by_id(gene_id)
        biotype = gene.biotype or ""
        chosen = choose_transcript(gene_transcripts(gene, canonical=canonical), gene_biotype=biotype)
        tagged = canonical.by_gene.get(gene_id)
        if tagged is not None and chosen is not None and chosen.transcript_id != tagged:
            log.warning(
                "gene %s: %s transcript %s has no sequence in the FASTA; using %s",
                gene_id, CANONICAL_TAG, tagged, chosen.transcript_id,
            )
        sequence = chosen.sequence if chosen is not None else ""
        gene_name = gene.gene_name or request.dataset_name
        row_of_gene[gene_id] = len(rows)
        rows.append({
            "gene_id": gene_id,
            "gene_name": gene_name,
            "dataset_name": request.dataset_name,
            "role": request.role,
            "biotype": biotype,
            "contig": str(gene.contig),
            "start": int(gene.start),
            "end": int(gene.end),
            "strand": gene.strand,
            "canonical_transcript": chosen.transcript_id if chosen is not None else "",
            "sequence_length": len(sequence),
        })
        if sequence and chosen is not None:
            sequences.append((gene_id, gene_name, chosen.transcript_id, sequence))
    log.info(
        "matched %d genes (%d by id, %d by symbol); %d not matched",
        len(rows), how_counts["id"], how_counts["symbol"], len(missing),
    )
    genes = pd.DataFrame(rows, columns=list(GENE_COLUMNS))
    genes = genes.astype({"start": "int64", "end": "int64", "sequence_length": "int64"})
    return Annotation(
        genes=genes,
        missing=pd.DataFrame(missing, columns=list(MISSING_COLUMNS)),
        sequences=sequences,
    )


def format_fasta(records: Sequence[tuple[str, str, str, str]], *, width: int = FASTA_LINE_WIDTH) -> str:
    """FASTA text, ``>gene_id gene_name transcript_id`` headers, ``width`` bases a line."""
    lines: list[str] = []
    for gene_id, gene_name, transcript_id, sequence in records:
        lines.append(f">{gene_id} {gene_name} {transcript_id}")
        lines.extend(sequence[i : i + width] for i in range(0, len(sequence), width))
    return "".join(line + "\n" for line in lines)


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, lineterminator="\n")


# --------------------------------------------------------------------------- stage


def run(
    *,
    options: Options,
    gtf: Path,
    cdna: Path,
    ncrna: Path,
    dataset: Path,
    cache_dir: Path,
    genes_out: Path,
    fasta_out: Path,
    missing_out: Path,
) -> None:
    """Write the gene table, gene FASTA and missing-gene table of ``dataset``."""
    gtf, cdna, ncrna, dataset = Path(gtf), Path(cdna), Path(ncrna), Path(dataset)
    check_inputs(gtf=gtf, cdna=cdna, ncrna=ncrna, dataset=dataset)
    adata = read_dataset(dataset, options=options)
    requests = dataset_genes(adata, options=options)
    log.info(
        "%s: %d genes (%d measured, %d perturbation-only)",
        dataset, len(requests), adata.n_vars, len(requests) - adata.n_vars,
    )
    canonical = read_canonical_tags(gtf)
    genome = load_genome(gtf=gtf, cdna=cdna, ncrna=ncrna, cache_dir=Path(cache_dir), options=options)
    annotation = annotate_genes(genome, requests, canonical=canonical)

    if len(annotation.missing):
        shown = ", ".join(
            f"{g} ({r})" for g, r in zip(annotation.missing["gene"][:10], annotation.missing["reason"][:10])
        )
        log.warning(
            "%d of %d dataset genes are not in the annotation, listed in %s: %s%s",
            len(annotation.missing), len(requests), missing_out, shown,
            ", ..." if len(annotation.missing) > 10 else "",
        )
    no_sequence = annotation.genes.loc[annotation.genes["sequence_length"] == 0, "gene_id"].tolist()
    if no_sequence:
        log.warning(
            "%d genes have no transcript sequence in %s or %s (empty sequence): %s%s",
            len(no_sequence), cdna, ncrna, ", ".join(no_sequence[:10]), ", ..." if len(no_sequence) > 10 else "",
        )

    _write_tsv(annotation.genes, Path(genes_out))
    write_text_atomic(fasta_out, format_fasta(annotation.sequences))
    _write_tsv(annotation.missing, Path(missing_out))
    log.info(
        "wrote %d genes to %s, %d sequences to %s, %d missing to %s",
        len(annotation.genes), genes_out, len(annotation.sequences), fasta_out,
        len(annotation.missing), missing_out,
    )
