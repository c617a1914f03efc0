"""A new user's own screen through the whole workflow, as the users of the field bring them.

One tiny screen made here holds each thing that broke real runs: raw UMI counts in X, a perturbed
gene named by an older symbol of a measured gene (C19orf26 for the measured CBARP), lncRNA clone
names that only Ensembl 84 knows, features that are no genes (Cas9, a guide pair), and two cell
states. It runs through the own-data template `workflow/configs/user_h5ad.yaml` as shipped, with
the training length given as Snakemake's own `--config "train={...}"`. Bad inputs stop in the
preflight stage, before annotation and embedding, with one line naming the cause.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from workflow_tools import copy_workflow, snakemake

pytestmark = pytest.mark.slow

MEASURED = [
    "CBARP", "TGFBR2", "STAT1", "IRF1", "JAK2", "IFNGR1", "IFNGR2", "SMAD4", "CD86", "MYC", "SOCS1", "IRF9",
    "GAPDH", "ACTB", "B2M", "ISG15", "MX1", "OAS1", "IFIT1", "IFIT3", "CXCL10", "SOCS3", "STAT2", "TAP1",
    "PSMB9", "GBP1", "GBP5", "CIITA", "MIR34AHG",
    "RP11-54O7.1", "RP4-798A10.2",  # clone names of Ensembl 84 (AL645608.2 ... in Ensembl 100)
    "Cas9", "STAT1_g1:IRF1_g2",  # no genes
]
SINGLES = ["STAT1", "IRF1", "JAK2", "IFNGR1", "IFNGR2", "SMAD4", "CD86", "MYC", "C19orf26", "TGFBR2", "SOCS1",
           "IRF9"]
DOUBLES = ["STAT1+IRF1", "JAK2+IFNGR1", "C19orf26+TGFBR2", "SMAD4+MYC", "IFNGR2+CD86", "SOCS1+IRF9"]
STATES = ["stimulated", "resting"]
QUICK = {"train": {"epochs": 10, "patience": 10, "pretrain_epochs": 1, "hidden": 8, "batch_size": 8},
         "embed": {"text_max_length": 24}, "graph": {"top_k": 4}, "evaluate": {"baselines": ["mean", "additive"]}}


def screen(seed: int = 0, cells: int = 6, controls: int = 24) -> ad.AnnData:
    """Raw UMI counts of a tiny two-state knockout screen in the GEARS layout (condition, ctrl)."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 3.0, len(MEASURED))
    rows, obs = [], []
    for state in STATES:
        shift = rng.normal(0, 0.3, len(MEASURED)) if state == "stimulated" else 0.0
        for cond in ["ctrl", *(f"{g}+ctrl" for g in SINGLES), *DOUBLES]:
            rate = base * np.exp(shift)
            for gene in cond.split("+"):
                if gene in MEASURED:
                    rate = rate * np.where(np.array(MEASURED) == gene, 0.2, 1.0)
            n = controls if cond == "ctrl" else cells
            rows.append(rng.poisson(rate, size=(n, len(MEASURED))))
            obs += [{"condition": cond, "cell_type": state}] * n
    x = np.vstack(rows).astype(np.float32)
    adata = ad.AnnData(X=x, obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(len(obs))]),
                       var=pd.DataFrame(index=MEASURED))
    return adata


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    root = copy_workflow(tmp_path_factory.mktemp("user") / "project")
    (root / "data").mkdir()
    screen().write_h5ad(root / "data" / "my_screen.h5ad")
    (root / "quick.yaml").write_text(yaml.safe_dump(QUICK))
    result = snakemake(root, "--configfile", "workflow/configs/user_h5ad.yaml", "quick.yaml",
                       "--config", "train={epochs: 3, lr: 1e-3}")
    return root, root / "results" / "my_screen", result


def test_template_runs_as_shipped_with_config_numbers(user_run):
    root, results, _ = user_run
    assert (results / "report" / "summary.md").stat().st_size > 0
    history = pd.read_csv(results / "train" / "full" / "history.tsv", sep="\t")
    assert len(history) == 3  # --config "train={epochs: 3}" reached the train stage as a number
    assert float(history["lr"].iloc[0]) == pytest.approx(1e-3)


def test_alias_and_older_names_resolve_to_one_node(user_run):
    _, results, _ = user_run
    mapping = pd.read_csv(results / "annotate" / "mapping.tsv", sep="\t", keep_default_na=False).set_index("dataset_name")
    assert mapping.loc["C19orf26", "node"] == "CBARP"
    assert mapping.loc["RP11-54O7.1", "status"] == "mapped" and mapping.loc["RP11-54O7.1", "release"] == "ensembl84"
    assert mapping.loc["RP11-54O7.1", "gene_id"] == "ENSG00000230699"
    predictions = ad.read_h5ad(results / "train" / "full" / "predictions.h5ad")
    assert "C19orf26+TGFBR2" in set(predictions.obs["condition"])
    table = ad.read_h5ad(results / "evaluate" / "test_predictions.h5ad")  # the user's labels, resolved beside
    assert table.var.loc["RP11-54O7.1", "symbol"] == "AL645608.2"
    assert table.var.loc["RP11-54O7.1", "gene_id"] == "ENSG00000230699"


