"""The Ensembl release paths the workflow computes without pyensembl equal pyensembl's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from grape.annotation import ensembl_layout

pytest.importorskip("pyensembl")


def test_species_table_is_pyensembls():
    assert ensembl_layout.SPECIES == ensembl_layout.pyensembl_species(), (
        "pyensembl's species registry changed: print grape.annotation.ensembl_layout.pyensembl_species() into SPECIES")


def _pyensembl_paths(species, release, root):
    """The files pyensembl itself names for a release (None where it knows no such release), under ``root``."""
    import pyensembl
    from pyensembl.download_cache import cache_subdirectory

    try:
        genome = pyensembl.EnsemblRelease(release, species)
    except (ValueError, TypeError):
        return None
    urls = [genome.gtf_url, *genome.transcript_fasta_urls]
    kinds = {"gtf": urls[0], **{k: u for u in urls[1:] for k in ("cdna", "ncrna") if f"/{k}/" in u}}
    if set(kinds) != set(ensembl_layout.KINDS):
        return None
    directory = Path(root) / cache_subdirectory(genome.reference_name, "ensembl", genome.release)
    return {kind: directory / url.rsplit("/", 1)[1] for kind, url in kinds.items()}


def _layout_paths(species, release, root):
    try:
        return ensembl_layout.release_paths(species=species, release=release, root=root)
    except ValueError:
        return None


@pytest.mark.parametrize("species", [s.latin_name for s in ensembl_layout.SPECIES])
def test_release_paths_follow_pyensembl(species, tmp_path):
    first = min(start for start, _ in ensembl_layout.find_species(species).assemblies.values())
    last = max(end for _, end in ensembl_layout.find_species(species).assemblies.values())
    for release in range(max(first - 1, 54), last + 2):  # the schema's first release, one past the last
        assert _layout_paths(species, release, tmp_path) == _pyensembl_paths(species, release, tmp_path), release


@pytest.mark.parametrize("name", ["human", "Homo sapiens", "HOMO_SAPIENS", "canis_lupus_familiaris"])
def test_species_synonyms_as_pyensembl(name, tmp_path):
    assert ensembl_layout.release_paths(species=name, release=110, root=tmp_path) == _pyensembl_paths(name, 110, tmp_path)


def test_unknown_species_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="annotate.ensembl_species"):
        ensembl_layout.release_paths(species="not_a_species", release=114, root=tmp_path)


def test_the_ensembl_stage_writes_where_the_layout_says(tmp_path):
    from grape.annotation.ensembl import release_files

    files = release_files(species="homo_sapiens", release=114, root=tmp_path)
    assert {kind: item.path for kind, item in files.items()} == ensembl_layout.release_paths(
        species="homo_sapiens", release=114, root=tmp_path)
