"""Simulate the offline demo: a small organism (GTF, FASTA, descriptions) and its Perturb-seq h5ad.

Everything is drawn from ``numpy.random.default_rng(seed)``, so one seed gives the
same files byte for byte (the h5ad's arrays, not its HDF5 bytes). The generative
model (biotypes, modules with planted motifs and description themes, a signed
regulatory network, CRISPRi knockdowns propagated through it with saturation,
synergistic doubles, a shared stress response, Gamma-Poisson counts) is described
in the README section "The demo's generative model". The demo proves the wiring of
every channel; it is not evidence of scientific value.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from grape.data.dataset import DatasetOptions
from grape.evaluation.de import add_de_rankings, de_key
from grape.options import options_class

log = logging.getLogger(__name__)

REFERENCE_NAME = "DEMO1"
CONTIGS: tuple[str, ...] = ("1", "2", "3", "4", "5")
CONTROL = "ctrl"

# File names of the demo directory (the simulate stage writes them).
GTF_FILE = "genome.gtf"
CDNA_FILE = "cdna.fa"
NCRNA_FILE = "ncrna.fa"
DESCRIPTIONS_FILE = "descriptions.tsv"
H5AD_FILE = "perturb.h5ad"
TRUTH_GENES_FILE = "truth_genes.tsv"
TRUTH_NETWORK_FILE = "truth_network.tsv"
TRUTH_CONDITIONS_FILE = "truth_conditions.tsv"
TRUTH_MODULES_FILE = "truth_modules.tsv"
SETTINGS_FILE = "settings.json"  # the options that made the files, for whoever finds the directory
OUTPUT_FILES: tuple[str, ...] = (
    GTF_FILE,
    CDNA_FILE,
    NCRNA_FILE,
    DESCRIPTIONS_FILE,
    H5AD_FILE,
    TRUTH_GENES_FILE,
    TRUTH_NETWORK_FILE,
    TRUTH_CONDITIONS_FILE,
    TRUTH_MODULES_FILE,
    SETTINGS_FILE,
)

# Biotypes, their share of genes, transcript length range and exon-count range.
BIOTYPE_SHARES: dict[str, float] = {
    "protein_coding": 0.65,
    "lncRNA": 0.18,
    "miRNA": 0.07,
    "snRNA": 0.04,
    "processed_pseudogene": 0.06,
}
LENGTH_RANGE: dict[str, tuple[int, int]] = {
    "protein_coding": (800, 3000),
    "lncRNA": (500, 2500),
    "miRNA": (70, 120),
    "snRNA": (100, 200),
    "processed_pseudogene": (400, 1500),
}
EXON_RANGE: dict[str, tuple[int, int]] = {
    "protein_coding": (2, 8),
    "lncRNA": (1, 4),
    "miRNA": (1, 1),
    "snRNA": (1, 1),
    "processed_pseudogene": (1, 1),
}
CDNA_BIOTYPES: frozenset[str] = frozenset({"protein_coding", "processed_pseudogene"})
REGULATOR_BIOTYPES: frozenset[str] = frozenset({"protein_coding", "lncRNA", "miRNA"})
NONCODING_BIOTYPES: frozenset[str] = frozenset({"lncRNA", "miRNA", "snRNA", "processed_pseudogene"})
REGULATOR_SIGN: dict[str, float] = {"protein_coding": 1.0, "lncRNA": -1.0, "miRNA": -1.0}

MODULE_SHARE = 0.85  # genes in a module; the rest are background (module -1)
BACKGROUND_GC = 0.45
MOTIF_PROBABILITY = 0.85  # module members carrying planted motif copies
MOTIF_SPACING = 120  # about one planted copy per this many bases
GENERIC_DESCRIPTION_SHARE = 0.15  # module members with a description free of module words
REGULATOR_SHARE = 0.25
P_TARGET_SAME_MODULE = 0.35
P_TARGET_OTHER = 0.01
WEIGHT_RANGE = (0.4, 1.0)
PERTURBED_REGULATOR_SHARE = 0.8
PERTURBED_NONCODING_TARGET = 0.3  # aim; at least 25% is checked by the tests
KNOCKDOWN_RANGE = (1.5, 2.5)
ALPHA = 0.7  # propagation damping
SATURATION = 1.5  # S in delta = S * tanh(z / S)
SYNERGY_SHARE = 0.3
BETA = 1.0
STRESS_GENES = 8
STRESS_SHIFT = 0.25
LIBRARY_LOG_MEAN = math.log(4000.0)
LIBRARY_LOG_SD = 0.3
DISPERSION = 10.0  # Gamma-Poisson theta
NORMALISED_TOTAL = 1e4
CELL_COUNT_JITTER = 0.1
ALT_TRANSCRIPT_SHARE = 0.2
MIN_GENES = 40


@dataclass(frozen=True)
class Theme:
    """A module's biological theme and the phrases its descriptions draw from."""

    name: str
    vocabulary: tuple[str, ...]


