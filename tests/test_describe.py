from __future__ import annotations

import pandas as pd
import pytest

from grape.annotation import describe
from grape.stages import describe as describe_stage
from grape.annotation.describe import Options, fallback_text, read_table


def write_inputs(tmp_path, table: pd.DataFrame):
    genes = pd.DataFrame({
        "gene_id": ["ENSG001", "ENSG002", "ENSG003", "ENSG004"],
        "gene_name": ["ALPHA", "BETA", "GAMMA", "DELTA"],
        "dataset_name": ["ALPHA", "BETA", "GAMMA", "delta_alias"],
        "biotype": ["protein_coding", "lncRNA", "protein_coding", "protein_coding"],
    })
    missing = pd.DataFrame({"gene": ["GHOST", "PHANTOM"], "role": ["measured", "perturbed"],
                            "reason": ["not in annotation", "not in annotation"]})
    paths = {"genes": tmp_path / "genes.tsv", "missing": tmp_path / "missing.tsv", "table": tmp_path / "table.tsv"}
    genes.to_csv(paths["genes"], sep="\t", index=False)
    missing.to_csv(paths["missing"], sep="\t", index=False)
    table.to_csv(paths["table"], sep="\t", index=False)
    return paths


def run(tmp_path, table: pd.DataFrame, options: Options = Options()) -> pd.DataFrame:
    paths = write_inputs(tmp_path, table)
    describe_stage.run(options=options, out=tmp_path / "out.tsv", **paths)
    return pd.read_csv(tmp_path / "out.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("gene")


def test_lookup_by_id_then_symbol_and_fallback(tmp_path):
    table = pd.DataFrame({
        "gene_id": ["ENSG001.7", "ENSG999", "", "ENSG004.1"],
        "gene_name": ["OTHER", "ALPHA", "BETA", "X"],
        "description": ["alpha by id", "alpha by name", "beta by name", "delta by id"],
    })
    out = run(tmp_path, table)
    assert out.index.tolist() == ["ALPHA", "BETA", "GAMMA", "delta_alias", "GHOST", "PHANTOM"]
    assert out.loc["ALPHA", "description"] == "alpha by id"  # id (version ignored) wins over the symbol
    assert out.loc["ALPHA", "source"] == "table"
    assert out.loc["BETA", "description"] == "beta by name"
    assert out.loc["delta_alias", "description"] == "delta by id"
    assert out.loc["GAMMA", "description"] == "GAMMA is a protein coding gene."
    assert out.loc["GAMMA", "source"] == "fallback"
    assert out.loc["GAMMA", "gene_id"] == "ENSG003"
    assert list(out.reset_index().columns) == ["gene", "gene_id", "biotype", "description", "source", "entrez_id"]


def test_versioned_ids_on_both_sides_match(tmp_path):
    paths = write_inputs(tmp_path, pd.DataFrame({"gene_id": ["ENSG002.3"], "description": ["beta text"]}))
    genes = pd.read_csv(paths["genes"], sep="\t", dtype=str)
    genes["gene_id"] = genes["gene_id"] + ".3"
    genes.to_csv(paths["genes"], sep="\t", index=False)
    describe_stage.run(options=Options(), out=tmp_path / "out.tsv", **paths)
    out = pd.read_csv(tmp_path / "out.tsv", sep="\t", dtype=str).set_index("gene")
    assert out.loc["BETA", "description"] == "beta text"
    assert out.loc["BETA", "source"] == "table"


def test_genes_missing_from_annotation_still_appear(tmp_path):
    table = pd.DataFrame({"symbol": ["PHANTOM"], "description": ["phantom text"]})
    out = run(tmp_path, table)
    assert out.loc["GHOST", "biotype"] == "unknown"
    assert out.loc["GHOST", "gene_id"] == ""
    assert out.loc["GHOST", "description"] == "GHOST is a uncharacterised gene."
    assert out.loc["GHOST", "source"] == "fallback"
    assert out.loc["PHANTOM", "biotype"] == "unknown"
    assert out.loc["PHANTOM", "description"] == "phantom text"
    assert out.loc["PHANTOM", "source"] == "table"


def test_empty_description_falls_back(tmp_path):
    table = pd.DataFrame({"gene_name": ["ALPHA", "BETA"], "description": ["  ", "beta"]})
    out = run(tmp_path, table)
    assert out.loc["ALPHA", "source"] == "fallback"
    assert out.loc["BETA", "source"] == "table"


def test_custom_description_column(tmp_path):
    table = pd.DataFrame({"gene_name": ["GAMMA"], "summary": ["gamma summary"]})
    out = run(tmp_path, table, Options(description_column="summary"))
    assert out.loc["GAMMA", "description"] == "gamma summary"


def test_table_without_description_column(tmp_path):
    paths = write_inputs(tmp_path, pd.DataFrame({"gene_name": ["ALPHA"], "text": ["x"]}))
    with pytest.raises(ValueError, match=r"table\.tsv: no column 'description'"):
        describe_stage.run(options=Options(), out=tmp_path / "out.tsv", **paths)
    assert not (tmp_path / "out.tsv").exists()


def test_table_without_gene_columns(tmp_path):
    path = tmp_path / "t.tsv"
    pd.DataFrame({"name": ["ALPHA"], "description": ["x"]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"t\.tsv: needs a gene id column"):
        read_table(path, description_column="description")


def test_missing_input_file(tmp_path):
    paths = write_inputs(tmp_path, pd.DataFrame({"gene_name": ["A"], "description": ["x"]}))
    paths["table"] = tmp_path / "absent.tsv"
    with pytest.raises(FileNotFoundError, match=r"describe --table: file not found"):
        describe_stage.run(options=Options(), out=tmp_path / "out.tsv", **paths)


def test_fallback_text():
    assert fallback_text("X", "protein_coding") == "X is a protein coding gene."
    assert fallback_text("X", "unknown") == "X is a uncharacterised gene."
    assert fallback_text("X", "") == "X is a uncharacterised gene."


def test_entrez_keyed_table_and_case_insensitive_columns(tmp_path):
    paths = write_inputs(tmp_path, pd.DataFrame({"Gene_ID": ["7157"], "Symbol": ["BETA"], "Gene_summary": ["by entrez"]}))
    genes = pd.read_csv(paths["genes"], sep="\t", dtype=str)
    genes["entrez_id"] = ["", "", "7157", ""]
    genes.to_csv(paths["genes"], sep="\t", index=False)
    describe_stage.run(options=Options(description_column="gene_summary"), out=tmp_path / "out.tsv", **paths)
    out = pd.read_csv(tmp_path / "out.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("gene")
    assert out.loc["GAMMA", "description"] == "by entrez"  # Gene_ID matched as an Entrez id
    assert out.loc["BETA", "description"] == "by entrez"  # Symbol matched as a symbol


def test_annotation_description_before_fallback(tmp_path):
    paths = write_inputs(tmp_path, pd.DataFrame({"gene_name": ["ALPHA"], "description": ["alpha"]}))
    genes = pd.read_csv(paths["genes"], sep="\t", dtype=str)
    genes["description"] = ["", "beta lnc", "", "delta enzyme"]
    genes["description_source"] = ["", "ensembl", "", "hgnc"]
    genes.to_csv(paths["genes"], sep="\t", index=False)
    describe_stage.run(options=Options(), out=tmp_path / "out.tsv", **paths)
    out = pd.read_csv(tmp_path / "out.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("gene")
    assert out.loc["BETA", "description"] == "BETA: beta lnc. A lncRNA gene."
    assert out.loc["BETA", "source"] == "ensembl"
    assert out.loc["delta_alias", "description"] == "DELTA: delta enzyme. A protein coding gene."
    assert out.loc["delta_alias", "source"] == "hgnc"
    assert out.loc["GAMMA", "source"] == "fallback"


def test_neither_table_nor_ncbi_uses_the_annotation(tmp_path):
    """describe.table null without NCBI (the own-data template): the annotation's texts, then the fallback."""
    paths = write_inputs(tmp_path, pd.DataFrame({"gene_name": ["A"], "description": ["x"]}))
    del paths["table"]
    genes = pd.read_csv(paths["genes"], sep="\t", dtype=str)
    genes["description"] = ["alpha kinase", "", "", ""]
    genes["description_source"] = ["hgnc", "", "", ""]
    genes.to_csv(paths["genes"], sep="\t", index=False)
    describe_stage.run(options=Options(), out=tmp_path / "out.tsv", **paths)
    out = pd.read_csv(tmp_path / "out.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("gene")
    assert out.index.tolist() == ["ALPHA", "BETA", "GAMMA", "delta_alias", "GHOST", "PHANTOM"]
    assert (out.loc["ALPHA", "description"], out.loc["ALPHA", "source"]) == (
        "ALPHA: alpha kinase. A protein coding gene.", "hgnc")
    assert (out.loc["BETA", "description"], out.loc["BETA", "source"]) == ("BETA is a lncRNA gene.", "fallback")
    assert out.loc["GHOST", "description"] == "GHOST is a uncharacterised gene."


def test_real_refseq_summaries_as_a_user_table(tmp_path, shared_data):
    """The RefSeq summaries beside the repo (Gene_ID, Symbol, Gene_summary) work as an offline table."""
    paths = write_inputs(tmp_path, pd.DataFrame({"gene_name": ["A"], "description": ["x"]}))
    genes = pd.DataFrame({"gene_id": ["ENSG00000141510", "ENSG00000136997"], "gene_name": ["TP53", "MYC"],
                          "dataset_name": ["TP53", "MYC"], "biotype": ["protein_coding"] * 2, "entrez_id": ["7157", ""]})
    genes.to_csv(paths["genes"], sep="\t", index=False)
    paths["table"] = shared_data / "refseq_summaries_human.tsv.gz"
    describe_stage.run(options=Options(description_column="Gene_summary"), out=tmp_path / "out.tsv", **paths)
    out = pd.read_csv(tmp_path / "out.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("gene")
    assert out.loc["TP53", "source"] == "table" and "tumor suppressor" in out.loc["TP53", "description"]
    assert out.loc["MYC", "source"] == "table" and "transcription factor" in out.loc["MYC", "description"]
