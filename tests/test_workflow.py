"""The Snakemake workflow end to end on a tiny demo, reruns, lint and config errors.

The tiny demo runs once per session (the `tiny_run` fixture of tests/conftest.py); this module
dry-runs a copy of the finished run, where a test can edit a grape module and see which jobs
Snakemake schedules.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from workflow_tools import REPO, TINY, copy_workflow, scheduled, snakemake, write_config

def dry_run(root: Path, config: dict) -> dict[str, int]:
    """Rule -> job count that Snakemake would run on ``root`` with ``config``."""
    name = write_config(root, config, "changed.yaml")
    return scheduled(snakemake(root, "-n", "--configfile", name))


@pytest.fixture(scope="module")
def workflow(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's finished tiny run, that this module's tests may edit and dry-run."""
    return copy_workflow(tmp_path_factory.mktemp("workflow") / "project", run=tiny_run)


def test_end_to_end_outputs(tiny_run):
    workflow = tiny_run
    results = workflow / "results" / "tiny"
    for rel in ("annotate/genes.tsv", "annotate/sequences.fa", "annotate/missing_genes.tsv",
                "describe/descriptions.tsv", "embed/text.npz", "embed/dna.npz", "graph/full/graph.safetensors",
                "split/split.tsv", "train/full/model.safetensors", "train/full/model.yaml",
                "train/full/history.tsv", "train/full/predictions.h5ad", "evaluate/metrics.tsv", "evaluate/per_condition.tsv",
                "evaluate/metrics.json", "report/summary.md", "train/full/network.tsv", "train/no_gsl/predictions.h5ad",
                "train/no_gsl/network.tsv", "network/recovery.tsv"):
        assert (results / rel).stat().st_size > 0, rel
    for stage in ("annotate", "describe", "embed", "graph_full", "split", "train_full", "train_no_gsl", "network",
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


def test_nothing_to_do_after_a_run(tiny_run, workflow):
    assert dry_run(tiny_run, TINY) == {}
    assert dry_run(workflow, TINY) == {}  # a copy of the finished run is finished too


def test_training_parameter_reruns_training_and_later_only(workflow):
    changed = {**TINY, "train": {**TINY["train"], "epochs": 31}}
    jobs = dry_run(workflow, changed)
    assert set(jobs) == {"train", "network", "evaluate", "report", "all"}


def test_split_parameter_keeps_graph_and_embeddings(workflow):
    changed = {**TINY, "split": {"seed": 5}}
    jobs = dry_run(workflow, changed)
    assert set(jobs) == {"split", "train", "network", "evaluate", "report", "all"}


def test_graph_parameter_keeps_annotation_and_embeddings(workflow):
    changed = {**TINY, "graph": {"top_k": 6}}
    jobs = dry_run(workflow, changed)
    assert set(jobs) == {"graph", "train", "network", "evaluate", "report", "all"}


def test_editing_the_model_module_reruns_training_only(workflow):
    model = workflow / "grape" / "model" / "gnn.py"
    original = model.read_text()
    try:
        model.write_text(original + "\nEDITED = True\n")  # a code edit: comments and docstrings rerun nothing
        jobs = dry_run(workflow, TINY)
    finally:
        model.write_text(original)
        os.utime(model, (0, 0))  # older than the outputs again
    assert set(jobs) == {"train", "network", "evaluate", "report", "all"}


def test_lint_is_clean():
    result = snakemake(REPO, "--lint", check=False, timeout=300)
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
    root = copy_workflow(tmp_path / "project")
    name = write_config(root, {**TINY, **patch})
    result = snakemake(root, "-n", "--configfile", name, check=False)
    assert result.returncode != 0
    assert key in result.stderr + result.stdout
    assert not (root / "results").exists()


def test_repeated_splits_run_each_split_and_one_aggregate(tmp_path):
    """split.seeds [1, 2]: a split, every variant's training and an evaluation per seed (under
    results/<run>/splits/seed<k>/, the split given that seed), one aggregate of both, whose headline the report reads."""
    root = copy_workflow(tmp_path / "project")
    name = write_config(root, {**TINY, "split": {"seeds": [1, 2]}})
    result = snakemake(root, "-n", "-p", "--configfile", name)
    jobs = scheduled(result)
    assert {rule: jobs[rule] for rule in ("split_seeds", "train_seeds", "evaluate_seeds", "aggregate")} == {
        "split_seeds": 2, "train_seeds": 2 * 2, "evaluate_seeds": 2, "aggregate": 1}
    assert jobs["split"] == jobs["evaluate"] == jobs["report"] == 1 and jobs["train"] == 2  # the run's own split
    text = result.stdout + result.stderr
    for seed in (1, 2):
        assert re.search(rf"grape split .*--out results/tiny/splits/seed{seed}/split/split\.tsv .*--seed {seed} ", text)
        assert f"--split results/tiny/splits/seed{seed}/split/split.tsv" in text  # training and evaluation
        assert f"results/tiny/splits/seed{seed}/train/no_gsl/predictions.h5ad" in text
    assert ("grape aggregate --per-condition results/tiny/splits/seed1/evaluate/per_condition.tsv "
            "results/tiny/splits/seed2/evaluate/per_condition.tsv --out-dir results/tiny/aggregate") in text
    assert "--headline results/tiny/aggregate/headline.tsv" in text