THEMES: tuple[Theme, ...] = (
    Theme("ribosome biogenesis", (
        "ribosomal RNA processing", "pre-rRNA cleavage", "nucleolar assembly",
        "small subunit maturation", "ribosomal subunit export", "snoRNA-guided modification",
        "large subunit biogenesis", "nucleolus organisation")),
    Theme("cholesterol biosynthesis", (
        "sterol biosynthesis", "the mevalonate pathway", "squalene synthesis", "lipid homeostasis",
        "SREBP signalling", "isoprenoid metabolism", "LDL receptor regulation", "lanosterol conversion")),
    Theme("interferon response", (
        "type I interferon signalling", "antiviral defence", "JAK-STAT activation",
        "interferon-stimulated gene expression", "viral RNA sensing", "ISG15 conjugation",
        "innate immune responses", "IRF-driven transcription")),
    Theme("cell cycle and mitosis", (
        "mitotic spindle assembly", "chromosome segregation", "the G2/M transition",
        "kinetochore attachment", "cytokinesis", "DNA replication licensing",
        "centrosome duplication", "cyclin-dependent kinase activity")),
    Theme("unfolded protein response", (
        "endoplasmic reticulum stress", "the unfolded protein response", "chaperone-mediated folding",
        "ER-associated degradation", "XBP1 splicing", "PERK signalling",
        "disulfide bond isomerisation", "ATF6 activation")),
    Theme("oxidative phosphorylation", (
        "mitochondrial electron transport", "oxidative phosphorylation", "ATP synthase assembly",
        "respiratory complex I", "cytochrome c oxidase activity", "ubiquinone reduction",
        "proton gradient formation", "cristae organisation")),
    Theme("DNA damage repair", (
        "double-strand break repair", "homologous recombination", "nucleotide excision repair",
        "mismatch repair", "replication fork protection", "ATM kinase signalling",
        "non-homologous end joining", "base excision repair")),
    Theme("hypoxia response", (
        "hypoxia-inducible factor signalling", "oxygen sensing", "the glycolytic switch",
        "angiogenic signalling", "HIF1A stabilisation", "prolyl hydroxylation",
        "lactate production", "erythropoietin regulation")),
    Theme("mRNA splicing", (
        "spliceosome assembly", "pre-mRNA splicing", "branch point recognition", "exon definition",
        "U2 snRNP function", "splice site selection", "intron lariat debranching",
        "alternative splicing regulation")),
    Theme("autophagy and lysosome", (
        "autophagosome formation", "lysosomal degradation", "mTORC1 inhibition", "LC3 lipidation",
        "selective autophagy", "lysosomal acidification", "cargo receptor binding", "mitophagy")),
    Theme("Wnt signalling", (
        "canonical Wnt signalling", "beta-catenin stabilisation", "Frizzled receptor activation",
        "TCF/LEF transcription", "planar cell polarity", "Dishevelled recruitment",
        "destruction complex disassembly", "LRP6 phosphorylation")),
    Theme("proteasome and heat shock", (
        "ubiquitin-proteasome degradation", "proteasome assembly", "polyubiquitin chain recognition",
        "26S proteasome activity", "deubiquitination", "heat shock factor activation",
        "misfolded protein clearance", "HSP70 chaperone cycling")),
)

THEMED_TEMPLATES: dict[str, tuple[str, ...]] = {
    "protein_coding": (
        "This gene encodes a protein involved in {phrases}.",
        "The protein encoded by this gene participates in {phrases}. "
        "Alternative splicing results in multiple transcript variants.",
        "This protein-coding gene is required for {phrases}; the encoded protein is conserved across vertebrates.",
    ),
    "lncRNA": (
        "This gene produces a long non-coding RNA that has been implicated in {phrases}.",
        "This locus is transcribed into a long intergenic non-coding RNA; knockdown studies link it to {phrases}.",
    ),
    "miRNA": (
        "This gene encodes a microRNA, a short non-coding RNA that silences target transcripts; "
        "its predicted targets act in {phrases}.",
        "microRNAs are short non-coding RNAs involved in post-transcriptional regulation; "
        "this miRNA is associated with {phrases}.",
    ),
    "snRNA": (
        "This gene encodes a small nuclear RNA, part of a ribonucleoprotein complex associated with {phrases}.",
    ),
    "processed_pseudogene": (
        "This locus is a processed pseudogene whose parent gene functions in {phrases}.",
        "This is a processed pseudogene, a retrotransposed copy of a gene involved in {phrases}.",
    ),
}
GENERIC_TEMPLATES: dict[str, tuple[str, ...]] = {
    "protein_coding": (
        "This gene encodes a protein of uncharacterised function.",
        "The protein encoded by this gene has not been characterised experimentally.",
    ),
    "lncRNA": ("This gene produces a long non-coding RNA of unknown function.",),
    "miRNA": ("This gene encodes a microRNA whose targets are not known.",),
    "snRNA": ("This gene encodes a small nuclear RNA of unknown function.",),
    "processed_pseudogene": ("This locus is a processed pseudogene; its parent gene is uncharacterised.",),
}

_COMPLEMENT = str.maketrans("ACGT", "TGCA")
_STOP_CODONS: tuple[str, ...] = ("TAA", "TAG", "TGA")