def test_non_gene_features_are_no_targets(user_run):
    _, results, _ = user_run
    mapping = pd.read_csv(results / "annotate" / "mapping.tsv", sep="\t", keep_default_na=False).set_index("dataset_name")
    assert mapping.loc["Cas9", "status"] == "excluded" and mapping.loc["STAT1_g1:IRF1_g2", "status"] == "excluded"
    nodes = set(pd.read_csv(results / "describe" / "descriptions.tsv", sep="\t")["gene"])
    predictions = ad.read_h5ad(results / "train" / "full" / "predictions.h5ad")
    for feature in ("Cas9", "STAT1_g1:IRF1_g2"):
        assert feature not in nodes and feature not in set(predictions.var_names)


def test_raw_counts_are_normalised_and_said(user_run):
    root, results, _ = user_run
    report = json.loads((results / "preflight" / "preflight.json").read_text())
    assert "count" in json.dumps(report).lower()
    log = (root / "logs" / "my_screen" / "train_full.log").read_text().lower()
    assert "log1p" in log or "normalis" in log


def test_contexts_have_their_own_rows_and_metrics(user_run):
    _, results, _ = user_run
    predictions = ad.read_h5ad(results / "train" / "full" / "predictions.h5ad")
    assert set(predictions.obs["context"]) == set(STATES)
    metrics = pd.read_csv(results / "evaluate" / "metrics.tsv", sep="\t")
    assert set(STATES) <= set(metrics["context"])
    split = pd.read_csv(results / "split" / "split.tsv", sep="\t")
    test_conditions = set(split.loc[split["split"] == "test", "condition"])
    per_condition = pd.read_csv(results / "evaluate" / "per_condition.tsv", sep="\t")
    grape = per_condition.loc[per_condition["model"] == "grape"]
    for state in STATES:  # a held-out perturbation is held out in every state
        assert set(grape.loc[grape["context"] == state, "condition"]) == test_conditions


# --------------------------------------------------------------------------- refused in seconds


def bad_screen(kind: str) -> tuple[ad.AnnData, dict]:
    adata, config = screen(cells=3, controls=6), {}
    if kind == "three_genes":
        labels = adata.obs["condition"].astype(str).to_numpy()
        labels[labels == "STAT1+IRF1"] = "STAT1+IRF1+JAK2"
        adata.obs["condition"] = labels
    elif kind == "pseudobulk_as_cells":
        frame = pd.DataFrame(adata.X, index=adata.obs["condition"].astype(str).to_numpy())
        means = frame.groupby(level=0).mean()
        adata = ad.AnnData(X=np.log1p(means.to_numpy(np.float32)), obs=pd.DataFrame({"condition": means.index},
                           index=means.index), var=adata.var.copy())
    elif kind == "cuda":
        config = {"train": {"device": "cuda:63"}}  # no machine has 64 GPUs
    elif kind == "biotype_typo":
        config = {"graph": {"biotype_groups": {"protein_coding": "coding", "lncrna": "lncrna"}}}
    return adata, config


@pytest.mark.parametrize("kind, expected", [
    ("three_genes", "STAT1+IRF1+JAK2"),
    ("pseudobulk_as_cells", "pseudobulk"),
    ("cuda", "cuda:63"),
    ("biotype_typo", "lncRNA"),
])
def test_bad_input_stops_in_preflight_before_any_work(tmp_path, kind, expected):
    root = copy_workflow(tmp_path / "project")
    (root / "data").mkdir()
    adata, config = bad_screen(kind)
    adata.write_h5ad(root / "data" / "my_screen.h5ad")
    (root / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(root, "--configfile", "workflow/configs/user_h5ad.yaml", "bad.yaml", check=False, timeout=300)
    assert result.returncode != 0
    console = result.stdout + result.stderr
    failed = [line for line in console.splitlines() if "grape preflight failed:" in line]
    assert failed and expected in failed[-1], console[-3000:]
    results = root / "results" / "my_screen"
    assert not (results / "annotate").exists() and not (results / "embed").exists()


def test_cell_eval_run_accepts_the_workflow_predictions(user_run, tmp_path):
    """evaluate/cell_eval_{pred,real}.h5ad of the run, scored by Arc's `cell-eval run` itself (two cell states)."""
    import subprocess

    from grape.evaluation.celleval import CELLTYPE_COL, EXECUTABLE_ENV, cell_eval_command, find_cell_eval

    _, results, _ = user_run
    pred, real = results / "evaluate" / "cell_eval_pred.h5ad", results / "evaluate" / "cell_eval_real.h5ad"
    assert ad.read_h5ad(pred).n_obs == ad.read_h5ad(real).n_obs > 0
    exe = find_cell_eval()
    if exe is None:
        pytest.skip(f"cell-eval is not installed (`make cell-eval`, or set {EXECUTABLE_ENV})")
    cmd = cell_eval_command(pred=pred, real=real, outdir=tmp_path / "out", executable=exe, celltype_col=CELLTYPE_COL)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    split = pd.read_csv(results / "split" / "split.tsv", sep="\t")
    test_conditions = sorted(split.loc[split["split"] == "test", "condition"])
    for state in STATES:
        scored = pd.read_csv(tmp_path / "out" / f"{state}_results.csv")
        assert sorted(scored["perturbation"]) == test_conditions
