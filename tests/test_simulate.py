"""Tests of the embedded demo simulator (grape.demo.simulate)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from grape.demo import simulate as sim
from grape.stages import simulate as simulate_stage
from grape.cli import main as cli_main
from grape.data.dataset import DatasetOptions, check_dataset, condition_genes, pseudobulk
from grape.evaluation.de import RANK_KEY, UNS_KEYS, de_key
from workflow_tools import copy_workflow, snakemake, write_config

TINY = {
    "n_genes": 80,
    "n_modules": 3,
    "n_singles": 12,
    "n_doubles": 6,
    "cells_per_condition": 15,
    "control_cells": 60,
}
TEXT_FILES = [f for f in sim.OUTPUT_FILES if f != sim.H5AD_FILE]
_ATTR = re.compile(r'(\S+) "([^"]*)";')


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    simulate_stage.run(options=sim.Options(), out_dir=out)
    return out


@pytest.fixture(scope="module")
def adata(demo_dir: Path) -> ad.AnnData:
    return ad.read_h5ad(demo_dir / sim.H5AD_FILE)


@pytest.fixture(scope="module")
def truth(demo_dir: Path) -> dict[str, pd.DataFrame]:
    return {
        "genes": pd.read_csv(demo_dir / sim.TRUTH_GENES_FILE, sep="\t"),
        "network": pd.read_csv(demo_dir / sim.TRUTH_NETWORK_FILE, sep="\t"),
        "conditions": pd.read_csv(demo_dir / sim.TRUTH_CONDITIONS_FILE, sep="\t"),
        "modules": pd.read_csv(demo_dir / sim.TRUTH_MODULES_FILE, sep="\t"),
        "descriptions": pd.read_csv(demo_dir / sim.DESCRIPTIONS_FILE, sep="\t"),
    }


def _gtf_rows(path: Path) -> list[dict[str, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        assert len(cols) == 9, line
        row = dict(_ATTR.findall(cols[8]))
        row.update(contig=cols[0], feature=cols[2], start=cols[3], end=cols[4], strand=cols[6], frame=cols[7])
        rows.append(row)
    return rows


def _fasta(path: Path) -> dict[str, tuple[str, str]]:
    """Versioned transcript id -> (header, sequence); asserts 60-base lines."""
    records: dict[str, tuple[str, str]] = {}
    header, lines = "", []
    for line in path.read_text().splitlines() + [">"]:
        if line.startswith(">"):
            if header:
                assert all(len(x) == 60 for x in lines[:-1]) and 0 < len(lines[-1]) <= 60
                records[header.split()[0][1:]] = (header, "".join(lines))
            header, lines = line, []
        else:
            lines.append(line)
    return records


def _canonical_sequences(demo_dir: Path) -> dict[str, str]:
    """gene_id -> sequence of its canonical transcript."""
    canonical = {
        r["transcript_id"]: r["gene_id"]
        for r in _gtf_rows(demo_dir / sim.GTF_FILE)
        if r["feature"] == "transcript" and r.get("tag") == "Ensembl_canonical"
    }
    out = {}
    for name in (sim.CDNA_FILE, sim.NCRNA_FILE):
        for tid, (_, seq) in _fasta(demo_dir / name).items():
            bare = tid.split(".")[0]
            if bare in canonical:
                out[canonical[bare]] = seq
    return out


def _read_h5ad_arrays(path: Path) -> dict[str, np.ndarray]:
    a = ad.read_h5ad(path)
    arrays = {
        "X": a.X.toarray(),
        "counts": a.layers["counts"].toarray(),
        "obs": a.obs.astype(str).to_numpy(),
        "obs_names": a.obs_names.to_numpy(),
        "var": a.var.astype(str).to_numpy(),
        "var_names": a.var_names.to_numpy(),
    }
    for key in UNS_KEYS:
        for cond, value in a.uns[key].items():
            arrays[f"{key}/{cond}"] = np.asarray(value)
    arrays["seed"] = np.asarray(a.uns["demo_seed"])
    return arrays


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    options = sim.Options(seed=7, **TINY)
    simulate_stage.run(options=options, out_dir=tmp_path / "a")
    simulate_stage.run(options=options, out_dir=tmp_path / "b")
    simulate_stage.run(options=sim.Options(seed=8, **TINY), out_dir=tmp_path / "c")
    for name in TEXT_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / sim.GTF_FILE).read_bytes() != (tmp_path / "c" / sim.GTF_FILE).read_bytes()
    first = _read_h5ad_arrays(tmp_path / "a" / sim.H5AD_FILE)
    second = _read_h5ad_arrays(tmp_path / "b" / sim.H5AD_FILE)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    assert int(first["seed"]) == 7
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(sim.OUTPUT_FILES)


def test_default_sizes_and_condition_forms(adata: ad.AnnData, truth: dict[str, pd.DataFrame]) -> None:
    check_dataset(adata, options=DatasetOptions())
    conditions = adata.obs["condition"].astype(str)
    counts = conditions.value_counts()
    singles = [c for c in counts.index if re.fullmatch(r"SG\d{3}\+ctrl", c)]
    doubles = [c for c in counts.index if re.fullmatch(r"SG\d{3}\+SG\d{3}", c)]
    assert len(singles) == 48 and len(doubles) == 24
    assert len(counts) == 1 + len(singles) + len(doubles)
    assert counts["ctrl"] == 300
    per_condition = counts.drop("ctrl")
    assert per_condition.between(45, 55).all() and abs(per_condition.mean() - 50) < 3
    for double in doubles:  # each double's singles exist
        for gene in condition_genes(double, options=DatasetOptions()):
            assert f"{gene}+ctrl" in singles
    obs = adata.obs
    is_ctrl = (conditions == "ctrl").to_numpy()
    np.testing.assert_array_equal(obs["control"].to_numpy(), is_ctrl.astype(int))
    np.testing.assert_array_equal(obs["dose_val"].astype(str).to_numpy(), np.where(is_ctrl, "1", "1+1"))
    assert (obs["cell_type"].astype(str) == "demo_cell").all()
    expected = [de_key("demo_cell", c, dose=d) for c, d in zip(conditions, obs["dose_val"].astype(str))]
    assert obs["condition_name"].astype(str).tolist() == expected
    assert adata.var_names[0] == "ENSDEMG00000000001" and adata.var["gene_name"].iloc[0] == "SG001"
    assert set(truth["conditions"]["condition"]) == set(singles) | set(doubles)


def test_normalisation_and_de_rankings(adata: ad.AnnData) -> None:
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32
    counts = adata.layers["counts"].toarray()
    assert np.allclose(counts, np.round(counts)) and counts.min() >= 0
    expected = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    np.testing.assert_allclose(adata.X.toarray(), expected, rtol=1e-5, atol=1e-5)
    perturbed_names = set(adata.obs.loc[adata.obs["control"] == 0, "condition_name"].astype(str))
    for key in UNS_KEYS:
        assert set(adata.uns[key]) == perturbed_names
    some = next(iter(perturbed_names))
    assert sorted(adata.uns[RANK_KEY][some]) == sorted(adata.var_names)
    assert len(adata.uns["top_non_dropout_de_20"][some]) == 20
    assert int(adata.uns["demo_seed"]) == 0


def test_biotypes_in_gtf_and_dataset(demo_dir: Path, adata: ad.AnnData, truth: dict[str, pd.DataFrame]) -> None:
    rows = _gtf_rows(demo_dir / sim.GTF_FILE)
    gene_biotype = {r["gene_id"]: r["gene_biotype"] for r in rows if r["feature"] == "gene"}
    assert len(set(gene_biotype.values())) >= 3
    assert set(gene_biotype.values()) <= set(sim.BIOTYPE_SHARES)
    assert len({gene_biotype[g] for g in adata.var_names}) >= 3
    genes = truth["genes"].set_index("gene_name")
    perturbed = {
        g for c in adata.obs["condition"].astype(str).unique() for g in condition_genes(c, options=DatasetOptions())
    }
    kinds = genes.loc[sorted(perturbed), "biotype"]
    assert kinds.nunique() >= 3
    assert (kinds != "protein_coding").mean() >= 0.25
    assert genes.loc[sorted(perturbed), "is_regulator"].mean() >= 0.7
    shares = truth["genes"]["biotype"].value_counts(normalize=True)
    assert abs(shares["protein_coding"] - 0.65) < 0.03 and abs(shares["lncRNA"] - 0.18) < 0.03
    # symbols do not reveal the biotype
    assert all(re.fullmatch(r"SG\d{3}", s) for s in truth["genes"]["gene_name"])


def test_gtf_structure(demo_dir: Path) -> None:
    text = (demo_dir / sim.GTF_FILE).read_text()
    assert text.startswith("#!genome-build DEMO1\n")
    rows = _gtf_rows(demo_dir / sim.GTF_FILE)
    genes = {r["gene_id"]: r for r in rows if r["feature"] == "gene"}
    transcripts = {r["transcript_id"]: r for r in rows if r["feature"] == "transcript"}
    assert {r["contig"] for r in genes.values()} == set(sim.CONTIGS)
    assert {r["strand"] for r in genes.values()} == {"+", "-"}
    for tr in transcripts.values():
        gene = genes[tr["gene_id"]]
        assert int(gene["start"]) <= int(tr["start"]) <= int(tr["end"]) <= int(gene["end"])
        assert tr["transcript_name"].startswith(gene["gene_name"] + "-2")
    exons_of: dict[str, list[dict[str, str]]] = defaultdict(list)
    features = defaultdict(set)
    for r in rows:
        if r["feature"] != "gene":
            features[r["gene_biotype"]].add(r["feature"])
        if r["feature"] in ("exon", "CDS", "start_codon", "stop_codon"):
            tr = transcripts[r["transcript_id"]]
            assert int(tr["start"]) <= int(r["start"]) <= int(r["end"]) <= int(tr["end"])
        if r["feature"] == "exon":
            assert r["exon_id"].startswith("ENSDEME") and r["exon_number"].isdigit()
            exons_of[r["transcript_id"]].append(r)
    assert features["protein_coding"] >= {"transcript", "exon", "CDS", "start_codon", "stop_codon"}
    assert "CDS" not in features["lncRNA"]
    canonical = defaultdict(int)
    n_transcripts = defaultdict(int)
    for tid, tr in transcripts.items():
        n_transcripts[tr["gene_id"]] += 1
        canonical[tr["gene_id"]] += tr.get("tag") == "Ensembl_canonical"
        exons = sorted(exons_of[tid], key=lambda r: int(r["exon_number"]))
        starts = [int(e["start"]) for e in exons]
        assert starts == sorted(starts, reverse=tr["strand"] == "-")  # transcript order
    assert all(canonical[g] == 1 for g in genes)
    share_two = np.mean([n_transcripts[g] == 2 for g in genes])
    assert 0.15 <= share_two <= 0.25 and max(n_transcripts.values()) == 2
    for contig in sim.CONTIGS:  # genes do not overlap
        spans = sorted((int(g["start"]), int(g["end"])) for g in genes.values() if g["contig"] == contig)
        assert all(prev[1] < nxt[0] for prev, nxt in zip(spans, spans[1:]))


def test_fasta_files(demo_dir: Path, truth: dict[str, pd.DataFrame]) -> None:
    biotype = truth["genes"].set_index("gene_id")["biotype"]
    cdna, ncrna = _fasta(demo_dir / sim.CDNA_FILE), _fasta(demo_dir / sim.NCRNA_FILE)
    pattern = (
        r">ENSDEMT\d{11}\.1 (cdna|ncrna) chromosome:DEMO1:[1-5]:\d+:\d+:-?1 gene:(ENSDEMG\d{11})\.1 "
        r"gene_biotype:(\S+) transcript_biotype:\S+ gene_symbol:SG\d{3} description:.+"
    )
    files = (("cdna", cdna, sim.CDNA_BIOTYPES), ("ncrna", ncrna, {"lncRNA", "miRNA", "snRNA"}))
    for kind, records, allowed in files:
        for header, sequence in records.values():
            match = re.fullmatch(pattern, header)
            assert match and match[1] == kind, header
            assert match[3] in allowed and biotype[match[2]] == match[3]
            assert set(sequence) <= set("ACGT")
    rows = _gtf_rows(demo_dir / sim.GTF_FILE)
    exon_sum: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["feature"] == "exon":
            exon_sum[r["transcript_id"]] += int(r["end"]) - int(r["start"]) + 1
    sequences = {tid.split(".")[0]: seq for tid, (_, seq) in {**cdna, **ncrna}.items()}
    assert sequences.keys() == exon_sum.keys()
    assert all(len(sequences[t]) == n for t, n in exon_sum.items())


def test_pyensembl_loads_gtf_and_fasta(demo_dir: Path, tmp_path: Path) -> None:
    pyensembl = pytest.importorskip("pyensembl")
    genome = pyensembl.Genome(
        reference_name="DEMO1",
        annotation_name="demo",
        gtf_path_or_url=str(demo_dir / sim.GTF_FILE),
        transcript_fasta_paths_or_urls=[str(demo_dir / sim.CDNA_FILE), str(demo_dir / sim.NCRNA_FILE)],
        cache_directory_path=str(tmp_path / "cache"),
    )
    genome.index()
    genes = genome.genes()
    assert len(genes) == 300
    assert {g.biotype for g in genes} == set(sim.BIOTYPE_SHARES)
    fasta = {**_fasta(demo_dir / sim.CDNA_FILE), **_fasta(demo_dir / sim.NCRNA_FILE)}
    for versioned, (_, sequence) in fasta.items():
        bare = versioned.split(".")[0]
        transcript = genome.transcript_by_id(bare)
        assert transcript.sequence == sequence
        assert len(sequence) == sum(len(e) for e in transcript.exons)
        if transcript.complete:
            coding = transcript.coding_sequence
            assert coding.startswith("ATG") and coding[-3:] in ("TAA", "TAG", "TGA") and len(coding) % 3 == 0
    one = next(iter(fasta))
    assert genome.transcript_by_id(one).sequence == fasta[one][1]  # versioned id works too
    assert genome.gene_by_id("ENSDEMG00000000001").gene_name == "SG001"


def test_knocked_down_genes_drop_in_their_condition(adata: ad.AnnData, truth: dict[str, pd.DataFrame]) -> None:
    means = pseudobulk(adata, options=DatasetOptions())
    perturbed = truth["genes"][truth["genes"]["knockdown"] > 0]
    assert len(perturbed) == 48 and perturbed["knockdown"].between(1.5, 2.5).all()
    deltas = np.array(
        [
            means.loc[f"{r.gene_name}+ctrl", r.gene_id] - means.loc["ctrl", r.gene_id]
            for r in perturbed.itertuples()
        ]
    )
    assert (deltas < -0.5).mean() >= 0.8
    assert (deltas < 0).all()


def test_some_doubles_are_non_additive(truth: dict[str, pd.DataFrame]) -> None:
    doubles = truth["conditions"][truth["conditions"]["n_genes"] == 2]
    assert len(doubles) == 24 and doubles["same_module"].sum() == 12
    assert doubles["synergy"].sum() == round(0.3 * 24)
    assert (doubles["nonadditivity"] > 1.0).sum() >= 3
    assert (doubles["nonadditivity"] < 0.3).sum() >= 3
    syn = doubles.loc[doubles["synergy"], "nonadditivity"]
    rest = doubles.loc[~doubles["synergy"], "nonadditivity"]
    assert syn.median() > 3 * rest.median() + 0.5
    singles = truth["conditions"][truth["conditions"]["n_genes"] == 1]
    assert singles["nonadditivity"].isna().all()


def test_network_signs_and_regulators(truth: dict[str, pd.DataFrame]) -> None:
    genes = truth["genes"].set_index("gene_id")
    net = truth["network"]
    regulators = genes[genes["is_regulator"]]
    assert abs(len(regulators) / len(genes) - 0.25) < 0.02
    assert set(regulators["biotype"]) <= {"protein_coding", "lncRNA", "miRNA"}
    assert set(net["source_id"]) <= set(regulators.index)
    source_biotype = genes.loc[net["source_id"], "biotype"].to_numpy()
    assert (net["weight"][source_biotype == "protein_coding"] > 0).all()
    assert (net["weight"][source_biotype != "protein_coding"] < 0).all()
    assert net["weight"].abs().between(0.4, 1.0).all()
    same = genes.loc[net["source_id"], "module"].to_numpy() == genes.loc[net["target_id"], "module"].to_numpy()
    assert same.mean() > 0.7


def test_motifs_enriched_in_module_members(demo_dir: Path, truth: dict[str, pd.DataFrame]) -> None:
    sequences = _canonical_sequences(demo_dir)
    genes = truth["genes"]
    for module in truth["modules"].itertuples():
        assert 8 <= len(module.motif) <= 10

        def per_kb(ids: pd.Series, motif: str = module.motif) -> float:
            return 1000 * sum(sequences[g].count(motif) for g in ids) / sum(len(sequences[g]) for g in ids)

        members = genes.loc[genes["module"] == module.module, "gene_id"]
        others = genes.loc[genes["module"] != module.module, "gene_id"]
        assert per_kb(members) > 5 * per_kb(others) + 2
        carrying = np.mean([module.motif in sequences[g] for g in members])
        assert 0.7 <= carrying <= 0.97
    motif_of = truth["modules"].set_index("module")["motif"]
    for row in genes[genes["module"] >= 0].head(30).itertuples():
        assert row.motif_copies == sequences[row.gene_id].count(motif_of[row.module])


def test_descriptions_carry_module_vocabulary(truth: dict[str, pd.DataFrame]) -> None:
    themes = {t.name: t.vocabulary for t in sim.THEMES}
    all_phrases = [p for t in sim.THEMES for p in t.vocabulary]
    vocab_of = {m.module: themes[m.theme] for m in truth["modules"].itertuples()}
    table = truth["descriptions"].merge(truth["genes"], on=["gene_id", "gene_name"])
    assert list(truth["descriptions"].columns) == ["gene_id", "gene_name", "description"]
    members = table[table["module"] >= 0]
    themed = np.array(
        [sum(p in d for p in vocab_of[m]) for d, m in zip(members["description"], members["module"])]
    )
    assert 0.75 <= (themed >= 2).mean() <= 0.95  # ~15% generic noise
    background = table[table["module"] < 0]
    assert not any(p in d for d in background["description"] for p in all_phrases)
    words = {"protein_coding": "protein", "lncRNA": "long", "miRNA": "microRNA", "snRNA": "small nuclear",
             "processed_pseudogene": "pseudogene"}
    assert all(words[b] in d for b, d in zip(table["biotype"], table["description"]))
    assert len(sim.THEMES) >= 10


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"n_singles": 1000}, "n_singles"),
        ({"n_doubles": 48 * 47 // 2 + 1}, "n_doubles"),
        ({"n_modules": len(sim.THEMES) + 1}, "n_modules"),
        ({"n_genes": 10}, "n_genes"),
        ({"cells_per_condition": 0}, "cells_per_condition"),
        ({"control_cells": 1}, "control_cells"),
        ({"seed": -1}, "seed"),
        ({"cell_type": ""}, "cell_type"),
        ({"n_doubles": -1}, "n_doubles"),
    ],
)
def test_bad_option_names_the_option(changes: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        sim.Options(**changes)


def test_tiny_config_through_the_cli(tmp_path: Path) -> None:
    argv = ["simulate", "--out-dir", str(tmp_path), "--seed", "3", "--log-level", "WARNING"]
    for key, value in TINY.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    assert cli_main(argv) == 0
    small = ad.read_h5ad(tmp_path / sim.H5AD_FILE)
    check_dataset(small, options=DatasetOptions())
    counts = small.obs["condition"].astype(str).value_counts()
    assert small.n_vars == 80 and counts["ctrl"] == 60 and len(counts) == 1 + 12 + 6
    assert counts.drop("ctrl").between(13, 17).all()
    assert int(small.uns["demo_seed"]) == 3
    genes = pd.read_csv(tmp_path / sim.TRUTH_GENES_FILE, sep="\t")
    assert set(genes["module"]) == {-1, 0, 1, 2}
    perturbed = genes[genes["knockdown"] > 0]
    assert len(perturbed) == 12 and (perturbed["biotype"] != "protein_coding").mean() >= 0.25


def test_settings_file_records_the_options(tmp_path: Path) -> None:
    options = sim.Options(seed=4, **TINY)
    simulate_stage.run(options=options, out_dir=tmp_path)
    assert json.loads((tmp_path / sim.SETTINGS_FILE).read_text()) == {**TINY, "seed": 4, "cell_type": "demo_cell"}


def _snakemake(root: Path, config: dict, *args: str) -> str:
    """Snakemake on a copy of the workflow with ``config``, one core; its output."""
    name = write_config(root, config)
    result = snakemake(root, "--configfile", name, *args, cores=1, timeout=300)
    return result.stdout + result.stderr


@pytest.mark.slow
def test_demo_files_are_keyed_by_the_simulate_settings(tmp_path: Path) -> None:
    copy_workflow(tmp_path)
    first = {"run": "a", "simulate": {**TINY, "seed": 1}}
    second = {"run": "b", "simulate": {**TINY, "seed": 2}}
    _snakemake(tmp_path, first, "--until", "simulate")
    dirs = list((tmp_path / "resources" / "demo").iterdir())
    assert len(dirs) == 1 and re.fullmatch(r"[0-9a-f]{12}", dirs[0].name)
    first_dir = dirs[0]
    h5ad = (first_dir / sim.H5AD_FILE).read_bytes()
    _snakemake(tmp_path, second, "--until", "simulate")
    second_dir = next(d for d in (tmp_path / "resources" / "demo").iterdir() if d != first_dir)
    # the other settings have their own files; the first run's input is untouched
    assert json.loads((first_dir / sim.SETTINGS_FILE).read_text())["seed"] == 1
    assert json.loads((second_dir / sim.SETTINGS_FILE).read_text())["seed"] == 2
    assert (first_dir / sim.H5AD_FILE).read_bytes() == h5ad
    # the same settings, in another order and with the defaults spelt out, reuse the files
    same = {"run": "c", "simulate": dict(reversed(list({**TINY, "seed": 1, "cell_type": "demo_cell"}.items())))}
    dry_run = _snakemake(tmp_path, same, "--until", "simulate", "-n")
    assert not re.search(r"^simulate\s+\d+\s*$", dry_run, flags=re.M), dry_run[-2000:]
    assert len(list((tmp_path / "resources" / "demo").iterdir())) == 2