def _positive(value: int, name: str, minimum: int = 1) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def n_stress_genes(n_genes: int) -> int:
    """Number of shared stress-response genes for ``n_genes`` genes."""
    return min(STRESS_GENES, n_genes // 10)


@dataclass(frozen=True)
class Options(options_class("simulate")):
    """Size and seed of the demo (config section ``simulate``)."""

    def __post_init__(self) -> None:
        validate_options(self)


def validate_options(options: Options) -> None:
    """Raise ``ValueError`` naming the offending option when ``options`` cannot be simulated."""
    if isinstance(options.seed, bool) or not isinstance(options.seed, int) or options.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {options.seed!r}")
    _positive(options.n_genes, "n_genes", MIN_GENES)
    if options.n_genes > 999_999:
        raise ValueError(f"n_genes must be <= 999999, got {options.n_genes}")
    _positive(options.n_modules, "n_modules")
    if options.n_modules > len(THEMES):
        raise ValueError(f"n_modules must be <= {len(THEMES)} (the number of themes), got {options.n_modules}")
    members = round(MODULE_SHARE * options.n_genes)
    if members < 8 * options.n_modules:
        raise ValueError(
            f"n_modules={options.n_modules} is too many for n_genes={options.n_genes}: "
            "each module needs at least 8 genes"
        )
    _positive(options.n_singles, "n_singles", 2)
    perturbable = options.n_genes - n_stress_genes(options.n_genes)
    if options.n_singles > perturbable:
        raise ValueError(
            f"n_singles={options.n_singles} exceeds the {perturbable} perturbable genes "
            f"(n_genes minus {n_stress_genes(options.n_genes)} stress-response genes)"
        )
    _positive(options.n_doubles, "n_doubles", 0)
    pairs = options.n_singles * (options.n_singles - 1) // 2
    if options.n_doubles > pairs:
        raise ValueError(
            f"n_doubles={options.n_doubles} exceeds the {pairs} possible pairs "
            f"of n_singles={options.n_singles} genes"
        )
    _positive(options.cells_per_condition, "cells_per_condition", 2)
    _positive(options.control_cells, "control_cells", 2)
    if not isinstance(options.cell_type, str) or not options.cell_type.strip():
        raise ValueError(f"cell_type must be a non-empty string, got {options.cell_type!r}")
    if any(ch in options.cell_type for ch in "/\t\n"):
        raise ValueError(f"cell_type must not contain '/', tabs or newlines, got {options.cell_type!r}")


@dataclass(frozen=True)
class Module:
    """A co-regulated module: theme, planted motif and GC content."""

    index: int
    theme: Theme
    motif: str
    gc: float


@dataclass(frozen=True)
class Exon:
    """One exon, 1-based inclusive genomic coordinates, and its spliced sequence."""

    exon_id: str
    start: int
    end: int
    sequence: str

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True)
class Transcript:
    """A transcript: exons in transcript order (5' to 3'), optional CDS offsets."""

    transcript_id: str
    name: str
    biotype: str
    canonical: bool
    exons: tuple[Exon, ...]
    cds: tuple[int, int] | None = None  # spliced offsets [start, end) of CDS incl. start, excl. stop codon

    @property
    def sequence(self) -> str:
        return "".join(e.sequence for e in self.exons)

    @property
    def start(self) -> int:
        return min(e.start for e in self.exons)

    @property
    def end(self) -> int:
        return max(e.end for e in self.exons)


@dataclass(frozen=True)
class Gene:
    """A gene of the demo organism and its transcripts (canonical first)."""

    index: int
    gene_id: str
    name: str
    biotype: str
    contig: str
    strand: str
    module: int
    transcripts: tuple[Transcript, ...]

    @property
    def start(self) -> int:
        return min(t.start for t in self.transcripts)

    @property
    def end(self) -> int:
        return max(t.end for t in self.transcripts)


@dataclass
class Demo:
    """The demo held in memory: texts of the files, the AnnData and the truth tables."""

    options: Options
    modules: list[Module]
    genes: list[Gene]
    gtf: str
    cdna_fasta: str
    ncrna_fasta: str
    descriptions: pd.DataFrame
    adata: ad.AnnData
    truth_genes: pd.DataFrame
    truth_network: pd.DataFrame
    truth_conditions: pd.DataFrame
    truth_modules: pd.DataFrame
    true_deltas: pd.DataFrame  # condition x gene_id, the expression change on the log scale


# ----------------------------------------------------------------------------- organism


