"""The Snakemake workflow end to end on a tiny demo, reruns, lint and config errors.

The workflow files are copied to a temporary directory so that a test can edit a
grape module there and see which jobs Snakemake schedules.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "run": "tiny",
    "simulate": {"n_genes": 80, "n_modules": 3, "n_singles": 12, "n_doubles": 6,
                 "cells_per_condition": 15, "control_cells": 60},
    "graph": {"top_k": 5},
    "train": {"epochs": 30, "patience": 15, "hidden": 16, "batch_size": 8, "pretrain_epochs": 5,
              "ablations": ["no_gsl"]},  # one ablation: the variant wildcard end to end
}

pytestmark = pytest.mark.slow


def snakemake(workflow: Path, *args: str, config: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake on the copied workflow with this interpreter's environment first on PATH."""
    if config is not None:
        (workflow / "test_config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(workflow / "Snakefile"), "--directory", str(workflow),
           "--configfile", str(workflow / "test_config.yaml"), "--cores", "2", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def scheduled(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    rows = re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)
    return {rule: int(n) for rule, n in rows if rule != "total"}


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    """A copy of the workflow with the tiny demo run to completion."""
    root = tmp_path_factory.mktemp("workflow")
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, root / name)
    for name in ("rules", "workflow", "grape", "envs"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    snakemake(root, config=TINY)
    return root


def test_end_to_end_outputs(workflow):
    results = workflow / "results" / "tiny"
    for rel in ("annotate/genes.tsv", "annotate/sequences.fa", "annotate/missing_genes.tsv",
                "describe/descriptions.tsv", "embed/text.npz", "embed/dna.npz", "graph/graph.safetensors",
                "split/split.tsv", "train/full/model.safetensors", "train/full/model.yaml",
                "train/full/history.tsv", "train/full/predictions.h5ad", "evaluate/metrics.tsv", "evaluate/per_condition.tsv",
                "evaluate/metrics.json", "report/summary.md", "train/full/network.tsv", "train/no_gsl/predictions.h5ad",
                "train/no_gsl/network.tsv", "network/recovery.tsv"):
        assert (results / rel).stat().st_size > 0, rel
    for stage in ("annotate", "describe", "embed", "graph", "split", "train_full", "train_no_gsl", "network",
                  "evaluate", "report"):
        assert (workflow / "logs" / "tiny" / f"{stage}.log").exists()
    metrics = pd.read_csv(results / "evaluate" / "metrics.tsv", sep="\t")
    assert {"grape", "grape_no_gsl", "no_change", "mean", "additive", "linear"} <= set(metrics["model"])
    recovery = pd.read_csv(results / "network" / "recovery.tsv", sep="\t")
    assert {"prior", "learned", "learned_no_gsl", "random"} == set(recovery["graph"])
    overall = metrics[metrics["subgroup"] == "all"].set_index(["model", "metric"])["value"]
    # the model predicts changes (not the control): its delta correlation is defined
    assert pd.notna(overall[("grape", "pearson_delta")])
    split = pd.read_csv(results / "split" / "split.tsv", sep="\t")
    n_test = int((split["split"] == "test").sum())
    assert set(metrics.loc[metrics["subgroup"] == "all", "n_conditions"]) == {n_test}
    assert "| grape |" in (results / "report" / "summary.md").read_text()


def test_nothing_to_do_after_a_run(workflow):
    assert scheduled(snakemake(workflow, "-n", config=TINY)) == {}


def test_training_parameter_reruns_training_and_later_only(workflow):
    changed = {**TINY, "train": {**TINY["train"], "epochs": 31}}
    jobs = scheduled(snakemake(workflow, "-n", config=changed))
    assert set(jobs) == {"train", "network", "evaluate", "report", "all"}


def test_split_parameter_keeps_graph_and_embeddings(workflow):
    changed = {**TINY, "split": {"seed": 5}}
    jobs = scheduled(snakemake(workflow, "-n", config=changed))
    assert set(jobs) == {"split", "train", "network", "evaluate", "report", "all"}


def test_graph_parameter_keeps_annotation_and_embeddings(workflow):
    changed = {**TINY, "graph": {"top_k": 6}}
    jobs = scheduled(snakemake(workflow, "-n", config=changed))
    assert set(jobs) == {"graph", "train", "network", "evaluate", "report", "all"}


def test_editing_the_model_module_reruns_training_only(workflow):
    model = workflow / "grape" / "model" / "gnn.py"
    original = model.read_text()
    try:
        model.write_text(original + "\n# edited\n")
        jobs = scheduled(snakemake(workflow, "-n", config=TINY))
    finally:
        model.write_text(original)
        os.utime(model, (0, 0))  # older than the outputs again
    assert set(jobs) == {"train", "network", "evaluate", "report", "all"}


def test_lint_is_clean():
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True,
                            text=True, env=env, timeout=300)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr, result.stdout


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"train": {"epochs": "abc"}}, "train.epochs"),
        ({"train": {"epoch": 3}}, "train.epoch"),
        ({"dataset": {"source": "h5ad", "path": "missing.h5ad"}}, "dataset.path"),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, patch, key):
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    for name in ("rules", "workflow", "grape"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    result = snakemake(tmp_path, "-n", config={**TINY, **patch}, check=False)
    assert result.returncode != 0
    assert key in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()