def _exact_counts(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Split ``total`` by ``shares``, rounding, remainder to the first key."""
    counts = {k: int(round(v * total)) for k, v in shares.items()}
    first = next(iter(shares))
    counts[first] += total - sum(counts.values())
    return counts


def _draw_biotypes(rng: np.random.Generator, n_genes: int) -> np.ndarray:
    """Biotype of each gene: exact shares of :data:`BIOTYPE_SHARES`, shuffled."""
    counts = _exact_counts(n_genes, BIOTYPE_SHARES)
    biotypes = np.array([b for b, c in counts.items() for _ in range(c)], dtype=object)
    return biotypes[rng.permutation(n_genes)]


def _draw_modules(rng: np.random.Generator, n_genes: int, n_modules: int) -> np.ndarray:
    """Module of each gene (-1 background); members split as evenly as possible."""
    n_members = round(MODULE_SHARE * n_genes)
    labels = np.concatenate([np.arange(n_members) % n_modules, np.full(n_genes - n_members, -1)])
    return labels[rng.permutation(n_genes)].astype(np.int64)


def _hamming(a: str, b: str) -> int:
    """Mismatches of two strings, plus their length difference."""
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))


def _draw_motifs(rng: np.random.Generator, n: int) -> list[str]:
    """Distinct 8-10 bp motifs: no one inside another, pairwise at least 4 mismatches."""
    motifs: list[str] = []
    while len(motifs) < n:
        length = int(rng.integers(8, 11))
        motif = "".join(rng.choice(list("ACGT"), size=length))
        if max(motif.count(b) for b in "ACGT") > length // 2 or motif == motif[::-1].translate(_COMPLEMENT):
            continue
        if any(motif in m or m in motif or _hamming(motif, m) < 4 for m in motifs):
            continue
        motifs.append(motif)
    return motifs


def _random_sequence(rng: np.random.Generator, length: int, gc: float) -> str:
    """Random bases with GC content ``gc``."""
    probs = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]  # A C G T
    return "".join(rng.choice(np.array(list("ACGT")), size=length, p=probs))


def _plant_motif(rng: np.random.Generator, sequence: str, motif: str) -> str:
    """Plant about one copy of ``motif`` per ``MOTIF_SPACING`` bases, in disjoint windows."""
    length = len(sequence)
    copies = max(1, round(length / MOTIF_SPACING))
    window = length // copies
    if window < len(motif):
        copies, window = 1, length
    chars = list(sequence)
    for c in range(copies):
        start = c * window + int(rng.integers(0, window - len(motif) + 1))
        chars[start : start + len(motif)] = motif
    return "".join(chars)


def _split_lengths(rng: np.random.Generator, total: int, parts: int, minimum: int = 40) -> list[int]:
    """Split ``total`` bases into ``parts`` exon lengths of at least ``minimum``."""
    if parts == 1:
        return [total]
    extra = rng.multinomial(total - minimum * parts, rng.dirichlet(np.full(parts, 2.0)))
    return [minimum + int(e) for e in extra]


def _build_organism(
    rng: np.random.Generator, options: Options
) -> tuple[list[Module], list[Gene], np.ndarray, np.ndarray, dict[str, int]]:
    """Modules, genes with transcripts, and per-gene biotype/module arrays and motif counts."""
    n = options.n_genes
    biotypes = _draw_biotypes(rng, n)
    modules_of = _draw_modules(rng, n, options.n_modules)
    theme_order = rng.permutation(len(THEMES))[: options.n_modules]
    motifs = _draw_motifs(rng, options.n_modules)
    gcs = np.linspace(0.36, 0.62, options.n_modules) if options.n_modules > 1 else np.array([0.55])
    gcs = gcs[rng.permutation(options.n_modules)]
    modules = [
        Module(index=k, theme=THEMES[int(theme_order[k])], motif=motifs[k], gc=round(float(gcs[k]), 3))
        for k in range(options.n_modules)
    ]
    width = max(3, len(str(n)))
    contig_of = np.array([CONTIGS[i * len(CONTIGS) // n] for i in range(n)], dtype=object)
    strands = np.where(rng.random(n) < 0.5, "+", "-")
    eligible_alt = np.array([LENGTH_RANGE[b][0] >= 400 for b in biotypes])
    n_alt = min(int(eligible_alt.sum()), round(ALT_TRANSCRIPT_SHARE * n))
    has_alt = np.zeros(n, dtype=bool)
    has_alt[rng.choice(np.flatnonzero(eligible_alt), size=n_alt, replace=False)] = True

    genes: list[Gene] = []
    motif_copies: dict[str, int] = {}
    positions = {c: 1000 for c in CONTIGS}
    transcript_no = exon_no = 0
    for i in range(n):
        biotype = str(biotypes[i])
        module = int(modules_of[i])
        gene_id = f"ENSDEMG{i + 1:011d}"
        name = f"SG{i + 1:0{width}d}"
        lo, hi = LENGTH_RANGE[biotype]
        length = int(rng.integers(lo, hi + 1))
        gc = modules[module].gc if module >= 0 else BACKGROUND_GC
        sequence = _random_sequence(rng, length, gc)
        if module >= 0 and rng.random() < MOTIF_PROBABILITY:
            sequence = _plant_motif(rng, sequence, modules[module].motif)
        cds: tuple[int, int] | None = None
        if biotype == "protein_coding":
            utr5 = int(rng.integers(30, 151))
            utr3 = int(rng.integers(60, 301))
            cds_len = (length - utr5 - utr3 - 3) // 3 * 3
            cds = (utr5, utr5 + cds_len)
            stop = _STOP_CODONS[int(rng.integers(0, 3))]
            sequence = sequence[:utr5] + "ATG" + sequence[utr5 + 3 : cds[1]] + stop + sequence[cds[1] + 3 :]
        motif_copies[gene_id] = sequence.count(modules[module].motif) if module >= 0 else 0

        lo_e, hi_e = EXON_RANGE[biotype]
        n_exons = int(rng.integers(lo_e, hi_e + 1))
        exon_lengths = _split_lengths(rng, length, n_exons)
        introns = [int(rng.integers(200, 3001)) for _ in range(n_exons - 1)]
        contig = str(contig_of[i])
        strand = str(strands[i])
        gene_start = positions[contig] + int(rng.integers(1000, 8001))
        # Genomic (start, end) of exons in ascending coordinate order.
        spans: list[tuple[int, int]] = []
        cursor = gene_start
        genomic_order = exon_lengths if strand == "+" else exon_lengths[::-1]
        for k, exon_len in enumerate(genomic_order):
            spans.append((cursor, cursor + exon_len - 1))
            cursor += exon_len + (introns[k] if k < len(introns) else 0)
        positions[contig] = cursor
        if strand == "-":
            spans = spans[::-1]  # transcript order
        exons: list[Exon] = []
        offset = 0
        for (start, end), exon_len in zip(spans, exon_lengths):
            exon_no += 1
            exons.append(Exon(f"ENSDEME{exon_no:011d}", start, end, sequence[offset : offset + exon_len]))
            offset += exon_len
        transcript_no += 1
        transcripts = [
            Transcript(f"ENSDEMT{transcript_no:011d}", f"{name}-201", biotype, True, tuple(exons), cds)
        ]
        if has_alt[i]:
            alt_exons: list[Exon]
            if len(exons) >= 3:  # exon skipping
                skip = int(rng.integers(1, len(exons) - 1))
                alt_exons = [e for k, e in enumerate(exons) if k != skip]
            else:  # alternative transcription start inside the first exon
                first = exons[0]
                trim = int(rng.integers(first.length // 4, first.length // 2 + 1))
                exon_no += 1
                if strand == "+":
                    new = Exon(f"ENSDEME{exon_no:011d}", first.start + trim, first.end, first.sequence[trim:])
                else:
                    new = Exon(f"ENSDEME{exon_no:011d}", first.start, first.end - trim, first.sequence[trim:])
                alt_exons = [new, *exons[1:]]
            transcript_no += 1
            alt_biotype = "processed_transcript" if biotype == "protein_coding" else biotype
            transcripts.append(
                Transcript(f"ENSDEMT{transcript_no:011d}", f"{name}-202", alt_biotype, False, tuple(alt_exons))
            )
        genes.append(Gene(i, gene_id, name, biotype, contig, strand, module, tuple(transcripts)))
    return modules, genes, biotypes, modules_of, motif_copies


# ----------------------------------------------------------------------------- GTF and FASTA


def _attrs(pairs: list[tuple[str, str]]) -> str:
    """GTF attribute column from (key, value) pairs."""
    return " ".join(f'{k} "{v}";' for k, v in pairs)


def _map_interval(transcript: Transcript, start: int, end: int, strand: str) -> list[tuple[int, int, int, int]]:
    """Genomic pieces of spliced offsets ``[start, end)``: (exon number, g_start, g_end, spliced start)."""
    pieces: list[tuple[int, int, int, int]] = []
    offset = 0
    for number, exon in enumerate(transcript.exons, start=1):
        lo, hi = max(start, offset), min(end, offset + exon.length)
        if lo < hi:
            if strand == "+":
                pieces.append((number, exon.start + lo - offset, exon.start + hi - offset - 1, lo))
            else:
                pieces.append((number, exon.end - (hi - offset) + 1, exon.end - (lo - offset), lo))
        offset += exon.length
    return pieces


def render_gtf(genes: list[Gene]) -> str:
    """The organism's annotation in Ensembl's GTF format."""
    lines = [
        f"#!genome-build {REFERENCE_NAME}",
        f"#!genome-version {REFERENCE_NAME}",
        "#!genome-date 2024-01",
        f"#!genome-build-accession GRAPE:{REFERENCE_NAME}",
        "#!genebuild-last-updated 2024-01",
    ]
    ordered = sorted(genes, key=lambda g: (CONTIGS.index(g.contig), g.start))
    for gene in ordered:
        base = [("gene_id", gene.gene_id), ("gene_version", "1")]
        gene_info = [("gene_name", gene.name), ("gene_source", "ensembl"), ("gene_biotype", gene.biotype)]

        def row(feature: str, start: int, end: int, frame: str, attrs: list[tuple[str, str]]) -> str:
            return "\t".join(
                [gene.contig, "ensembl", feature, str(start), str(end), ".", gene.strand, frame, _attrs(attrs)]
            )

        lines.append(row("gene", gene.start, gene.end, ".", base + gene_info))
        for tr in gene.transcripts:
            t_attrs = base + [("transcript_id", tr.transcript_id), ("transcript_version", "1")] + gene_info + [
                ("transcript_name", tr.name),
                ("transcript_source", "ensembl"),
                ("transcript_biotype", tr.biotype),
            ]
            tag = [("tag", "Ensembl_canonical")] if tr.canonical else []
            lines.append(row("transcript", tr.start, tr.end, ".", t_attrs + tag))
            cds_pieces: list[tuple[int, int, int, int]] = []
            start_pieces: list[tuple[int, int, int, int]] = []
            stop_pieces: list[tuple[int, int, int, int]] = []
            if tr.cds is not None:
                cds_pieces = _map_interval(tr, tr.cds[0], tr.cds[1], gene.strand)
                start_pieces = _map_interval(tr, tr.cds[0], tr.cds[0] + 3, gene.strand)
                stop_pieces = _map_interval(tr, tr.cds[1], tr.cds[1] + 3, gene.strand)
            protein = [("protein_id", f"ENSDEMP{gene.index + 1:011d}"), ("protein_version", "1")]
            for number, exon in enumerate(tr.exons, start=1):
                e_attrs = t_attrs[:4] + [("exon_number", str(number))] + t_attrs[4:] + [
                    ("exon_id", exon.exon_id),
                    ("exon_version", "1"),
                ]
                lines.append(row("exon", exon.start, exon.end, ".", e_attrs + tag))
                coding = (("CDS", cds_pieces), ("start_codon", start_pieces), ("stop_codon", stop_pieces))
                for feature, pieces in coding:
                    for ex_no, g_start, g_end, spliced in pieces:
                        if ex_no != number or tr.cds is None:
                            continue
                        ref = tr.cds[1] if feature == "stop_codon" else tr.cds[0]
                        frame = str((3 - (spliced - ref) % 3) % 3)
                        attrs = t_attrs[:4] + [("exon_number", str(number))] + t_attrs[4:]
                        if feature == "CDS":
                            attrs = attrs + protein
                        lines.append(row(feature, g_start, g_end, frame, attrs + tag))
    return "\n".join(lines) + "\n"


def _wrap(sequence: str, width: int = 60) -> str:
    """``sequence`` as FASTA lines of ``width`` bases."""
    return "\n".join(sequence[i : i + width] for i in range(0, len(sequence), width))


def render_fasta(genes: list[Gene], *, kind: str) -> str:
    """Ensembl-style transcript FASTA: ``kind='cdna'`` or ``'ncrna'``."""
    if kind not in ("cdna", "ncrna"):
        raise ValueError(f"kind must be 'cdna' or 'ncrna', got {kind!r}")
    records: list[str] = []
    for gene in genes:
        if (gene.biotype in CDNA_BIOTYPES) != (kind == "cdna"):
            continue
        strand = "1" if gene.strand == "+" else "-1"
        for tr in gene.transcripts:
            header = (
                f">{tr.transcript_id}.1 {kind}"
                f" chromosome:{REFERENCE_NAME}:{gene.contig}:{tr.start}:{tr.end}:{strand}"
                f" gene:{gene.gene_id}.1 gene_biotype:{gene.biotype} transcript_biotype:{tr.biotype}"
                f" gene_symbol:{gene.name} description:synthetic demo gene {gene.name}"
                f" [Source:GRAPE demo;Acc:{gene.name}]"
            )
            records.append(header + "\n" + _wrap(tr.sequence))
    return "\n".join(records) + "\n"


def _join_phrases(phrases: list[str]) -> str:
    """``a``, ``a and b`` or ``a, b and c``."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _describe(rng: np.random.Generator, genes: list[Gene], modules: list[Module]) -> pd.DataFrame:
    """One NCBI-summary-like description per gene (biotype template, theme phrases or generic text)."""
    rows = []
    for gene in genes:
        generic = gene.module < 0 or rng.random() < GENERIC_DESCRIPTION_SHARE
        if generic:
            options = GENERIC_TEMPLATES[gene.biotype]
            text = options[int(rng.integers(0, len(options)))]
        else:
            vocab = modules[gene.module].theme.vocabulary
            k = int(rng.integers(2, 4))
            phrases = [vocab[j] for j in rng.choice(len(vocab), size=k, replace=False)]
            options = THEMED_TEMPLATES[gene.biotype]
            text = options[int(rng.integers(0, len(options)))].format(phrases=_join_phrases(phrases))
        rows.append((gene.gene_id, gene.name, text))
    return pd.DataFrame(rows, columns=["gene_id", "gene_name", "description"])


# ----------------------------------------------------------------------------- regulation


def _draw_network(
    rng: np.random.Generator, biotypes: np.ndarray, modules_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Regulator mask and weights ``W[i, j]`` (effect of regulator ``i`` on target ``j``)."""
    n = len(biotypes)
    eligible = np.flatnonzero(np.isin(biotypes, list(REGULATOR_BIOTYPES)) & (modules_of >= 0))
    n_regulators = min(len(eligible), round(REGULATOR_SHARE * n))
    regulators = np.sort(rng.choice(eligible, size=n_regulators, replace=False))
    is_regulator = np.zeros(n, dtype=bool)
    is_regulator[regulators] = True
    w = np.zeros((n, n))
    for i in regulators:
        same = (modules_of == modules_of[i]) & (modules_of >= 0)
        prob = np.where(same, P_TARGET_SAME_MODULE, P_TARGET_OTHER)
        hits = rng.random(n) < prob
        hits[i] = False
        magnitude = rng.uniform(*WEIGHT_RANGE, size=n)
        w[i, hits] = REGULATOR_SIGN[str(biotypes[i])] * magnitude[hits]
    return is_regulator, w


def _pick(rng: np.random.Generator, pool: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` distinct elements of ``pool``, drawn without replacement."""
    return rng.choice(pool, size=min(k, len(pool)), replace=False) if k > 0 and len(pool) else np.array([], int)


def _choose_perturbed(
    rng: np.random.Generator, n_singles: int, biotypes: np.ndarray, is_regulator: np.ndarray, stress: np.ndarray
) -> np.ndarray:
    """Perturbed genes: ~80% regulators, the rest non-regulators, ~30% non-coding."""
    n = len(biotypes)
    available = np.ones(n, dtype=bool)
    available[stress] = False
    noncoding = np.isin(biotypes, list(NONCODING_BIOTYPES))
    reg_nc = np.flatnonzero(available & is_regulator & noncoding)
    reg_pc = np.flatnonzero(available & is_regulator & ~noncoding)
    non_nc = np.flatnonzero(available & ~is_regulator & noncoding)
    non_pc = np.flatnonzero(available & ~is_regulator & ~noncoding)
    n_reg = min(round(PERTURBED_REGULATOR_SHARE * n_singles), len(reg_nc) + len(reg_pc))
    n_non = n_singles - n_reg
    nc_target = math.ceil(PERTURBED_NONCODING_TARGET * n_singles)
    take_non_nc = min(len(non_nc), n_non, math.ceil(n_non / 2))
    take_reg_nc = min(len(reg_nc), n_reg, max(nc_target - take_non_nc, round(n_reg * 0.3)))
    chosen = [
        _pick(rng, reg_nc, take_reg_nc),
        _pick(rng, reg_pc, n_reg - take_reg_nc),
        _pick(rng, non_nc, take_non_nc),
        _pick(rng, non_pc, n_non - take_non_nc),
    ]
    picked = np.concatenate(chosen).astype(np.int64)
    if len(picked) < n_singles:  # a stratum ran short: fill from any available gene
        rest = np.setdiff1d(np.flatnonzero(available), picked)
        picked = np.concatenate([picked, _pick(rng, rest, n_singles - len(picked))]).astype(np.int64)
    return np.sort(picked)


def _choose_doubles(
    rng: np.random.Generator, perturbed: np.ndarray, modules_of: np.ndarray, n_doubles: int
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Pairs of perturbed genes (half within a module, half across) and their same-module flags."""
    pairs = list(itertools.combinations(perturbed.tolist(), 2))
    same = np.array([modules_of[a] == modules_of[b] and modules_of[a] >= 0 for a, b in pairs], dtype=bool)
    same_idx, cross_idx = np.flatnonzero(same), np.flatnonzero(~same)
    n_same = min(len(same_idx), (n_doubles + 1) // 2)
    n_cross = min(len(cross_idx), n_doubles - n_same)
    n_same = n_doubles - n_cross  # top up from the other kind when one ran short
    if n_same > len(same_idx):
        raise ValueError(f"n_doubles={n_doubles} cannot be drawn among the perturbed genes")
    picked = np.concatenate([_pick(rng, same_idx, n_same), _pick(rng, cross_idx, n_cross)]).astype(np.int64)
    if n_same < (n_doubles + 1) // 2:
        log.warning("only %d of %d doubles lie within a module", n_same, n_doubles)
    return [pairs[k] for k in picked], same[picked]


def _choose_synergy(
    rng: np.random.Generator, doubles: list[tuple[int, int]], same_module: np.ndarray, is_regulator: np.ndarray
) -> np.ndarray:
    """Flag ~30% of the doubles as synergistic, preferring same-module pairs of two regulators.

    The synergy term multiplies the singles' latent responses, so it only matters
    where both act on shared targets: within a module, through the network.
    """
    synergy = np.zeros(len(doubles), dtype=bool)
    if not doubles:
        return synergy
    n_syn = max(1, round(SYNERGY_SHARE * len(doubles)))
    both = np.array([is_regulator[a] and is_regulator[b] for a, b in doubles], dtype=bool)
    tiers = [same_module & both, same_module & ~both, ~same_module]
    for tier in tiers:
        candidates = np.flatnonzero(tier)
        take = min(len(candidates), n_syn - int(synergy.sum()))
        if take > 0:
            synergy[rng.choice(candidates, size=take, replace=False)] = True
    return synergy


def propagate(w: np.ndarray, u: np.ndarray, *, alpha: float = ALPHA) -> np.ndarray:
    """Latent response ``z = u + alpha W^T u + alpha^2 (W^T)^2 u`` (columns of ``u`` are perturbations)."""
    first = w.T @ u
    return u + alpha * first + alpha**2 * (w.T @ first)


def saturate(z: np.ndarray, *, s: float = SATURATION) -> np.ndarray:
    """Expression change ``S tanh(z / S)``."""
    return s * np.tanh(z / s)


# ----------------------------------------------------------------------------- cells


def _sample_counts(
    rng: np.random.Generator, proportions: np.ndarray, delta: np.ndarray, n_cells: int
) -> np.ndarray:
    """Gamma-Poisson counts of ``n_cells`` cells whose expected proportions shift by ``exp(delta)``."""
    q = proportions * np.exp(delta)
    q = q / q.sum()
    library = rng.lognormal(LIBRARY_LOG_MEAN, LIBRARY_LOG_SD, size=n_cells)
    mean = library[:, None] * q[None, :]
    rate = rng.gamma(DISPERSION, mean / DISPERSION)
    return rng.poisson(rate).astype(np.float32)


def _jittered(rng: np.random.Generator, n: int) -> int:
    """Cell count ``n`` varied by up to +-10%, at least 2."""
    spread = int(n * CELL_COUNT_JITTER)
    return max(2, n + int(rng.integers(-spread, spread + 1)))


def simulate(options: Options) -> Demo:
    """Build the whole demo in memory, deterministically from ``options.seed``."""
    validate_options(options)
    rng = np.random.default_rng(options.seed)
    modules, genes, biotypes, modules_of, motif_copies = _build_organism(rng, options)
    n = options.n_genes
    gene_ids = np.array([g.gene_id for g in genes], dtype=object)
    names = np.array([g.name for g in genes], dtype=object)
    descriptions = _describe(rng, genes, modules)
    is_regulator, w = _draw_network(rng, biotypes, modules_of)

    # Stress-response genes: background genes (never regulators), topped up with
    # non-regulating module members when the background is too small.
    n_stress = n_stress_genes(n)
    stress_pool = np.flatnonzero(modules_of < 0)
    if len(stress_pool) < n_stress:
        extra = rng.permutation(np.flatnonzero(~is_regulator & (modules_of >= 0)))
        stress_pool = np.concatenate([stress_pool, extra[: n_stress - len(stress_pool)]])
    stress = np.sort(rng.choice(stress_pool, size=n_stress, replace=False))
    stress_vec = np.zeros(n)
    stress_vec[stress] = STRESS_SHIFT

    perturbed = _choose_perturbed(rng, options.n_singles, biotypes, is_regulator, stress)
    knockdown = np.zeros(n)
    knockdown[perturbed] = rng.uniform(*KNOCKDOWN_RANGE, size=len(perturbed))
    doubles, same_module = _choose_doubles(rng, perturbed, modules_of, options.n_doubles)
    synergy = _choose_synergy(rng, doubles, same_module, is_regulator)

    # Latent responses of the singles (columns), then deltas of every condition.
    u_singles = np.zeros((n, len(perturbed)))
    u_singles[perturbed, np.arange(len(perturbed))] = -knockdown[perturbed]
    z_singles = propagate(w, u_singles)
    column = {int(g): k for k, g in enumerate(perturbed)}
    conditions: list[str] = []
    deltas: list[np.ndarray] = []
    truth_rows: list[tuple[str, int, bool, bool, float]] = []
    single_delta: dict[int, np.ndarray] = {}
    for g in perturbed.tolist():
        network = saturate(z_singles[:, column[g]])
        single_delta[g] = network
        conditions.append(f"{names[g]}+{CONTROL}")
        deltas.append(network + stress_vec)
        truth_rows.append((conditions[-1], 1, False, False, float("nan")))
    for (a, b), same, syn in zip(doubles, same_module, synergy):
        z_a, z_b = z_singles[:, column[a]], z_singles[:, column[b]]
        z = z_a + z_b
        if syn:
            product = BETA * z_a * z_b
            product[[a, b]] = 0.0  # the knocked-down genes stay knocked down
            z = z + product
        network = saturate(z)
        first, second = sorted([str(names[a]), str(names[b])])
        conditions.append(f"{first}+{second}")
        deltas.append(network + stress_vec)
        nonadd = float(np.linalg.norm(network - single_delta[a] - single_delta[b]))
        truth_rows.append((conditions[-1], 2, bool(same), bool(syn), nonadd))

    # Cells.
    mu = rng.normal(0.0, 1.0, size=n)
    proportions = np.exp(mu - mu.max())
    proportions /= proportions.sum()
    blocks = [_sample_counts(rng, proportions, np.zeros(n), options.control_cells)]
    labels = [CONTROL] * options.control_cells
    for condition, delta in zip(conditions, deltas):
        n_cells = _jittered(rng, options.cells_per_condition)
        blocks.append(_sample_counts(rng, proportions, delta, n_cells))
        labels.extend([condition] * n_cells)
    counts = np.vstack(blocks)
    adata = _make_adata(counts, labels, gene_ids, names, options)

    truth_genes = pd.DataFrame(
        {
            "gene_id": gene_ids,
            "gene_name": names,
            "biotype": biotypes,
            "module": modules_of,
            "motif_copies": [motif_copies[g] for g in gene_ids],
            "is_regulator": is_regulator,
            "knockdown": np.round(knockdown, 6),
        }
    )
    src, tgt = np.nonzero(w)
    truth_network = pd.DataFrame(
        {
            "source_id": gene_ids[src],
            "target_id": gene_ids[tgt],
            "source_name": names[src],
            "target_name": names[tgt],
            "weight": np.round(w[src, tgt], 6),
        }
    )
    truth_conditions = pd.DataFrame(
        truth_rows, columns=["condition", "n_genes", "same_module", "synergy", "nonadditivity"]
    )
    truth_conditions["nonadditivity"] = truth_conditions["nonadditivity"].round(6)
    truth_modules = pd.DataFrame(
        {
            "module": [m.index for m in modules],
            "theme": [m.theme.name for m in modules],
            "motif": [m.motif for m in modules],
            "gc": [m.gc for m in modules],
            "n_genes": [int((modules_of == m.index).sum()) for m in modules],
        }
    )
    truth_genes["is_stress"] = False
    truth_genes.loc[stress, "is_stress"] = True
    true_deltas = pd.DataFrame(np.vstack(deltas), index=conditions, columns=gene_ids.astype(str))
    return Demo(
        options=options,
        modules=modules,
        genes=genes,
        gtf=render_gtf(genes),
        cdna_fasta=render_fasta(genes, kind="cdna"),
        ncrna_fasta=render_fasta(genes, kind="ncrna"),
        descriptions=descriptions,
        adata=adata,
        truth_genes=truth_genes,
        truth_network=truth_network,
        truth_conditions=truth_conditions,
        truth_modules=truth_modules,
        true_deltas=true_deltas,
    )


def _make_adata(
    counts: np.ndarray, labels: list[str], gene_ids: np.ndarray, names: np.ndarray, options: Options
) -> ad.AnnData:
    """AnnData in GEARS' form: log1p-normalised CSR X, raw counts layer, obs columns, DE rankings."""
    totals = counts.sum(axis=1, keepdims=True)
    totals[totals == 0] = 1.0
    x = np.log1p(counts / totals * NORMALISED_TOTAL).astype(np.float32)
    condition = np.array(labels, dtype=object)
    is_ctrl = condition == CONTROL
    dose = np.where(is_ctrl, "1", "1+1").astype(object)
    condition_name = np.array(
        [de_key(options.cell_type, c, dose=d) for c, d in zip(condition, dose)], dtype=object
    )
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(condition, categories=list(dict.fromkeys(labels))),
            "cell_type": pd.Categorical([options.cell_type] * len(labels)),
            "condition_name": pd.Categorical(condition_name, categories=list(dict.fromkeys(condition_name))),
            "control": is_ctrl.astype(np.int64),
            "dose_val": pd.Categorical(dose),
        },
        index=pd.Index([f"cell{i:06d}" for i in range(len(labels))], name="cell_id"),
    )
    var = pd.DataFrame({"gene_name": names.astype(str)}, index=pd.Index(gene_ids.astype(str), name="gene_id"))
    adata = ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=var)
    adata.layers["counts"] = sp.csr_matrix(counts.astype(np.float32))
    add_de_rankings(adata, options=DatasetOptions())
    adata.uns["demo_seed"] = int(options.seed)
    return adata
